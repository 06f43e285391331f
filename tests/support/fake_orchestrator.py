"""Fakes for unit tests of the orchestrator's session driver: small and deliberate.

- ``worker_info``: a ``WorkerInfo`` made the way the orchestrator gets one (a record
  built by ``registry_record.build_record``, parsed by ``WorkerInfo.from_record``).
- ``FakeRegistry``: an in-memory ``WorkerRegistry``.
- ``FakeWorkerPool`` / ``FakeWorkerSession``: the surface of ``worker_link.WorkerPool``
  and ``WorkerSession`` that the driver uses, with failure knobs (see the attributes of
  ``FakeWorkerPool``). A cancelled ``open`` creates no session (as the real pool: an
  orphan is ended by the pool itself, see ``test_worker_link``).
- ``FakeClient``: the ``SessionOutput`` a transport gives the driver; it encodes what
  it gets as the WebSocket transport does (``ws_output.wire_messages``, the session's
  output format), records what the client got (decoded) and lets a test wait for it,
  with a deadline.

Every wait here has a deadline (``TIMEOUT_S``) and fails with what was seen instead.
``log`` (shared by a client and a pool) records client messages and worker calls in
the order they happened, for ordering checks across the two sides.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from duplexvoice.audio import FRAME_BYTES
from duplexvoice.orchestrator.sessions.output import OutputItem, SendAudio
from duplexvoice.orchestrator.sessions.settings import SessionSettings
from duplexvoice.orchestrator.transports.ws_output import wire_messages
from duplexvoice.orchestrator.workers.link import WorkerError, WorkerUnavailable
from duplexvoice.orchestrator.workers.router import WorkerInfo, with_local_load
from duplexvoice.wire.messages import Command
from duplexvoice.wire.protocol import decode_binary_frame
from duplexvoice.wire.registry_record import build_record

T = TypeVar("T")

TIMEOUT_S = 5.0
NOW = 1_700_000_000.0


def worker_info(name: str = "w1", *, models: Sequence[str] = ("m1",),
                resident: Sequence[str] | None = None, max_sessions: int = 4,
                queue_depth: float = 0.0, heartbeat: float = NOW) -> WorkerInfo:
    """A worker as the router sees it, from a record as a worker writes it."""
    record = build_record(
        name=name, addr=f"grpc://{name}:7001",
        capabilities={"streaming": True, "zero_shot": False, "lora": False, "cpu_ok": True,
                      "languages": ["en"], "emotive_zero_prompt": False,
                      "max_concurrent_sessions": max_sessions},
        resident_models=list(models if resident is None else resident),
        metrics={"rtf": 0.2, "queue_depth": queue_depth}, now=heartbeat,
        extra={"available_models": list(models)},
    )
    info = WorkerInfo.from_record(json.loads(json.dumps(record)), heartbeat, 30.0)
    assert info is not None
    return info


def frame_pcm(index: int) -> bytes:
    """The ``index``-th frame a fake pool produces (0, 1, ...): recognizable, 1920 bytes."""
    return struct.pack("<I", index) + bytes(FRAME_BYTES - 4)


def frame_index(pcm: bytes) -> int:
    return int(struct.unpack_from("<I", pcm)[0])


async def wait_until(check: Callable[[], T], changed: asyncio.Event, what: str,
                     timeout: float = TIMEOUT_S) -> T:
    """``check()`` once it is truthy; re-checked each time ``changed`` is set."""
    async def loop() -> T:
        while True:
            value = check()
            if value:
                return value
            changed.clear()
            await changed.wait()

    try:
        return await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what} (last: {check()!r})") from None


class FakeRegistry:
    """An in-memory registry: ``workers`` is what the orchestrator would list."""

    def __init__(self, workers: Sequence[WorkerInfo] = ()) -> None:
        self.listed = list(workers)
        self.refreshes = 0

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def refresh(self) -> None: ...

    async def refresh_soon(self) -> None:
        self.refreshes += 1

    def workers(self) -> list[WorkerInfo]:
        return list(self.listed)


# -- the client ---------------------------------------------------------------------


class FakeClient:
    """What the driver's client got, decoded, in order.

    Knobs: ``hold_audio`` (the first write that carries audio waits until ``release``);
    ``fail_with`` (every send from now on raises it, nothing is received).
    Audio messages are decoded to ``{"type": "audio", "format": "json"|"binary",
    "utterance_id", "sequence", "pcm": bytes}``.
    """

    def __init__(self, log: list[tuple[str, str]] | None = None,
                 settings: SessionSettings | None = None) -> None:
        self.settings = settings if settings is not None else SessionSettings()
        self.items: list[OutputItem] = []  # as the driver handed them
        self.raw: list[str | bytes] = []
        self.messages: list[dict[str, Any]] = []
        self.closed: list[tuple[int, str]] = []
        self.log = log if log is not None else []
        self.sends = 0
        self.hold_audio = False
        self.holding = asyncio.Event()  # set while a write is held
        self._release = asyncio.Event()
        self.fail_with: BaseException | None = None
        self.changed = asyncio.Event()

    async def send(self, items: Sequence[OutputItem]) -> None:
        self.sends += 1
        if self.fail_with is not None:
            raise self.fail_with
        messages = wire_messages(items, self.settings)  # as the WebSocket output does
        if self.hold_audio and any(isinstance(m, SendAudio) for m in items):
            self.hold_audio = False
            self.holding.set()
            await self._release.wait()
            self.holding.clear()
        self.items.extend(items)
        for raw in messages:
            message = decode(raw)
            self.raw.append(raw)
            self.messages.append(message)
            self.log.append(("client", message["type"]))
        self.changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self.log.append(("client", "close"))
        self.changed.set()

    def release(self) -> None:
        self._release.set()

    # -- reading ------------------------------------------------------------------

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def types(self, start: int = 0) -> list[str]:
        return [m["type"] for m in self.messages[start:]]

    def audio(self, utterance_id: int | None = None) -> list[dict[str, Any]]:
        return [m for m in self.of_type("audio")
                if utterance_id is None or m["utterance_id"] == utterance_id]

    def states(self) -> list[str]:
        return [m["state"] for m in self.of_type("state")]

    async def wait(self, check: Callable[[FakeClient], T], what: str,
                   timeout: float = TIMEOUT_S) -> T:
        try:
            return await wait_until(lambda: check(self), self.changed, what, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; client got {self.summary()}") from None

    async def wait_for(self, kind: str, n: int = 1, **fields: object) -> dict[str, Any]:
        """The ``n``-th message of type ``kind`` with these field values."""
        def found(client: FakeClient) -> dict[str, Any] | None:
            hits = [m for m in client.of_type(kind)
                    if all(m.get(k) == v for k, v in fields.items())]
            return hits[n - 1] if len(hits) >= n else None

        return await self.wait(found, f"{n} x {kind} {fields}")

    def summary(self) -> list[str]:
        out: list[str] = []
        for m in self.messages:
            if m["type"] == "audio":
                out.append(f"audio#{m['sequence']}/u{m['utterance_id']}")
            else:
                extra = {k: v for k, v in m.items() if k != "type"}
                out.append(f"{m['type']}{extra}")
        return out


def decode(raw: str | bytes) -> dict[str, Any]:
    """One message as the client reads it (binary frames and JSON audio alike)."""
    if isinstance(raw, bytes):
        frame = decode_binary_frame(raw)
        return {"type": "audio", "format": "binary", "utterance_id": frame.utterance_id,
                "sequence": frame.sequence, "pcm": frame.pcm}
    message: dict[str, Any] = json.loads(raw)
    if message["type"] == "audio":
        message["format"] = "json"
        message["pcm"] = base64.b64decode(message["pcm"])
    return message


# -- the worker side ----------------------------------------------------------------


class FakeWorkerSession:
    """One worker session. ``synthesize`` waits for the final text, then yields the
    pool's ``frames`` frames (``frame_pcm`` of a pool-wide index) and ends."""

    def __init__(self, pool: FakeWorkerPool, worker: WorkerInfo, session_id: str,
                 model_id: str) -> None:
        self._pool = pool
        self.worker = worker
        self.session_id = session_id
        self.model_id = model_id
        self.broken = False
        self.ended = False
        self.end_calls = 0  # end() / begin_end() calls
        self.end_sent = 0  # EndSession calls that would reach the worker
        self.controls: list[Command] = []
        self.texts: list[tuple[str, bool]] = []
        self.streams = 0  # Synthesize streams opened
        self.streams_closed = 0  # ... and finished or cancelled
        self.produced = 0  # frames yielded, all streams
        self.allowed: int | None = pool.allowed_frames  # produced stops here until allow()
        self.paused = False
        self._stop = False

    def allow(self, n: int) -> None:
        """Let ``n`` more frames through the gate."""
        self.allowed = (self.allowed or 0) + n
        self._pool.notify()

    async def synthesize(self, texts: AsyncIterator[tuple[str, bool]]) -> AsyncIterator[bytes]:
        pool = self._pool
        self.streams += 1
        self._stop = False
        failure, pool.fail_next_stream = pool.fail_next_stream, None
        try:
            async for text, is_final in texts:
                self.texts.append((text, is_final))
                pool.notify()
                if is_final:
                    break
            for i in range(pool.frames):
                while not self._may_produce():  # the test's own waits bound this one
                    pool.changed.clear()
                    await pool.changed.wait()
                if self._stop:
                    for _ in range(pool.frames_after_stop):  # in flight when STOP came
                        yield self._next_frame()
                    return
                if failure is not None and i == failure[0]:
                    if isinstance(failure[1], WorkerUnavailable):
                        self.broken = True
                        pool.down.add(self.worker.name)
                    raise failure[1]
                yield self._next_frame()
        finally:
            self.streams_closed += 1
            pool.notify()

    def _may_produce(self) -> bool:
        if self._stop:
            return True
        return not self.paused and (self.allowed is None or self.produced < self.allowed)

    def _next_frame(self) -> bytes:
        pcm = frame_pcm(self._pool.frame_counter)
        self._pool.frame_counter += 1
        self.produced += 1
        self._pool.notify()
        return pcm

    async def control(self, command: Command) -> None:
        pool = self._pool
        self.controls.append(command)
        pool.log.append(("worker", f"Control {command.value}"))
        pool.notify()
        if pool.control_gate is not None:
            await pool.control_gate.wait()
        if pool.control_error is not None:
            raise pool.control_error
        if command is Command.PAUSE:
            self.paused = True
        elif command is Command.RESUME:
            self.paused = False
        else:
            self._stop = True
        pool.notify()

    async def end(self) -> None:
        call = self.begin_end()
        if call is not None:
            await asyncio.shield(call)

    def begin_end(self) -> asyncio.Task[None] | None:
        self.end_calls += 1
        if self.ended:
            return None
        self.ended = True
        self._pool.set_idle(self, False)
        self._pool._dropped(self.worker.name)
        self._pool.notify()
        if self.broken:
            return None  # nobody to tell (as the real session)
        self.end_sent += 1
        self._pool.log.append(("worker", f"EndSession {self.session_id}"))

        async def answer() -> None:
            pass

        return asyncio.ensure_future(answer())


