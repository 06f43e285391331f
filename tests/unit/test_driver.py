"""The session driver against fakes (tests/support/fake_orchestrator.py): a fake
registry, a fake worker pool with failure knobs, a fake client recording what it got.

No sockets, no processes. Every wait is on what the client got or what the worker
side saw, each with a deadline (``TIMEOUT_S``); none sleeps to let time pass. The
driver's own clock runs for real: lead 40 ms, a linger of 50 ms, frames of 20 ms,
so a whole utterance takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.orchestrator.conversation_config import ConversationConfig
from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions.driver import SessionDriver
from duplexvoice.orchestrator.sessions.output import SendAudio
from duplexvoice.orchestrator.sessions.settings import SessionSettings
from duplexvoice.orchestrator.sessions.shared import ConversationServices
from duplexvoice.orchestrator.sessions.turns import TurnConfig
from duplexvoice.orchestrator.workers.link import (
    WorkerBusy,
    WorkerError,
    WorkerRejected,
    WorkerUnavailable,
)
from duplexvoice.orchestrator.workers.router import WorkerInfo
from duplexvoice.replies import EchoEngine, History, ReplyStream
from duplexvoice.speech.vad import VadConfig
from duplexvoice.wire.messages import Command, Error, ErrorCode, Outbound
from duplexvoice.wire.protocol import (
    AudioInput,
    ClientMessage,
    ConfigMessage,
    ControlMessage,
    PlaybackMessage,
    TextMessage,
    UserTextMessage,
)
from tests.support.eventually import eventually
from tests.support.fake_listening import (
    FakeTranscriber,
    fake_services,
    silence_pcm,
    speech_pcm,
)
from tests.support.fake_orchestrator import (
    TIMEOUT_S,
    FakeClient,
    FakeRegistry,
    FakeWorkerPool,
    FakeWorkerSession,
    frame_pcm,
    worker_info,
)

pytestmark = pytest.mark.unit


class RecordingEcho(EchoEngine):
    """The echo engine, noting the history each reply was asked with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[tuple[str, str]]] = []

    def reply(self, history: History, user_text: str) -> ReplyStream:
        self.seen.append([(t.role, t.text) for t in history.turns])
        return super().reply(history, user_text)

BASE = {"lead_ms": 40, "worker_linger_s": 0.05, "idle_timeout_s": 3600.0}
PAUSE, RESUME, STOP = Command.PAUSE, Command.RESUME, Command.STOP


class Harness:
    """One driver, its fakes, and its ``run()`` task."""

    def __init__(self, workers: list[WorkerInfo] | None = None,
                 services: ConversationServices | None = None, **config: Any) -> None:
        self.log: list[tuple[str, str]] = []  # client and worker sides, in order
        if services is not None:
            config["conversation"] = services.config
        orch_config = OrchestratorConfig(**{**BASE, **config})
        settings = SessionSettings(voice=orch_config.default_voice)
        self.client = FakeClient(self.log, settings)
        self.pool = FakeWorkerPool(self.log)
        self.registry = FakeRegistry(workers or [worker_info("w1", models=("m1", "m2"))])
        self.metrics = OrchestratorMetrics()
        self.driver = SessionDriver(
            "s1", orch_config, self.registry, self.pool, self.metrics,
            output=self.client, settings=settings, services=services)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self.driver.run())
        await self.client.wait_for("state", state="LISTENING")

    async def send(self, message: ClientMessage) -> None:
        """A message from the client (the reader waits while the inbox is full)."""
        await asyncio.wait_for(self.driver.client_message(message), TIMEOUT_S)

    async def say(self, text: str, is_final: bool = True) -> None:
        await self.send(TextMessage(text, is_final))

    async def control(self, command: Command) -> None:
        await self.send(ControlMessage(command))

    async def ended(self) -> None:
        """``run()`` returned (it must, by itself) without an exception."""
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), TIMEOUT_S)

    async def leave(self) -> None:
        """The client leaves; ``run()`` returns; background clean-ups are done."""
        self.driver.client_gone()
        await self.ended()
        await self.pool.close()

    def session(self, n: int = 0) -> FakeWorkerSession:
        return self.pool.opened[n]

    async def frames(self, n: int, utterance_id: int | None = None) -> None:
        await self.client.wait(lambda c: len(c.audio(utterance_id)) >= n, f"{n} audio frames")

    async def session_ended(self, session: FakeWorkerSession) -> None:
        await self.pool.wait(lambda: session.ended, f"worker session {session.session_id} ended")


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def factory(workers: list[WorkerInfo] | None = None,
                      services: ConversationServices | None = None, **config: Any) -> Harness:
        harness = Harness(workers, services, **config)
        made.append(harness)
        await harness.start()
        return harness

    yield factory
    hung = []
    for harness in made:  # a failed test must not leave a session running
        task = harness.task
        if task is not None and not task.done():
            harness.driver.client_gone()
            await asyncio.wait({task}, timeout=TIMEOUT_S)
            if not task.done():
                hung.append(harness.driver.session_id)
                await cancel(task)
    assert not hung, f"run() did not return after client_gone: {hung}"


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, TIMEOUT_S)


