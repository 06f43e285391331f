"""Word error rate, for benchmarks and tests that check what was recognized.

Both texts are normalized first, so that only words count: lower case, punctuation
dropped (apostrophes inside words kept: "that's"), hyphens split words, fillers
("um", "uh") dropped, and numbers written as digits become words, since Whisper writes
either: "7" -> "seven", "42" -> "forty two", "200" -> "two hundred", "7:30" -> "seven
thirty", "3:00" -> "three o'clock", "50%" -> "fifty percent", and four digits or more
(or a leading zero) are read digit by digit, as codes are ("4729"). Nothing else is
rewritten (no spelling variants, no contractions), so the figure is slightly
pessimistic.

WER = (substitutions + deletions + insertions) / words of the reference, by the
Levenshtein alignment of words. Over a set of utterances, sum the errors and the
reference words (:func:`corpus_wer`) rather than averaging per-utterance rates, so a
short utterance does not weigh as much as a long one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")

_UNITS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_FILLERS = frozenset({"um", "uh", "umm", "hmm", "mm", "er", "erm", "ah"})


def _number_words(digits: str) -> list[str]:
    if len(digits) >= 4 or (len(digits) > 1 and digits[0] == "0"):
        return [_UNITS[int(d)] for d in digits]  # a code: read digit by digit
    value = int(digits)
    if value < 20:
        return [_UNITS[value]]
    if value < 100:
        tens, units = divmod(value, 10)
        return [_TENS[tens - 2]] + ([_UNITS[units]] if units else [])
    hundreds, rest = divmod(value, 100)
    return [_UNITS[hundreds], "hundred"] + (_number_words(str(rest)) if rest else [])


def normalize(text: str) -> list[str]:
    """The words of ``text`` as they are compared."""
    text = text.lower().replace("’", "'").replace("-", " ").replace("%", " percent")
    text = re.sub(r"(\d),(\d)", r"\1\2", text)  # 1,000
    text = re.sub(r"(\d):00\b", r"\1 o'clock", text)
    text = re.sub(r"(\d)[:.](\d)", r"\1 \2", text)  # 7:30, 3.5
    words: list[str] = []
    for token in _TOKEN.findall(text):
        if token.isdigit():
            words.extend(_number_words(token))
        elif token not in _FILLERS:
            words.append(token)
    return words


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, words in the reference), after :func:`normalize`."""
    ref = normalize(reference)
    hyp = normalize(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, other in enumerate(hyp, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (word != other),  # substitution or match
            )
        previous = current
    return previous[-1], len(ref)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (0 is perfect; may pass
    1 with insertions). An empty reference gives 0 for an empty hypothesis, else 1."""
    errors, words = word_errors(reference, hypothesis)
    if words == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / words


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """WER over ``(reference, hypothesis)`` pairs: total errors / total reference words."""
    errors = words = 0
    for reference, hypothesis in pairs:
        e, n = word_errors(reference, hypothesis)
        errors += e
        words += n
    if words == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / words
