"""The shared text rules: is there anything to say, and where a sentence ends."""

from __future__ import annotations

import pytest

from duplexvoice.text import WAIT, Wait, first_speakable, sentence_end, speakable

pytestmark = pytest.mark.unit


# -- speakable ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi", True), ("a", True), ("42", True), ("7", True), ("é", True), ("été", True),
        ("日本", True), ("½", True), ("$", True), ("%", True), ("&", True), ("#1", True),
        ("...", False), ("?!", False), ("— -", False), ("-- !", False), (":)", False),
        ("\U0001f600", False), ("🎉🎉", False), ("", False), (" \t\n", False),
    ],
)  # fmt: skip
def test_speakable(text: str, expected: bool) -> None:
    assert speakable(text) is expected


@pytest.mark.parametrize(
    ("text", "index"),
    [("Hi", 0), ("... Hi", 4), ("🎉 $5", 2), ("— x", 2), ("", None), ("?!", None)],
)
def test_first_speakable(text: str, index: int | None) -> None:
    assert first_speakable(text) == index


# -- sentence ends -------------------------------------------------------------------------


def decisions(t: str, final: bool) -> list[tuple[int, int | Wait | None]]:
    """Each run of terminals in ``t`` and its answer, the piece being cut starting
    after each end (at its first speakable character), as the cutters do."""
    out: list[tuple[int, int | Wait | None]] = []
    p = first_speakable(t)
    i = p or 0
    while p is not None and i < len(t):
        if t[i] not in ".!?…‽":
            i += 1
            continue
        end, resume = sentence_end(t, i, p, final)
        out.append((i, end))
        i = resume
        if isinstance(end, int):
            following = first_speakable(t[end:])
            p = None if following is None else end + following
            i = max(i, p or 0)
    return out


def ends(text: str) -> list[str]:
    """The sentences of a complete ``text``."""
    pieces, start = [], 0
    for _, end in decisions(text, final=True):
        if isinstance(end, int):
            pieces.append(text[start:end].strip())
            start = end
    rest = text[start:].strip()
    return pieces + ([rest] if rest else [])


SENTENCES = [
    ("Hello there. How are you?", ["Hello there.", "How are you?"]),
    ("Stop! Now?! Wait... what… Yes‽", ["Stop!", "Now?!", "Wait...", "what…", "Yes‽"]),
    ('He said "stop." Then (it ended.) Ok.', ['He said "stop."', "Then (it ended.)", "Ok."]),
    # no whitespace after the terminals: not an end
    ("Pi is 3.14 at example.com today. Ok.", ["Pi is 3.14 at example.com today.", "Ok."]),
    ("Hello.World is one.", ["Hello.World is one."]),
    # abbreviations before a name or a number never end a sentence
    ("Mr. Li met Dr. Wu on Main St. today.", ["Mr. Li met Dr. Wu on Main St. today."]),
    ("Cats vs. dogs, see fig. 2 and vol. 3.", ["Cats vs. dogs, see fig. 2 and vol. 3."]),
    ("Go on 5th Ave. now.", ["Go on 5th Ave. now."]),
    # dotted acronyms and capital initials; "I" is the pronoun
    ("The U.S. economy, e.g. jobs, grew.", ["The U.S. economy, e.g. jobs, grew."]),
    ("We met at 9 a.m. sharp.", ["We met at 9 a.m. sharp."]),
    ("J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
    ("So did I. Then we left.", ["So did I.", "Then we left."]),
    # "etc." and "Ph.D." go on only before a lower-case word
    ("Apples, pears, etc. are fruit.", ["Apples, pears, etc. are fruit."]),
    ("Apples, pears, etc. Fine.", ["Apples, pears, etc.", "Fine."]),
    ('Apples, etc. "Fine."', ["Apples, etc.", '"Fine."']),
    ("She has a Ph.D. in physics.", ["She has a Ph.D. in physics."]),
    ("She has a Ph.D. She teaches.", ["She has a Ph.D.", "She teaches."]),
    ("Apples, pears, etc.", ["Apples, pears, etc."]),
    # words that usually end a sentence are no abbreviations
    ("No. I don't think so.", ["No.", "I don't think so."]),
    # a list number only at the start of the piece being cut
    ("1. Go home. 2. Sleep.", ["1. Go home.", "2. Sleep."]),
    ('"1. Go home.', ['"1. Go home.']),
    ("I am 42. You are 7.", ["I am 42.", "You are 7."]),
    ("I counted to 10. Then stopped.", ["I counted to 10.", "Then stopped."]),
    # newlines are whitespace too
    ("Mr.\nSmith came.\nYes.", ["Mr.\nSmith came.", "Yes."]),
]


@pytest.mark.parametrize(("text", "expected"), SENTENCES)
def test_sentence_ends(text: str, expected: list[str]) -> None:
    assert ends(text) == expected


@pytest.mark.parametrize("text", [text for text, _ in SENTENCES])
def test_a_prefix_decides_as_the_whole_text_or_waits(text: str) -> None:
    whole = dict(decisions(text, final=True))
    for n in range(1, len(text)):
        found = decisions(text[:n], final=False)
        for run, (i, answer) in enumerate(found):
            if isinstance(answer, Wait):
                assert run == len(found) - 1, (text[:n], i)  # only the last run waits
            else:
                assert answer == whole[i], (text[:n], i)


@pytest.mark.parametrize(
    ("text", "final", "expected"),
    [
        ("Hello.", False, WAIT),  # "." may become "..", or "3." "3.5"
        ("Hello.", True, 6),
        ("Hello. ", False, 6),
        ('Hello."', False, WAIT),  # more closers may come
        ("Mr.", True, None),
        ("etc. ", False, WAIT),  # the next letter tells
        ("etc. ", True, 4),
        ("etc. a", False, None),
        ("etc. A", False, 4),
        ("etc.,", False, None),
    ],
)
def test_what_the_answer_waits_for(text: str, final: bool, expected: int | Wait | None) -> None:
    i = next(i for i, ch in enumerate(text) if ch == ".")
    end, resume = sentence_end(text, i, 0, final)
    assert end == expected
    assert resume == len(text.rstrip(" ,aA"))
