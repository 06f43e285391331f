"""Cut a reply, as a language model streams it, into clauses ready to speak.

Why: speech should start as soon as the model has produced a natural prosody unit,
not when the whole reply is done, and each unit handed to TTS should be one a voice
can say with its own intonation (a sentence, or a clause of one).

Streaming and determinism: ``ClauseCutter.push`` returns only clauses that no later
text could change (a trailing "." waits for the next character: "3." may become
"3.5", "Mr." is never an end). Hence any split of a token stream gives exactly the
clauses of one ``push`` of the whole text, and ``flush`` gives the same rest.

Rules (on normalized text: whitespace runs become one space, or one newline if the
run holds one; ``*`` and backticks are dropped, and ``#`` at the start of a line,
so a stray markdown habit of the model is not read aloud):

- Sentence end: the shared rule of :mod:`duplexvoice.text.sentences` ("." ends a
  sentence when whitespace follows, unless after "Mr.", "U.S.", "J.", a list number
  "1." at the start of a clause...). Always a cut, whatever the length.
- Line break: always a cut (list items, paragraphs).
- Clause end: ``, ; : — –`` (plus closers) followed by whitespace, a spaced hyphen
  (" - ", " -- "), or an em dash between two letters ("so—if"), but only once the
  clause holds ``first_min_words`` words (the reply's first clause: speech starts
  early) or ``min_words`` (later ones: longer units, better prosody). "1,000" and
  "10:30" hold no whitespace and are never cut.
- Maximum: a clause that reaches ``max_chars`` (the first: ``first_max_chars``,
  shorter, so a long first sentence still starts speech early; the TTS worker
  re-chunks what it gets and picks its own best first cut within it) with no cut is
  cut at its last space (a word boundary) at or before that length; one huge
  "word" is cut hard.
- Speakable (:func:`duplexvoice.text.speakable`): a clause holds something a voice
  says. Leading text with nothing to say ("...", "- ") is kept at the start of the
  next clause (at most 16 characters of it); such a tail at the end of the reply is
  dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from duplexvoice.text import CLOSERS, SPACES, TERMINALS, WAIT, Wait, first_speakable, sentence_end

_CLAUSE_PUNCT: Final = frozenset(",;:—–")
_DROPPED: Final = frozenset("*`")  # markdown emphasis and code marks
_MAX_JUNK: Final = 16  # unpronounceable characters kept before a clause
_FIRST_MAX_CHARS: Final = 80  # the worker's first-chunk window is 20-60 characters
# A word: letters/digits, joined by inner punctuation ("3.5", "don't", "well-known").
_WORD: Final = re.compile(r"[^\W_]+(?:[.,'’:\-][^\W_]+)*")


@dataclass(frozen=True)
class ClauseRules:
    """Where a reply may be cut; lengths in words or characters of normalized text."""

    first_min_words: int = 3  # a clause-punctuation cut of the reply's first clause
    min_words: int = 6  # ...and of every later clause
    max_chars: int = 160  # a clause this long with no cut is cut at a word boundary
    # ...and the reply's first clause at this length; None: min(80, max_chars)
    first_max_chars: int | None = None

    def __post_init__(self) -> None:
        if self.first_min_words < 1 or self.min_words < 1:
            raise ValueError("first_min_words and min_words must be at least 1")
        if self.max_chars < 2 * _MAX_JUNK:
            raise ValueError(f"max_chars must be at least {2 * _MAX_JUNK}")
        if not 2 * _MAX_JUNK <= self.first_limit <= self.max_chars:
            raise ValueError(f"need {2 * _MAX_JUNK} <= first_max_chars <= max_chars")

    @property
    def first_limit(self) -> int:
        """The effective maximum length of the first clause."""
        if self.first_max_chars is not None:
            return self.first_max_chars
        return min(_FIRST_MAX_CHARS, self.max_chars)


def count_words(text: str) -> int:
    """Words in ``text`` as the cutter counts them ("3.5" and "don't" are one each)."""
    return len(_WORD.findall(text))


def _end_after(t: str, k: int, final: bool) -> int | Wait | None:
    """A cut at ``k`` if whitespace (or the end of the reply) follows, else None."""
    if k == len(t):
        return k if final else WAIT
    return k if t[k] in SPACES else None


def _clause_cut(t: str, i: int, final: bool, min_words: int) -> tuple[int | Wait | None, int]:
    """The cut for clause punctuation or a spaced hyphen at ``i``; where scanning resumes."""
    n = len(t)
    ch = t[i]
    if ch == "-":
        if i == 0 or t[i - 1] not in SPACES:
            return None, i + 1  # "well-known", "-5"
        k = i
        while k < n and t[k] == "-":
            k += 1
    else:
        k = i + 1
        while k < n and t[k] in CLOSERS:
            k += 1
    if count_words(t[:k]) < min_words:
        return None, k
    cut = _end_after(t, k, final)
    if (
        cut is None and ch == "—" and k == i + 1 and i > 0
        and t[i - 1].isalpha() and t[k].isalpha()
    ):
        cut = k  # an unspaced em dash between words: "so—if"
    return cut, k


def _forced_cut(t: str, p: int, max_chars: int) -> int:
    """Cut a clause of at least ``max_chars`` at its last space, or hard in one word."""
    w = t.rfind(" ", p + 1, max_chars + 1)
    return w if w > p else max_chars


def next_cut(t: str, p: int, final: bool, min_words: int, max_chars: int) -> int | None:
    """End (exclusive) of the next clause of normalized ``t``, or None to wait.

    ``p`` is the index of ``t``'s first pronounceable character. A cut at ``k`` is
    only decided when every character it depends on is known: with ``final`` False,
    a candidate at the end of ``t`` waits; past ``max_chars`` the clause is forced.
    """
    n = len(t)
    i = p
    while i < min(n, max_chars):
        ch = t[i]
        if ch == "\n":
            return i
        if ch in TERMINALS:
            cut, resume = sentence_end(t, i, p, final)
        elif ch in _CLAUSE_PUNCT or ch == "-":
            cut, resume = _clause_cut(t, i, final, min_words)
        else:
            i += 1
            continue
        if resume > max_chars:
            break  # the clause would be too long: forced below
        if isinstance(cut, Wait):
            return None
        if cut is not None:
            return cut
        i = max(resume, i + 1)
    if n > max_chars:
        return _forced_cut(t, p, max_chars)
    return n if final else None


class ClauseCutter:
    """Incremental cutter for one reply; reusable after ``flush``."""

    def __init__(self, rules: ClauseRules | None = None) -> None:
        self._rules = rules or ClauseRules()
        self._buffer = ""  # normalized, no leading whitespace
        self._first = True  # the next clause is the reply's first
        self._line_start = True  # for dropping markdown "#" at the start of a line

    @property
    def pending(self) -> str:
        """Normalized text received but not cut yet."""
        return self._buffer

    def push(self, token: str) -> list[str]:
        """Add a piece of the reply; return the clauses that became certainly complete."""
        self._append(token)
        return self._drain(final=False)

    def flush(self) -> str:
        """End the reply: return the rest as one clause ("" if nothing speakable), reset."""
        rest = " ".join(self._drain(final=True))
        self._buffer = ""
        self._first = True
        self._line_start = True
        return rest

    def _append(self, token: str) -> None:
        # Character by character, with state that survives cuts, so that where the
        # stream was split never changes the normalized text.
        out: list[str] = []
        buffer = self._buffer
        for ch in token:
            if ch in _DROPPED:
                continue
            if ch.isspace():
                newline = ch in "\n\r\u2028\u2029\x0b\x0c\x85"
                if newline:
                    self._line_start = True
                last = out[-1] if out else (buffer[-1] if buffer else "")
                if not last or last == "\n":
                    continue
                if last == " ":
                    if newline:
                        if out:
                            out[-1] = "\n"
                        else:
                            buffer = buffer[:-1] + "\n"
                    continue
                out.append("\n" if newline else " ")
                continue
            if ch == "#" and self._line_start:
                continue
            self._line_start = False
            out.append(ch)
        self._buffer = buffer + "".join(out)

    def _drain(self, final: bool) -> list[str]:
        clauses: list[str] = []
        rules = self._rules
        while self._buffer:
            t = self._buffer
            p = first_speakable(t)
            if p is None:
                self._buffer = "" if final else t[-_MAX_JUNK:]
                break
            if p > _MAX_JUNK:
                t, p = t[p - _MAX_JUNK :], _MAX_JUNK
            if self._first:
                cut = next_cut(t, p, final, rules.first_min_words, rules.first_limit)
            else:
                cut = next_cut(t, p, final, rules.min_words, rules.max_chars)
            if cut is None:
                self._buffer = t
                break
            clauses.append(t[:cut].replace("\n", " ").strip())
            self._buffer = t[cut:].lstrip(" \n")
            self._first = False
        return clauses


def cut_clauses(text: str, rules: ClauseRules | None = None) -> list[str]:
    """Clauses of a complete reply: the same as ``push(text)`` then ``flush()``."""
    cutter = ClauseCutter(rules)
    clauses = cutter.push(text)
    rest = cutter.flush()
    return [*clauses, rest] if rest else clauses
