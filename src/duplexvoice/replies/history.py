"""A session's conversation history, and what the user heard of an interrupted reply.

Pure: no I/O, no clock. One ``History`` per session (never shared: one user's words
must not reach another's model).

Decisions:

- Turns get stable indices (0, 1, 2, ... in the order added) that survive the oldest
  turns being dropped, so ``truncate_assistant(index, ...)`` names the right turn
  even after the history was bounded meanwhile; a dropped index is a no-op.
- Bounded when a turn is added: at most ``max_turns`` turns and ``max_chars``
  characters of turn text (the system prompt is not counted and always sent);
  the oldest turns go first, then any assistant turn left at the start (chat
  templates expect the first turn after the system prompt to be the user's). The
  newest turn is always kept, cut to ``max_chars`` if it alone is longer.
- An interrupted assistant turn is replaced by what the user heard plus "…": the
  model then sees where it was cut off (and the default system prompt tells it what
  "…" means). Nothing heard becomes "…" alone, so user and assistant turns still
  alternate; ``messages`` also merges consecutive turns of one role (a reply that
  failed before saying anything leaves two user turns in a row), because several
  chat templates reject two messages of one role in a row.
- ``heard_prefix`` estimates from playout time how much of a reply was heard:
  proportionally by characters over the audio synthesized for that text when its
  duration is known, else at a speech rate; then cut at the nearest word boundary.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

Role = Literal["user", "assistant"]

CUT_MARK: Final = "…"
DEFAULT_CHARS_PER_SECOND: Final = 15.0  # ~150 words a minute, a typical TTS pace
_TERMINALS: Final = ".!?…"


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str
    cut_off: bool = False  # an assistant turn the user interrupted


class History:
    """The turns of one conversation, bounded; see the module docstring."""

    def __init__(self, max_turns: int = 20, max_chars: int = 8000) -> None:
        if max_turns < 2:
            raise ValueError("max_turns must be at least 2 (a question and its answer)")
        if max_chars < 100:
            raise ValueError("max_chars must be at least 100")
        self.max_turns = max_turns
        self.max_chars = max_chars
        self._turns: deque[Turn] = deque()
        self._first_index = 0  # index of _turns[0]
        self._chars = 0

    @property
    def turns(self) -> tuple[Turn, ...]:
        """The turns kept, oldest first."""
        return tuple(self._turns)

    @property
    def next_index(self) -> int:
        """The index the next turn added will get."""
        return self._first_index + len(self._turns)

    def turn(self, index: int) -> Turn | None:
        """The turn with ``index``, or None if it was dropped."""
        self._check_issued(index)
        if index < self._first_index:
            return None
        return self._turns[index - self._first_index]

    def add_user(self, text: str) -> int:
        """Add what the user said; return its turn index."""
        return self._add(Turn("user", self._clean(text)))

    def add_assistant(self, text: str) -> int:
        """Add what the assistant said (or produced before it was stopped); its index."""
        return self._add(Turn("assistant", self._clean(text)))

    def truncate_assistant(self, index: int, heard: str) -> bool:
        """Replace assistant turn ``index`` by ``heard`` (what the user heard of it),
        marked cut off. Returns False if nothing changed: the turn was dropped
        already, or ``heard`` is all of it (the user interrupted after the end).
        """
        turn = self.turn(index)
        if turn is None:
            return False
        if turn.role != "assistant":
            raise ValueError(f"turn {index} is the user's, not the assistant's")
        heard = " ".join(heard.split())[: len(turn.text)]  # never longer than what was said
        if turn.cut_off or heard == turn.text:
            return False
        text = _cut_text(heard)
        self._turns[index - self._first_index] = Turn("assistant", text, cut_off=True)
        self._chars += len(text) - len(turn.text)
        return True

    def retract(self, index: int) -> None:
        """Forget turn ``index`` and every later one: an exchange nobody heard (a
        speculative reply dropped because the user went on). Their indices are given
        out again."""
        self._check_issued(index)
        keep = max(0, index - self._first_index)
        while len(self._turns) > keep:
            self._chars -= len(self._turns.pop().text)

    def messages(self, system_prompt: str = "", *, cut_marks: bool = True
                 ) -> list[dict[str, str]]:
        """The history in chat-completions format, the system prompt first (consecutive
        turns of one role joined). Without ``cut_marks`` an interrupted reply is only
        what was heard, with no "…", and one not heard at all is left out: a small
        model imitates the marks (it answered "…" after a few, bench/conversation.py)."""
        out: list[dict[str, str]] = []
        if system_prompt:
            out.append({"role": "system", "content": system_prompt})
        for turn in self._turns:
            if not cut_marks and turn.role == "assistant":
                text = turn.text.removesuffix(CUT_MARK).rstrip()
                if not text:
                    continue
                turn = Turn(turn.role, text)
            if len(out) > 0 and out[-1]["role"] == turn.role:
                out[-1] = {"role": turn.role, "content": out[-1]["content"] + "\n" + turn.text}
            else:
                out.append({"role": turn.role, "content": turn.text})
        return out

    def clear(self) -> None:
        """Forget every turn (indices keep counting up)."""
        self._first_index += len(self._turns)
        self._turns.clear()
        self._chars = 0

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        if not text:
            raise ValueError("a turn needs some text")
        return text[: self.max_chars]

    def _add(self, turn: Turn) -> int:
        index = self.next_index
        self._turns.append(turn)
        self._chars += len(turn.text)
        while len(self._turns) > 1 and (
            len(self._turns) > self.max_turns
            or self._chars > self.max_chars
            or self._turns[0].role == "assistant"
        ):
            dropped = self._turns.popleft()
            self._chars -= len(dropped.text)
            self._first_index += 1
        return index

    def _check_issued(self, index: int) -> None:
        if not 0 <= index < self.next_index:
            raise ValueError(f"no turn {index} was ever added (next is {self.next_index})")


def _cut_text(heard: str) -> str:
    """An interrupted turn's text: what was heard, then the cut mark."""
    if not heard:
        return CUT_MARK
    if heard[-1] in _TERMINALS:
        return f"{heard} {CUT_MARK}"
    return heard.rstrip(",;:-–— ") + CUT_MARK


def heard_prefix(
    text: str,
    played_ms: float,
    total_ms: float | None,
    *,
    chars_per_second: float = DEFAULT_CHARS_PER_SECOND,
) -> str:
    """The part of ``text`` the user heard after ``played_ms`` of its audio played.

    ``total_ms``: the duration of the audio synthesized for all of ``text``, when
    known (synthesis finished); then the heard part is proportional by characters.
    None (or not positive): still synthesizing, so the position is estimated at
    ``chars_per_second``. Either way the result is cut at the word boundary nearest
    to the estimated position and never exceeds ``text``.
    """
    for name, value in (("played_ms", played_ms), ("total_ms", total_ms)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not chars_per_second > 0 or not math.isfinite(chars_per_second):
        raise ValueError(f"chars_per_second must be positive, got {chars_per_second!r}")
    text = " ".join(text.split())
    if played_ms <= 0 or not text:
        return ""
    if total_ms is not None and total_ms > 0:
        if played_ms >= total_ms:
            return text
        position = len(text) * played_ms / total_ms
    else:
        position = played_ms / 1000.0 * chars_per_second
    if position >= len(text):
        return text
    # Word boundaries: the start, each space, the end; the nearest wins (ties: earlier).
    bounds = [0, *(i for i, ch in enumerate(text) if ch == " "), len(text)]
    cut = min(bounds, key=lambda b: (abs(b - position), b))
    return text[:cut]
