"""The TTS text chunker: sentence/clause rules, the first-chunk split, streaming."""

from __future__ import annotations

import random

import pytest

from duplexvoice.text import speakable
from duplexvoice.worker.textchunk import (
    ChunkingConfig,
    TextChunker,
    normalize_whitespace,
    split_text,
)

pytestmark = pytest.mark.unit

LONG_COMMA = (
    "When we finally reached the top of the hill, the sun was already setting behind "
    "the mountains, and the whole valley below us was glowing in orange light."
)
LONG_NO_COMMA = (
    "The old lighthouse keeper walked slowly along the rocky shore every single evening "
    "to check that the lamp was still burning brightly and that no ship was in danger."
)


def stream(text: str, pieces: list[int], config: ChunkingConfig | None = None) -> list[str]:
    """Feed ``text`` cut at the given offsets, then finish."""
    chunker = TextChunker(config or ChunkingConfig())
    out: list[str] = []
    start = 0
    for end in [*sorted(pieces), len(text)]:
        out += chunker.feed(text[start:end])
        start = end
    return out + chunker.finish()


# -- configuration and helpers --------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({}, True),
        ({"first_min_chars": 0}, False),
        ({"first_min_chars": 61}, False),
        ({"first_max_chars": 400}, False),
        ({"first_min_chars": 10, "first_max_chars": 10, "max_chunk_chars": 10}, True),
        ({"first_target_chars": 19}, False),
        ({"first_target_chars": 61}, False),
        ({"first_target_chars": 20}, True),
    ],
)
def test_config_validation(fields: dict[str, int], ok: bool) -> None:
    if ok:
        ChunkingConfig(**fields)
    else:
        with pytest.raises(ValueError):
            ChunkingConfig(**fields)


def test_target_defaults_to_middle_of_first_window() -> None:
    assert ChunkingConfig().target_chars == 40
    assert ChunkingConfig(first_target_chars=25).target_chars == 25


_WS_CASES = [("  a \n\t b  ", "a b"), ("x\r\n\r\ny", "x y"), ("a\u00a0b\u2003c", "a b c"), ("", "")]


@pytest.mark.parametrize(("text", "expected"), _WS_CASES)
def test_normalize_whitespace(text: str, expected: str) -> None:
    assert normalize_whitespace(text) == expected


# -- sentence rules (short sentences: the first-chunk split does not apply) ------------

SENTENCE_CASES: list[tuple[str, str]] = [
    ("Hello there. How are you?", "Hello there. | How are you?"),
    ("hello world", "hello world"),
    ("Stop! Now? Yes.", "Stop! | Now? | Yes."),
    # abbreviations and initials
    ("Dr. Li met Mr. Jones. Mrs. Wu came.", "Dr. Li met Mr. Jones. | Mrs. Wu came."),
    ("Ms. Lee lives on Main St. now. Nice.", "Ms. Lee lives on Main St. now. | Nice."),
    ("Bring fruit, e.g. apples. Or not.", "Bring fruit, e.g. apples. | Or not."),
    ("Use tools, i.e. hammers. Fine.", "Use tools, i.e. hammers. | Fine."),
    ("Apples, pears, etc. are fruit. Yes.", "Apples, pears, etc. are fruit. | Yes."),
    ("We ate apples, etc. Then slept.", "We ate apples, etc. | Then slept."),
    ("So did I. Then we left.", "So did I. | Then we left."),
    ("See vol. 2 of it. Ok.", "See vol. 2 of it. | Ok."),
    ("It was cats vs. dogs. Dogs won.", "It was cats vs. dogs. | Dogs won."),
    ("The U.S. economy grew. Good.", "The U.S. economy grew. | Good."),
    ("J. R. R. Tolkien wrote it. Yes.", "J. R. R. Tolkien wrote it. | Yes."),
    ('He asked "Dr. Who?" Nobody knew.', 'He asked "Dr. Who?" | Nobody knew.'),
    ("We met at 9 a.m. sharp. Ok.", "We met at 9 a.m. sharp. | Ok."),
    # numbers never split
    ("It costs $4.50 today. Cheap.", "It costs $4.50 today. | Cheap."),
    ("Pi is 3.14 roughly. Right.", "Pi is 3.14 roughly. | Right."),
    ("We met at 10:30 sharp. Late.", "We met at 10:30 sharp. | Late."),
    ("There were 1,000 people. Wow.", "There were 1,000 people. | Wow."),
    ("Version 1.2.3 shipped. Done.", "Version 1.2.3 shipped. | Done."),
    ("I counted to 10. Then stopped.", "I counted to 10. | Then stopped."),
    ("It was 2024. New year.", "It was 2024. | New year."),
    ("Go to example.com now. Bye.", "Go to example.com now. | Bye."),
    # list numbers at the start of a chunk stay with their item
    ("1. Go home.\n2. Sleep now.", "1. Go home. | 2. Sleep now."),
    ("- 1. Buy milk. - 2. Buy eggs.", "- 1. Buy milk. | - 2. Buy eggs."),
    # closing quotes and brackets stay with their sentence
    ('He said "stop." Then he left.', 'He said "stop." | Then he left.'),
    ("She said 'go.' We went.", "She said 'go.' | We went."),
    ("(Really?) Yes.", "(Really?) | Yes."),
    ("He said “fine.” Then left.", "He said “fine.” | Then left."),
    ("It ended [see notes.] Next.", "It ended [see notes.] | Next."),
    ('"Why?" "Because."', '"Why?" | "Because."'),
    # ellipses and runs of punctuation
    ("Well... I don't know.", "Well... | I don't know."),
    ("Wait… what?", "Wait… | what?"),
    ("Really?! No way!!! Ok.", "Really?! | No way!!! | Ok."),
    ("What?.. Fine.", "What?.. | Fine."),
    # a sentence end needs whitespace or the end after it
    ("Hello.World is one. Two.", "Hello.World is one. | Two."),
    # whitespace and newlines
    ("Hello\n\nthere.\nNext   line.", "Hello there. | Next line."),
    ("   Leading and trailing.   ", "Leading and trailing."),
    ("Tabs\tand\tnewlines.\n\n\nEnd.", "Tabs and newlines. | End."),
    # unicode
    ("café. Naïve", "café. | Naïve"),
    ("Ça va? Très bien. Über alles.", "Ça va? | Très bien. | Über alles."),
    ("Привет. Как дела?", "Привет. | Как дела?"),
    # unpronounceable text: kept before speech, dropped at the end, never alone
    ("...", ""),
    ("", ""),
    ("   \n ", ""),
    ("?! ... —", ""),
    ("🎉", ""),
    ("Hello. :)", "Hello."),
    ("Great job! 🎉", "Great job!"),
    ("Hello. ... World.", "Hello. | ... World."),
    ("... Hello.", "... Hello."),
    ("$", "$"),
    ("42", "42"),
    ("Great 🎉 job.", "Great 🎉 job."),
]