def assert_each_session_ended_once(h: Harness) -> None:
    for session in h.pool.opened:
        assert session.ended, session.session_id
        assert session.end_sent == (0 if session.broken else 1), session.session_id
    assert h.pool.held == 0


# -- speaking ----------------------------------------------------------------------


async def test_a_text_is_spoken_then_the_worker_session_is_given_back(make: Any) -> None:
    h = await make()
    await h.say("hello")
    end = await h.client.wait_for("utterance_end")
    await h.client.wait_for("state", 2, state="LISTENING")
    assert h.client.types() == (["session_start", "state", "state"] + ["audio"] * 5
                                + ["utterance_end", "metrics", "state"])
    assert h.client.of_type("session_start")[0]["session_id"] == "s1"
    # Typed to the transport, which encodes (here as the WebSocket does): no wire text.
    assert all(isinstance(item, SendAudio | Outbound) for item in h.client.items)
    assert [type(item) for item in h.client.items].count(SendAudio) == 5
    assert h.client.states() == ["LISTENING", "SPEAKING", "LISTENING"]
    audio = h.client.audio()
    assert [a["sequence"] for a in audio] == [1, 2, 3, 4, 5]
    assert {(a["utterance_id"], a["format"], a["sample_rate"], a["frame_ms"]) for a in audio} \
        == {(1, "json", 48_000, 20)}
    assert [a["pcm"] for a in audio] == [frame_pcm(i) for i in range(5)]
    assert end == {"type": "utterance_end", "utterance_id": 1, "reason": "completed",
                   "frames": 5}
    metrics = h.client.of_type("metrics")[0]
    assert metrics["utterance_id"] == 1 and metrics["first_audio_ms"] >= 0
    # The worker: one session, on the first offered model, given the text once.
    assert h.pool.open_calls == [("w1", "s1", "m1")]
    session = h.session()
    assert session.texts == [("hello", True)]
    # ... given back after the linger, once, having been offered as idle meanwhile.
    await h.session_ended(session)
    assert (session.session_id, True) in h.pool.idle_log
    assert_each_session_ended_once(h)
    assert h.metrics.utterances_total.value == 1
    assert h.metrics.frames_sent_total.value == 5
    assert h.metrics.first_audio_ms.count == 1
    assert h.task is not None and not h.task.done()  # the session itself goes on
    await h.leave()


async def test_a_connected_silent_session_takes_no_worker(make: Any) -> None:
    # Catches capacity taken at connect (a silent client holding a worker session).
    h = await make()
    await h.control(PAUSE)  # answered by the loop: every event before it is handled
    error = await h.client.wait_for("error")
    assert error["code"] == "INVALID_STATE"
    assert h.pool.open_calls == [] and not h.driver.machine.worker_held
    await h.leave()
    assert h.pool.opened == [] and h.pool.held == 0


async def test_within_the_linger_the_next_text_reuses_the_session_and_sequences_go_on(
        make: Any) -> None:
    h = await make(worker_linger_s=3600)
    await h.say("one")
    await h.client.wait_for("utterance_end", utterance_id=1)
    session = h.session()
    await h.pool.wait(lambda: session.session_id in h.pool.idle, "held session offered idle")
    await h.say("two")
    await h.client.wait_for("utterance_end", utterance_id=2, reason="completed")
    assert len(h.pool.open_calls) == 1  # no second StartSession
    assert session.streams == 2
    await h.pool.wait(lambda: session.session_id in h.pool.idle, "offered idle again")
    sid = session.session_id
    # Told on changes only (a new session starts busy): idle, busy for "two", idle.
    assert h.pool.idle_log == [(sid, True), (sid, False), (sid, True)]
    audio = h.client.audio()
    assert [a["sequence"] for a in audio] == list(range(1, 11))  # session-wide, gapless
    assert [a["utterance_id"] for a in audio] == [1] * 5 + [2] * 5
    assert not session.ended
    await h.leave()
    assert_each_session_ended_once(h)


async def test_queued_texts_are_spoken_in_order_one_stream_at_a_time(make: Any) -> None:
    h = await make()
    for text in ("one", "two", "three"):
        await h.say(text)
    await h.client.wait_for("utterance_end", utterance_id=3, reason="completed")
    audio = h.client.audio()
    assert [a["utterance_id"] for a in audio] == [1] * 5 + [2] * 5 + [3] * 5
    assert [a["sequence"] for a in audio] == list(range(1, 16))
    assert [a["pcm"] for a in audio] == [frame_pcm(i) for i in range(15)]
    assert [(e["utterance_id"], e["reason"]) for e in h.client.of_type("utterance_end")] \
        == [(1, "completed"), (2, "completed"), (3, "completed")]
    assert h.session().texts == [("one", True), ("two", True), ("three", True)]
    await h.leave()
    assert_each_session_ended_once(h)


