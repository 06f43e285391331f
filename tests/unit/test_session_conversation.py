"""The session machine in conversation mode: the turn-taking core's decisions carried
out on utterances and playout. Scripted events, a fake clock."""

from __future__ import annotations

import pytest

from duplexvoice.orchestrator.sessions.events import (
    BeginSynthesis,
    CancelReply,
    Connected,
    ControlReceived,
    ReplyChunk,
    ReplyFailed,
    StartReply,
    SynthesisDone,
    TextReceived,
    Tick,
    TranscribeTurn,
    TurnClosed,
    UserSpeechEnded,
    UserSpeechStarted,
    UserTranscript,
    UserTyped,
    WorkerControl,
    WorkerFrame,
)
from duplexvoice.orchestrator.sessions.machine import SessionConfig, State
from duplexvoice.wire.messages import Command
from tests.support.session_script import PCM, Driver, audio, errors, msgs, states

pytestmark = pytest.mark.unit


def session() -> Driver:
    d = Driver(SessionConfig("s1"))
    d(Connected(), at=0.0)
    return d


def user_turn(d: Driver, text: str, start: float, end: float) -> None:
    """Speech from ``start`` to ``end`` (offset confirmed 0.1 s later), transcribed."""
    d(UserSpeechStarted(), at=start)
    assert TranscribeTurn(d.m.turn) in d(UserSpeechEnded(0.1), at=end + 0.1)
    d(UserTranscript(d.m.turn, text, True), at=end + 0.2)


def controls(actions: list[object]) -> list[Command]:
    return [a.command for a in actions if isinstance(a, WorkerControl)]


def test_a_speculative_reply_is_heard_only_once_the_turn_has_ended() -> None:
    d = session()
    user_turn(d, "Book a table for two.", 1.0, 2.0)
    assert StartReply(1, "Book a table for two.") in d.log
    out = d(ReplyChunk(1, "Book a table for two. "), at=2.3)
    assert BeginSynthesis(1) in out  # synthesized during the silence...
    d(ReplyChunk(1, "", final=True), at=2.31)
    out = d.frames(1, 5)
    assert not audio(out) and not msgs(out, "reply")  # ...but neither heard nor announced
    assert d.m.state is State.LISTENING
    out = d(Tick(), at=2.6)  # 0.5 s after the last speech (2.1): the turn is over
    assert [m["type"] for m in msgs(out)][:2] == ["transcript", "reply"]
    assert msgs(out, "transcript")[0] == {"type": "transcript", "text": "Book a table for two.",
                                          "final": True, "turn": 1}
    assert msgs(out, "reply")[0]["utterance_id"] == 1
    assert audio(out) and states(out) == ["SPEAKING"]
    assert TurnClosed(1) in out


def test_the_user_going_on_drops_the_speculative_reply_without_a_trace() -> None:
    d = session()
    user_turn(d, "I would like", 1.0, 2.0)
    d(ReplyChunk(1, "I would like "), at=2.3)
    d.frames(1, 3)
    out = d(UserSpeechStarted(), at=2.4)  # before the end of turn (2.6)
    assert CancelReply(1, 1, "I would like ", 0.0, unheard=True) in out
    assert Command.STOP in controls(out)
    assert not msgs(out, "utterance_end") and not msgs(out, "reply")
    d(SynthesisDone(1), at=2.45)
    user_turn(d, "I would like a coffee.", 2.4, 3.5)
    d(ReplyChunk(1, "I would like a coffee. ", final=True), at=3.7)
    out = d(Tick(), at=4.1)
    assert msgs(out, "reply")[0]["utterance_id"] == 2  # id 1 was never heard of


def test_speech_over_the_system_pauses_then_interrupts_and_fences_its_audio() -> None:
    d = session()
    d(TextReceived("A long answer."), at=1.0)
    d.frames(1, 20)
    out = d(UserSpeechStarted(), at=1.2)
    assert msgs(out, "pause") == [{"type": "pause", "utterance_id": 1}]
    assert controls(out) == [Command.PAUSE] and d.m.state is State.BARGED_IN
    assert not audio(d(Tick(), at=1.3)) and not audio(d.frames(1, 3))  # held
    out = d(Tick(), at=1.6)  # 0.4 s of speech: a real interruption
    kinds = [m["type"] for m in msgs(out)]
    assert kinds[0] == "interrupt" and msgs(out, "interrupt")[0]["reason"] == "interrupted"
    assert Command.STOP in controls(out)
    assert not audio(d.frames(1, 5))  # fenced
    assert ("utterance_end" in kinds) and d.m.state is State.LISTENING
    assert TranscribeTurn(1) in d(UserSpeechEnded(0.1), at=2.5)