def chunks_of(expected: str) -> list[str]:
    """Expected chunks written as one string, separated by " | "."""
    return expected.split(" | ") if expected else []


@pytest.mark.parametrize(("text", "expected"), SENTENCE_CASES)
def test_sentences(text: str, expected: str) -> None:
    assert split_text(text) == chunks_of(expected)


@pytest.mark.parametrize(("text", "expected"), SENTENCE_CASES)
def test_sentences_streamed_one_char_at_a_time(text: str, expected: str) -> None:
    assert stream(text, list(range(1, len(text)))) == chunks_of(expected)


# -- the first chunk --------------------------------------------------------------------

FIRST_CASES: list[str] = [  # the expected chunks, joined by " | "; the text joins them by " "
    # short first sentence: whole, even below first_min_chars or with commas
    "Sure. | " + LONG_COMMA,
    "Yes, of course, I can do that for you today.",
    # long first sentence: cut at a clause boundary in the window
    "When we finally reached the top of the hill, | " + LONG_COMMA[45:],
    # commas before first_min_chars are too early
    "Well, if you ask me about the best restaurants | in this town I would pick that one.",
    # dashes are clause boundaries and stay with the text before them
    "I waited for the bus for a very long time — | and then it finally came around here.",
    "I waited for the bus for a very long time - | and then it finally came around here.",
    # no clause boundary: a word cut, before a conjunction when one is near the target
    "The weather was really nice on the first day | so we went out to the lake to swim.",
    # ... else before a phrase start, never after a function word
    "The old lighthouse keeper walked slowly along | " + LONG_NO_COMMA[46:],
    # a long unterminated first sentence is split too
    "we kept walking along the river bank | for hours and hours because nobody would stop",
    # later sentences are never split for latency, however long (up to max_chunk_chars)
    "Hi there. | " + LONG_NO_COMMA,
]


@pytest.mark.parametrize("expected", FIRST_CASES)
def test_first_chunk(expected: str) -> None:
    assert split_text(expected.replace(" | ", " ")) == chunks_of(expected)


@pytest.mark.parametrize(
    "text",
    [LONG_COMMA, LONG_NO_COMMA, "and " * 40, "a, " * 60, "x " * 90, "one two three " * 12],
)
def test_first_chunk_of_long_sentence_lies_in_window(text: str) -> None:
    config = ChunkingConfig()
    first = split_text(text, config)[0]
    assert config.first_min_chars <= len(first) <= config.first_max_chars


def test_first_chunk_is_about_a_third_of_long_sentences() -> None:
    """The latency goal: the first chunk at most ~40% of a 120+ character sentence."""
    for text in (LONG_COMMA, LONG_NO_COMMA):
        assert len(text) >= 120
        assert len(split_text(text)[0]) <= 0.4 * len(text)