async def test_the_end_of_a_stream_never_overtakes_its_frames(make: Any) -> None:
    # The worker's whole utterance (frames, then the end of its stream) arrives while
    # the session is busy writing to the client. Catches the end of the stream taken
    # as an input, ahead of the frames still queued: utterance_end "completed" early
    # and the tail of the utterance dropped as stale (a bug, fixed in driver.py).
    h = await make()
    h.client.hold_audio = True
    await h.say("hello")
    await asyncio.wait_for(h.client.holding.wait(), TIMEOUT_S)
    session = h.session()
    await h.pool.wait(lambda: session.streams_closed == 1, "the worker's stream over")
    h.client.release()
    end = await h.client.wait_for("utterance_end", utterance_id=1)
    assert (end["reason"], end["frames"]) == ("completed", 5)
    assert [a["pcm"] for a in h.client.audio()] == [frame_pcm(i) for i in range(5)]
    await h.leave()


# -- the client leaves -------------------------------------------------------------


async def test_leaving_while_start_session_is_in_flight(make: Any) -> None:
    # Catches run() waiting for a StartSession that never answers, and an open left
    # running after the session is gone (a leaked worker session).
    h = await make()
    h.pool.open_gate = asyncio.Event()  # never set: the worker never answers
    await h.say("hello")
    await h.pool.wait(lambda: h.pool.open_calls, "StartSession sent")
    await h.leave()
    assert h.pool.cancelled_opens == 1
    assert h.pool.opened == [] and h.pool.held == 0


@pytest.mark.parametrize("answer_first", [True, False], ids=["answer-then-leave",
                                                             "leave-then-answer"])
async def test_leaving_just_as_start_session_answers(make: Any, answer_first: bool) -> None:
    h = await make()
    gate = h.pool.open_gate = asyncio.Event()
    await h.say("hello")
    await h.pool.wait(lambda: h.pool.open_calls, "StartSession sent")
    if answer_first:
        gate.set()
        h.driver.client_gone()
    else:
        h.driver.client_gone()
        gate.set()
    await h.ended()
    await h.pool.close()
    assert_each_session_ended_once(h)
    assert len(h.pool.opened) + h.pool.cancelled_opens == 1


async def test_leaving_mid_stream_ends_the_worker_session_once(make: Any) -> None:
    h = await make()
    h.pool.allowed_frames = 2  # then the worker is slow: more audio on its way
    await h.say("hello")
    await h.frames(2)
    session = h.session()
    await h.leave()
    assert session.streams_closed == 1  # the Synthesize stream was cancelled
    assert session.end_calls >= 1
    assert_each_session_ended_once(h)
    assert h.client.closed == []  # nobody to close: the transport's socket is gone


async def test_run_cancelled_mid_stream_still_ends_the_worker_session(make: Any) -> None:
    # The transport cancels run() when it does not return in time: the worker session
    # must be given back all the same (catches a clean-up only on the machine's path).
    h = await make()
    h.pool.allowed_frames = 2
    await h.say("hello")
    await h.frames(2)
    session = h.session()
    assert h.task is not None
    h.task.cancel()
    await asyncio.wait({h.task}, timeout=TIMEOUT_S)
    assert h.task.cancelled()
    await h.session_ended(session)
    await h.pool.close()
    assert session.streams_closed == 1
    assert_each_session_ended_once(h)


async def test_a_client_too_slow_to_read_ends_run_with_the_error_and_no_leak(
        make: Any) -> None:
    # WebSocketOutput raises TimeoutError for a client that reads nothing: run() ends with
    # it (the transport then closes 1008), and the worker session is given back.
    h = await make()
    h.pool.allowed_frames = 2
    await h.say("hello")
    await h.frames(2)
    session = h.session()
    h.client.fail_with = TimeoutError()
    session.allow(3)
    assert h.task is not None
    await asyncio.wait({h.task}, timeout=TIMEOUT_S)
    assert h.task.done() and isinstance(h.task.exception(), TimeoutError)
    await h.session_ended(session)
    await h.pool.close()
    assert_each_session_ended_once(h)


async def test_shutdown_mid_stream_tells_the_client_and_ends_everything(make: Any) -> None:
    h = await make()
    h.pool.allowed_frames = 2
    await h.say("hello")
    await h.frames(2)
    mark = len(h.client.messages)
    h.driver.shutdown()
    await h.ended()
    await h.pool.close()
    assert h.client.types(mark) == ["utterance_end", "metrics", "state", "session_end"]
    end = h.client.messages[mark]
    assert (end["utterance_id"], end["reason"], end["frames"]) == (1, "interrupted", 2)
    assert h.client.messages[-1]["reason"] == "server_shutdown"
    assert h.client.states()[-1] == "CLOSED"
    assert h.client.closed == [(1001, "server shutdown")]
    assert_each_session_ended_once(h)


