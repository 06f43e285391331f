"""Cut the text of an utterance into the chunks a TTS model synthesizes one at a time.

Why: Piper renders a whole chunk before returning any audio, so first-audio latency
is the time to synthesize the first chunk. A long first sentence is therefore split
early (at a clause, else at a word boundary, preferably before a conjunction), while
later chunks stay one sentence each for natural prosody; a sentence longer than
``max_chunk_chars`` is split too, so no chunk is unbounded.

Streaming: ``TextChunker.feed`` takes text as an LLM produces it and returns only
chunks that are certainly complete; a cut is made only when no later text could
change it (a trailing "." waits for the next character, "3." waits to see whether
"14" follows). Hence feeding any split of a text gives exactly ``split_text(text)``.

Rules (on whitespace-normalized text: each run of whitespace becomes one space):

- Sentence end: the shared rule of :mod:`duplexvoice.text.sentences` ("." ends a
  sentence when a space follows, unless after "Dr.", "U.S.", "J.", a list number
  "1." at the start of a chunk...).
- Clause boundary: ``, ; :`` (plus closers) followed by a space, or a spaced dash
  (" - ", " -- ", " – ", " — ") which stays with the text before it.
- First chunk: a first sentence longer than ``first_max_chars`` is cut at the
  cheapest space in [``first_min_chars``, ``first_max_chars``]: a clause boundary
  costs nothing, a word cut before a conjunction a little, before a phrase start
  ("the", "in", "we") more, elsewhere more still, and a cut past the target length
  (default 40) costs 1.5 per character. Measured with Piper joe-medium on 116-188
  character sentences (2 noisy cores, medians of 11 interleaved runs): the first
  chunk, 17-41 % of the text, took 0.21-0.49 of the whole sentence's time to first
  audio, the highest for ~120-character ones; a comma at 57 of 119 gave 0.54.
- Later chunks: one sentence each; one longer than ``max_chunk_chars`` is cut at its
  last clause boundary in the second half of that limit, else at the best word cut.
- Numbers are never split: "1,000", "3.14", "10:30" hold no space, and a word cut
  between two digits ("1 000") is never chosen.
- Speakable (:func:`duplexvoice.text.speakable`): a chunk is emitted only if a voice
  says something for it. Text with nothing to say (a lone "...", an emoji) before
  such a chunk is kept at its start; at the end of an utterance it is dropped, so
  "..." alone yields no chunk at all (the worker rejects that).
  Consequently ``" ".join(chunks)`` equals the normalized input, less such a tail.
- A single "word" longer than ``max_chunk_chars`` (no space at all) is cut hard at
  that length: the bound wins over "never inside a word" for such garbage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from duplexvoice.text import CLOSERS, OPENERS, TERMINALS, WAIT, Wait, first_speakable, sentence_end

_WHITESPACE: Final = re.compile(r"\s+")
_TERMINAL: Final = re.compile("[" + re.escape("".join(sorted(TERMINALS))) + "]")
_CLAUSE_PUNCT: Final = frozenset(",;:")
_DASHES: Final = frozenset({"-", "--", "–", "—"})
_WORD_CHARS_EXTRA: Final = frozenset("'’")
# A word cut just before one of these sounds natural ("... the station | because ...").
_CONJUNCTIONS: Final = frozenset(
    {
        "and", "but", "or", "nor", "so", "yet", "because", "which", "that", "while",
        "when", "where", "who", "whom", "whose", "although", "though", "if", "unless",
        "until", "since", "whereas", "what", "how", "why", "whether",
    }
)  # fmt: skip
# A word cut just before one of these starts a phrase ("left the house | at noon").
_PHRASE_STARTS: Final = frozenset(
    {
        "a", "an", "the", "to", "in", "on", "at", "by", "for", "with", "from", "into",
        "about", "after", "before", "during", "over", "under", "through", "without",
        "my", "your", "his", "her", "our", "their", "this", "these", "those", "some",
        "every", "i", "we", "you", "he", "she", "they", "it", "there",
    }
)  # fmt: skip
# A word cut just after one of these sounds broken ("I saw the | dog").
_FUNCTION_WORDS: Final = _CONJUNCTIONS | _PHRASE_STARTS | frozenset(
    {"of", "its", "is", "are", "was", "were", "be", "been", "not", "very", "as", "than",
     "more", "most", "no", "any", "all", "each", "such", "can", "will", "would", "should"}
)  # fmt: skip
# A word cut just before one of these sounds broken ("a loaf | of bread").
_BINDS_BACKWARD: Final = frozenset({"of", "than"})
_KNOWN_WORDS: Final = _CONJUNCTIONS | _PHRASE_STARTS
# Cut penalties, in characters of length they are worth (see ``_cut_penalty``):
# a clause boundary is free, then before a conjunction, then before a phrase start.
_COST_WORD: Final = 6  # a word cut before a conjunction
_COST_NOT_CONJUNCTION: Final = 6  # ...plus this before a phrase start
_COST_NOT_PHRASE_START: Final = 12  # ...plus this before any other word
_COST_BROKEN: Final = 15  # after a function word, before "of": "the | dog"
_EARLINESS_DIVISOR: Final = 4  # a cut before the target costs a quarter per character


@dataclass(frozen=True)
class ChunkingConfig:
    """How text is cut; lengths are in characters of normalized text."""

    first_max_chars: int = 60  # a first sentence longer than this is split at a clause
    first_min_chars: int = 20  # never make the first chunk shorter (unless its sentence is)
    max_chunk_chars: int = 300  # any chunk longer than this is split (clause, then word)
    # First-chunk cuts past this length cost more (latency): None means midway between
    # first_min_chars and first_max_chars (40 by default).
    first_target_chars: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.first_min_chars <= self.first_max_chars <= self.max_chunk_chars:
            raise ValueError(
                "need 1 <= first_min_chars <= first_max_chars <= max_chunk_chars, got "
                f"{self.first_min_chars}, {self.first_max_chars}, {self.max_chunk_chars}"
            )
        target = self.first_target_chars
        if target is not None and not self.first_min_chars <= target <= self.first_max_chars:
            raise ValueError("first_target_chars must lie in [first_min_chars, first_max_chars]")

    @property
    def target_chars(self) -> int:
        """The effective target length of a cut first chunk."""
        if self.first_target_chars is not None:
            return self.first_target_chars
        return (self.first_min_chars + self.first_max_chars) // 2


def normalize_whitespace(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def _token_before(t: str, end: int) -> tuple[int, str]:
    """The space-delimited token ending at ``end``, less leading opening quotes."""
    start = t.rfind(" ", 0, end) + 1
    token = t[start:end]
    stripped = token.lstrip(OPENERS)
    return start + len(token) - len(stripped), stripped


def _sentence_end(t: str, p: int, final: bool) -> int | None:
    """End (exclusive) of the first certain sentence holding ``t[p]``, or None."""
    i = p  # a terminal run before p ends before it: t[p] is speakable
    while (found := _TERMINAL.search(t, i)) is not None:
        end, i = sentence_end(t, found.start(), p, final)
        if isinstance(end, Wait):
            return None  # only whitespace or closers follow: no later end to find
        if end is not None:
            return end
    return None


def _is_clause_end(t: str, c: int) -> bool:
    """True if ``t[c]`` is a space right after ``, ; :`` (plus closers) or a spaced dash."""
    k = c
    while k > 0 and t[k - 1] in CLOSERS:
        k -= 1
    if k > 0 and t[k - 1] in _CLAUSE_PUNCT:
        return True
    start, token = _token_before(t, c)
    return token in _DASHES and start > 0


def _next_word(t: str, start: int, final: bool) -> str | None:
    """The lower-cased word starting at ``start``, or None if it may still grow."""
    end = start
    while end < len(t) and (t[end].isalpha() or t[end] in _WORD_CHARS_EXTRA):
        end += 1
    if end == len(t) and not final:
        return None
    return t[start:end].lower()


def _cut_penalty(t: str, w: int, final: bool) -> int | Wait | None:
    """Penalty of cutting at the space ``t[w]``; None if that cut is not allowed there."""
    if _is_clause_end(t, w):
        return 0
    _, before = _token_before(t, w)
    after_end = t.find(" ", w + 1)
    after = t[w + 1 :] if after_end < 0 else t[w + 1 : after_end]
    if before.endswith(".") or after in _DASHES:
        return None  # after an abbreviation or initial; before a dash (cut after it)
    if t[w - 1].isdigit() and t[w + 1].isdigit():
        return None  # "1 000"
    word = _next_word(t, w + 1, final)
    if word is None:
        word = t[w + 1 :].lower()
        if any(known.startswith(word) for known in _KNOWN_WORDS):
            return WAIT  # "wh" may become "which"
    penalty = _COST_WORD
    if word not in _CONJUNCTIONS:
        penalty += _COST_NOT_CONJUNCTION
        if word not in _PHRASE_STARTS:
            penalty += _COST_NOT_PHRASE_START
    if before.rstrip("".join(CLOSERS)).lower() in _FUNCTION_WORDS or word in _BINDS_BACKWARD:
        penalty += _COST_BROKEN
    return penalty


def _lateness(chars: int) -> int:
    """Cost of a cut ``chars`` past the target: steeper than a penalty's unit, so a
    clause boundary far past the target loses to a word cut near it (latency)."""
    return max(0, chars) * 3 // 2


def _best_cut(
    t: str, lo: int, hi: int, p: int, final: bool, target: int, clauses_only: bool = False
) -> int | Wait | None:
    """The cheapest allowed cut at a space in [lo, hi], or None if there is none.

    Cost: the penalty of the cut plus its distance from ``target``; each character
    after the target costs 1.5, each before it a quarter (shorter is faster, and ``lo``
    already bounds how short). Ties go to the earlier cut.
    """
    best: tuple[int, int] | None = None
    for w in range(max(lo, p + 1, 1), min(hi, len(t) - 2) + 1):
        if t[w] != " ":
            continue
        if clauses_only:
            penalty: int | Wait | None = 0 if _is_clause_end(t, w) else None
        else:
            penalty = _cut_penalty(t, w, final)
        if isinstance(penalty, Wait):
            return penalty
        if penalty is None:
            continue
        cost = penalty + _lateness(w - target) + max(0, target - w) // _EARLINESS_DIVISOR
        if best is None or (cost, w) < best:
            best = (cost, w)
    return None if best is None else best[1]


def _first_cut(t: str, p: int, final: bool, cfg: ChunkingConfig) -> int | Wait | None:
    """Cut for the first chunk of a long sentence; None if the window holds no boundary."""
    lo, hi = cfg.first_min_chars, cfg.first_max_chars
    return _best_cut(t, lo, hi, p, final, cfg.target_chars)


def _oversize_cut(t: str, p: int, final: bool, cfg: ChunkingConfig) -> int | Wait:
    """Cut for a sentence longer than ``max_chunk_chars``: as late as possible.

    The latest clause boundary in the second half of the limit, else the best word
    cut before the limit, else the last space, else (one huge "word") a hard cut.
    """
    hi = cfg.max_chunk_chars
    for lo, clauses_only in ((hi // 2, True), (p + 1, False)):
        cut = _best_cut(t, lo, hi, p, final, hi, clauses_only)
        if cut is not None:
            return cut
    spaces = [w for w in range(p + 1, min(hi, len(t) - 2) + 1) if t[w] == " "]
    return spaces[-1] if spaces else hi


def _next_cut(t: str, p: int, final: bool, first: bool, cfg: ChunkingConfig) -> int | None:
    """End (exclusive) of the next chunk of ``t``, or None to wait for more text."""
    solid = len(t.rstrip())  # a trailing space proves nothing about what follows
    end = _sentence_end(t, p, final)
    if end is None and final:
        end = len(t)
    if first:
        if end is not None and end <= cfg.first_max_chars:
            return end
        if end is None and solid <= cfg.first_max_chars:
            return None
        cut = _first_cut(t, p, final, cfg)
        if isinstance(cut, Wait):
            return None
        if cut is not None:
            return cut
    if end is not None and end <= cfg.max_chunk_chars:
        return end
    if end is None and solid <= cfg.max_chunk_chars:
        return None
    over = _oversize_cut(t, p, final, cfg)
    return None if isinstance(over, Wait) else over


class TextChunker:
    """Incremental chunker for one utterance at a time; reusable after ``finish``."""

    def __init__(self, config: ChunkingConfig = ChunkingConfig()) -> None:
        self._config = config
        self._buffer = ""  # normalized; no leading space, at most one trailing space
        self._first = True  # the next chunk is the utterance's first

    @property
    def pending(self) -> str:
        """Buffered normalized text not yet emitted (may end with one space)."""
        return self._buffer

    def feed(self, text: str) -> list[str]:
        """Add text; return the chunks that became certainly complete."""
        text = _WHITESPACE.sub(" ", text)
        if not self._buffer or self._buffer.endswith(" "):
            text = text.lstrip(" ")
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[str]:
        """End the utterance: return every remaining chunk and reset for the next."""
        self._buffer = self._buffer.rstrip(" ")
        chunks = self._drain(final=True)
        self._buffer = ""
        self._first = True
        return chunks

    def _drain(self, final: bool) -> list[str]:
        chunks: list[str] = []
        limit = self._config.max_chunk_chars
        while self._buffer:
            t = self._buffer
            p = first_speakable(t)
            if p is None or p >= limit:
                if p is None and final:
                    self._buffer = ""  # an unpronounceable tail: nothing to say
                elif len(t) >= limit:
                    self._buffer = t[limit:].lstrip(" ")  # bound a run of junk
                    continue
                break
            cut = _next_cut(t, p, final, self._first, self._config)
            if cut is None:
                break
            chunks.append(t[:cut].strip(" "))
            self._buffer = t[cut:].lstrip(" ")
            self._first = False
        return chunks


def split_text(text: str, config: ChunkingConfig = ChunkingConfig()) -> list[str]:
    """Chunks of a complete utterance: the same as ``feed(text)`` then ``finish()``."""
    chunker = TextChunker(config)
    return chunker.feed(text) + chunker.finish()
