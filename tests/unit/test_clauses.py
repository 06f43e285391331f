"""The clause cutter: where replies are cut, and that token splits never change it."""

from __future__ import annotations

import random
import re

import pytest

from duplexvoice.replies.clauses import (
    ClauseCutter,
    ClauseRules,
    count_words,
    cut_clauses,
)
from duplexvoice.text import speakable

pytestmark = pytest.mark.unit


def stream(text: str, cuts: list[int], rules: ClauseRules | None = None) -> list[str]:
    """Push ``text`` cut at the given offsets, then flush."""
    cutter = ClauseCutter(rules)
    out: list[str] = []
    start = 0
    for end in [*sorted(cuts), len(text)]:
        out += cutter.push(text[start:end])
        start = end
    rest = cutter.flush()
    return [*out, rest] if rest else out


# -- where clauses end ----------------------------------------------------------------

CASES = [
    # sentence ends always cut, whatever the length
    ("Yes. I think so.", ["Yes.", "I think so."]),
    ("Hi! What? Really...", ["Hi!", "What?", "Really..."]),
    ("Wait… what happened?", ["Wait…", "what happened?"]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("(It works.) Good.", ["(It works.)", "Good."]),
    # first clause: a comma cuts after 3 words; later clauses need 6
    ("Sure, I can do that.", ["Sure, I can do that."]),
    (
        "Sure thing, my friend, I can help with that today, and tomorrow, too.",
        ["Sure thing, my friend,", "I can help with that today,", "and tomorrow, too."],
    ),
    (
        "Well, first of all, you need to know that, in fact, it works.",
        ["Well, first of all,", "you need to know that, in fact,", "it works."],
    ),
    ("One; two three four; five.", ["One; two three four;", "five."]),
    ("Here is the plan: we go now.", ["Here is the plan:", "we go now."]),
    # dashes
    ("The thing — which I said — is done.", ["The thing — which I said —", "is done."]),
    ("It was great—really great—for us.", ["It was great—", "really great—for us."]),
    ("It was good - really good - today.", ["It was good -", "really good - today."]),
    ("A well-known fact, a -5 value, a co-op.", ["A well-known fact,", "a -5 value, a co-op."]),
    ("Pages 10–20 are yours.", ["Pages 10–20 are yours."]),
    # numbers never cut
    ("It costs 3.5 dollars. Then 1,000 more.", ["It costs 3.5 dollars.", "Then 1,000 more."]),
    ("Meet me at 10:30, or at 11:45 tonight.", ["Meet me at 10:30,", "or at 11:45 tonight."]),
    ("Pi is 3.14159 and e is 2.718.", ["Pi is 3.14159 and e is 2.718."]),
    ("Version 2.0.1 is out.", ["Version 2.0.1 is out."]),
    ("I am 42. You are 7.", ["I am 42.", "You are 7."]),
    # abbreviations, acronyms, initials, list numbers
    ("Mr. Smith met Dr. Jones at St. Mary's.", ["Mr. Smith met Dr. Jones at St. Mary's."]),
    ("Fruit, e.g. apples, i.e. food.", ["Fruit, e.g. apples,", "i.e. food."]),
    ("I live in the U.S. and like it.", ["I live in the U.S. and like it."]),
    ("J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
    ("No. I don't think so.", ["No.", "I don't think so."]),
    ("So did I. Then we left, etc. Fine.", ["So did I.", "Then we left, etc.", "Fine."]),
    ("Pears, apples, etc. are fruit.", ["Pears, apples, etc. are fruit."]),
    ("She has a Ph.D. She teaches.", ["She has a Ph.D.", "She teaches."]),
    ("1. Buy milk. 2. Go home.", ["1. Buy milk.", "2. Go home."]),
    ("It is 5 p.m. now.", ["It is 5 p.m. now."]),
    ("Go to example.com today.", ["Go to example.com today."]),
    # line breaks always cut; markdown marks are not read aloud
    ("Here you go:\n- apples\n- pears", ["Here you go:", "- apples", "- pears"]),
    ("1. Apples\n2. Pears\n\n3. Plums", ["1. Apples", "2. Pears", "3. Plums"]),
    ("**Bold** and `code` here.", ["Bold and code here."]),
    ("# Title\n## Sub title\nText # one.", ["Title", "Sub title", "Text # one."]),
    # whitespace normalized
    ("  Lots \t of   space.  \r\n  Yes.  ", ["Lots of space.", "Yes."]),
    # nothing speakable
    ("", []),
    ("   ", []),
    ("... -- **", []),
    ("Hello. ...", ["Hello."]),
    ("... Hello there.", ["... Hello there."]),
    ("— Right, so here it is.", ["— Right, so here it is."]),
    # no end punctuation
    ("no punctuation at all", ["no punctuation at all"]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_clauses(text: str, expected: list[str]) -> None:
    assert cut_clauses(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_every_two_piece_split_gives_the_same_clauses(text: str, expected: list[str]) -> None:
    for cut in range(len(text) + 1):
        assert stream(text, [cut]) == expected, f"split at {cut}: {text[:cut]!r}|"


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_character_by_character(text: str, expected: list[str]) -> None:
    assert stream(text, list(range(1, len(text)))) == expected


def test_first_clause_is_cut_sooner_than_later_ones() -> None:
    text = "Yes, of course, it is, my friend, a very good day, indeed, for all of us."
    assert cut_clauses(text) == [
        "Yes, of course,",
        "it is, my friend, a very good day,",
        "indeed, for all of us.",
    ]
    rules = ClauseRules(first_min_words=1, min_words=1)
    assert cut_clauses("Yes, of course, it is.", rules) == ["Yes,", "of course,", "it is."]
    rules = ClauseRules(first_min_words=50, min_words=50)
    assert cut_clauses(text, rules) == [text]


def test_clause_without_cut_is_forced_at_a_word_boundary() -> None:
    rules = ClauseRules(max_chars=40)
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi"
    words = text.split(" ")
    clauses = cut_clauses(text, rules)
    assert " ".join(clauses) == text
    assert all(len(c) <= 40 for c in clauses)
    assert [w for c in clauses for w in c.split()] == words  # whole words only
    assert clauses[0] == "alpha beta gamma delta epsilon zeta eta"


def test_a_long_first_sentence_is_cut_sooner_than_later_ones() -> None:
    sentence = "the old lighthouse keeper walked slowly along the rocky shore every " * 4
    clauses = cut_clauses(sentence + "end.")
    assert len(clauses[0]) <= 80 < len(clauses[1]) <= 160
    assert " ".join(clauses) == (sentence + "end.").replace("  ", " ")
    rules = ClauseRules(first_max_chars=160)
    assert len(cut_clauses(sentence, rules)[0]) > 80
    assert ClauseRules(max_chars=50).first_limit == 50


def test_a_single_huge_word_is_cut_hard() -> None:
    rules = ClauseRules(max_chars=40)
    clauses = cut_clauses("x" * 100, rules)
    assert clauses == ["x" * 40, "x" * 40, "x" * 20]


def test_a_long_sentence_with_a_late_end_is_forced_before_it() -> None:
    rules = ClauseRules(max_chars=32)
    text = "one two three four five six seven eight nine."
    assert cut_clauses(text, rules) == ["one two three four five six", "seven eight nine."]
    assert stream(text, list(range(1, len(text))), rules) == cut_clauses(text, rules)


def test_short_comma_clauses_do_not_cut_early_when_over_length_either() -> None:
    # A comma ending a clause too long for max_chars is not a cut there: forced sooner.
    rules = ClauseRules(max_chars=32, first_min_words=1)
    text = "aaaa bbbb cccc dddd eeee ffff gggg, hhhh."
    assert cut_clauses(text, rules) == ["aaaa bbbb cccc dddd eeee ffff", "gggg, hhhh."]


# -- streaming --------------------------------------------------------------------------

CORPUS = [text for text, _ in CASES if len(text) > 2] + [
    "Sure, I can help with that. First, open the settings menu on your phone, then tap "
    "privacy. After that, scroll down — all the way — and choose \"Location\"; it costs "
    "$3.50, e.g. about 3.5 U.S. dollars, at 10:30 p.m. on Jan. 5th, 2024!",
    "Dr. J. Smith (Ph.D.) said: \"1,000,000 people?!\" No... it's 1.5 million — maybe.",
    "  \n\n# Heading\n\n* one, two, three, four, five, six, seven\n* eight.\n\n**Done**!",
    "word " * 90,
    "x" * 400 + " tail.",
    "Tiny. " * 20,
]


@pytest.mark.parametrize("text", CORPUS)
def test_random_token_streams_give_the_same_clauses(text: str) -> None:
    rng = random.Random(text)
    expected = cut_clauses(text)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, max(2, len(text))), k=min(len(text) - 1, 8)))
        assert stream(text, cuts) == expected, cuts


def test_three_piece_splits_of_a_tricky_text() -> None:
    text = 'Mr. A. said: "3.5, no—2.0!" Then, U.S. e.g.\n# x... ok'
    expected = cut_clauses(text)
    for a in range(len(text) + 1):
        for b in range(a, len(text) + 1):
            assert stream(text, [a, b]) == expected, (a, b)


def test_push_returns_clauses_as_soon_as_they_are_certain() -> None:
    cutter = ClauseCutter()
    assert cutter.push("Hello there") == []
    assert cutter.push(".") == []  # "." may still be "..." or the start of ".com"
    assert cutter.push(" How") == ["Hello there."]
    assert cutter.push(" are you, my friend") == []
    assert cutter.push(",") == []  # the first clause is done; a comma needs a space
    assert cutter.push(" ok") == []  # 8 words; later clauses need 6 - one clause here
    assert cutter.pending == "How are you, my friend, ok"
    assert cutter.flush() == "How are you, my friend, ok"
    assert cutter.pending == ""


def test_first_clause_comma_arrives_alone() -> None:
    cutter = ClauseCutter()
    assert cutter.push("Of course I can") == []
    assert cutter.push(", ") == ["Of course I can,"]


def test_flush_resets_for_the_next_reply() -> None:
    cutter = ClauseCutter()
    cutter.push("Well then, ")
    assert cutter.flush() == "Well then,"
    # The next reply's first clause has the first-clause rule again and a line start.
    assert cutter.push("# Okay then, my friend, you") == ["Okay then, my friend,"]


def test_unpronounceable_junk_is_bounded() -> None:
    cutter = ClauseCutter()
    for _ in range(1000):
        assert cutter.push("-- ... ~ ") == []
        assert len(cutter.pending) <= 16
    assert cutter.push("Hello.") == []
    assert cutter.flush().endswith("Hello.")


def test_pending_text_is_bounded_by_max_chars() -> None:
    cutter = ClauseCutter(ClauseRules(max_chars=50))
    for _ in range(500):
        for clause in cutter.push("lorem ipsum "):
            assert len(clause) <= 50
        assert len(cutter.pending) <= 50 + len("lorem ipsum ")


# -- invariants over generated text ------------------------------------------------------

VOCAB = [
    "the", "cat", "sat", "on", "a", "mat", "Mr.", "Dr.", "U.S.", "e.g.", "3.5", "1,000",
    "10:30", "well-known", "—", "-", "J.", "I", "don't", "$5", "50%", "...", "…", "(yes)",
    '"quote"', "it's", "1.", "2.", "co-op", "example.com", "#1", "**bold**",
]  # fmt: skip
PUNCT = ["", "", "", "", ",", ".", "!", "?", ";", ":", "—", "...", "\n", ".\n\n"]


def generated(rng: random.Random, words: int) -> str:
    out = []
    for _ in range(words):
        out.append(rng.choice(VOCAB) + rng.choice(PUNCT))
    return " ".join(out)


def normalized(text: str) -> str:
    text = text.replace("*", "").replace("`", "")
    text = re.sub(r"(^|\n)[ \t]*#+", r"\1", text)
    return " ".join(text.split())


@pytest.mark.parametrize("seed", range(40))
def test_invariants_on_generated_text(seed: int) -> None:
    rng = random.Random(seed)
    text = generated(rng, rng.randint(1, 80))
    rules = ClauseRules(first_min_words=rng.randint(1, 4), min_words=rng.randint(1, 10),
                        max_chars=rng.choice([32, 60, 160]))
    clauses = cut_clauses(text, rules)
    for clause in clauses:
        assert clause == clause.strip() and clause
        assert "\n" not in clause and "  " not in clause
        assert speakable(clause)
        assert len(clause) <= rules.max_chars
    # Nothing is lost but unpronounceable text (only ever at the very end).
    joined = " ".join(clauses)
    assert normalized(text).startswith(joined)
    assert not speakable(normalized(text)[len(joined):])
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, 12)))
    assert stream(text, cuts, rules) == clauses


