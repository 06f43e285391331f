"""The worker link: gRPC errors translated at the boundary, and the pool's capacity
bookkeeping, against a fake stub (no channel is ever dialled: ``pool.stub`` is
replaced). Workers come from real records (``build_record``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from duplexvoice.orchestrator.workers.link import (
    WorkerBusy,
    WorkerError,
    WorkerPool,
    WorkerRejected,
    WorkerSession,
    WorkerUnavailable,
    translate,
)
from duplexvoice.orchestrator.workers.router import WorkerInfo
from duplexvoice.rpc import tts_pb2
from duplexvoice.wire.channels import grpc_target
from duplexvoice.wire.messages import Command
from tests.support.eventually import eventually
from tests.support.fake_orchestrator import NOW, TIMEOUT_S, wait_until, worker_info

pytestmark = pytest.mark.unit

UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}


def rpc_error(code: grpc.StatusCode, details: str | None = "x") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, initial_metadata=grpc.aio.Metadata(),
                                trailing_metadata=grpc.aio.Metadata(), details=details)


# -- translate --------------------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK],
                         ids=lambda c: c.name)
def test_translate_maps_every_status_code_into_the_tree(code: grpc.StatusCode) -> None:
    # Catches a refusal taken for an outage (every session routing around a healthy
    # worker) and an outage taken for a refusal (no failover, no probe).
    error = translate("w1", rpc_error(code, "boom"))
    if code in UNREACHABLE:
        expected: type[WorkerError] = WorkerUnavailable
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        expected = WorkerBusy
    else:
        expected = WorkerRejected
    assert type(error) is expected
    assert error.worker == "w1"
    assert error.message == f"{code.name}: boom"
    assert str(error) == f"worker w1: {code.name}: boom"
    assert error.retryable is (expected is not WorkerRejected)  # type: ignore[attr-defined]


def test_translate_without_details() -> None:
    error = translate("w1", rpc_error(grpc.StatusCode.INTERNAL, None))
    assert error.message == "INTERNAL: no details"


def test_grpc_target() -> None:
    assert grpc_target("grpc://h:7001") == "h:7001"
    assert grpc_target("h:7001") == "h:7001"


# -- a fake stub ------------------------------------------------------------------


class FakeCall:
    """A Synthesize call: an async iterator of AudioFrames that may fail, cancellable."""

    def __init__(self, frames: list[tts_pb2.AudioFrame],
                 error: grpc.aio.AioRpcError | None) -> None:
        self._frames = frames
        self._error = error
        self.read = 0
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[tts_pb2.AudioFrame]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tts_pb2.AudioFrame]:
        for frame in self._frames:
            self.read += 1
            yield frame
        if self._error is not None:
            raise self._error

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    """The TTSService stub's unary calls, recorded in order, with gates and errors."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self.start_gate: asyncio.Event | None = None
        self.end_gate: asyncio.Event | None = None
        self.start_errors: list[grpc.aio.AioRpcError | None] = []
        self.caps_error: grpc.aio.AioRpcError | None = None
        self.control_reply = tts_pb2.ControlResponse(success=True)
        self.control_error: grpc.aio.AioRpcError | None = None
        self.synthesize_call: FakeCall | None = None

    def _record(self, name: str, session_id: str = "") -> None:
        self.calls.append((name, session_id))
        self.changed.set()

    def named(self, name: str) -> list[str]:
        return [sid for call, sid in self.calls if call == name]

    async def wait(self, check: Callable[[], object], what: str) -> None:
        await wait_until(check, self.changed, what)

    async def StartSession(self, request: tts_pb2.StartSessionRequest,
                           timeout: float | None = None) -> tts_pb2.StartSessionResponse:
        self._record("StartSession", request.session_id)
        self.last_model = request.model_id
        if self.start_gate is not None:
            await self.start_gate.wait()
        error = self.start_errors.pop(0) if self.start_errors else None
        if error is not None:
            self._record("StartSession failed", request.session_id)
            raise error
        self._record("StartSession ok", request.session_id)
        return tts_pb2.StartSessionResponse()

    async def EndSession(self, request: tts_pb2.EndSessionRequest,
                         timeout: float | None = None) -> tts_pb2.EndSessionResponse:
        self._record("EndSession", request.session_id)
        if self.end_gate is not None:
            await self.end_gate.wait()
        self._record("EndSession ok", request.session_id)
        return tts_pb2.EndSessionResponse()

    async def Control(self, request: tts_pb2.ControlRequest,
                      timeout: float | None = None) -> tts_pb2.ControlResponse:
        self._record(f"Control {request.command}", request.session_id)
        if self.control_error is not None:
            raise self.control_error
        return self.control_reply

    async def GetCapabilities(self, request: tts_pb2.GetCapabilitiesRequest,
                              timeout: float | None = None,
                              wait_for_ready: bool | None = None,
                              ) -> tts_pb2.GetCapabilitiesResponse:
        # A re-check waits for the channel; a background probe does not: told apart.
        self._record("GetCapabilities/ready" if wait_for_ready else "GetCapabilities")
        if self.caps_error is not None:
            raise self.caps_error
        return tts_pb2.GetCapabilitiesResponse()

    def Synthesize(self, chunks: AsyncIterator[tts_pb2.TextChunk]) -> FakeCall:
        self._record("Synthesize")
        assert self.synthesize_call is not None
        return self.synthesize_call