def test_a_short_noise_over_the_system_resumes_with_nothing_lost() -> None:
    d = session()
    d(TextReceived("A long answer."), at=1.0)
    d.frames(1, 30)
    sent_before = len(audio(d.log))
    d(UserSpeechStarted(), at=1.2)
    d(UserSpeechEnded(0.1), at=1.4)  # 0.1 s of speech
    assert not msgs(d(Tick(), at=1.5), "resume")
    out = d(Tick(), at=1.55)  # 0.25 s of silence after the last speech (1.3)
    assert msgs(out, "resume") == [{"type": "resume", "utterance_id": 1}]
    assert controls(out) == [Command.RESUME] and d.m.state is State.SPEAKING
    assert audio(out)
    d(SynthesisDone(1), at=1.6)
    t = 1.6
    while d.m.state is not State.LISTENING:
        t += 0.1
        d(Tick(), at=t)
    sequences = [a.sequence for a in audio(d.log)]
    assert sequences == list(range(1, 31)) and sent_before < 30
    assert not any(isinstance(a, TranscribeTurn) for a in d.log)  # a noise is no turn


def test_a_client_pause_outlasts_a_false_interruption() -> None:
    d = session()
    d(TextReceived("A long answer."), at=1.0)
    d.frames(1, 20)
    d(UserSpeechStarted(), at=1.2)
    d(ControlReceived(Command.PAUSE), at=1.25)
    d(UserSpeechEnded(0.0), at=1.3)
    out = d(Tick(), at=1.6)
    assert msgs(out, "resume") and not audio(out)  # the client's own PAUSE still holds
    assert d.m.state is State.PAUSED
    out = d(ControlReceived(Command.RESUME), at=2.0)
    assert Command.RESUME in controls(out) and d.m.state is State.SPEAKING


def test_speech_while_a_confirmed_reply_is_generated_holds_then_cancels_it() -> None:
    d = session()
    user_turn(d, "Tell me a story.", 1.0, 2.0)
    d(Tick(), at=2.6)  # confirmed; the engine has not answered yet
    assert d.m.state is State.SPEAKING
    out = d(UserSpeechStarted(), at=2.7)
    assert d.m.state is State.BARGED_IN and not msgs(out, "pause")  # nothing to pause yet
    out = d(Tick(), at=3.1)
    assert CancelReply(1) in out and d.m.state is State.LISTENING
    assert not d(ReplyChunk(1, "Once upon a time "), at=3.2)  # a late clause is ignored


def test_a_failed_reply_is_an_error_and_what_was_said_ends_normally() -> None:
    d = session()
    user_turn(d, "Tell me a story.", 1.0, 2.0)
    d(Tick(), at=2.6)
    d(ReplyChunk(1, "Once upon a time, "), at=2.7)
    out = d(ReplyFailed(1, "the endpoint went away"), at=2.8)
    assert errors(out) == ["REPLY_FAILED"]
    d(WorkerFrame(1, PCM), at=2.9)
    d(SynthesisDone(1), at=2.95)
    t = 2.95
    while d.m.state is not State.LISTENING:
        t += 0.05
        d(Tick(), at=t)
    assert msgs(d.log, "utterance_end")[-1]["reason"] == "completed"


def test_an_empty_transcript_gets_no_reply_and_an_empty_final_message() -> None:
    d = session()
    user_turn(d, "", 1.0, 2.0)
    out = d(Tick(), at=2.6)
    assert not any(isinstance(a, StartReply) for a in d.log)
    # The client learns the turn is over and nothing was heard (issue 17: no turn ends
    # in silence).
    assert msgs(out, "transcript") == [{"type": "transcript", "text": "", "final": True,
                                        "turn": 1}]
    assert TurnClosed(1) in out


def test_a_late_final_after_the_next_turn_is_answered() -> None:
    d = session()
    d(UserSpeechStarted(), at=1.0)
    d(UserSpeechEnded(0.1), at=2.1)
    d(Tick(), at=2.8)  # turn 1 confirmed, its final still in the recognizer's queue
    d(UserSpeechStarted(), at=3.0)
    d(UserSpeechEnded(0.1), at=4.1)
    d(Tick(), at=4.8)  # turn 2 confirmed too
    out = d(UserTranscript(1, "Book a table.", True), at=5.0)
    assert StartReply(1, "Book a table.") in out
    assert msgs(out, "transcript") == [{"type": "transcript", "text": "Book a table.",
                                        "final": True, "turn": 1}]
    out = d(UserTranscript(2, "", True), at=5.1)
    assert msgs(out, "transcript") == [{"type": "transcript", "text": "", "final": True,
                                        "turn": 2}]


def test_a_failed_speculative_reply_is_told_and_its_apology_heard_once_confirmed() -> None:
    # The model failed (or said nothing) before the turn was confirmed: the turn must
    # not end in silence. Its apology plays and REPLY_FAILED goes out at the confirm.
    d = session()
    user_turn(d, "Book a table for two.", 1.0, 2.0)
    assert StartReply(1, "Book a table for two.") in d.log
    d(ReplyChunk(1, "Sorry, not now. "), at=2.25)
    out = d(ReplyFailed(1, "the reply engine's answer had no words"), at=2.26)
    assert not errors(out) and not msgs(out, "reply")  # not yet: the turn may go on
    t = 2.26
    while not errors(d.log):
        t += 0.05
        assert t < 5.0, "never confirmed"
        d(Tick(), at=t)
    assert errors(d.log) == ["REPLY_FAILED"]
    d.frames(1, 3)
    d(SynthesisDone(1), at=t + 0.1)
    assert [m["text"] for m in msgs(d.log, "reply")] == ["Sorry, not now. "]