async def test_an_idle_session_is_closed(make: Any) -> None:
    h = await make(idle_timeout_s=0.2)
    await h.ended()
    assert h.client.of_type("session_end")[0]["reason"] == "idle_timeout"
    assert h.client.closed == [(1000, "idle timeout")]
    assert h.pool.open_calls == []


# -- controls ----------------------------------------------------------------------


async def test_stop_mid_utterance_interrupts_first_and_fences_late_frames(make: Any) -> None:
    # Catches audio after the interrupt (frames the worker sent before it saw STOP),
    # and the worker told before the client (the client's interrupt is what the
    # stop latency is measured to).
    h = await make()
    h.pool.frames = 10
    h.pool.allowed_frames = 3
    h.pool.frames_after_stop = 2  # already on the wire when the worker got STOP
    await h.say("hello")
    await h.frames(3)  # all released: nothing left to pace out
    mark = len(h.client.messages)
    await h.control(STOP)
    await h.client.wait_for("utterance_end", utterance_id=1)
    session = h.session()
    await h.session_ended(session)  # after the stream ended: every late frame handled
    assert session.produced == 5
    # docs/protocol.md: interrupt before anything else; metrics after each
    # utterance_end whose audio started.
    assert h.client.types(mark) == ["interrupt", "utterance_end", "metrics", "state"]
    interrupt, end, _, state = h.client.messages[mark:]
    assert (interrupt["utterance_id"], interrupt["reason"]) == (1, "stopped")
    assert (end["utterance_id"], end["reason"], end["frames"]) == (1, "stopped", 3)
    assert state["state"] == "LISTENING"
    assert session.controls == [STOP]
    assert h.log.index(("client", "interrupt")) < h.log.index(("worker", "Control STOP"))
    assert h.metrics.stop_latency_ms.count == 1
    await h.leave()
    assert_each_session_ended_once(h)


async def test_stop_while_start_session_is_in_flight_cancels_it_and_the_session_goes_on(
        make: Any) -> None:
    # Catches a STOP that waits for the StartSession (up to its deadline), and a
    # session stuck SPEAKING because no end of stream was reported for the utterance.
    h = await make()
    gate = h.pool.open_gate = asyncio.Event()
    await h.say("hello")
    await h.pool.wait(lambda: h.pool.open_calls, "StartSession sent")
    await h.control(STOP)
    await h.client.wait_for("utterance_end", utterance_id=1)
    await h.client.wait_for("state", 2, state="LISTENING")
    assert h.client.types(3) == ["interrupt", "utterance_end", "state"]
    assert h.client.of_type("utterance_end")[0]["reason"] == "stopped"
    assert h.pool.cancelled_opens == 1 and h.pool.held == 0
    gate.set()
    await h.say("again")
    await h.client.wait_for("utterance_end", utterance_id=2, reason="completed")
    assert len(h.client.audio(2)) == 5
    await h.leave()
    assert_each_session_ended_once(h)


async def test_pause_resume_stop_reach_the_worker_in_order_without_holding_up_the_client(
        make: Any) -> None:
    # The worker answers Control slowly (a dead worker waits for the deadline): the
    # client's controls are still handled at once, and the worker gets them in order.
    h = await make()
    h.pool.allowed_frames = 2
    await h.say("hello")
    await h.frames(2)
    h.pool.control_gate = asyncio.Event()
    await h.control(PAUSE)
    await h.client.wait_for("state", state="PAUSED")
    await h.control(RESUME)
    await h.client.wait_for("state", 2, state="SPEAKING")
    await h.control(STOP)
    await h.client.wait_for("utterance_end", utterance_id=1, reason="stopped")
    session = h.session()
    assert session.controls == [PAUSE]  # the others wait behind the first answer
    h.pool.control_gate.set()
    await h.pool.wait(lambda: len(session.controls) == 3, "three Control calls")
    assert session.controls == [PAUSE, RESUME, STOP]
    assert h.client.states() == ["LISTENING", "SPEAKING", "PAUSED", "SPEAKING", "LISTENING"]
    await h.leave()
    assert_each_session_ended_once(h)