class Fixture:
    def __init__(self, pool: WorkerPool, stub: FakeStub) -> None:
        self.pool = pool
        self.stub = stub


@pytest.fixture
async def link(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fixture]:
    stub = FakeStub()
    pool = WorkerPool(timeout_s=TIMEOUT_S, wall_clock=lambda: NOW + 100)
    monkeypatch.setattr(pool, "stub", lambda addr: stub)
    yield Fixture(pool, stub)
    await pool.close()  # waits for clean-ups, cancels the probes


def w(max_sessions: int = 4, queue_depth: float = 0.0) -> WorkerInfo:
    return worker_info("w1", max_sessions=max_sessions, queue_depth=queue_depth)


# -- open, end, counts ------------------------------------------------------------


async def test_open_counts_a_session_until_it_is_ended_once(link: Fixture) -> None:
    # Catches a count never taken (a burst over capacity) or never given back (a
    # worker that looks full forever), and a second EndSession for one session.
    pool, stub = link.pool, link.stub
    session = await pool.open(w(), "s", "m1")
    assert (session.worker.name, session.model_id) == ("w1", "m1")
    assert stub.last_model == "m1"
    assert stub.named("StartSession") == [session.session_id]
    assert session.session_id.startswith("s-")
    assert pool.sessions == {"w1": 1}
    other = await pool.open(w(), "s", "m1")
    assert other.session_id != session.session_id  # unique per StartSession
    assert pool.sessions == {"w1": 2}
    await session.end()
    await session.end()
    assert session.begin_end() is None
    assert stub.named("EndSession") == [session.session_id]
    assert pool.sessions == {"w1": 1}
    await other.end()
    assert pool.sessions == {}


@pytest.mark.parametrize("code, error_type, down", [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, WorkerBusy, False),
    (grpc.StatusCode.NOT_FOUND, WorkerRejected, False),
    (grpc.StatusCode.UNAVAILABLE, WorkerUnavailable, True),
])
async def test_a_failed_open_gives_its_count_back(
        link: Fixture, code: grpc.StatusCode, error_type: type[WorkerError], down: bool) -> None:
    link.stub.caps_error = rpc_error(grpc.StatusCode.UNAVAILABLE)  # the probe finds it down
    link.stub.start_errors = [rpc_error(code)]
    with pytest.raises(error_type):
        await link.pool.open(w(), "s", "m1")
    assert link.pool.sessions == {}
    assert link.pool.health.is_down("w1") is down
    assert link.pool.excluded([w()]) == ({"w1"} if down else set())
    assert link.stub.named("EndSession") == []