def test_a_failed_speculative_reply_of_a_turn_that_went_on_is_not_told() -> None:
    d = session()
    user_turn(d, "Book a table", 1.0, 2.0)
    d(ReplyFailed(1, "no answer"), at=2.1)
    d(UserSpeechStarted(), at=2.2)  # the user goes on: the turn was not over
    d(UserSpeechEnded(0.1), at=3.1)
    d(UserTranscript(1, "Book a table for two.", True), at=3.2)
    t = 3.2
    while not any(isinstance(a, StartReply) and a.text == "Book a table for two."
                  for a in d.log) and t < 5.0:
        t += 0.05
        d(Tick(), at=t)
    for _ in range(20):
        t += 0.05
        d(Tick(), at=t)
    assert not errors(d.log)


def test_partial_transcripts_are_sent_while_the_user_speaks() -> None:
    d = session()
    d(UserSpeechStarted(), at=1.0)
    out = d(UserTranscript(1, "book a", False), at=1.5)
    assert msgs(out, "transcript") == [{"type": "transcript", "text": "book a",
                                        "final": False, "turn": 1}]
    assert not msgs(d(UserTranscript(0, "old", False), at=1.6))


def test_an_interruption_in_a_replys_first_frames() -> None:
    d = session()
    user_turn(d, "Tell me a story.", 1.0, 2.0)
    d(ReplyChunk(1, "Once upon a time there was a king. ", final=True), at=2.2)
    d.frames(1, 30)
    out = d(Tick(), at=2.6)
    first = audio(out)
    assert first and first[0].sequence == 1  # the reply has just begun
    out = d(UserSpeechStarted(0.05), at=2.62)
    assert msgs(out, "pause") == [{"type": "pause", "utterance_id": 1}]
    out = d(Tick(), at=2.97)  # 0.4 s since the speech began (2.57)
    assert msgs(out, "interrupt")[0]["utterance_id"] == 1
    assert CancelReply(1, 1, "Once upon a time there was a king. ",
                       len(audio(d.log)) * 20.0) in out
    assert not audio(d.frames(1, 5))


def test_speech_at_the_very_end_of_a_reply_is_just_the_next_turn() -> None:
    d = session()
    d(TextReceived("Short."), at=1.0)
    d.frames(1, 3)
    d(SynthesisDone(1), at=1.01)
    t = 1.01
    while d.m.state is not State.LISTENING:
        t += 0.02
        d(Tick(), at=t)
    out = d(UserSpeechStarted(), at=t + 0.01)  # the last frame has just gone
    assert not msgs(out, "pause") and not msgs(out, "interrupt")
    assert d.m.turn == 1 and d.m.state is State.LISTENING


def test_a_speculative_reply_generated_in_full_is_dropped_too_when_the_user_goes_on() -> None:
    d = session()
    user_turn(d, "I would like", 1.0, 2.0)
    d(ReplyChunk(1, "I would like ", final=True), at=2.3)  # the engine is done
    d.frames(1, 3)
    d(SynthesisDone(1), at=2.35)
    out = d(UserSpeechStarted(), at=2.4)
    assert CancelReply(1, 1, "I would like ", 0.0, unheard=True) in out
    user_turn(d, "I would like a coffee.", 2.4, 3.5)
    d(ReplyChunk(1, "I would like a coffee. ", final=True), at=3.7)
    d.frames(2, 3)
    out = d(Tick(), at=4.1)
    assert [m["utterance_id"] for m in msgs(out, "reply")] == [2]
    assert {a.utterance_id for a in audio(d.log)} == {2}  # the shorter reply never plays


def test_a_typed_turn_is_a_final_transcript_answered_by_a_reply() -> None:
    d = session()
    out = d(UserTyped("What is the time?"), at=1.0)
    assert msgs(out, "transcript") == [{"type": "transcript", "text": "What is the time?",
                                        "final": True, "turn": 1}]
    assert StartReply(1, "What is the time?") in out
    out = d(ReplyChunk(1, "It is noon.", final=True), at=1.1)
    assert msgs(out, "reply")[0]["text"] == "It is noon."
    assert audio(d.frames(1, 3))  # not gated: a typed turn is confirmed at once


def test_a_typed_turn_over_the_system_interrupts_it() -> None:
    d = session()
    d(TextReceived("A long answer."), at=1.0)
    d.frames(1, 20)
    out = d(UserTyped("Stop."), at=1.2)
    kinds = [m["type"] for m in msgs(out)]
    assert kinds[0] == "interrupt" and kinds.index("transcript") > kinds.index("utterance_end")
    assert Command.STOP in controls(out)
    assert not audio(d.frames(1, 5))  # fenced
    assert StartReply(1, "Stop.") in out


def test_typed_text_without_words_is_refused() -> None:
    d = session()
    out = d(UserTyped("?!"), at=1.0)
    assert errors(out) == ["INVALID_MESSAGE"] and not any(isinstance(a, StartReply) for a in out)