@pytest.mark.parametrize(
    ("text", "expected_first"),
    [
        # the only spaces in the window follow "Dr." or lie between digit groups
        ("Aaaaaaaa Dr. Bbbbbbbbbbbb ccc.", "Aaaaaaaa"),
        ("Aaaaaaaaa 10 000 Bbbbbbbbb.", "Aaaaaaaaa"),
        ("Aaaaaaa Mr. Bbbbbbbbbb and c.", "Aaaaaaa Mr. Bbbbbbbbbb"),
    ],
)
def test_word_cut_skips_abbreviations_and_numbers(text: str, expected_first: str) -> None:
    config = ChunkingConfig(first_min_chars=5, first_max_chars=22, max_chunk_chars=100)
    chunks = split_text(text, config)
    assert chunks[0] == expected_first
    assert " ".join(chunks) == text


def test_first_chunk_without_any_boundary_falls_back_to_the_sentence() -> None:
    url = "https://example.com/" + "a" * 60
    assert split_text(f"See {url} now. Ok.") == [f"See {url} now.", "Ok."]


def test_first_rule_applies_again_after_finish() -> None:
    chunker = TextChunker()
    assert chunker.feed(LONG_COMMA) == ["When we finally reached the top of the hill,"]
    assert len(chunker.finish()) == 1
    assert chunker.pending == ""
    assert chunker.feed(LONG_COMMA)[0] == "When we finally reached the top of the hill,"


# -- the max_chunk_chars bound ----------------------------------------------------------


def test_oversize_sentence_splits_at_latest_clause() -> None:
    clause = "we walked along the quiet river for a long while, "
    text = "Hi. " + clause * 10 + "end."
    chunks = split_text(text)
    assert chunks[0] == "Hi."
    assert all(len(c) <= 300 for c in chunks)
    assert all(c.endswith(",") for c in chunks[1:-1])
    assert len(chunks[1]) > 250  # as late as possible, not at the first comma
    assert " ".join(chunks) == normalize_whitespace(text)


def test_oversize_sentence_without_clauses_splits_at_words() -> None:
    text = "Hi. " + "word " * 150 + "end."
    chunks = split_text(text)
    assert [len(c) for c in chunks] == [3, 299, 299, 154]  # as late as possible
    assert all(set(c.split()) <= {"word", "end."} for c in chunks[1:])
    assert " ".join(chunks) == normalize_whitespace(text)


def test_oversize_prefers_cut_before_conjunction() -> None:
    text = "Hi. " + "word " * 55 + "and " + "word " * 40 + "end."
    chunks = split_text(text)
    assert chunks[2].startswith("and word")


def test_huge_word_is_cut_hard_at_the_limit() -> None:
    text = "x" * 700
    assert [len(c) for c in split_text(text)] == [300, 300, 100]


def test_long_junk_prefix_is_bounded() -> None:
    text = "-" * 650 + " Hello."
    assert split_text(text) == ["-" * 50 + " Hello."]  # 600 silent characters dropped


# -- streaming --------------------------------------------------------------------------


def test_streaming_emits_as_soon_as_certain() -> None:
    chunker = TextChunker()
    assert chunker.feed("Hel") == []
    assert chunker.feed("lo there. How") == ["Hello there."]
    assert chunker.pending == "How"
    assert chunker.feed(" are you?") == []  # "?" at the end: maybe "?!" follows
    assert chunker.pending == "How are you?"
    assert chunker.finish() == ["How are you?"]


def test_trailing_period_waits_for_next_character() -> None:
    chunker = TextChunker()
    assert chunker.feed("Pi is 3.") == []
    assert chunker.feed("14 today.") == []
    assert chunker.feed(" ") == ["Pi is 3.14 today."]
    assert chunker.pending == ""


def test_abbreviation_at_buffer_end_does_not_split() -> None:
    chunker = TextChunker()
    assert chunker.feed("Ask Dr.") == []
    assert chunker.feed(" Smith now. ") == ["Ask Dr. Smith now."]


def test_long_first_sentence_is_cut_before_it_ends() -> None:
    chunker = TextChunker()
    text = LONG_COMMA[:70]  # no sentence end yet, but already longer than first_max_chars
    assert chunker.feed(text) == ["When we finally reached the top of the hill,"]