async def test_a_cancelled_open_whose_start_later_succeeds_is_ended(link: Fixture) -> None:
    # Catches a worker session leaked by a client leaving during StartSession.
    pool, stub = link.pool, link.stub
    stub.start_gate = asyncio.Event()
    opening = asyncio.ensure_future(pool.open(w(), "s", "m1"))
    await stub.wait(lambda: stub.named("StartSession"), "StartSession sent")
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(opening, TIMEOUT_S)
    assert pool.sessions == {"w1": 1}  # the worker may still create it: it counts
    stub.start_gate.set()
    await stub.wait(lambda: stub.named("EndSession ok"), "the orphan ended")
    assert stub.named("EndSession") == stub.named("StartSession")
    await pool.close()
    assert pool.sessions == {}


async def test_a_cancelled_open_whose_start_fails_gives_its_count_back(link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    stub.start_gate = asyncio.Event()
    stub.start_errors = [rpc_error(grpc.StatusCode.NOT_FOUND)]
    opening = asyncio.ensure_future(pool.open(w(), "s", "m1"))
    await stub.wait(lambda: stub.named("StartSession"), "StartSession sent")
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(opening, TIMEOUT_S)
    stub.start_gate.set()
    await eventually(lambda: not pool.sessions, timeout=TIMEOUT_S, what="count back to 0")
    assert stub.named("EndSession") == []  # nothing was created


async def test_a_full_worker_gives_an_idle_session_back_before_starting_another(
        link: Fixture) -> None:
    # Catches a lingering idle session blocking another client (the worker answers
    # RESOURCE_EXHAUSTED) and a StartSession racing ahead of our own EndSession.
    pool, stub = link.pool, link.stub
    worker = w(max_sessions=1)
    first = await pool.open(worker, "a", "m1")
    pool.set_idle(first, True)
    assert pool.idle_sessions() == {"w1": 1}
    # Routing sees the idle one as free capacity (the worker reports it as a session).
    assert pool.with_load([w(max_sessions=1, queue_depth=1)])[0].queue_depth == 0
    second = await asyncio.wait_for(pool.open(worker, "b", "m1"), TIMEOUT_S)
    assert first.ended and not second.ended
    assert [c for c in stub.calls if not c[0].endswith("ok")] == [
        ("StartSession", first.session_id), ("EndSession", first.session_id),
        ("StartSession", second.session_id)]
    assert stub.calls.index(("EndSession ok", first.session_id)) < stub.calls.index(
        ("StartSession", second.session_id))  # the worker's capacity was back first
    assert pool.sessions == {"w1": 1}
    assert pool.idle_sessions() == {}


async def test_a_busy_session_is_never_given_back(link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    worker = w(max_sessions=1)
    first = await pool.open(worker, "a", "m1")
    pool.set_idle(first, True)
    pool.set_idle(first, False)  # speaking again
    stub.start_errors = [rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)]
    with pytest.raises(WorkerBusy):
        await pool.open(worker, "b", "m1")
    assert not first.ended
    assert stub.named("EndSession") == []
    assert pool.sessions == {"w1": 1}


async def test_a_busy_answer_with_an_idle_session_held_gives_it_back_and_retries_once(
        link: Fixture) -> None:
    # The record said there was room (it lags); the worker says full: our own idle
    # session there is given back and StartSession tried once more.
    pool, stub = link.pool, link.stub
    worker = w(max_sessions=2)
    first = await pool.open(worker, "a", "m1")
    pool.set_idle(first, True)
    stub.start_errors = [rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)]
    second = await asyncio.wait_for(pool.open(worker, "b", "m1"), TIMEOUT_S)
    assert first.ended
    assert stub.named("StartSession failed") == [stub.named("StartSession")[1]]
    assert stub.named("StartSession ok")[-1] == second.session_id
    assert stub.calls.index(("EndSession ok", first.session_id)) < stub.calls.index(
        ("StartSession", second.session_id))  # retried once the worker had room
    assert pool.sessions == {"w1": 1}


