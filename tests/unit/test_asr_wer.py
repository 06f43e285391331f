"""Word error rate: normalization, alignment, corpus totals."""

from __future__ import annotations

import pytest

from duplexvoice.speech.wer import corpus_wer, normalize, wer, word_errors

pytestmark = pytest.mark.unit


def test_normalize_keeps_only_words() -> None:
    assert normalize("Could you book a table, please?") == [
        "could", "you", "book", "a", "table", "please"
    ]
    assert normalize("That's it — well-known!") == ["that's", "it", "well", "known"]
    assert normalize("That’s") == ["that's"]
    assert normalize("  ...  ") == []


def test_numbers_become_words_as_they_are_said() -> None:
    assert normalize("at 7 for 2") == ["at", "seven", "for", "two"]
    assert normalize("14 and 42 and 90") == ["fourteen", "and", "forty", "two", "and", "ninety"]
    assert normalize("about 200 or 105") == [
        "about", "two", "hundred", "or", "one", "hundred", "five"]
    assert normalize("code 4729, room 07") == [
        "code", "four", "seven", "two", "nine", "room", "zero", "seven"]
    assert normalize("at 7:30 or 3:00, 50%") == [
        "at", "seven", "thirty", "or", "three", "o'clock", "fifty", "percent"]
    assert wer("a table for two at seven", "A table for 2 at 7.") == 0.0


def test_fillers_do_not_count() -> None:
    assert wer("the meeting starts at um three", "The meeting starts at 3.") == 0.0


def test_substitution_deletion_insertion_each_count_one() -> None:
    ref = "turn off the lights"
    assert word_errors(ref, "turn off the lights") == (0, 4)
    assert word_errors(ref, "turn on the lights") == (1, 4)
    assert word_errors(ref, "turn the lights") == (1, 4)
    assert word_errors(ref, "please turn off the lights") == (1, 4)
    assert wer(ref, "") == 1.0
    assert wer(ref, "turn turn off off the the lights lights") == 1.0
    assert wer(ref, "a b c d e f g h") == 2.0  # insertions may pass 1


def test_empty_reference() -> None:
    assert wer("", "") == 0.0
    assert wer("...", "hello") == 1.0


def test_corpus_wer_weighs_by_words() -> None:
    pairs = [("yes", "no"), ("one two three four five six seven eight nine", "one two "
             "three four five six seven eight nine")]
    assert corpus_wer(pairs) == pytest.approx(1 / 10)
    assert corpus_wer([]) == 0.0