async def test_pause_holds_the_audio_and_resume_plays_the_rest(make: Any) -> None:
    # Catches audio sent while paused (frames the worker produced before it took the
    # PAUSE in) and audio lost across the pause.
    h = await make()
    h.pool.allowed_frames = 2
    await h.say("hello")
    await h.frames(2)
    h.pool.control_gate = asyncio.Event()  # the worker has not taken the PAUSE in yet
    await h.control(PAUSE)
    await h.client.wait_for("state", state="PAUSED")
    session = h.session()
    session.allow(3)  # ... and goes on producing meanwhile
    await eventually(lambda: h.driver.machine.buffered_frames == 3, timeout=TIMEOUT_S,
                     what="the 3 frames held by the driver")
    assert len(h.client.audio()) == 2
    h.pool.control_gate.set()
    await h.control(RESUME)
    end = await h.client.wait_for("utterance_end", utterance_id=1)
    assert (end["reason"], end["frames"]) == ("completed", 5)
    assert [a["pcm"] for a in h.client.audio()] == [frame_pcm(i) for i in range(5)]
    assert [a["sequence"] for a in h.client.audio()] == [1, 2, 3, 4, 5]
    await h.pool.wait(lambda: session.controls == [PAUSE, RESUME], "PAUSE, RESUME sent")
    assert h.client.types()[-3:] == ["utterance_end", "metrics", "state"]
    await h.leave()


async def test_a_failing_control_call_never_ends_the_session(make: Any) -> None:
    h = await make()
    h.pool.allowed_frames = 2
    h.pool.control_error = WorkerRejected("w1", "session unknown")
    await h.say("hello")
    await h.frames(2)
    await h.control(PAUSE)
    await h.client.wait_for("state", state="PAUSED")
    await h.control(RESUME)
    h.session().allow(3)
    await h.client.wait_for("utterance_end", utterance_id=1, reason="completed")
    await h.pool.wait(lambda: h.metrics.worker_errors_total.value == 2, "both calls failed")
    assert h.client.of_type("error") == []  # worker trouble, not the client's
    await h.leave()


async def test_inputs_are_handled_before_queued_audio(make: Any) -> None:
    # A long lead: every frame the driver takes is sent at once, so the frames it
    # handles before the STOP are exactly the frames the client gets before the
    # interrupt. The client's socket is held on the first frame while the worker fills
    # the driver's queue; the STOP comes in behind ~64 frames. Taken in arrival order,
    # they would all reach the client before the interrupt.
    h = await make(lead_ms=2000)
    h.pool.frames = 300
    h.client.hold_audio = True
    await h.say("hello")
    await asyncio.wait_for(h.client.holding.wait(), TIMEOUT_S)
    session = h.session()
    await h.pool.wait(lambda: session.produced >= 60, "the worker ran 60 frames ahead")
    await h.control(STOP)
    h.client.release()
    await h.client.wait_for("utterance_end", utterance_id=1)
    types = h.client.types()
    before = types[:types.index("interrupt")]
    assert before.count("audio") == 1  # the frame whose write was held
    assert "audio" not in types[types.index("interrupt"):]
    assert session.produced >= 60
    await h.leave()


# -- failures ----------------------------------------------------------------------


@pytest.mark.parametrize("error", [WorkerUnavailable("w1", "connection refused"),
                                   WorkerBusy("w1", "full")],
                         ids=lambda e: type(e).__name__)
async def test_an_unreachable_or_full_worker_is_skipped_for_the_next_one(
        make: Any, error: WorkerError) -> None:
    h = await make([worker_info("w1"), worker_info("w2")])
    h.pool.open_errors = [error]
    await h.say("one")
    await h.client.wait_for("utterance_end", utterance_id=1, reason="completed")
    assert len(h.client.audio(1)) == 5 and h.client.of_type("error") == []
    assert [call[0] for call in h.pool.open_calls] == ["w1", "w2"]
    assert h.metrics.utterances_failed_total.value == 0
    await h.leave()
    assert_each_session_ended_once(h)


@pytest.mark.parametrize("error", [WorkerUnavailable("w1", "connection refused"),
                                   WorkerBusy("w1", "full"),
                                   WorkerRejected("w1", "unknown model")],
                         ids=lambda e: type(e).__name__)
async def test_start_session_failing_fails_the_utterance_not_the_session(
        make: Any, error: WorkerError) -> None:
    h = await make([worker_info("w1")])
    h.pool.open_errors = [error]
    await h.say("one")
    end = await h.client.wait_for("utterance_end", utterance_id=1)
    assert (end["reason"], end["frames"]) == ("error", 0)
    assert h.client.types(3) == ["error", "utterance_end", "state"]
    failure = h.client.of_type("error")[0]
    assert failure["code"] == "WORKER_UNAVAILABLE"
    assert error.message in failure["message"]
    if isinstance(error, WorkerUnavailable):
        h.pool.back.add("w1")  # it answers again: the next utterance speaks there
    await h.say("two")
    await h.client.wait_for("utterance_end", utterance_id=2, reason="completed")
    assert len(h.client.audio(2)) == 5
    assert [call[0] for call in h.pool.open_calls] == ["w1", "w1"]
    assert h.metrics.utterances_failed_total.value == 1
    assert h.metrics.worker_errors_total.value == 1
    await h.leave()
    assert_each_session_ended_once(h)


