"""The session core's invariants: every event in every state, random event sequences
and timings (a fake clock). Helpers: ``tests/support/session_script.py``."""

from __future__ import annotations

import random

import pytest

from duplexvoice.orchestrator.sessions.events import (
    Action,
    BeginSynthesis,
    CancelReply,
    ClientDisconnected,
    Close,
    Connected,
    ControlReceived,
    Event,
    ReplyChunk,
    ReplyFailed,
    Send,
    SendAudio,
    ServerShutdown,
    StartReply,
    SynthesisDone,
    SynthesisFailed,
    TextReceived,
    Tick,
    UserSpeechEnded,
    UserSpeechPaused,
    UserSpeechResumed,
    UserSpeechStarted,
    UserTranscript,
    UserTurnScore,
    UserTyped,
    WorkerFrame,
)
from duplexvoice.orchestrator.sessions.machine import SessionConfig, State
from duplexvoice.orchestrator.sessions.playout import PlayoutConfig
from duplexvoice.wire.messages import UtteranceEnd
from tests.support.session_script import (
    PAUSE,
    PCM,
    RESUME,
    STOP,
    Driver,
    audio,
    in_state,
    msgs,
    states,
)

pytestmark = pytest.mark.unit


# -- every event in every resting state ----------------------------------------------

EVENTS: list[Event] = [
    Connected(), TextReceived("t"), TextReceived("t", is_final=False), ControlReceived(PAUSE),
    ControlReceived(RESUME), ControlReceived(STOP), WorkerFrame(1, PCM), WorkerFrame(99, PCM),
    SynthesisDone(1), SynthesisDone(99), SynthesisFailed(1, "x"), SynthesisFailed(99, "x"),
    Tick(), ClientDisconnected(), ServerShutdown(),
    UserSpeechStarted(), UserSpeechEnded(), UserTranscript(1, "hi", False),
    UserSpeechPaused(0.05), UserSpeechResumed(), UserTurnScore(1, 0.9),
    ReplyChunk(1, "hi"), ReplyFailed(1, "x"), UserTyped("hi"),
]
S = State
RESTING_ = [S.INITIALIZING, S.LISTENING, S.SPEAKING, S.PAUSED]
# The state after each event, per resting state: INITIALIZING, LISTENING, SPEAKING, PAUSED.
EXPECTED: dict[str, tuple[State, State, State, State]] = {
    "Connected()": (S.LISTENING, S.LISTENING, S.SPEAKING, S.PAUSED),
    "TextReceived(text='t', is_final=True)": (S.INITIALIZING, S.SPEAKING, S.SPEAKING,
                                              S.PAUSED),
    "TextReceived(text='t', is_final=False)": (S.INITIALIZING, S.SPEAKING, S.SPEAKING,
                                               S.PAUSED),
    "ControlReceived(command=<Command.PAUSE: 'PAUSE'>)": (S.INITIALIZING, S.LISTENING,
                                                          S.PAUSED, S.PAUSED),
    "ControlReceived(command=<Command.RESUME: 'RESUME'>)": (S.INITIALIZING, S.LISTENING,
                                                            S.SPEAKING, S.SPEAKING),
    "ControlReceived(command=<Command.STOP: 'STOP'>)": (S.INITIALIZING, S.LISTENING,
                                                        S.LISTENING, S.LISTENING),
    "WorkerFrame(utterance_id=1, pcm=...)": (S.INITIALIZING, S.LISTENING, S.SPEAKING,
                                             S.PAUSED),
    "WorkerFrame(utterance_id=99, pcm=...)": (S.INITIALIZING, S.LISTENING, S.SPEAKING,
                                              S.PAUSED),
    "SynthesisDone(utterance_id=1)": (S.INITIALIZING, S.LISTENING, S.LISTENING, S.PAUSED),
    "SynthesisDone(utterance_id=99)": (S.INITIALIZING, S.LISTENING, S.SPEAKING, S.PAUSED),
    "SynthesisFailed(utterance_id=1, message='x', code=<ErrorCode.SYNTHESIS_FAILED: "
    "'SYNTHESIS_FAILED'>)": (S.INITIALIZING, S.LISTENING, S.LISTENING, S.LISTENING),
    "SynthesisFailed(utterance_id=99, message='x', code=<ErrorCode.SYNTHESIS_FAILED: "
    "'SYNTHESIS_FAILED'>)": (S.INITIALIZING, S.LISTENING, S.SPEAKING, S.PAUSED),
    "Tick()": (S.INITIALIZING, S.LISTENING, S.SPEAKING, S.PAUSED),
    "ClientDisconnected()": (S.CLOSED,) * 4,
    "ServerShutdown()": (S.CLOSED,) * 4,
    # Speech over the system's speech holds it (over a client PAUSE too).
    "UserSpeechStarted(lead_s=0.0)": (S.INITIALIZING, S.LISTENING, S.BARGED_IN, S.BARGED_IN),
    "UserSpeechEnded(silence_s=0.0, checking_words=False)": tuple(RESTING_),
    "UserSpeechPaused(silence_s=0.05)": tuple(RESTING_),
    "UserSpeechResumed()": tuple(RESTING_),
    "UserTranscript(turn=1, text='hi', final=False)": tuple(RESTING_),
    "UserTurnScore(turn=1, p_complete=0.9)": tuple(RESTING_),
    "ReplyChunk(turn=1, text='hi', final=False)": tuple(RESTING_),
    # A typed turn takes the floor (the system's speech is interrupted); its reply is due.
    "UserTyped(text='hi')": (S.INITIALIZING, S.SPEAKING, S.SPEAKING, S.SPEAKING),
    "ReplyFailed(turn=1, message='x', code=<ErrorCode.REPLY_FAILED: 'REPLY_FAILED'>)":
        tuple(RESTING_),
}
RESTING = [S.INITIALIZING, S.LISTENING, S.SPEAKING, S.PAUSED]