def test_word_cut_waits_for_a_possible_conjunction() -> None:
    config = ChunkingConfig(first_min_chars=10, first_max_chars=30, max_chunk_chars=100)
    chunker = TextChunker(config)
    # cuts allowed at 15, 23 and 30; the one at 30 wins only before a conjunction
    assert chunker.feed("Aaaaaaa bbbbbbb ccccccc dddddd wh") == []  # "which"? "whale"?
    assert chunker.feed("ich") == []  # "whichever"?
    assert chunker.feed(" is") == ["Aaaaaaa bbbbbbb ccccccc dddddd"]
    assert chunker.finish() == ["which is"]
    assert split_text("Aaaaaaa bbbbbbb ccccccc dddddd whale is", config)[0] == "Aaaaaaa bbbbbbb"


def test_whitespace_across_feeds_is_normalized() -> None:
    chunker = TextChunker()
    assert chunker.feed("  Hello.") == []
    assert chunker.feed("\n") == ["Hello."]
    assert chunker.feed("  \t") == []
    assert chunker.pending == ""
    assert chunker.feed("World\n\n  again ") == []
    assert chunker.pending == "World again "
    assert chunker.finish() == ["World again"]


def test_finish_on_empty_chunker() -> None:
    chunker = TextChunker()
    assert chunker.finish() == []
    assert chunker.feed("") == []
    assert chunker.finish() == []


# -- properties over many texts ---------------------------------------------------------

_TOKENS = [
    "the", "and", "which", "because", "a", "of", "house", "river", "walked", "slowly",
    "café", "naïve", "Über", "Dr.", "Mr.", "U.S.", "e.g.", "etc.", "J.", "vs.",
    "1,000", "3.14", "10:30", "$4.50", "1.", "42", "—", "-", "🎉", "...", ":)",
    "supercalifragilisticexpialidocious", "x" * 70,
]  # fmt: skip
_ENDS = ["", "", "", "", ",", ";", ":", ".", "!", "?", "?!", "...", "…", '."', ".)", ",'"]
_SPACES = [" ", " ", " ", " ", "  ", "\n", "\n\n", "\t "]


def _random_text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(0, 120)):
        word = rng.choice(_TOKENS) + rng.choice(_ENDS)
        if rng.random() < 0.05:
            word = '"' + word
        words.append(word + rng.choice(_SPACES))
    return rng.choice(["", " ", "\n"]) + "".join(words)


CORPUS = (
    [text for text, _ in SENTENCE_CASES]
    + [c.replace(" | ", " ") for c in FIRST_CASES]
    + [_random_text(random.Random(seed)) for seed in range(150)]
    + ["x" * 700, "-" * 650 + " Hello.", "Hi. " + "word, " * 90 + "end.", "a b " * 200]
)
CONFIGS = [
    ChunkingConfig(),
    ChunkingConfig(first_min_chars=5, first_max_chars=15, max_chunk_chars=40),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "tiny"])
def test_streaming_one_char_at_a_time_matches_split_text(config: ChunkingConfig) -> None:
    for text in CORPUS:
        assert stream(text, list(range(1, len(text))), config) == split_text(text, config), text


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "tiny"])
def test_streaming_random_pieces_matches_split_text(config: ChunkingConfig) -> None:
    rng = random.Random(7)
    for text in CORPUS:
        expected = split_text(text, config)
        for _ in range(3):
            cuts = rng.sample(range(1, max(len(text), 2)), min(rng.randint(1, 12), len(text) // 2))
            assert stream(text, cuts, config) == expected, (text, cuts)


def longest_silent_run(text: str) -> int:
    run = longest = 0
    for ch in text:
        run = 0 if speakable(ch) else run + 1
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "tiny"])
def test_chunks_rebuild_the_normalized_text(config: ChunkingConfig) -> None:
    for text in CORPUS:
        chunks = split_text(text, config)
        joined = " ".join(chunks)
        normalized = normalize_whitespace(text)
        if longest_silent_run(normalized) >= config.max_chunk_chars:
            continue  # such a run is dropped: see test_long_junk_prefix_is_bounded
        if max(map(len, normalized.split()), default=0) > config.max_chunk_chars:
            # a "word" over the limit is cut hard: compare without the spaces
            joined, normalized = joined.replace(" ", ""), normalized.replace(" ", "")
        assert normalized.startswith(joined), text
        assert not speakable(normalized[len(joined) :]), text  # only a silent tail
        for chunk in chunks:
            assert chunk == chunk.strip() and speakable(chunk), (text, chunk)
            assert len(chunk) <= config.max_chunk_chars, (text, chunk)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "tiny"])
def test_first_chunk_never_too_long_when_a_boundary_exists(config: ChunkingConfig) -> None:
    for text in CORPUS:
        chunks = split_text(text, config)
        if not chunks:
            continue
        first = chunks[0]
        allowed = [  # a space between two letters is always an allowed cut
            i
            for i in range(config.first_min_chars, min(config.first_max_chars + 1, len(first) - 1))
            if first[i] == " " and first[i - 1].isalpha() and first[i + 1].isalpha()
        ]
        if allowed:
            assert len(first) <= config.first_max_chars, text