async def test_no_worker_to_route_to_fails_the_utterance_and_a_later_one_speaks(
        make: Any) -> None:
    h = await make()
    h.pool.down.add("w1")
    await h.say("one")
    await h.client.wait_for("utterance_end", utterance_id=1, reason="error")
    failure = h.client.of_type("error")[0]
    assert failure["code"] == "WORKER_UNAVAILABLE" and "excluded" in failure["message"]
    assert h.pool.open_calls == []
    h.pool.down.clear()  # it answers again
    await h.say("two")
    await h.client.wait_for("utterance_end", utterance_id=2, reason="completed")
    await h.leave()


async def test_synthesis_failing_mid_stream_takes_a_new_session_next_time(make: Any) -> None:
    # Catches a broken worker session reused (every later utterance failing too).
    h = await make([worker_info("w1"), worker_info("w2")])
    h.pool.fail_next_stream = (2, WorkerUnavailable("w1", "connection reset"))
    await h.say("one")
    end = await h.client.wait_for("utterance_end", utterance_id=1)
    failure = h.client.of_type("error")[0]
    assert failure["code"] == "SYNTHESIS_FAILED" and "connection reset" in failure["message"]
    assert end["reason"] == "error"
    assert end["frames"] == len(h.client.audio(1))  # what it got, no more
    broken = h.session()
    assert broken.broken
    await h.say("two")
    await h.client.wait_for("utterance_end", utterance_id=2, reason="completed")
    assert len(h.pool.opened) == 2 and h.session(1) is not broken
    assert [call[0] for call in h.pool.open_calls] == ["w1", "w2"]
    assert broken.ended and broken.end_sent == 0  # nothing sent to a dead worker
    end_at = h.client.messages.index(end)
    assert not [m for m in h.client.messages[end_at:]
                if m["type"] == "audio" and m["utterance_id"] == 1]
    await h.leave()
    assert_each_session_ended_once(h)


async def test_synthesis_refused_mid_stream_fails_the_utterance_only(make: Any) -> None:
    h = await make()
    h.pool.fail_next_stream = (1, WorkerRejected("w1", "model failed"))
    await h.say("one")
    await h.client.wait_for("utterance_end", utterance_id=1, reason="error")
    assert h.client.of_type("error")[0]["code"] == "SYNTHESIS_FAILED"
    await h.say("two")
    await h.client.wait_for("utterance_end", utterance_id=2, reason="completed")
    await h.leave()
    assert_each_session_ended_once(h)


# -- configuration -----------------------------------------------------------------


async def test_a_voice_not_offered_is_refused_and_nothing_changes(make: Any) -> None:
    h = await make(worker_linger_s=3600)
    await h.send(ConfigMessage(voice="nope", output_format="binary"))
    error = await h.client.wait_for("error")
    assert error["code"] == "INVALID_CONFIG" and "m1, m2" in error["message"]
    assert h.driver.settings.voice == ""
    await h.say("one")
    await h.client.wait_for("utterance_end", utterance_id=1, reason="completed")
    assert {a["format"] for a in h.client.audio()} == {"json"}  # the format was refused too
    assert h.pool.open_calls == [("w1", "s1", "m1")]
    # An offered voice applies from the next utterance: a session on that model.
    await h.send(ConfigMessage(voice="m2"))
    await h.say("two")
    await h.client.wait_for("utterance_end", utterance_id=2, reason="completed")
    assert [call[2] for call in h.pool.open_calls] == ["m1", "m2"]
    assert h.session(0).ended and not h.session(1).ended
    assert len(h.client.of_type("error")) == 1
    await h.leave()
    assert_each_session_ended_once(h)


async def test_binary_output_applies_from_the_next_utterance(make: Any) -> None:
    h = await make(worker_linger_s=3600)
    h.pool.allowed_frames = 2
    await h.say("one")
    await h.frames(2)
    await h.send(ConfigMessage(output_format="binary"))
    h.session().allow(100)
    await h.client.wait_for("utterance_end", utterance_id=1)
    await h.say("two")
    await h.client.wait_for("utterance_end", utterance_id=2)
    assert [a["format"] for a in h.client.audio()] == ["json"] * 5 + ["binary"] * 5
    assert [a["sequence"] for a in h.client.audio()] == list(range(1, 11))
    assert [a["pcm"] for a in h.client.audio(2)] == [frame_pcm(i) for i in range(5, 10)]
    assert all(isinstance(raw, bytes) for raw in h.client.raw[-6:-3])
    await h.leave()