def _key(event: Event) -> str:
    return repr(event).replace(f"pcm={PCM!r}", "pcm=...")


def test_table_covers_every_event_type() -> None:
    assert {type(e) for e in EVENTS} == set(Event.__subclasses__())
    assert {_key(e) for e in EVENTS} == set(EXPECTED)


@pytest.mark.parametrize("state", RESTING)
@pytest.mark.parametrize("event", EVENTS, ids=_key)
def test_every_event_in_every_state(state: State, event: Event) -> None:
    d = in_state(state)
    out = d(event)  # never raises
    assert d.m.state is EXPECTED[_key(event)][RESTING.index(state)]
    assert all(isinstance(a, Action) for a in out)
    if d.m.state is not state and not d.m.closed:
        assert states(out)[-1] == d.m.state.value  # every change is announced


@pytest.mark.parametrize("event", EVENTS, ids=_key)
def test_everything_is_ignored_after_close(event: Event) -> None:
    d = in_state(State.CLOSED)
    assert d(event) == [] and d.m.closed


# -- randomized invariants -----------------------------------------------------------


def _random_event(rng: random.Random, d: Driver) -> Event:
    uid = d.m.current_utterance or rng.randint(1, 3)
    uid = rng.choice([uid, uid, uid + 1, max(1, uid - 1)])
    turn = rng.choice([d.m.turn, d.m.turn, max(0, d.m.turn - 1)])
    return rng.choices(
        [TextReceived(rng.choice(["word", "..."]), is_final=rng.random() < 0.7),
         ControlReceived(rng.choice([PAUSE, RESUME, STOP])), WorkerFrame(uid, PCM),
         SynthesisDone(uid), SynthesisFailed(uid, "x"), Tick(), ClientDisconnected(),
         ServerShutdown(), UserSpeechStarted(), UserSpeechEnded(rng.choice([0.0, 0.1])),
         rng.choice([UserSpeechPaused(0.05), UserSpeechResumed()]),
         UserTranscript(turn, rng.choice(["", "hello there.", "and"]), rng.random() < 0.6),
         UserTurnScore(turn, rng.random()),
         ReplyChunk(turn, rng.choice(["Sure, ", "", "okay."]), rng.random() < 0.3),
         ReplyFailed(turn, "x"), UserTyped(rng.choice(["hi", "?"]))],
        weights=[8, 4, 40, 6, 1, 12, 0.05, 0.05, 3, 3, 2, 4, 2, 5, 0.3, 0.5],
    )[0]


