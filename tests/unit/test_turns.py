"""The turn-taking core: scripted VAD and transcript events, a fake clock."""

from __future__ import annotations

import random

import pytest

from duplexvoice.orchestrator.turns import (
    Decision,
    SpeechEnded,
    SpeechStarted,
    TranscriptSeen,
    TurnConfig,
    TurnTaker,
)

pytestmark = pytest.mark.unit

HOLD, INTERRUPT, RESUME = Decision.HOLD, Decision.INTERRUPT, Decision.RESUME


def speaking_taker(ms: int = 400) -> TurnTaker:
    taker = TurnTaker(TurnConfig(interrupt_after_ms=ms))
    taker.system_speaking(True)
    return taker


def test_speech_while_silent_is_just_the_users_turn() -> None:
    taker = TurnTaker()
    assert taker.handle(SpeechStarted(), 1.0) == []
    assert taker.handle(TranscriptSeen("hello"), 1.2) == []
    assert taker.handle(SpeechEnded(), 2.0) == [] and taker.next_deadline is None


def test_a_short_noise_holds_then_resumes() -> None:
    taker = speaking_taker()
    assert taker.handle(SpeechStarted(), 10.0) == [HOLD]
    assert taker.holding and taker.next_deadline == pytest.approx(10.4)
    assert taker.tick(10.39) == []
    assert taker.handle(SpeechEnded(), 10.2) == [RESUME]
    assert not taker.holding and taker.next_deadline is None


def test_long_speech_interrupts_at_the_deadline() -> None:
    taker = speaking_taker()
    taker.handle(SpeechStarted(), 10.0)
    assert taker.tick(10.4) == [INTERRUPT]
    assert taker.handle(SpeechEnded(), 11.0) == []  # already decided
    assert taker.handle(SpeechStarted(), 12.0) == []  # the system no longer speaks


def test_speech_ending_late_without_a_tick_still_interrupts() -> None:
    taker = speaking_taker()
    taker.handle(SpeechStarted(), 10.0)
    assert taker.handle(SpeechEnded(), 10.5) == [INTERRUPT]


def test_words_interrupt_at_once() -> None:
    taker = speaking_taker()
    taker.handle(SpeechStarted(), 10.0)
    assert taker.handle(TranscriptSeen("..."), 10.1) == []  # no words yet
    assert taker.handle(TranscriptSeen("wait"), 10.15) == [INTERRUPT]


def test_zero_delay_interrupts_with_the_hold() -> None:
    taker = speaking_taker(ms=0)
    assert taker.handle(SpeechStarted(), 1.0) == [HOLD, INTERRUPT]


def test_the_utterance_ending_drops_a_pending_hold() -> None:
    taker = speaking_taker()
    taker.handle(SpeechStarted(), 1.0)
    taker.system_speaking(False)
    assert taker.tick(5.0) == [] and taker.handle(SpeechEnded(), 5.0) == []


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        TurnConfig(interrupt_after_ms=-1)


@pytest.mark.parametrize("seed", range(20))
def test_every_hold_gets_exactly_one_outcome(seed: int) -> None:
    rng = random.Random(seed)
    taker = TurnTaker()
    now, open_holds, decisions = 0.0, 0, []
    for _ in range(300):
        now += rng.choice([0.01, 0.05, 0.2, 0.5])
        roll = rng.random()
        if roll < 0.1:
            speaking = rng.random() < 0.7
            taker.system_speaking(speaking)
            if not speaking:
                open_holds = 0  # a hold ends with the utterance, without an outcome
            continue
        event = rng.choice([SpeechStarted(), SpeechEnded(), TranscriptSeen(
            rng.choice(["", "...", "stop"]))])
        out = taker.handle(event, now) + taker.tick(now)
        decisions += out
        for decision in out:
            if decision is HOLD:
                assert open_holds == 0  # never two holds at once
                open_holds += 1
            else:
                assert open_holds == 1  # an outcome only for a hold
                open_holds -= 1
        assert taker.holding is (open_holds == 1)
