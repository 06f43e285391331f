"""Issue 17: with 6 ``talk`` sessions on 2 cores one turn got no transcript, no reply
and no error. The cause, in the pure turn-taking core: a turn confirmed before its
final transcript waits for it in one slot (``TurnTaking._awaiting``); when the final
is late (the recognizer's queue holds other sessions' finals) and the user's next turn
is confirmed first, that turn takes the slot and the first turn's final is dropped as
stale: nothing is ever sent for it.
Now every turn that awaits its final is kept, and each late final is answered: a reply,
or (no words, or a typed turn took the floor) its final transcript alone (``Heard``).
"""

from __future__ import annotations

import pytest

from duplexvoice.orchestrator.sessions.turns import Heard, Reply, TurnConfig, TurnTaking

pytestmark = pytest.mark.unit


def test_a_final_that_comes_after_the_next_turn_was_confirmed_is_not_dropped() -> None:
    t = TurnTaking(TurnConfig(end_of_turn_ms=200, adaptive=False))
    t.speech_started(0.0)
    t.speech_ended(1.0)  # Transcribe(turn 1): its final is asked for
    assert [d.turn for d in t.tick(1.3)] == [1]  # Confirm(1) before its final came
    t.speech_started(2.0)
    t.speech_ended(3.0)
    assert [d.turn for d in t.tick(3.3)] == [2]  # Confirm(2), its final not there either
    late = t.transcript(1, "book a table", True, 3.5)  # turn 1's final, late
    # Something must come of it: its transcript and a reply (or an error saying why not).
    assert late == [Reply(1, "book a table", confirmed=True)]
    assert t.transcript(2, "for two", True, 3.6) == [Reply(2, "for two", confirmed=True)]
    assert t.transcript(1, "again", True, 3.7) == []  # answered once


def confirmed_without_final(t: TurnTaking, start: float) -> int:
    t.speech_started(start)
    t.speech_ended(start + 1.0)
    (confirm,) = t.tick(start + 1.3)
    return confirm.turn


def test_a_late_final_with_no_words_is_still_heard() -> None:
    t = TurnTaking(TurnConfig(end_of_turn_ms=200, adaptive=False))
    turn = confirmed_without_final(t, 0.0)
    assert t.transcript(turn, " ", True, 2.0) == [Heard(turn, " ")]


def test_a_typed_turn_leaves_late_finals_their_transcript_only() -> None:
    t = TurnTaking(TurnConfig(end_of_turn_ms=200, adaptive=False))
    first = confirmed_without_final(t, 0.0)
    second = confirmed_without_final(t, 2.0)
    typed = t.typed(4.0, "never mind")
    assert typed[-1] == Reply(second + 1, "never mind", confirmed=True)
    assert t.transcript(second, "for two", True, 4.1) == [Heard(second, "for two")]
    assert t.transcript(first, "book a table", True, 4.2) == [Heard(first, "book a table")]