@pytest.mark.parametrize("seed", range(40))
def test_random_sequences_keep_invariants(seed: int) -> None:
    rng = random.Random(seed)
    d = Driver(SessionConfig("s1", idle_timeout_s=5.0, max_queued_utterances=2))
    d(Connected())
    begun: set[int] = set()
    ended: list[int] = []
    closed_at: int | None = None
    disconnected = False
    text_uids: set[int] = set()  # utterances the client's texts opened
    announced: set[int] = set()  # replies whose ``reply`` message went out
    paused: set[int] = set()  # held by a ``pause`` until ``resume`` or their end
    replying: set[int] = set()  # turns whose reply was asked for
    cancelled: set[int] = set()  # reply utterances whose history was cut
    for step in range(401):
        event = _random_event(rng, d) if step < 400 else ServerShutdown()
        disconnected |= isinstance(event, ClientDisconnected) and not d.m.closed
        if isinstance(event, ReplyChunk) and event.turn not in replying:
            event = Tick()  # a reply engine only answers what it was asked
        next_id = d.m.next_utterance_id
        out = d(event, at=d.now + rng.choice([0.0, 0.005, 0.02, 0.02, 0.1, 1.0]))
        if isinstance(event, TextReceived) and d.m.next_utterance_id > next_id:
            text_uids.add(next_id)
        if closed_at is not None:
            assert out == []  # nothing after Close
        for a in out:
            if isinstance(a, BeginSynthesis):
                begun.add(a.utterance_id)
            if isinstance(a, StartReply):
                replying.add(a.turn)
            if isinstance(a, CancelReply) and a.utterance_id is not None:
                assert a.utterance_id not in cancelled  # one history cut per utterance
                cancelled.add(a.utterance_id)
            if isinstance(a, SendAudio):
                assert a.utterance_id not in ended  # no audio of a fenced utterance
                assert a.utterance_id not in paused  # none while the client holds it
                # A speculative reply is heard only once announced.
                assert a.utterance_id in text_uids or a.utterance_id in announced
            if isinstance(a, Send):
                wire = a.message.to_wire()
                uid = wire.get("utterance_id")
                if wire["type"] == "reply":
                    announced.add(uid)
                elif wire["type"] == "pause":
                    assert uid not in paused
                    paused.add(uid)
                elif wire["type"] == "resume":
                    paused.remove(uid)
                elif wire["type"] == "interrupt":
                    paused.discard(uid)
            if isinstance(a, Send) and isinstance(a.message, UtteranceEnd):
                ended.append(a.message.utterance_id)
                paused.discard(a.message.utterance_id)
        if any(isinstance(a, Close) for a in out):
            assert isinstance(out[-1], Close)
            closed_at = len(d.log)
    seqs = [a.sequence for a in audio(d.log)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(ended) == len(set(ended))  # at most one utterance_end each
    assert len(msgs(d.log, "session_end")) <= 1
    assert sum(isinstance(a, Close) for a in d.log) <= 1
    if d.m.closed and not disconnected:
        # Every utterance the client heard of was ended exactly once (a speculative
        # reply dropped before its announcement never existed for the client).
        assert begun & (text_uids | announced) <= set(ended)
    for a in audio(d.log):  # frames counted in utterance_end match audio sent
        assert a.utterance_id in begun
    counts = {m["utterance_id"]: m["frames"] for m in msgs(d.log, "utterance_end")}
    for uid, n in counts.items():
        assert n == sum(a.utterance_id == uid for a in audio(d.log))


@pytest.mark.parametrize("seed", range(20))
def test_random_timing_never_runs_ahead_of_the_lead(seed: int) -> None:
    # Frames and Ticks at random times (late Ticks included): whatever is sent, the
    # client never holds more than lead_ms.
    rng = random.Random(seed)
    playout = PlayoutConfig(lead_ms=rng.choice([40, 100, 200]),
                            send_quantum_ms=rng.choice([20, 40]))
    d = Driver(SessionConfig("s1", playout=playout))
    d(Connected())
    d(TextReceived("long"), at=1.0)
    client_end = 1.0  # when the client will have played everything it got
    for _ in range(300):
        if rng.random() < 0.5:
            event: Event = WorkerFrame(1, PCM)
        else:
            deadline = d.m.next_deadline
            event = Tick()
            at = max(d.now, (deadline or d.now) + rng.choice([0.0, 0.0, 0.001, 0.03]))
            d.now = at
        for _ in audio(d(event)):
            client_end = max(client_end, d.now) + 0.02
            assert client_end - d.now <= playout.lead_ms / 1000 + 1e-6
