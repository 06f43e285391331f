"""The orchestrator's session core: event lists in, action lists out, a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from duplexvoice.orchestrator.sessions.events import (
    BeginSynthesis,
    ClientDisconnected,
    Close,
    Connected,
    ControlReceived,
    ReleaseWorker,
    Send,
    ServerShutdown,
    SynthesisDone,
    SynthesisFailed,
    SynthesizeText,
    TextReceived,
    Tick,
    WorkerControl,
    WorkerFrame,
)
from duplexvoice.orchestrator.sessions.machine import SessionConfig, State
from duplexvoice.orchestrator.sessions.playout import PlayoutConfig
from duplexvoice.wire.messages import Command, ErrorCode
from tests.support.session_script import (
    PAUSE,
    PCM,
    RESUME,
    STOP,
    Driver,
    audio,
    cfg,
    ends,
    errors,
    in_state,
    msgs,
    states,
)

pytestmark = pytest.mark.unit


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"session_id": ""}, {"idle_timeout_s": 0}, {"max_queued_utterances": -1},
     {"max_pending_chars": 0}, {"worker_linger_s": -1}],
)
def test_bad_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SessionConfig(**{"session_id": "s", **kwargs})


@pytest.mark.parametrize(
    "kwargs", [{"lead_ms": 10}, {"max_frames": 0}, {"send_quantum_ms": 200}, {"frame_ms": 0}],
)
def test_bad_playout_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PlayoutConfig(**kwargs)


# -- lifecycle and worker capacity -------------------------------------------------------


def test_connect_listens_at_once_and_takes_no_worker() -> None:
    d = Driver()
    out = d(Connected())
    assert msgs(out) == [{"type": "session_start", "session_id": "s1"},
                         {"type": "state", "state": "LISTENING"}]
    assert d.m.state is State.LISTENING and not d.m.worker_held
    assert d(Connected()) == []  # only once
    assert not [a for a in d.log if not isinstance(a, Send)]  # no worker asked for


def test_worker_is_taken_by_the_first_utterance_and_given_back_after_the_linger() -> None:
    d = in_state(State.LISTENING, SessionConfig("s1", worker_linger_s=2.0))
    out = d(TextReceived("Hello"), at=1.0)
    assert BeginSynthesis(1) in out and d.m.worker_held
    d.frames(1, 1)
    out = d(SynthesisDone(1), at=1.1)
    assert ends(out) == [(1, "completed", 1)] and d.m.state is State.LISTENING
    assert ReleaseWorker() not in out  # a next turn within the linger reuses it
    assert d.m.next_deadline == pytest.approx(3.1)
    assert d(Tick(), at=3.0) == []
    assert d(Tick(), at=3.1) == [ReleaseWorker()] and not d.m.worker_held
    assert d.m.next_deadline == pytest.approx(1.1 + 60.0)  # only the idle timeout left
    assert BeginSynthesis(2) in d(TextReceived("again"), at=4.0)  # taken again


def test_a_new_turn_within_the_linger_keeps_the_worker() -> None:
    d = in_state(State.LISTENING, SessionConfig("s1", worker_linger_s=2.0))
    d(TextReceived("one"), at=0.0)
    d.frames(1, 1)
    d(SynthesisDone(1), at=0.1)
    out = d(TextReceived("two"), at=1.0)
    assert BeginSynthesis(2) in out and ReleaseWorker() not in d.log
    d.frames(2, 1)
    d(SynthesisDone(2), at=1.5)
    assert d(Tick(), at=3.4) == []  # counted from the second return to LISTENING
    assert d(Tick(), at=3.5) == [ReleaseWorker()]


def test_zero_linger_gives_the_worker_back_with_the_last_frame() -> None:
    d = in_state(State.LISTENING, SessionConfig("s1", worker_linger_s=0.0))
    d(TextReceived("one"))
    d.frames(1, 1)
    out = d(SynthesisDone(1))
    assert ends(out) == [(1, "completed", 1)] and out[-1] == ReleaseWorker()


def test_no_worker_fails_the_utterance_not_the_session() -> None:
    d = in_state(State.LISTENING)
    d(TextReceived("one"))
    d(TextReceived("two"))
    out = d(SynthesisFailed(1, "no TTS worker is registered or reachable",
                            ErrorCode.WORKER_UNAVAILABLE))
    assert errors(out) == ["WORKER_UNAVAILABLE"] and ends(out) == [(1, "error", 0)]
    assert BeginSynthesis(2) in out and d.m.state is State.SPEAKING  # the next one tries
    d.frames(2, 1)
    assert ends(d(SynthesisDone(2))) == [(2, "completed", 1)]
    assert not d.m.closed


def test_text_before_connected_is_refused() -> None:
    d = in_state(State.INITIALIZING)
    assert errors(d(TextReceived("early"))) == ["INVALID_STATE"]
    assert d.m.current_utterance is None


def test_full_utterance_then_second() -> None:
    d = in_state(State.LISTENING)
    out = d(TextReceived("Hello world"))
    assert out[:2] == [BeginSynthesis(1), SynthesizeText(1, "Hello world", True)]
    assert states(out) == ["SPEAKING"] and d.m.current_utterance == 1
    out = d.frames(1, 3)
    assert [a.sequence for a in audio(out)] == [1, 2, 3]
    out = d(SynthesisDone(1))
    assert ends(out) == [(1, "completed", 3)] and states(out) == ["LISTENING"]
    out = d(TextReceived("again"))
    assert BeginSynthesis(2) in out
    out = d.frames(2, 2) + d(SynthesisDone(2))
    assert [a.sequence for a in audio(out)] == [4, 5]
    assert {a.utterance_id for a in audio(out)} == {2}
    assert ends(out) == [(2, "completed", 2)]


def test_streamed_text_goes_to_the_worker_as_it_arrives() -> None:
    d = in_state(State.LISTENING)
    assert d(TextReceived("Hel", is_final=False))[:2] == [
        BeginSynthesis(1), SynthesizeText(1, "Hel", False)]
    assert d(TextReceived("lo ", is_final=False)) == [SynthesizeText(1, "lo ", False)]
    assert d(TextReceived("there")) == [SynthesizeText(1, "there", True)]
    out = d(TextReceived("next"))  # the text is complete: a new utterance, queued
    assert out == [] and d.m.queued_utterances == [2]


def test_text_while_speaking_is_queued_and_started_after() -> None:
    d = in_state(State.SPEAKING)
    assert d(TextReceived("two", is_final=False)) == []
    assert d(TextReceived(" more")) == []
    assert d.m.queued_utterances == [2]
    out = d(SynthesisDone(1))  # worker free: next synthesis starts at once (pipelined)
    assert [a for a in out if not isinstance(a, Send)][:2] == [
        BeginSynthesis(2), SynthesizeText(2, "two more", True)]
    assert ends(out) == [(1, "completed", 2)] and states(out) == []  # still SPEAKING


def test_queue_full() -> None:
    d = in_state(State.SPEAKING)
    d(TextReceived("2"))
    d(TextReceived("3"))
    out = d(TextReceived("4"))
    assert errors(out) == ["QUEUE_FULL"] and d.m.queued_utterances == [2, 3]


def test_pending_text_limit() -> None:
    d = in_state(State.SPEAKING)  # max_pending_chars=100
    assert errors(d(TextReceived("x" * 99, is_final=False))) == []
    assert errors(d(TextReceived("y" * 2))) == ["QUEUE_FULL"]  # would hold 101 chars
    d(TextReceived("z"))
    out = d(SynthesisDone(1))
    assert SynthesizeText(2, "x" * 99 + "z", True) in out


def test_empty_text_is_an_error() -> None:
    d = in_state(State.LISTENING)
    assert errors(d(TextReceived(""))) == ["INVALID_MESSAGE"]
    assert d.m.state is State.LISTENING


@pytest.mark.parametrize("text", ["   ", "...", "?!", "\U0001f600\U0001f389", " - "])
def test_text_with_nothing_to_speak_is_refused_and_takes_no_id(text: str) -> None:
    d = in_state(State.LISTENING)
    out = d(TextReceived(text))
    assert errors(out) == ["INVALID_MESSAGE"] and ends(out) == []
    assert d.m.state is State.LISTENING and not d.m.worker_held
    assert BeginSynthesis(1) in d(TextReceived("Now words."))  # the id was not used


def test_a_symbol_a_voice_reads_is_something_to_say() -> None:
    d = in_state(State.LISTENING)
    out = d(TextReceived("%"))  # "percent": the worker speaks it too
    assert errors(out) == [] and BeginSynthesis(1) in out


def test_streamed_text_may_carry_punctuation_pieces() -> None:
    d = in_state(State.SPEAKING)  # utterance 1 playing: utterance 2's text is held
    assert errors(d(TextReceived("Well", is_final=False))) == []
    assert errors(d(TextReceived("..."))) == []  # the end of a speakable utterance
    assert d.m.queued_utterances == [2]


def test_a_streamed_utterance_that_never_had_words_ends_without_synthesis() -> None:
    d = in_state(State.SPEAKING)
    assert errors(d(TextReceived("...", is_final=False))) == []
    out = d(TextReceived("!"))
    assert errors(out) == ["INVALID_MESSAGE"] and ends(out) == [(2, "completed", 0)]
    assert d.m.queued_utterances == []


# -- controls ------------------------------------------------------------------------


def test_pause_resume() -> None:
    d = in_state(State.SPEAKING)
    out = d(ControlReceived(PAUSE))
    assert WorkerControl(PAUSE) in out and states(out) == ["PAUSED"]  # not a barge-in
    assert audio(d.frames(1, 3)) == []  # held: buffered, not sent
    assert d(ControlReceived(PAUSE)) == []  # already paused
    assert audio(d(Tick(), at=5.0)) == []
    out = d(ControlReceived(RESUME))
    assert WorkerControl(RESUME) in out and states(out) == ["SPEAKING"]
    assert [a.sequence for a in audio(out)] == [3, 4, 5]  # nothing lost or replayed
    # The client learns it is SPEAKING again before the audio that follows.
    kinds = ["state" if isinstance(a, Send) else type(a).__name__ for a in out]
    assert kinds.index("state") < kinds.index("SendAudio"), kinds
    assert d(ControlReceived(RESUME)) == []  # already playing


@pytest.mark.parametrize("state", [State.INITIALIZING, State.LISTENING])
@pytest.mark.parametrize("command", [PAUSE, RESUME])
def test_pause_resume_with_nothing_playing(state: State, command: Command) -> None:
    d = in_state(state)
    out = d(ControlReceived(command))
    assert errors(out) == ["INVALID_STATE"] and len(out) == 1 and d.m.state is state


@pytest.mark.parametrize("state", [State.INITIALIZING, State.LISTENING])
def test_stop_with_nothing_live_is_silent(state: State) -> None:
    assert in_state(state)(ControlReceived(STOP)) == []


@pytest.mark.parametrize("paused", [False, True])
def test_stop_drops_buffer_and_queue_and_fences(paused: bool) -> None:
    d = Driver(SessionConfig("s1", max_queued_utterances=3,
                             playout=PlayoutConfig(lead_ms=40)))
    d(Connected())
    d(TextReceived("one"))
    d.frames(1, 5)  # 2 sent (40 ms lead), 3 buffered
    d(TextReceived("two"))
    d(TextReceived("three"))
    if paused:
        d(ControlReceived(PAUSE))
    out = d(ControlReceived(STOP))
    assert msgs(out)[0] == {"type": "interrupt", "utterance_id": 1, "reason": "stopped"}
    assert WorkerControl(STOP) in out
    assert ends(out) == [(1, "stopped", 2), (2, "stopped", 0), (3, "stopped", 0)]
    assert states(out) == ["LISTENING"] and d.m.buffered_frames == 0
    # Stale frames of the stopped stream never reach the client.
    assert audio(d.frames(1, 4) + d(Tick(), at=9.0)) == []
    # A new text waits for the stopped stream to end (one stream per worker session).
    out = d(TextReceived("four"))
    assert states(out) == ["SPEAKING"] and BeginSynthesis(4) not in out
    out = d(SynthesisDone(1))
    assert BeginSynthesis(4) in out and ends(out) == []
    assert [a.sequence for a in audio(d.frames(4, 1))] == [3]


@pytest.mark.parametrize("paused", [False, True])
def test_after_stop_the_next_utterance_fills_the_lead_at_once(paused: bool) -> None:
    # The client dropped what it held on ``interrupt``: the next utterance's first frames
    # must not wait for that audio to "play out" (it once cost up to a frame period).
    d = in_state(State.LISTENING)  # lead 100 ms, quantum 40 ms, 20 ms frames
    d(TextReceived("one"), at=10.0)
    assert len(audio(d.frames(1, 10))) == 5  # the client holds 100 ms
    if paused:
        d(ControlReceived(PAUSE), at=10.005)
    d(ControlReceived(STOP), at=10.01)
    d(TextReceived("two"), at=10.01)
    d(SynthesisDone(1), at=10.01)
    assert [a.sequence for a in audio(d.frames(2, 10))] == [6, 7, 8, 9, 10]


def test_after_a_completed_utterance_the_next_waits_behind_what_the_client_holds() -> None:
    # The other side of the same rule: audio the client still plays counts in the lead.
    d = in_state(State.LISTENING)
    d(TextReceived("one"), at=10.0)
    assert len(audio(d.frames(1, 5))) == 5
    d(SynthesisDone(1), at=10.0)
    assert ends(d.log) == [(1, "completed", 5)]
    d(TextReceived("two"), at=10.005)
    assert audio(d.frames(2, 10)) == []  # 95 ms still ahead: nothing fits under the lead
    assert [a.sequence for a in audio(d(Tick(), at=10.04))] == [6, 7]


# -- worker events -------------------------------------------------------------------


def test_failure_mid_utterance_then_next_works() -> None:
    d = in_state(State.SPEAKING)
    d(TextReceived("next"))
    d.frames(1, 1)
    out = d(SynthesisFailed(1, "model crashed"))
    assert errors(out) == ["SYNTHESIS_FAILED"] and ends(out) == [(1, "error", 3)]
    assert BeginSynthesis(2) in out and d.m.state is State.SPEAKING
    assert audio(d.frames(1, 2)) == []  # fenced
    out = d.frames(2, 2) + d(SynthesisDone(2))
    assert [a.sequence for a in audio(out)] == [4, 5] and ends(out) == [(2, "completed", 2)]


def test_failure_of_only_utterance_returns_to_listening_and_unpauses_worker() -> None:
    d = in_state(State.PAUSED)
    out = d(SynthesisFailed(1, "boom"))
    assert states(out) == ["LISTENING"] and WorkerControl(RESUME) in out
    assert d(TextReceived("again"))[0] == BeginSynthesis(2)


def test_stale_and_unknown_worker_events_are_ignored() -> None:
    d = in_state(State.SPEAKING)
    assert d(WorkerFrame(7, PCM)) == [] and d(WorkerFrame(1, b"")) == []
    assert d(SynthesisDone(7)) == [] and d(SynthesisFailed(7, "x")) == []
    assert d.m.state is State.SPEAKING


# -- pacing and sequence -------------------------------------------------------------


def test_pacing_keeps_at_most_lead_ahead() -> None:
    d = Driver(cfg(send_quantum_ms=20))  # lead 100 ms, one frame a time
    d(Connected())
    d(TextReceived("long"), at=10.0)
    assert len(audio(d.frames(1, 20))) == 5
    assert d.m.next_deadline == pytest.approx(10.02)
    assert len(audio(d(Tick(), at=10.02))) == 1
    assert audio(d(Tick(), at=10.03)) == []
    assert len(audio(d(Tick(), at=10.1))) == 4  # caught up after a late tick
    d(SynthesisDone(1))
    assert ends(d.log) == []  # still frames to play out
    while (deadline := d.m.next_deadline) is not None and d.m.state is State.SPEAKING:
        d(Tick(), at=deadline)
    assert ends(d.log) == [(1, "completed", 20)]
    assert [a.sequence for a in audio(d.log)] == list(range(1, 21))


def test_pacing_releases_a_quantum_at_once_never_beyond_the_lead() -> None:
    d = in_state(State.LISTENING)  # lead 100 ms, quantum 40 ms, 20 ms frames
    d(TextReceived("long"), at=10.0)
    assert len(audio(d.frames(1, 30))) == 5  # filled up to the lead at once
    # The next wake-up: when two frames fit under the lead; both go together.
    assert d.m.next_deadline == pytest.approx(10.04)
    assert audio(d(Tick(), at=10.03)) == []
    assert [a.sequence for a in audio(d(Tick(), at=10.04))] == [6, 7]
    assert d.m.next_deadline == pytest.approx(10.08)
    # A late wake-up catches up, still only up to the lead.
    out = audio(d(Tick(), at=10.13))  # 130 ms played + 100 ms lead: 11 frames in all
    assert [a.sequence for a in out] == [8, 9, 10, 11]


def test_resume_of_reading_the_worker_waits_for_the_low_water_mark() -> None:
    d = Driver(cfg(max_frames=10))
    d(Connected())
    d(TextReceived("x"), at=0.0)
    d.frames(1, 15)  # 5 released, 10 buffered: full
    assert d.m.output_full and d.m.buffered_frames == 10
    d(Tick(), at=0.04)  # 2 released: 8 left, at the low-water mark (80 %)
    assert d.m.buffered_frames == 8 and not d.m.output_full
    d.frames(1, 2)
    assert d.m.output_full
    d(Tick(), at=0.08)  # 8 left: reading resumes
    assert not d.m.output_full
    d.frames(1, 1)  # 9: below the high-water mark, still reading
    assert not d.m.output_full and d.m.buffered_frames == 9


def test_output_full_signals_back_pressure() -> None:
    d = Driver(cfg(max_frames=3))
    d(Connected())
    d(TextReceived("x"))
    d.frames(1, 7)  # 5 sent at once
    assert not d.m.output_full
    d.frames(1, 1)
    assert d.m.output_full and d.m.buffered_frames == 3


RESTING_STATES = [State.INITIALIZING, State.LISTENING, State.SPEAKING, State.PAUSED]


# -- idle timeout, shutdown, disconnect -----------------------------------------------


def test_idle_timeout_only_when_listening_and_after_the_time() -> None:
    d = in_state(State.LISTENING)
    assert d.m.next_deadline == pytest.approx(30.0)
    assert d(Tick(), at=29.9) == []
    d(ControlReceived(STOP), at=29.9)  # a client message restarts the count
    assert d(Tick(), at=59.8) == []
    out = d(Tick(), at=59.9)
    assert msgs(out, "session_end") == [{"type": "session_end", "session_id": "s1",
                                         "reason": "idle_timeout"}]
    assert out[-1] == Close(1000, "idle timeout") and ReleaseWorker() not in out  # none held
    assert d.m.closed and d(Tick(), at=99.0) == []


@pytest.mark.parametrize("state", [State.INITIALIZING, State.SPEAKING, State.PAUSED])
def test_no_idle_timeout_unless_listening(state: State) -> None:
    d = in_state(state)
    assert msgs(d(Tick(), at=1000.0), "session_end") == []
    assert d.m.state is state


def test_idle_counted_from_entering_listening() -> None:
    d = in_state(State.SPEAKING)
    d(SynthesisDone(1), at=100.0)
    assert msgs(d(Tick(), at=129.0)) == [] and d.m.next_deadline == pytest.approx(130.0)
    assert msgs(d(Tick(), at=130.0), "session_end")


@pytest.mark.parametrize("state", RESTING_STATES)
def test_shutdown_from_every_state(state: State) -> None:
    d = in_state(state)
    out = d(ServerShutdown())
    assert [m["reason"] for m in msgs(out, "session_end")] == ["server_shutdown"]
    assert states(out) == ["CLOSED"] and out[-1] == Close(1001, "server shutdown")
    assert (ReleaseWorker() in out) is (state in (State.SPEAKING, State.PAUSED))
    if state in (State.SPEAKING, State.PAUSED):
        assert ends(out) == [(1, "interrupted", 2)]


@pytest.mark.parametrize("state", RESTING_STATES)
def test_disconnect_from_every_state_sends_nothing(state: State) -> None:
    d = in_state(state)
    out = d(ClientDisconnected())
    assert out == ([ReleaseWorker()] if state in (State.SPEAKING, State.PAUSED) else [])
    assert d.m.closed and d.m.next_deadline is None
