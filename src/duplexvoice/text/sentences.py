"""Where a sentence ends: the rule the clause cutter and the worker's chunker share.

On normalized text (each whitespace run one space, or one newline), a sentence ends
after a run of ``. ! ? … ‽`` plus closing quotes/brackets, followed by whitespace or
the end of the text. "3.5" and "example.com" hold no whitespace after the "." and
never end one. A lone "." does not end a sentence after:

- an abbreviation that stands before a name or a number ("Mr.", "St.", "vs.", "fig.");
- a dotted acronym ("U.S.", "e.g.", "p.m.") or a capital initial ("J."; not "I",
  far more often the pronoun ending a sentence: "So did I.");
- a one- or two-digit list number at the start of the piece being cut ("1.");
- "etc." or "Ph.D." followed by a lower-case letter ("pears, etc. are fruit"). They
  end many sentences too ("pears, etc. Fine."), so only the next word tells; that
  costs a wait of one character after the space.

Words that usually end a sentence when followed by a dot ("no", "inc") are not
abbreviations here: a missed cut costs latency, a wrong one prosody.

Streaming: the answer depends only on the text up to the character after the
whitespace; until that has arrived it is ``WAIT``, so any split of a stream gives the
same sentences as the whole text.
"""

from __future__ import annotations

import re
from typing import Final

TERMINALS: Final = frozenset(".!?…‽")
CLOSERS: Final = frozenset("\"'”’»›)]}")
OPENERS: Final = "\"'“‘«‹([{"
SPACES: Final = frozenset(" \n")  # whitespace in normalized text
# Lower-case, without the final dot: never the end of a sentence.
_ABBREVIATIONS: Final = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "st", "sr", "jr", "mt", "ft", "rev",
        "gen", "col", "lt", "sgt", "capt", "hon", "vs", "approx", "cf", "al", "fig",
        "nos", "vol", "pp", "dept", "ave", "blvd",
    }
)  # fmt: skip
# ...the end of a sentence unless a lower-case word follows.
_ENDS_UNLESS_LOWER: Final = frozenset({"etc", "ph.d"})
_DOTTED_ACRONYM: Final = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")


class Wait:
    """Marker: whether there is a cut here depends on text not received yet."""


WAIT: Final = Wait()


def sentence_end(t: str, i: int, p: int, final: bool) -> tuple[int | Wait | None, int]:
    """Whether the run of terminals at ``t[i]`` ends a sentence, and where scanning resumes.

    Returns (the sentence's end, exclusive, after any closers; or None: no end here;
    or ``WAIT``) and the index after the run and its closers. ``p`` is where the piece
    being cut starts (its first speakable character); ``final``: ``t`` is complete.
    """
    n = len(t)
    j = i
    while j < n and t[j] in TERMINALS:
        j += 1
    k = j
    while k < n and t[k] in CLOSERS:
        k += 1
    if j == n and not final:
        return WAIT, k  # more terminals may come ("." then "..")
    if j - i == 1 and t[i] == ".":
        goes_on = _period_goes_on(t, i, k, p, final)
        if goes_on is not False:
            return (WAIT if isinstance(goes_on, Wait) else None), k
    if k == n:
        return (k if final else WAIT), k
    return (k if t[k] in SPACES else None), k


def _period_goes_on(t: str, i: int, k: int, p: int, final: bool) -> bool | Wait:
    """True if the lone "." at ``i`` (closers up to ``k``) does not end the sentence."""
    start = max(t.rfind(" ", 0, i), t.rfind("\n", 0, i)) + 1
    token = t[start:i].lstrip(OPENERS)
    if not token:
        return False
    low = token.lower()
    if (
        low in _ABBREVIATIONS
        or (len(token) == 1 and token.isalpha() and token.isupper() and token != "I")
        or _DOTTED_ACRONYM.fullmatch(token) is not None
        or (token.isdigit() and len(token) <= 2 and i - len(token) == p)
    ):
        return True
    if low not in _ENDS_UNLESS_LOWER:
        return False
    if k < len(t) and t[k] not in SPACES:
        return False  # no end anyway: nothing to wait for
    if k + 1 < len(t):
        return t[k + 1].islower()
    return False if final else WAIT
