"""The end-of-turn rule (``end_wait_ms``) in every mode, and the turn-taking core
applying it as the transcript and the acoustic score come, in either order, on time or
late: scripted events, a fake clock."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from duplexvoice.orchestrator.sessions.turn_end import END_MODES, end_wait_ms
from duplexvoice.orchestrator.sessions.turns import (
    Abandon,
    Confirm,
    Reply,
    Transcribe,
    TurnConfig,
    TurnTaking,
)

pytestmark = pytest.mark.unit

# Distinct waits, so each answer says which rule gave it.
WAITS = {"end_of_turn_ms": 500, "complete_end_ms": 250, "trailing_end_ms": 1000,
         "acoustic_complete_ms": 150, "acoustic_incomplete_ms": 1200,
         "complete_p": 0.6, "incomplete_p": 0.2}
COMPLETE = "I would like a coffee."
TRAILING = "I would like a coffee and"
NEUTRAL = "Yes."
HIGH, MIDDLE, LOW = 0.9, 0.4, 0.05


def config(mode: str, **kw: object) -> TurnConfig:
    return TurnConfig(end_mode=mode, **{**WAITS, **kw})  # type: ignore[arg-type]


# -- the rule ------------------------------------------------------------------------------

# (text, p) -> wait, per mode. None: not known (yet).
EXPECTED: dict[str, dict[tuple[str | None, float | None], int]] = {
    "silence": {},  # always end_of_turn_ms
    "text": {(COMPLETE, None): 250, (TRAILING, None): 1000, (NEUTRAL, None): 500},
    "acoustic": {(None, HIGH): 150, (None, MIDDLE): 500, (None, LOW): 1200},
    "fused": {
        # Before the model's answer the text can only lengthen the wait.
        (COMPLETE, None): 500, (TRAILING, None): 1000, (NEUTRAL, None): 500,
        (None, HIGH): 150, (None, MIDDLE): 500, (None, LOW): 1200,
        (COMPLETE, HIGH): 150,  # both say over: the shorter
        (COMPLETE, MIDDLE): 500,  # a period alone proves little: the model is not sure
        (COMPLETE, LOW): 1200,  # the model is sure more is coming
        (TRAILING, HIGH): 1000,  # a trailing "and": the model hears no words
        (TRAILING, MIDDLE): 1000,
        (TRAILING, LOW): 1200,  # the longer of the two
        (NEUTRAL, HIGH): 150, (NEUTRAL, MIDDLE): 500, (NEUTRAL, LOW): 1200,
    },
}


@pytest.mark.parametrize(("mode", "text", "p"), list(itertools.product(
    END_MODES, (None, COMPLETE, TRAILING, NEUTRAL), (None, HIGH, MIDDLE, LOW))))
def test_the_wait_in_every_mode(mode: str, text: str | None, p: float | None) -> None:
    cfg = config(mode)
    want = EXPECTED[mode].get((text if mode in ("text", "fused") else None,
                               p if mode in ("acoustic", "fused") else None), 500)
    assert end_wait_ms(cfg, text, p) == want
    # Adaptive off: the silence alone, whatever the mode.
    assert end_wait_ms(config(mode, adaptive=False), text, p) == 500


def test_the_bands_edges() -> None:
    cfg = config("acoustic")
    assert end_wait_ms(cfg, None, 0.6) == 150  # p >= complete_p
    assert end_wait_ms(cfg, None, 0.5999) == 500
    assert end_wait_ms(cfg, None, 0.2) == 500  # p < incomplete_p only
    assert end_wait_ms(cfg, None, 0.1999) == 1200
    # One threshold: no middle band.
    one = config("acoustic", complete_p=0.5, incomplete_p=0.5)
    assert [end_wait_ms(one, None, p) for p in (0.49, 0.5)] == [1200, 150]


def test_the_bands_must_not_cross() -> None:
    with pytest.raises(ValidationError, match="incomplete_p"):
        TurnConfig(complete_p=0.3, incomplete_p=0.5)
    with pytest.raises(ValidationError):
        TurnConfig(end_mode="psychic")  # type: ignore[arg-type]


def test_uses_text_and_acoustic() -> None:
    flags = {m: (config(m).uses_text, config(m).uses_acoustic) for m in END_MODES}
    assert flags == {"silence": (False, False), "text": (True, False),
                     "acoustic": (False, True), "fused": (True, True)}
    assert not config("fused", adaptive=False).uses_acoustic


# -- the core, as events come ------------------------------------------------------------

def ended(mode: str, **kw: object) -> TurnTaking:
    """A turn whose speech ended at 2.0 (offset confirmed then), nothing known yet."""
    core = TurnTaking(config(mode, **kw))
    core.speech_started(1.0)
    assert core.speech_ended(2.0) == [Transcribe(1)]
    return core


def test_a_confident_score_ends_the_turn_soon() -> None:
    core = ended("fused")
    assert core.next_deadline == pytest.approx(2.5)
    assert core.acoustic(1, HIGH, 2.1) == []
    assert core.next_deadline == pytest.approx(2.15)
    assert core.transcript(1, NEUTRAL, True, 2.12) == [Reply(1, NEUTRAL, False)]
    assert core.tick(2.15) == [Confirm(1, NEUTRAL)]


def test_a_score_that_comes_after_its_wait_ends_the_turn_at_once() -> None:
    core = ended("acoustic")
    assert core.acoustic(1, HIGH, 2.3) == [Confirm(1, None)]  # 150 ms were over at 2.15
    assert core.transcript(1, NEUTRAL, True, 2.35) == [Reply(1, NEUTRAL, True)]


def test_a_complete_sentence_ends_sooner_only_when_the_model_agrees() -> None:
    core = ended("fused")
    assert core.transcript(1, COMPLETE, True, 2.05) == [Reply(1, COMPLETE, False)]
    assert core.next_deadline == pytest.approx(2.5)  # alone, the period proves little
    assert core.acoustic(1, HIGH, 2.1) == []
    assert core.next_deadline == pytest.approx(2.15)
    core = ended("fused", acoustic_complete_ms=400)
    core.transcript(1, COMPLETE, True, 2.05)
    core.acoustic(1, HIGH, 2.1)
    assert core.next_deadline == pytest.approx(2.25)  # complete_end_ms: the shorter


def test_a_low_score_waits_longer_and_the_text_cannot_shorten_it() -> None:
    core = ended("fused")
    core.acoustic(1, LOW, 2.1)
    assert core.transcript(1, COMPLETE, True, 2.2) == [Reply(1, COMPLETE, False)]
    assert core.next_deadline == pytest.approx(3.2)
    assert core.tick(3.19) == []
    assert core.tick(3.2) == [Confirm(1, COMPLETE)]


@pytest.mark.parametrize("score_first", [False, True])
def test_the_text_and_the_score_in_either_order_give_the_same_end(score_first: bool) -> None:
    core = ended("fused")
    events = [lambda t: core.transcript(1, TRAILING, True, t),
              lambda t: core.acoustic(1, HIGH, t)]
    if score_first:
        events.reverse()
    for event, at in zip(events, (2.05, 2.1), strict=True):
        assert [d for d in event(at) if isinstance(d, Confirm)] == []
    assert core.next_deadline == pytest.approx(3.0)  # trailing: 1000 ms


def test_a_late_score_never_holds_the_turn() -> None:
    # The text said "complete" and the turn ended at 250 ms; the model's "more is
    # coming" arrives after: nothing changes, nothing is confirmed twice.
    core = ended("text")
    core.transcript(1, COMPLETE, True, 2.1)
    assert core.tick(2.25) == [Confirm(1, COMPLETE)]
    assert core.acoustic(1, LOW, 2.3) == []
    # Fused: the silence ends it before the model answers; its answer changes nothing.
    core = ended("fused")
    core.transcript(1, COMPLETE, True, 2.1)
    assert core.tick(2.5) == [Confirm(1, COMPLETE)]
    assert core.acoustic(1, HIGH, 2.6) == []
    assert core.next_deadline is None
    # No answer at all: the silence ends it.
    core2 = ended("acoustic")
    assert core2.tick(2.5) == [Confirm(1, None)]


def test_a_score_of_speech_that_went_on_is_ignored() -> None:
    core = ended("fused")
    assert core.speech_started(2.2) == [Abandon(1)]
    assert core.acoustic(1, HIGH, 2.3) == []  # speaking: it was about the pause
    core.speech_ended(3.0)
    assert core.next_deadline == pytest.approx(3.5)  # the old score did not stick
    assert core.acoustic(1, HIGH, 3.05) == []
    assert core.next_deadline == pytest.approx(3.15)


def test_scores_of_other_turns_or_nonsense_are_ignored() -> None:
    core = ended("fused")
    assert core.acoustic(2, HIGH, 2.1) == []
    assert core.acoustic(0, HIGH, 2.1) == []
    assert core.acoustic(1, 1.5, 2.1) == [] and core.acoustic(1, -0.1, 2.1) == []
    assert core.acoustic(1, float("nan"), 2.1) == []
    assert core.next_deadline == pytest.approx(2.5)


def test_modes_that_do_not_listen_ignore_what_they_do_not_use() -> None:
    core = ended("text")
    core.acoustic(1, HIGH, 2.1)
    assert core.next_deadline == pytest.approx(2.5)
    core = ended("silence")
    core.acoustic(1, HIGH, 2.1)
    core.transcript(1, COMPLETE, True, 2.1)
    assert core.next_deadline == pytest.approx(2.5)
    core = ended("acoustic")
    core.transcript(1, TRAILING, True, 2.1)
    assert core.next_deadline == pytest.approx(2.5)


def test_the_score_is_forgotten_with_its_turn() -> None:
    core = ended("fused")
    core.acoustic(1, HIGH, 2.1)
    assert core.tick(2.15) == [Confirm(1, None)]
    core.speech_started(5.0)
    core.speech_ended(6.0)
    assert core.turn == 2 and core.next_deadline == pytest.approx(6.5)