UNCUTTABLE = ["Mr.", "Dr.", "U.S.", "e.g.", "J.", "3.5", "1,000", "10:30", "2.0.1", "p.m."]


@pytest.mark.parametrize("seed", range(20))
def test_numbers_and_abbreviations_are_never_cut_after_or_inside(seed: int) -> None:
    rng = random.Random(seed)
    words = []
    for _ in range(60):
        if rng.random() < 0.4:
            words.append(rng.choice(UNCUTTABLE))  # followed by a space and a word
        else:
            words.append(rng.choice(VOCAB[:6]) + rng.choice(["", "", ",", ";", ".", "!"]))
    words.append("end.")
    text = " ".join(words)
    clauses = cut_clauses(text, ClauseRules(first_min_words=1, min_words=1))
    assert " ".join(clauses) == text
    for clause in clauses:
        assert clause.split()[-1] not in UNCUTTABLE, clause


# -- helpers and configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [("", 0), ("one", 1), ("3.5 and 1,000", 3), ("don't stop", 2), ("U.S. e.g.", 2),
     ("— , ...", 0), ("well-known co-op", 2)],
)
def test_count_words(text: str, words: int) -> None:
    assert count_words(text) == words


@pytest.mark.parametrize(
    "fields",
    [{"first_min_words": 0}, {"min_words": 0}, {"max_chars": 31},
     {"first_max_chars": 31}, {"first_max_chars": 161}],
)
def test_bad_rules_are_refused(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ClauseRules(**fields)