class FakeWorkerPool:
    """``WorkerPool``'s surface as the driver uses it, in memory.

    Knobs (set before the call they affect):
      ``open_errors``: one entry per ``open`` call, in order: raise it (a
        ``WorkerUnavailable`` also marks the worker down) or ``None`` (open);
      ``open_gate``: ``open`` waits for this event (StartSession in flight);
      ``frames``: frames per Synthesize stream; ``allowed_frames``: each new session
        produces this many frames, then waits for ``FakeWorkerSession.allow``;
      ``fail_next_stream``: ``(after_frames, error)``: the next stream raises ``error``
        after that many frames (a ``WorkerUnavailable`` marks the session broken and
        the worker down, as the real ones do);
      ``frames_after_stop``: frames a stream still yields after Control STOP;
      ``control_gate`` / ``control_error``: Control calls wait for it / raise it.
    """

    def __init__(self, log: list[tuple[str, str]] | None = None) -> None:
        self.log = log if log is not None else []
        self.changed = asyncio.Event()
        self.sessions: Counter[str] = Counter()
        self.opened: list[FakeWorkerSession] = []
        self.open_calls: list[tuple[str, str, str]] = []  # (worker, session_id, model)
        self.cancelled_opens = 0
        self.open_errors: list[WorkerError | None] = []
        self.open_gate: asyncio.Event | None = None
        self.frames = 5
        self.allowed_frames: int | None = None
        self.fail_next_stream: tuple[int, WorkerError] | None = None
        self.frames_after_stop = 0
        self.control_gate: asyncio.Event | None = None
        self.control_error: WorkerError | None = None
        self.down: set[str] = set()
        self.back: set[str] = set()
        self.rechecks = 0
        self.idle: dict[str, FakeWorkerSession] = {}
        self.idle_log: list[tuple[str, bool]] = []
        self.frame_counter = 0
        self._background: set[asyncio.Task[None]] = set()

    def notify(self) -> None:
        self.changed.set()

    async def wait(self, check: Callable[[], T], what: str, timeout: float = TIMEOUT_S) -> T:
        return await wait_until(check, self.changed, what, timeout)

    @property
    def held(self) -> int:
        """Worker sessions held (counted from the open call on, as the real pool)."""
        return sum(self.sessions.values())

    # -- the surface --------------------------------------------------------------

    def with_load(self, workers: Sequence[WorkerInfo]) -> list[WorkerInfo]:
        return with_local_load(workers, self.sessions)

    def excluded(self, workers: Sequence[WorkerInfo]) -> set[str]:
        return {w.name for w in workers if w.name in self.down}

    async def recheck(self, workers: Sequence[WorkerInfo]) -> None:
        """Knob ``back``: names that answer a re-check (taken off ``down``)."""
        self.rechecks += 1
        self.down -= self.back

    def idle_sessions(self) -> Counter[str]:
        return Counter(s.worker.name for s in self.idle.values())

    def set_idle(self, session: FakeWorkerSession, idle: bool) -> None:
        if not self.idle_log or self.idle_log[-1] != (session.session_id, idle):
            self.idle_log.append((session.session_id, idle))
        if idle and not session.ended:
            self.idle[session.session_id] = session
        else:
            self.idle.pop(session.session_id, None)
        self.notify()

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def open(self, worker: WorkerInfo, session_id: str, model_id: str
                   ) -> FakeWorkerSession:
        name = worker.name
        self.open_calls.append((name, session_id, model_id))
        self.log.append(("worker", f"StartSession {name}"))
        self.sessions[name] += 1
        self.notify()
        try:
            if self.open_gate is not None:
                await self.open_gate.wait()
            error = self.open_errors.pop(0) if self.open_errors else None
            if error is not None:
                if isinstance(error, WorkerUnavailable):
                    self.down.add(name)
                raise error
        except asyncio.CancelledError:
            self.cancelled_opens += 1
            self._dropped(name)
            raise
        except BaseException:
            self._dropped(name)
            raise
        session = FakeWorkerSession(self, worker, f"{session_id}-{len(self.opened) + 1}",
                                    model_id)
        self.opened.append(session)
        self.notify()
        return session

    def _dropped(self, name: str) -> None:
        self.sessions[name] -= 1
        if self.sessions[name] <= 0:
            del self.sessions[name]
        self.notify()

    async def close(self) -> None:
        """Wait (bounded) for the background clean-ups."""
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=TIMEOUT_S)
            assert not pending, "background clean-ups still running"
