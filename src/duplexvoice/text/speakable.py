"""Is there anything to say: one test for the whole system.

A voice says something for a letter, a digit, or one of a few symbols it reads aloud
("$" is "dollar", "%" "percent", "&" "and"); punctuation, spaces and emoji alone make
no sound. The orchestrator refuses a client's text with nothing to say, and the
cutters never hand such a piece to a voice.
"""

from __future__ import annotations

from typing import Final

SYMBOLS: Final = frozenset("$€£¥%&@+=#")


def first_speakable(text: str) -> int | None:
    """Index of the first character of ``text`` a voice says something for, or None."""
    for i, ch in enumerate(text):
        if ch.isalnum() or ch in SYMBOLS:
            return i
    return None


def speakable(text: str) -> bool:
    """True if a voice would say something for ``text``."""
    return first_speakable(text) is not None