async def test_an_open_waits_for_our_end_session_in_flight_to_a_full_worker(
        link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    worker = w(max_sessions=1)
    first = await pool.open(worker, "a", "m1")
    stub.end_gate = asyncio.Event()
    first.begin_end()  # given back: EndSession in flight
    assert pool.sessions == {}
    assert pool.with_load([w(max_sessions=1, queue_depth=1)])[0].queue_depth == 0
    opening = asyncio.ensure_future(pool.open(worker, "b", "m1"))
    await stub.wait(lambda: stub.named("EndSession"), "EndSession sent")
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(stub.named("StartSession")) == 1  # not before the worker has room
    stub.end_gate.set()
    second = await asyncio.wait_for(opening, TIMEOUT_S)
    assert stub.named("StartSession") == [first.session_id, second.session_id]


async def test_a_cancelled_open_waiting_for_room_gives_its_count_back(link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    worker = w(max_sessions=1)
    first = await pool.open(worker, "a", "m1")
    pool.set_idle(first, True)
    stub.end_gate = asyncio.Event()
    opening = asyncio.ensure_future(pool.open(worker, "b", "m1"))
    await stub.wait(lambda: stub.named("EndSession"), "EndSession sent")
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(opening, TIMEOUT_S)
    assert pool.sessions == {}
    assert len(stub.named("StartSession")) == 1
    stub.end_gate.set()


async def test_an_ended_session_is_never_marked_idle(link: Fixture) -> None:
    pool = link.pool
    session = await pool.open(w(), "a", "m1")
    pool.set_idle(session, True)
    await session.end()
    assert pool.idle_sessions() == {}
    pool.set_idle(session, True)  # a late call from its driver
    assert pool.idle_sessions() == {}


# -- health -----------------------------------------------------------------------


async def test_an_unreachable_worker_is_marked_down_and_a_probe_brings_it_back(
        link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    stub.start_errors = [rpc_error(grpc.StatusCode.UNAVAILABLE)]
    with pytest.raises(WorkerUnavailable):
        await pool.open(w(), "s", "m1")
    assert pool.health.is_down("w1")
    assert pool.excluded([w()]) == {"w1"}
    await eventually(lambda: not pool.health.is_down("w1"), timeout=TIMEOUT_S,
                     what="the probe's GetCapabilities answered")
    assert stub.named("GetCapabilities")
    assert pool.excluded([w()]) == set()


async def test_down_is_dated_on_the_registry_clock_so_a_newer_heartbeat_brings_it_back(
        link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    stub.caps_error = rpc_error(grpc.StatusCode.UNAVAILABLE)  # probes keep failing
    stub.start_errors = [rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)]
    with pytest.raises(WorkerUnavailable):
        await pool.open(w(), "s", "m1")
    # The pool's wall clock said NOW + 100 at the failure.
    assert pool.excluded([worker_info("w1", heartbeat=NOW + 99)]) == {"w1"}
    assert pool.excluded([worker_info("w1", heartbeat=NOW + 101)]) == set()
    assert not pool.health.is_down("w1")


async def test_a_recheck_asks_the_down_workers_once_and_brings_back_those_that_answer(
        link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    stub.caps_error = rpc_error(grpc.StatusCode.UNAVAILABLE)
    stub.start_errors = [rpc_error(grpc.StatusCode.UNAVAILABLE)]
    with pytest.raises(WorkerUnavailable):
        await pool.open(w(), "s", "m1")
    rechecks = "GetCapabilities/ready"  # the background probe's calls are apart
    await pool.recheck([w()])  # still refused: stays down
    assert pool.health.is_down("w1") and len(stub.named(rechecks)) == 1
    stub.caps_error = None
    await asyncio.gather(pool.recheck([w()]), pool.recheck([w()]))  # one check, shared
    assert not pool.health.is_down("w1") and len(stub.named(rechecks)) == 2
    await pool.recheck([w()])  # nothing down: nothing asked
    assert len(stub.named(rechecks)) == 2


# -- a session's calls ------------------------------------------------------------


async def texts(*pieces: tuple[str, bool]) -> AsyncIterator[tuple[str, bool]]:
    for piece in pieces:
        yield piece


async def collect(session: WorkerSession) -> list[bytes]:
    return [pcm async for pcm in session.synthesize(texts(("hi", True)))]


async def test_synthesize_yields_audio_until_the_final_frame_and_skips_empty_ones(
        link: Fixture) -> None:
    session = await link.pool.open(w(), "s", "m1")
    frames = [tts_pb2.AudioFrame(audio_data=b"a"), tts_pb2.AudioFrame(audio_data=b""),
              tts_pb2.AudioFrame(audio_data=b"b", is_final=True),
              tts_pb2.AudioFrame(audio_data=b"never")]
    call = link.stub.synthesize_call = FakeCall(frames, None)
    assert await collect(session) == [b"a", b"b"]
    assert call.read == 3 and call.cancelled  # stopped reading at the final frame


async def test_synthesize_failing_unreachable_breaks_the_session(link: Fixture) -> None:
    # Catches a broken session being asked again (Control, EndSession to a dead
    # worker: each waits for its deadline) and the worker not routed around.
    pool, stub = link.pool, link.stub
    stub.caps_error = rpc_error(grpc.StatusCode.UNAVAILABLE)
    session = await pool.open(w(), "s", "m1")
    stub.synthesize_call = FakeCall([tts_pb2.AudioFrame(audio_data=b"a")],
                                    rpc_error(grpc.StatusCode.UNAVAILABLE))
    got: list[bytes] = []
    with pytest.raises(WorkerUnavailable):
        async for pcm in session.synthesize(texts(("hi", True))):
            got.append(pcm)
    assert got == [b"a"]
    assert session.broken and pool.health.is_down("w1")
    assert stub.synthesize_call.cancelled
    with pytest.raises(WorkerUnavailable):
        await session.control(Command.STOP)
    await session.end()
    assert stub.named("EndSession") == [] and not any(c.startswith("Control") for c, _ in
                                                      stub.calls)
    assert pool.sessions == {}  # the count is given back all the same


async def test_synthesize_refused_leaves_the_session_usable(link: Fixture) -> None:
    pool, stub = link.pool, link.stub
    session = await pool.open(w(), "s", "m1")
    stub.synthesize_call = FakeCall([], rpc_error(grpc.StatusCode.FAILED_PRECONDITION))
    with pytest.raises(WorkerRejected):
        await collect(session)
    assert not session.broken and not pool.health.is_down("w1")


@pytest.mark.parametrize("command, wire", [
    (Command.PAUSE, tts_pb2.PAUSE), (Command.RESUME, tts_pb2.RESUME),
    (Command.STOP, tts_pb2.STOP)])
async def test_control_sends_the_command(link: Fixture, command: Command, wire: Any) -> None:
    session = await link.pool.open(w(), "s", "m1")
    await session.control(command)
    assert link.stub.named(f"Control {wire}") == [session.session_id]


async def test_control_refused_or_failing_raises_ours(link: Fixture) -> None:
    session = await link.pool.open(w(), "s", "m1")
    link.stub.control_reply = tts_pb2.ControlResponse(success=False, message="no")
    with pytest.raises(WorkerRejected, match="no"):
        await session.control(Command.PAUSE)
    link.stub.control_error = rpc_error(grpc.StatusCode.NOT_FOUND)
    with pytest.raises(WorkerRejected, match="NOT_FOUND"):
        await session.control(Command.PAUSE)
    assert not session.broken