async def test_a_config_sent_after_a_text_does_not_change_that_texts_format(
        make: Any) -> None:
    # The session is busy writing to a slow client (utterance 1's first frame) while
    # the client sends "two", then a config, then "three": "two" was sent before the
    # change and must stay JSON; "three" is binary.
    h = await make(worker_linger_s=3600)
    h.client.hold_audio = True
    await h.say("one")
    await asyncio.wait_for(h.client.holding.wait(), TIMEOUT_S)
    await h.say("two")
    await h.send(ConfigMessage(output_format="binary"))
    await h.say("three")
    h.client.release()
    await h.client.wait_for("utterance_end", utterance_id=3)
    formats = {(a["utterance_id"], a["format"]) for a in h.client.audio()}
    assert formats == {(1, "json"), (2, "json"), (3, "binary")}
    await h.leave()


async def test_microphone_audio_and_playback_reports_are_answered_or_ignored(
        make: Any) -> None:
    h = await make()
    await h.send(AudioInput(b"\x00\x00" * 160, 16_000))
    error = await h.client.wait_for("error")
    assert error["code"] == "INVALID_STATE"
    await h.send(PlaybackMessage(1, 20.0))
    await h.say("one")
    await h.client.wait_for("utterance_end", utterance_id=1, reason="completed")
    assert len(h.client.of_type("error")) == 1
    await h.leave()


# -- conversation mode (a fake recognizer, a VAD that hears loudness) ---------------

# Turn-taking in real time, kept short; no adaptive end of turn (the transcript would
# move it); a barge-in is interrupted by its words only (not by its length, which a
# busy machine could stretch).
CONVERSATION = ConversationConfig(
    turns=TurnConfig(end_of_turn_ms=200, adaptive=False, interrupt_after_ms=5000),
    vad=VadConfig(min_silence_ms=100))


