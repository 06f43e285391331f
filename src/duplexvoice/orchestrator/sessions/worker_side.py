"""The driver's worker half: one session's Synthesize streams and worker calls.

Through :mod:`..workers.link` only: a worker session is taken when an utterance
starts and none is held (routed over the registry's workers, minus those down,
:mod:`..workers.placement`), kept while the machine keeps it, and ended on
``ReleaseWorker`` and on every exit of the session, including a StartSession still
in flight. A worker that fails is routed around by every session until it answers
again; the next utterance takes a new worker session wherever one can be had.

Each utterance's stream runs in its own task: it takes the worker session, sends the
utterance's text as the machine hands it over, and posts the worker's frames to the
session's inbox (``WorkerFrame``, then ``SynthesisDone`` or ``SynthesisFailed``),
waiting while the client's buffer is full. Control calls (PAUSE, RESUME, STOP) run in
order on a task of their own: a call to a dead worker waits for its deadline, the
session's inputs must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions.events import (
    Event,
    SynthesisDone,
    SynthesisFailed,
    SynthesizeText,
    WorkerFrame,
)
from duplexvoice.orchestrator.workers.link import WorkerError, WorkerPool, WorkerSession
from duplexvoice.orchestrator.workers.placement import open_worker_session
from duplexvoice.orchestrator.workers.registry import WorkerRegistry
from duplexvoice.orchestrator.workers.router import RoutingMode
from duplexvoice.wire.messages import Command, Error, ErrorCode

log = logging.getLogger(__name__)

_TEXT_QUEUE = 64  # text pieces of one utterance waiting for the worker stream
_CALLS = 64  # worker Control calls waiting to be made


@dataclass
class _Stream:
    """One utterance's Synthesize stream. Its text waits in ``texts`` for the worker,
    bounded by ``_TEXT_QUEUE`` pieces; the final piece always gets in (one per
    stream), so an utterance is never left without its end."""

    utterance_id: int
    texts: asyncio.Queue[tuple[str, bool]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    final_sent_at: float | None = None


class WorkerSide:
    """One session's worker session, stream and calls (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        registry: WorkerRegistry,
        pool: WorkerPool,
        metrics: OrchestratorMetrics,
        *,
        mode: RoutingMode,
        voice: Callable[[], str],
        post: Callable[[Event], None],
        put_frame: Callable[[Event], Coroutine[Any, Any, None]],
        room: asyncio.Event,
        send_error: Callable[[Error], Coroutine[Any, Any, None]],
    ) -> None:
        self.session_id = session_id
        self._registry = registry
        self._pool = pool
        self._metrics = metrics
        self._mode = mode
        self._voice = voice  # the session's voice now (its settings may change it)
        self._post = post
        self._put_frame = put_frame
        self._room = room  # set while the client's buffer has room
        self._send_error = send_error
        # The worker session: taken by a stream task, given back in order.
        self._worker: WorkerSession | None = None
        self._last_worker: str | None = None  # affinity
        self._idle = False  # what the pool was last told about the held worker session
        self._stream: _Stream | None = None
        self._calls: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(_CALLS)
        self._caller: asyncio.Task[None] | None = None

    def final_sent_at(self, utterance_id: int) -> float | None:
        """When the open stream of ``utterance_id`` got its final text (perf_counter)."""
        stream = self._stream
        if stream is None or stream.utterance_id != utterance_id:
            return None
        return stream.final_sent_at

    def set_idle(self, idle: bool) -> None:
        """Whether the session has nothing to say now: the pool may give its worker
        session to one that needs it. Told on a change only, not per frame."""
        worker = self._worker
        if idle is not self._idle and worker is not None and not worker.ended:
            self._idle = idle
            self._pool.set_idle(worker, idle)

    async def release(self) -> None:
        """``ReleaseWorker``: the stream ends, the worker session is given back (the
        pool waits for its EndSession on shutdown)."""
        await self._end_stream()
        worker, self._worker = self._worker, None
        if worker is not None:
            self._pool.spawn(worker.end())

    async def finish(self) -> None:
        """The session ends: no call left, the worker session given back."""
        await self._end_stream()
        if self._caller is not None:
            self._caller.cancel()  # only Control calls: moot once the session ends
            with contextlib.suppress(asyncio.CancelledError):
                await self._caller
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.end()

    def begin(self, utterance_id: int) -> None:
        stream = _Stream(utterance_id)
        self._stream = stream
        stream.task = asyncio.create_task(self._run_stream(stream))

    async def synthesize_text(self, action: SynthesizeText) -> None:
        stream = self._stream
        if stream is None or stream.utterance_id != action.utterance_id or (
                stream.task is not None and stream.task.done()):
            return  # its end is reported by the stream task
        # Never waits: the session loop must not hang on a stream that stopped reading
        # (a StartSession that hangs, then fails).
        if not action.is_final and stream.texts.qsize() >= _TEXT_QUEUE:
            await self._send_error(Error(
                ErrorCode.QUEUE_FULL,
                f"streamed text arrives faster than the worker takes it ({_TEXT_QUEUE} "
                "pieces waiting); this piece is dropped"))
            return
        stream.texts.put_nowait((action.text, action.is_final))
        if action.is_final:
            stream.final_sent_at = time.perf_counter()

    async def _run_stream(self, stream: _Stream) -> None:
        uid = stream.utterance_id
        try:
            worker = await self._acquire()
        except WorkerError as exc:
            self._metrics.worker_errors_total.inc()
            self._post(SynthesisFailed(uid, exc.message, ErrorCode.WORKER_UNAVAILABLE))
            return

        async def texts() -> AsyncIterator[tuple[str, bool]]:
            while True:
                yield await stream.texts.get()

        try:
            async for pcm in worker.synthesize(texts()):
                if not self._room.is_set():
                    await self._room.wait()  # back-pressure: the client buffer is full
                await self._put_frame(WorkerFrame(uid, pcm))
        except WorkerError as exc:
            self._metrics.worker_errors_total.inc()
            self._post(SynthesisFailed(uid, str(exc)))
            return
        # Behind its frames: an input would overtake those still queued (lost audio).
        await self._put_frame(SynthesisDone(uid))

    async def _acquire(self) -> WorkerSession:
        """The session's worker session on the wanted voice, taken now if needed
        (:func:`~.placement.open_worker_session`). Only the open stream's task calls
        this: one at a time."""
        worker = self._worker
        voice = self._voice()
        if (worker is not None and not worker.broken and not worker.ended
                and (not voice or worker.model_id == voice)):
            self._pool.set_idle(worker, False)
            self._idle = False
            return worker
        self._worker = None
        self._idle = False  # a new worker session starts busy
        if worker is not None:
            await worker.end()
        # No await between the open and this assignment: a cancelled task leaves no
        # worker session behind that the clean-up does not see.
        self._worker = await open_worker_session(
            self._pool, self._registry, self._mode, session_id=self.session_id,
            voice=voice, affinity=self._last_worker)
        self._last_worker = self._worker.worker.name
        return self._worker

    async def _end_stream(self) -> None:
        """Cancel the open Synthesize stream (and a StartSession it waits for)."""
        stream, self._stream = self._stream, None
        if stream is not None and stream.task is not None and not stream.task.done():
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stream.task

    async def control(self, command: Command) -> None:
        worker, stream = self._worker, self._stream
        if worker is None and command is Command.STOP and stream is not None:
            # Still taking a worker session: stop by cancelling the task that would
            # produce the audio, and report the stream's end as the worker would.
            await self._end_stream()
            self._post(SynthesisDone(stream.utterance_id))
            return
        if worker is None or worker.broken:
            return  # nothing playing on a worker yet, or nobody to tell
        self._call(lambda: self._control_call(worker, command))

    async def _control_call(self, worker: WorkerSession, command: Command) -> None:
        try:
            await worker.control(command)
        except WorkerError as exc:
            self._metrics.worker_errors_total.inc()
            log.info("session %s: worker Control %s failed: %s", self.session_id, command, exc)

    def _call(self, call: Callable[[], Awaitable[None]]) -> None:
        """Run a worker call after the ones before it, off the session's loop (a call
        to a dead worker waits for its deadline; the session's inputs must not)."""
        try:
            self._calls.put_nowait(call)
        except asyncio.QueueFull:  # a client toggling far faster than the worker answers
            log.warning("session %s: too many worker calls pending; one dropped",
                        self.session_id)
            return
        if self._caller is None or self._caller.done():
            self._caller = asyncio.create_task(self._run_calls())

    async def _run_calls(self) -> None:
        while not self._calls.empty():
            call = self._calls.get_nowait()
            await call()
