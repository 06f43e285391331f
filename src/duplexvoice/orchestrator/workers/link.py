"""The orchestrator's side of the worker protocol (WIRE §2): every gRPC call it makes
to a TTS worker, and the translation of gRPC errors into ours at this boundary (as
httpx maps httpcore's). Nothing above this module sees ``grpc``.

Exceptions::

    WorkerError              base: ``worker`` (name), ``message``
    ├── WorkerUnavailable    the worker cannot be reached, or it is shutting down
    │                        (connection refused or reset, deadline passed). Retryable
    │                        on another worker; the worker is marked down at once.
    ├── WorkerBusy           the worker is full (RESOURCE_EXHAUSTED). Retryable later
    │                        or elsewhere; the worker is fine.
    └── WorkerRejected       the worker refused or failed this request (unknown model,
                             bad argument, a failing model). Not retryable as is.

``WorkerPool`` holds one gRPC channel per worker address (channels multiplex streams;
sessions share nothing else), how many worker sessions this orchestrator holds on
each worker (for routing), and which workers failed at the connection level: such a
worker is left out of routing for every session at once, probed in the background,
and taken back as soon as it answers a probe, or its registry record shows a
heartbeat newer than the failure (:class:`~.health.WorkerHealth`).

``WorkerSession`` is one worker session (StartSession ... EndSession) with its
Synthesize streams and Control calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

import grpc

from duplexvoice.orchestrator.workers.health import WorkerHealth
from duplexvoice.orchestrator.workers.router import WorkerInfo, with_local_load
from duplexvoice.rpc import tts_pb2, tts_pb2_grpc
from duplexvoice.wire.channels import STREAM_WINDOW_BYTES, channel_options, grpc_target
from duplexvoice.wire.messages import Command

log = logging.getLogger(__name__)

_PROBE_FIRST_S = 0.2
_PROBE_MAX_S = 2.0
_PROBE_GIVE_UP_S = 600.0  # then only a fresh heartbeat brings the worker back
_RECHECK_S = 1.0
_RETIRED = 4  # replaced channels kept open per address for the calls still on them

_COMMANDS = {Command.PAUSE: tts_pb2.PAUSE, Command.RESUME: tts_pb2.RESUME,
             Command.STOP: tts_pb2.STOP}
# Status codes that mean the worker itself is unreachable, not that it refused.
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED})


class _Orphaned(Exception):
    """Internal: cancelled while StartSession was in flight."""


class WorkerError(Exception):
    def __init__(self, worker: str, message: str) -> None:
        super().__init__(f"worker {worker}: {message}")
        self.worker = worker
        self.message = message


class WorkerUnavailable(WorkerError):
    retryable = True


class WorkerBusy(WorkerError):
    retryable = True


class WorkerRejected(WorkerError):
    retryable = False


def translate(worker: str, exc: grpc.aio.AioRpcError) -> WorkerError:
    """Our exception for a gRPC error from ``worker``."""
    code = exc.code()
    message = f"{code.name}: {exc.details() or 'no details'}"
    if code in _UNREACHABLE:
        return WorkerUnavailable(worker, message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return WorkerBusy(worker, message)
    return WorkerRejected(worker, message)


class WorkerPool:
    """Channels, local load and health of the workers this orchestrator talks to."""

    def __init__(self, *, timeout_s: float = 5.0,
                 window_bytes: int = STREAM_WINDOW_BYTES,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.timeout_s = timeout_s
        self._window_bytes = window_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, tts_pb2_grpc.TTSServiceAsyncStub] = {}
        self.sessions: Counter[str] = Counter()  # worker sessions held here, by worker name
        # Held worker sessions with nothing to say (their client is LISTENING within the
        # linger): given back at once when another session needs the capacity.
        self._idle: dict[str, dict[str, WorkerSession]] = {}
        self.health = WorkerHealth()
        self._clock = wall_clock
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._rechecks: dict[str, asyncio.Future[None]] = {}
        self._retired: dict[str, list[grpc.aio.Channel]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._ending: set[asyncio.Task[None]] = set()  # EndSession calls, named by worker

    def stub(self, addr: str) -> tts_pb2_grpc.TTSServiceAsyncStub:
        stub = self._stubs.get(addr)
        if stub is None:
            channel = grpc.aio.insecure_channel(grpc_target(addr),
                                                options=channel_options(self._window_bytes))
            self._channels[addr] = channel
            stub = self._stubs[addr] = tts_pb2_grpc.TTSServiceStub(channel)
        return stub

    def reset(self, addr: str) -> None:
        """A fresh channel for ``addr`` from now on. After a connection failure the old
        channel backs off before it reconnects (up to a second), so a worker restarted
        meanwhile would look dead; calls in flight keep the old channel (closed with the
        pool, at most ``_RETIRED`` kept per address)."""
        channel = self._channels.pop(addr, None)
        self._stubs.pop(addr, None)
        if channel is None:
            return
        retired = self._retired.setdefault(addr, [])
        retired.append(channel)
        if len(retired) > _RETIRED:
            self.spawn(retired.pop(0).close())

    def excluded(self, workers: Sequence[WorkerInfo]) -> set[str]:
        """Names of ``workers`` to route around now."""
        return self.health.excluded(workers)

    def mark_down(self, worker: WorkerInfo | str, addr: str = "") -> None:
        """A connection-level failure: route around the worker until it answers again."""
        name = worker.name if isinstance(worker, WorkerInfo) else worker
        addr = worker.addr if isinstance(worker, WorkerInfo) else addr
        if addr:
            self.reset(addr)
        if self.health.mark_down(name, self._clock()):
            log.warning("worker %s (%s) unreachable: routing around it until it answers",
                        name, addr)
        if addr and name not in self._probes:
            task = asyncio.create_task(self._probe(name, addr), name=f"probe-{name}")
            self._probes[name] = task
            task.add_done_callback(lambda _task: self._probes.pop(name, None))

    async def recheck(self, workers: Sequence[WorkerInfo]) -> None:
        """Ask the workers among ``workers`` marked down whether they answer now (one
        check per worker at a time, shared by all callers; bounded by a second): for a
        session about to give up for want of a worker."""
        checks = []
        for worker in workers:
            if not self.health.is_down(worker.name):
                continue
            check = self._rechecks.get(worker.name)
            if check is None or check.done():
                check = asyncio.ensure_future(self._recheck(worker))
                self._rechecks[worker.name] = check
            checks.append(check)
        if checks:
            await asyncio.wait(checks, timeout=_RECHECK_S + 0.1)

    async def _recheck(self, worker: WorkerInfo) -> None:
        # wait_for_ready: the channel may still be backing off from the failure.
        await self._answers(worker.name, worker.addr, _RECHECK_S, wait_for_ready=True)

    async def _probe(self, name: str, addr: str) -> None:
        delay, started = _PROBE_FIRST_S, time.monotonic()
        while self.health.is_down(name) and time.monotonic() - started < _PROBE_GIVE_UP_S:
            await asyncio.sleep(delay)
            if not await self._answers(name, addr, self.timeout_s):
                delay = min(_PROBE_MAX_S, delay * 2)

    async def _answers(self, name: str, addr: str, timeout_s: float, *,
                       wait_for_ready: bool = False) -> bool:
        """A health check (GetCapabilities); a worker that answers is up again."""
        try:
            await self.stub(addr).GetCapabilities(tts_pb2.GetCapabilitiesRequest(),
                                                  timeout=timeout_s,
                                                  wait_for_ready=wait_for_ready)
        except grpc.aio.AioRpcError:
            return False
        if self.health.mark_up(name):
            log.warning("worker %s (%s) answers again", name, addr)
        return True

    def idle_sessions(self) -> Counter[str]:
        """Held worker sessions with nothing to say, by worker name."""
        return Counter({name: len(held) for name, held in self._idle.items() if held})

    def with_load(self, workers: Sequence[WorkerInfo]) -> list[WorkerInfo]:
        """``workers`` with the load this orchestrator knows of (see ``with_local_load``):
        sessions held here count, idle ones and those being ended do not."""
        idle = self.idle_sessions()
        leaving = idle + Counter(task.get_name() for task in self._ending)
        return with_local_load(workers, self.sessions - idle, leaving)

    def set_idle(self, session: WorkerSession, idle: bool) -> None:
        held = self._idle.setdefault(session.worker.name, {})
        if idle and not session.ended:
            held[session.session_id] = session
        else:
            held.pop(session.session_id, None)

    def _reclaim(self, name: str) -> bool:
        """Start giving back one idle session held on worker ``name``; True if one was."""
        held = self._idle.get(name)
        if not held:
            return False
        _, session = held.popitem()
        session.begin_end()
        return True

    def _ending_on(self, name: str) -> list[asyncio.Task[None]]:
        return [task for task in self._ending if task.get_name() == name]

    async def open(self, worker: WorkerInfo, session_id: str, model_id: str) -> WorkerSession:
        """StartSession on ``worker``. Raises a ``WorkerError``.

        Capacity: a session counts from the routing decision on (so a burst spreads
        over workers). When the worker is full with sessions held here, idle ones are
        given back first, and StartSession waits for our EndSessions in flight to it.
        If the caller is cancelled while StartSession is in flight, the worker may still
        create the session: it is ended in the background once the answer is in, so a
        client leaving at any moment never leaks a worker session.
        """
        name, capacity = worker.name, worker.max_concurrent_sessions
        self.sessions[name] += 1
        try:
            while self.sessions[name] > capacity and self._reclaim(name):
                pass  # one idle session given back per session over capacity
            if len(self._ending_on(name)) + self.sessions[name] > capacity:
                await self._ended(name)
            try:
                return await self._start(worker, session_id, model_id)
            except WorkerBusy:
                # Our own sessions there may be on their way out: make room, once more.
                if not (self._reclaim(name) or self._ending_on(name)):
                    raise
            await self._ended(name)
            return await self._start(worker, session_id, model_id)
        except _Orphaned:
            raise asyncio.CancelledError from None  # the orphan's clean-up owns the count
        except BaseException:
            self.released(name)
            raise

    async def _ended(self, name: str) -> None:
        """Wait (bounded) for the EndSessions in flight to worker ``name``."""
        ending = self._ending_on(name)
        if ending:
            await asyncio.wait(ending, timeout=self.timeout_s)

    async def _start(self, worker: WorkerInfo, session_id: str, model_id: str) -> WorkerSession:
        wid = f"{session_id}-{next(self._ids)}"
        start = asyncio.ensure_future(self.stub(worker.addr).StartSession(
            tts_pb2.StartSessionRequest(session_id=wid, model_id=model_id),
            timeout=self.timeout_s,
        ))
        session = WorkerSession(self, worker, wid, model_id)
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:
            start.add_done_callback(lambda f: self._end_orphan(f, session))
            raise _Orphaned from None
        except grpc.aio.AioRpcError as exc:
            raise self.failed(worker, exc) from None
        return session

    def _end_orphan(self, start: asyncio.Future[tts_pb2.StartSessionResponse],
                    session: WorkerSession) -> None:
        if start.cancelled() or start.exception() is not None:
            self.released(session.worker.name)
            return
        self.spawn(session.end())

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run a clean-up coroutine in the background; ``close`` waits for it."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def released(self, name: str) -> None:
        """A worker session on ``name`` was given back: it counts here no more."""
        self.sessions[name] -= 1
        if self.sessions[name] <= 0:
            del self.sessions[name]

    def ending(self, call: asyncio.Task[None]) -> None:
        """An EndSession call in flight (named by its worker): until it is answered the
        worker's capacity is not back, and capacity checks count it."""
        self._ending.add(call)
        call.add_done_callback(self._ending.discard)

    def failed(self, worker: WorkerInfo, exc: grpc.aio.AioRpcError) -> WorkerError:
        """Our error for ``exc``; a worker that is unreachable is routed around."""
        error = translate(worker.name, exc)
        if isinstance(error, WorkerUnavailable):
            self.mark_down(worker)
        return error

    async def close(self) -> None:
        """Wait (bounded) for background clean-ups, stop probing, close the channels."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.timeout_s)
        for task in list(self._probes.values()):
            task.cancel()
        channels = [*self._channels.values(), *(c for cs in self._retired.values() for c in cs)]
        self._channels, self._stubs, self._retired = {}, {}, {}
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()


class WorkerSession:
    """One worker session; ``end()`` once (idempotent)."""

    def __init__(self, pool: WorkerPool, worker: WorkerInfo, session_id: str,
                 model_id: str) -> None:
        self._pool = pool
        self.worker = worker
        self.session_id = session_id
        self.model_id = model_id
        self.broken = False  # the worker became unreachable: nothing more to ask it
        self.ended = False  # given back (by its session, or reclaimed by the pool)

    async def synthesize(self, texts: AsyncIterator[tuple[str, bool]]) -> AsyncIterator[bytes]:
        """One utterance: ``(text, is_final)`` pieces in, PCM frames out (never empty).
        Ends after the worker's final frame. Raises a ``WorkerError``."""
        sid = self.session_id

        async def chunks() -> AsyncIterator[tts_pb2.TextChunk]:
            async for text, is_final in texts:
                yield tts_pb2.TextChunk(session_id=sid, text=text, is_final=is_final)
                if is_final:
                    return

        call = self._stub().Synthesize(chunks())
        try:
            async for frame in call:
                pcm = frame.audio_data  # each read of the field copies it: once per frame
                if pcm:
                    yield pcm
                if frame.is_final:
                    return
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        finally:
            call.cancel()  # no-op once finished; stops the worker when we stop reading

    async def control(self, command: Command) -> None:
        """PAUSE / RESUME / STOP this session on the worker. Raises a ``WorkerError``."""
        if self.broken:
            raise WorkerUnavailable(self.worker.name, "unreachable")
        try:
            reply = await self._stub().Control(
                tts_pb2.ControlRequest(session_id=self.session_id, command=_COMMANDS[command]),
                timeout=self._pool.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        if not reply.success:
            raise WorkerRejected(self.worker.name, reply.message or f"{command} refused")

    async def end(self) -> None:
        """EndSession, best effort; never raises a ``WorkerError``. Idempotent."""
        call = self.begin_end()
        if call is not None:
            await asyncio.shield(call)  # the worker's capacity is back once it answers

    def begin_end(self) -> asyncio.Task[None] | None:
        """Give the session back now (it counts no more here) and send EndSession in
        the background; the call, or None if there is nothing to send."""
        if self.ended:
            return None
        self.ended = True
        self._pool.set_idle(self, False)
        self._pool.released(self.worker.name)
        if self.broken:
            return None
        call = asyncio.ensure_future(self._end())
        call.set_name(self.worker.name)
        self._pool.ending(call)
        return call

    async def _end(self) -> None:
        try:
            await self._stub().EndSession(tts_pb2.EndSessionRequest(session_id=self.session_id),
                                        timeout=self._pool.timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.debug("worker %s: EndSession %s: %s", self.worker.name, self.session_id,
                      exc.code().name)

    def _stub(self) -> tts_pb2_grpc.TTSServiceAsyncStub:
        return self._pool.stub(self.worker.addr)  # the current channel (see ``reset``)

    def _failed(self, exc: grpc.aio.AioRpcError) -> WorkerError:
        error = self._pool.failed(self.worker, exc)
        if isinstance(error, WorkerUnavailable):
            self.broken = True
        return error


async def describe(pool: WorkerPool, addr: str, timeout_s: float
                   ) -> tuple[tts_pb2.GetCapabilitiesResponse, list[str]]:
    """A worker's health check: its capabilities (GetCapabilities) and every model it
    can load (ListModels). Raises a ``WorkerError`` named by the address."""
    stub = pool.stub(addr)
    try:
        caps = await stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest(), timeout=timeout_s)
        models = await stub.ListModels(tts_pb2.ListModelsRequest(), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise translate(addr, exc) from None
    return caps, [m.model_id for m in models.models]