async def speak(h: Harness, speech_frames: int, silence_frames: int) -> None:
    """The microphone: 20 ms frames of speech, then of silence, sent in real time
    (the machine measures speech on its clock, as with a real microphone)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = [speech_pcm()] * speech_frames + [silence_pcm()] * silence_frames
    for i, pcm in enumerate(frames):
        await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
        await h.send(AudioInput(pcm, 16_000))


async def conversation(make: Any, asr: FakeTranscriber, engine: EchoEngine | None = None
                       ) -> Harness:
    h: Harness = await make(services=fake_services(CONVERSATION, asr, engine))
    await h.send(ConfigMessage(mode="conversation"))
    assert h.driver.listening
    await speak(h, 0, 15)  # silence first: the turn's pre-roll is there
    return h


async def test_a_spoken_turn_is_transcribed_answered_and_spoken(make: Any) -> None:
    asr = FakeTranscriber("hello there.")
    h = await conversation(make, asr)
    await speak(h, 12, 10)
    transcript = await h.client.wait_for("transcript", final=True)
    assert (transcript["turn"], transcript["text"]) == (1, "hello there.")
    reply = await h.client.wait_for("reply")
    assert (reply["turn"], reply["text"].strip()) == (1, "hello there.")
    end = await h.client.wait_for("utterance_end", utterance_id=reply["utterance_id"])
    assert (end["reason"], end["frames"]) == ("completed", 5)
    assert len(h.client.audio(reply["utterance_id"])) == 5
    types = h.client.types()
    assert types.index("transcript") < types.index("reply") < types.index("audio")
    # The echo reply reached the worker; the final was of the turn's audio: its
    # speech and the pre-roll before it, up to the offset.
    assert "".join(text for text, _ in h.session().texts).strip() == "hello there."
    finals = [n for final, n in asr.asked if final]
    assert finals and all(12 * 320 < n <= 37 * 320 for n in finals)
    assert h.metrics.turns_total.value == 1
    # Back to text mode: the listener is gone, microphone audio is refused again.
    await h.send(ConfigMessage(mode="tts"))
    assert not h.driver.listening and asr.forgotten == ["s1"]
    await h.send(AudioInput(silence_pcm(), 16_000))
    error = await h.client.wait_for("error")
    assert error["code"] == "INVALID_STATE"
    await h.leave()
    assert_each_session_ended_once(h)


async def test_a_typed_turn_after_a_spoken_one_has_text_to_voice_not_voice_to_voice(
        make: Any) -> None:
    # The issue: a typed turn was timed from the earlier speech (5,200 ms "voice to voice").
    h = await conversation(make, FakeTranscriber("hello there."))
    await speak(h, 12, 10)
    spoken = await h.client.wait_for("metrics", turn=1)
    assert spoken["voice_to_voice_ms"] >= 0 and "text_to_voice_ms" not in spoken
    await h.client.wait_for("utterance_end", utterance_id=1)
    await h.send(UserTextMessage("Typed instead."))
    typed = await h.client.wait_for("metrics", turn=2)
    assert typed["text_to_voice_ms"] >= 0
    assert "voice_to_voice_ms" not in typed and "transcript_ms" not in typed
    assert h.metrics.voice_to_voice_ms.count == 1 and h.metrics.text_to_voice_ms.count == 1
    await h.leave()


async def test_speech_over_the_reply_holds_it_and_no_words_resume_it(make: Any) -> None:
    asr = FakeTranscriber("count to ten", partial_text="")
    h = await conversation(make, asr)
    h.pool.allowed_frames = 2  # the reply stays on the air until the test lets it go
    await speak(h, 12, 10)
    reply = await h.client.wait_for("reply")
    uid = reply["utterance_id"]
    await h.frames(2, uid)
    # A short sound over it: held at once, its words checked when it stops.
    await speak(h, 4, 0)
    pause = await h.client.wait_for("pause")
    assert pause["utterance_id"] == uid
    await h.client.wait_for("state", state="BARGED_IN")
    partials = asr.partials()
    await speak(h, 0, 10)
    resume = await h.client.wait_for("resume")
    assert resume["utterance_id"] == uid
    assert asr.partials() > partials  # the words check (it heard none)
    session = h.session()
    await h.pool.wait(lambda: session.controls == [PAUSE, RESUME], "PAUSE, RESUME sent")
    session.allow(3)
    end = await h.client.wait_for("utterance_end", utterance_id=uid)
    assert (end["reason"], end["frames"]) == ("completed", 5)
    assert h.client.of_type("interrupt") == []
    assert h.metrics.false_interruptions_total.value == 1
    await h.leave()


async def test_words_over_the_reply_interrupt_it_and_the_history_keeps_what_was_heard(
        make: Any) -> None:
    asr = FakeTranscriber("tell me about the sea", partial_text="wait")
    engine = RecordingEcho()
    h = await conversation(make, asr, engine)
    h.pool.allowed_frames = 2
    await speak(h, 12, 10)
    reply = await h.client.wait_for("reply")
    uid = reply["utterance_id"]
    await h.frames(2, uid)
    await h.send(PlaybackMessage(uid, 20.0))  # the client played one frame of it
    await speak(h, 15, 10)
    interrupt = await h.client.wait_for("interrupt", utterance_id=uid)
    assert interrupt["reason"] == "interrupted"
    # The barge-in is the user's next turn; its reply is asked with the history cut
    # to what the client played of the first: about nothing, so "…" alone.
    await h.client.wait_for("reply", turn=2)
    assert engine.seen == [[], [("user", "tell me about the sea"), ("assistant", "…")]]
    await h.leave()


# -- a client that went away -------------------------------------------------------


async def test_a_send_that_fails_never_escapes_and_the_session_ends_with_the_client(
        make: Any) -> None:
    # Catches a ConnectionResetError from the socket killing the session task (with a
    # traceback, and the worker session left to the shielded clean-up) or raised into
    # the reader through client_message / send_message.
    h = await make()
    h.client.fail_with = ConnectionResetError("peer reset")
    await h.say("one")
    session = await h.pool.wait(lambda: h.pool.opened and h.pool.opened[0], "session opened")
    # The utterance plays out unseen; the held session is offered as idle at its end.
    await h.pool.wait(lambda: (session.session_id, True) in h.pool.idle_log,
                      "utterance 1 over")
    await h.say("two")
    await h.send(ConfigMessage(voice="nope"))
    bad = Error(ErrorCode.INVALID_MESSAGE, "bad")
    await asyncio.wait_for(h.driver.send_message(bad), TIMEOUT_S)
    await h.control(STOP)
    assert h.task is not None and not h.task.done()  # the client is not gone yet
    sends = h.client.sends
    await h.leave()
    assert h.client.messages[-1]["type"] == "state"  # nothing recorded after the failure
    assert h.client.sends == sends  # and nothing more written once it failed
    assert_each_session_ended_once(h)


async def test_streamed_text_while_start_session_hangs_then_fails(make: Any) -> None:
    # A client streaming text pieces (an LLM's tokens) while StartSession hangs (a dead
    # worker, up to the call deadline) and then fails: the session must report the
    # failure, whatever was streamed meanwhile, and end when the client leaves.
    h = await make()
    gate = h.pool.open_gate = asyncio.Event()
    h.pool.open_errors = [WorkerUnavailable("w1", "deadline exceeded")]
    await h.say("first ", is_final=False)
    await h.pool.wait(lambda: h.pool.open_calls, "StartSession sent")
    for i in range(80):
        await h.say(f"piece {i} ", is_final=False)
    gate.set()
    assert h.task is not None
    try:
        await h.client.wait_for("utterance_end", utterance_id=1, reason="error")
        codes = [e["code"] for e in h.client.of_type("error")]
        # 81 pieces: 64 wait for the worker, the 17 beyond them are refused, not queued.
        assert codes.count("QUEUE_FULL") == 17 and codes[-1] == "WORKER_UNAVAILABLE"
        await h.leave()
    finally:
        await cancel(h.task)  # hung: the fixture would report it a second time
