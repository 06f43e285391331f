"""A turn's figures in the ``metrics`` message (orchestrator/sessions/turn_metrics.py),
with scripted events and messages on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions.events import (
    ReplyChunk,
    UserSpeechEnded,
    UserTranscript,
)
from duplexvoice.orchestrator.sessions.turn_metrics import TurnFigures
from duplexvoice.wire.messages import ReplyText, Transcript

pytestmark = pytest.mark.unit


@dataclass
class Heard:
    speech_started_at: float | None = None
    speech_ended_at: float | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def at_ms(self, ms: float, since: float) -> None:
        self.now = since + ms / 1000


def test_a_turn_sends_its_path_split_from_the_vad_end() -> None:
    clock, heard = Clock(), Heard(speech_started_at=98.0, speech_ended_at=99.9)
    figures = TurnFigures(OrchestratorMetrics(), clock)
    end = heard.speech_ended_at
    assert end is not None
    clock.at_ms(150, end)
    figures.event(UserSpeechEnded(0.15), heard, 1)
    clock.at_ms(320, end)
    figures.event(UserTranscript(1, "what time is it", True), heard, 1)
    clock.at_ms(400, end)
    figures.event(ReplyChunk(1, "It is noon."), heard, 1)  # speculative: before the end
    clock.at_ms(520, end)
    figures.observe(Transcript("what time is it", True, 1), heard, 1)  # turn confirmed
    figures.observe(ReplyText(7, "It is noon.", 1), heard, 1)
    assert figures.take_messages() == []  # nothing until the first frame
    clock.at_ms(560, end)
    figures.first_frame(7)
    [message] = figures.take_messages()
    assert message.to_wire() == {
        "type": "metrics", "turn": 1, "offset_ms": 150.0, "asr_ms": 320.0,
        "reply_ms": 400.0, "transcript_ms": 520.0, "voice_to_voice_ms": 560.0}


def test_speech_that_resumes_starts_the_path_over() -> None:
    clock, heard = Clock(), Heard(speech_ended_at=100.0)
    figures = TurnFigures(OrchestratorMetrics(), clock)
    clock.at_ms(100, 100.0)
    figures.event(UserSpeechEnded(0.1), heard, 3)
    clock.at_ms(300, 100.0)
    figures.event(UserTranscript(3, "I went to the store and", True), heard, 3)
    figures.event(ReplyChunk(3, "Okay."), heard, 3)
    # The user goes on; their speech ends again at 101.0.
    heard.speech_ended_at = 101.0
    clock.at_ms(120, 101.0)
    figures.event(UserSpeechEnded(0.12), heard, 3)
    clock.at_ms(250, 101.0)
    figures.event(UserTranscript(3, "I went to the store and I bought bread.", True), heard, 3)
    clock.at_ms(300, 101.0)
    figures.observe(Transcript("I went to the store and I bought bread.", True, 3), heard, 3)
    figures.observe(ReplyText(9, "Bread.", 3), heard, 3)
    clock.at_ms(330, 101.0)
    figures.event(ReplyChunk(3, "Bread."), heard, 3)
    clock.at_ms(400, 101.0)
    figures.first_frame(9)
    [message] = figures.take_messages()
    assert message.values == {"offset_ms": 120.0, "asr_ms": 250.0, "transcript_ms": 300.0,
                              "reply_ms": 330.0, "voice_to_voice_ms": 400.0}


def test_a_new_final_drops_the_reply_to_the_older_one() -> None:
    clock, heard = Clock(), Heard(speech_ended_at=100.0)
    figures = TurnFigures(OrchestratorMetrics(), clock)
    clock.at_ms(200, 100.0)
    figures.event(UserTranscript(2, "yes", True), heard, 2)
    figures.event(ReplyChunk(2, "Good."), heard, 2)
    clock.at_ms(260, 100.0)
    figures.event(UserTranscript(2, "yes please", True), heard, 2)
    figures.event(ReplyChunk(2, "   "), heard, 2)  # no words: not the reply's first clause
    clock.at_ms(280, 100.0)
    figures.event(ReplyChunk(2, "Here it is."), heard, 2)
    figures.observe(Transcript("yes please", True, 2), heard, 2)
    figures.observe(ReplyText(4, "Here it is.", 2), heard, 2)
    figures.first_frame(4)
    [message] = figures.take_messages()
    assert message.values["asr_ms"] == 260.0
    assert message.values["reply_ms"] == 280.0


def test_no_speech_heard_yet_adds_nothing_and_old_turns_are_forgotten() -> None:
    clock, heard = Clock(), Heard()
    figures = TurnFigures(OrchestratorMetrics(), clock)
    figures.event(UserSpeechEnded(), heard, 1)
    heard.speech_ended_at = 99.0
    for turn in range(1, 20):
        figures.event(UserSpeechEnded(0.1), heard, turn)
        figures.event(UserTranscript(turn, "hi", True), heard, turn)
    assert len(figures._figures) <= 4
    assert min(figures._figures) == 16


def test_a_typed_turn_after_a_spoken_one_has_text_to_voice_alone() -> None:
    clock, heard = Clock(), Heard(speech_ended_at=100.0)  # the spoken turn before
    figures = TurnFigures(OrchestratorMetrics(), clock)
    clock.at_ms(5000, 100.0)
    figures.event(ReplyChunk(2, "Typed instead."), heard, 2)  # no spoken path: not counted
    figures.observe(Transcript("Typed instead.", True, 2), heard, 2, typed=True)
    figures.observe(ReplyText(5, "Typed instead.", 2), heard, 2)
    clock.at_ms(5040, 100.0)
    figures.first_frame(5)
    [message] = figures.take_messages()
    assert message.values == {"text_to_voice_ms": 40.0}
