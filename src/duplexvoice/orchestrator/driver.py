"""The asyncio driver of one client session.

It feeds the pure :class:`~duplexvoice.orchestrator.session.SessionMachine` with events
(client messages, worker frames, timer ticks) through one queue, in order, and carries
out the actions it returns: messages to the client, worker session and stream calls.
All decisions are the machine's; this module only does I/O.

Worker side: the session's worker is chosen by the router over the registry's current
workers. A worker that fails (its stream breaks with a transport error) is excluded
and the next utterance starts a new worker session on another one, if any. A voice
change (``config``) applies from the next utterance by moving to a worker session on
that model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.protocol import (
    FRAME_MS,
    AudioInput,
    ClientMessage,
    ConfigMessage,
    ControlMessage,
    PlaybackMessage,
    TextMessage,
    audio_message,
    encode_binary_frame,
    encode_json,
    error_message,
)
from duplexvoice.orchestrator.registry import WorkerRegistry
from duplexvoice.orchestrator.router import RouteRequest, route, with_local_load
from duplexvoice.orchestrator.session import (
    Action,
    BeginSynthesis,
    ClientDisconnected,
    Close,
    Connected,
    ControlReceived,
    EndWorkerSession,
    Event,
    Send,
    SendAudio,
    ServerShutdown,
    SessionConfig,
    SessionMachine,
    StartWorkerSession,
    SynthesisDone,
    SynthesisFailed,
    SynthesizeText,
    TextReceived,
    Tick,
    WorkerControl,
    WorkerFrame,
    WorkerSessionFailed,
    WorkerSessionStarted,
)
from duplexvoice.rpc import tts_pb2

log = logging.getLogger(__name__)

_EVENT_QUEUE = 256
# The orchestrator pauses and stops audio in its own buffer, so the HTTP/2 window per
# worker stream need not be tiny; at 64 KiB (about 33 frames) the window updates are
# 4x rarer than at the worker client's default, which costs both processes less CPU.
_WORKER_WINDOW_BYTES = 64 * 1024
_TEXT_QUEUE = 64
_COMMANDS = {"PAUSE": tts_pb2.PAUSE, "RESUME": tts_pb2.RESUME, "STOP": tts_pb2.STOP}
# Transport failures mean the worker itself is in trouble: route around it.
_WORKER_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


class ClientPool:
    """One gRPC channel per worker address, shared by all sessions (channels are
    stateless and multiplex streams; sessions share nothing else), and how many
    worker sessions this orchestrator holds on each worker (for routing)."""

    def __init__(self) -> None:
        self._clients: dict[str, WorkerClient] = {}
        self.sessions: Counter[str] = Counter()

    def hold(self, worker: str) -> None:
        self.sessions[worker] += 1

    def drop(self, worker: str) -> None:
        self.sessions[worker] -= 1
        if self.sessions[worker] <= 0:
            del self.sessions[worker]

    def get(self, addr: str) -> WorkerClient:
        client = self._clients.get(addr)
        if client is None:
            client = self._clients[addr] = WorkerClient(addr, window_bytes=_WORKER_WINDOW_BYTES)
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


@dataclass
class _WorkerLink:
    name: str
    client: WorkerClient
    session_id: str
    model_id: str
    broken: bool = False


@dataclass
class _Stream:
    utterance_id: int
    texts: asyncio.Queue[tts_pb2.TextChunk | None] = field(
        default_factory=lambda: asyncio.Queue(_TEXT_QUEUE)
    )
    task: asyncio.Task[None] | None = None
    final_sent_at: float | None = None


# Writes messages (str: text, bytes: binary) to the client in order, as one batch.
SendMessages = Callable[[list[str | bytes]], Awaitable[None]]
CloseSocket = Callable[[int, str], Awaitable[None]]


class SessionDriver:
    def __init__(
        self,
        session_id: str,
        config: OrchestratorConfig,
        registry: WorkerRegistry,
        clients: ClientPool,
        metrics: OrchestratorMetrics,
        *,
        send: SendMessages,
        close: CloseSocket,
    ) -> None:
        self.session_id = session_id
        self.config = config
        self.machine = SessionMachine(
            SessionConfig(
                session_id,
                idle_timeout_s=config.idle_timeout_s,
                max_queued_utterances=config.max_queued_utterances,
                lead_ms=config.lead_ms,
                send_quantum_ms=config.send_quantum_ms,
                max_buffered_frames=max(1, config.buffer_ms // FRAME_MS),
            ),
            now=time.monotonic(),
        )
        self._registry = registry
        self._clients = clients
        self._metrics = metrics
        self._send_messages = send
        self._close = close
        self._events: asyncio.Queue[Event] = asyncio.Queue(_EVENT_QUEUE)
        # One timer per session for the machine's next deadline, re-armed only when
        # the deadline moves: it posts a Tick (cheaper than a timeout per wait).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._room = asyncio.Event()  # set while the outbound buffer has room
        self._room.set()
        self._send_lock = asyncio.Lock()
        self._link: _WorkerLink | None = None
        self._excluded: set[str] = set()
        self._stream: _Stream | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.voice = config.default_voice
        self.output_format = "json"
        self._wanted_format = "json"
        self.input_sample_rate = 16000  # WIRE §1.2 default; a config message changes it
        self._first_sent_upto = 0  # utterance ids are sent in order: the last with audio
        # First-audio latency (text complete at the worker -> first frame sent), per
        # utterance until its metrics message is sent.
        self._first_audio_ms: dict[int, float] = {}
        self._stop_at: float | None = None

    # -- inputs ---------------------------------------------------------------------

    async def client_message(self, message: ClientMessage) -> None:
        """A parsed, valid client message (the server answers malformed ones itself)."""
        if isinstance(message, TextMessage):
            await self._events.put(TextReceived(message.text, message.is_final))
        elif isinstance(message, ControlMessage):
            if message.command == "STOP":
                self._stop_at = time.perf_counter()
            await self._events.put(ControlReceived(message.command))
        elif isinstance(message, ConfigMessage):
            await self._apply_config(message)
        elif isinstance(message, AudioInput):
            await self.send_error(
                "INVALID_STATE", "microphone audio needs conversation mode, not available yet"
            )
        elif isinstance(message, PlaybackMessage):
            pass  # reported playback position: used by barge-in (conversation mode)

    def client_gone(self) -> None:
        self._post(ClientDisconnected())

    def shutdown(self) -> None:
        self._post(ServerShutdown())

    def _post(self, event: Event) -> None:
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:  # only when the loop is wedged on a dead client
            task = asyncio.create_task(self._events.put(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _apply_config(self, message: ConfigMessage) -> None:
        if message.mode == "conversation":
            await self.send_error("INVALID_CONFIG", "conversation mode is not available yet")
            return
        if message.voice is not None:
            offered = {m for w in self._registry.workers() for m in w.available_models}
            if message.voice not in offered:
                await self.send_error(
                    "INVALID_CONFIG", f"voice {message.voice!r} is not available "
                    f"(available: {', '.join(sorted(offered)) or 'none'})"
                )
                return
            self.voice = message.voice
        if message.output_format is not None:
            self._wanted_format = message.output_format  # from the next utterance
        if message.input_sample_rate is not None:
            self.input_sample_rate = message.input_sample_rate

    async def send_error(self, code: str, message: str) -> None:
        self._metrics.client_errors_total.inc()
        await self._send(encode_json(error_message(code, message)))

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Process events until the session is closed."""
        try:
            await self._apply(Connected())
            while not self.machine.closed:
                self._arm_timer()
                await self._apply(await self._events.get())
        finally:
            if self._timer is not None:
                self._timer.cancel()
            await self._release_worker()
            for task in list(self._tasks):
                task.cancel()

    def _arm_timer(self) -> None:
        deadline = self.machine.next_deadline
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # The loop's clock is time.monotonic(), the machine's clock.
        self._timer = (None if deadline is None
                       else asyncio.get_running_loop().call_at(deadline, self._on_timer))

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._post(Tick())

    async def _apply(self, event: Event) -> None:
        # The messages of one event go to the client in one write (a quantum of audio
        # frames, or a frame with the state change that follows it).
        out: list[str | bytes] = []
        for action in self.machine.handle(event, time.monotonic()):
            if isinstance(action, SendAudio):
                out.append(self._encode_audio(action))
            elif isinstance(action, Send):
                self._observe(action.message)
                out.append(encode_json(action.message))
                if action.message.get("type") == "utterance_end":
                    out.extend(self._utterance_metrics(action.message))
            else:
                if out:
                    await self._write(out)
                    out = []
                await self._do(action)
        if out:
            await self._write(out)
        if self.machine.output_full:
            self._room.clear()
        else:
            self._room.set()

    async def _do(self, action: Action) -> None:
        if isinstance(action, StartWorkerSession):
            self._spawn(self._start_worker())
        elif isinstance(action, BeginSynthesis):
            self._begin(action.utterance_id)
        elif isinstance(action, SynthesizeText):
            await self._synthesize_text(action)
        elif isinstance(action, WorkerControl):
            await self._control(action.command)
        elif isinstance(action, EndWorkerSession):
            await self._release_worker()
        elif isinstance(action, Close):
            await self._close(action.code, action.reason)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- to the client --------------------------------------------------------------

    async def _send(self, text: str) -> None:
        await self._write([text])

    async def _write(self, messages: list[str | bytes]) -> None:
        async with self._send_lock:  # the reader task sends errors too: keep the order
            await self._send_messages(messages)

    def _encode_audio(self, action: SendAudio) -> str | bytes:
        if action.utterance_id > self._first_sent_upto:  # a new utterance's first frame
            self.output_format = self._wanted_format
        if self.output_format == "binary":
            data: str | bytes = encode_binary_frame(action.pcm, action.sequence,
                                                    action.utterance_id)
        else:
            data = encode_json(audio_message(action.pcm, action.sequence, action.utterance_id))
        self._metrics.frames_sent_total.inc()
        uid = action.utterance_id
        if uid > self._first_sent_upto:
            self._first_sent_upto = uid
            stream = self._stream
            if stream is not None and stream.utterance_id == uid and stream.final_sent_at:
                first_audio_ms = (time.perf_counter() - stream.final_sent_at) * 1000
                self._metrics.first_audio_ms.observe(first_audio_ms)
                self._first_audio_ms[uid] = first_audio_ms
        return data

    def _utterance_metrics(self, end: dict[str, object]) -> list[str | bytes]:
        """The ``metrics`` extension message: this utterance's timings, after its end."""
        uid = end.get("utterance_id")
        first_audio_ms = self._first_audio_ms.pop(uid, None) if isinstance(uid, int) else None
        if first_audio_ms is None:
            return []
        return [encode_json({
            "type": "metrics", "utterance_id": uid,
            "first_audio_ms": round(first_audio_ms, 2),
        })]

    def _observe(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        if kind == "utterance_end":
            self._metrics.utterances_total.inc()
            if message.get("reason") == "error":
                self._metrics.utterances_failed_total.inc()
        elif kind == "interrupt" and self._stop_at is not None:
            self._metrics.stop_latency_ms.observe((time.perf_counter() - self._stop_at) * 1000)
            self._stop_at = None
        elif kind == "error":
            self._metrics.client_errors_total.inc()

    # -- to the worker --------------------------------------------------------------

    async def _connect_worker(self) -> str | None:
        """Route and StartSession; None on success, else why not."""
        request = RouteRequest(model_id=self.voice)
        workers = with_local_load(self._registry.workers(), self._clients.sessions)
        decision = route(workers, request, self.config.mode,
                         affinity=self._link.name if self._link else None,
                         exclude=self._excluded)
        if decision.worker is None:
            return decision.reason
        worker = decision.worker
        model = decision.model_id or self.voice
        client = self._clients.get(worker.addr)
        # Counted from the decision on, so concurrent new sessions spread out.
        self._clients.hold(worker.name)
        try:
            await client.stub.StartSession(
                tts_pb2.StartSessionRequest(session_id=self.session_id, model_id=model),
                timeout=self.config.worker_timeout_s,
            )
        except BaseException as exc:
            self._clients.drop(worker.name)
            if not isinstance(exc, grpc.aio.AioRpcError):
                raise
            self._metrics.worker_errors_total.inc()
            if exc.code() in _WORKER_GONE:
                self._excluded.add(worker.name)
            return f"worker {worker.name}: {exc.code().name}: {exc.details()}"
        self._link = _WorkerLink(worker.name, client, self.session_id, model)
        return None

    async def _start_worker(self) -> None:
        problem = await self._connect_worker()
        self._post(WorkerSessionStarted() if problem is None else WorkerSessionFailed(problem))

    async def _ensure_worker(self) -> str | None:
        """Before an utterance: a healthy worker session on the wanted voice."""
        link = self._link
        if link is not None and not link.broken and link.model_id == (self.voice or link.model_id):
            return None
        await self._end_link()
        return await self._connect_worker()

    def _begin(self, utterance_id: int) -> None:
        stream = _Stream(utterance_id)
        self._stream = stream
        stream.task = asyncio.create_task(self._run_stream(stream))

    async def _synthesize_text(self, action: SynthesizeText) -> None:
        stream = self._stream
        if stream is None or stream.utterance_id != action.utterance_id:
            return
        chunk = tts_pb2.TextChunk(session_id=self.session_id, text=action.text,
                                  is_final=action.is_final)
        await stream.texts.put(chunk)
        if action.is_final:
            stream.final_sent_at = time.perf_counter()

    async def _run_stream(self, stream: _Stream) -> None:
        uid = stream.utterance_id
        problem = await self._ensure_worker()
        link = self._link
        if problem is not None or link is None:
            self._post(SynthesisFailed(uid, problem or "no worker"))
            return

        async def texts() -> AsyncIterator[tts_pb2.TextChunk]:
            while (chunk := await stream.texts.get()) is not None:
                yield chunk
                if chunk.is_final:
                    return

        try:
            call = link.client.stub.Synthesize(texts())
            async for frame in call:
                pcm = frame.audio_data  # each read of the field copies it: once per frame
                if pcm:
                    if not self._room.is_set():
                        await self._room.wait()  # back-pressure: the client buffer is full
                    await self._events.put(WorkerFrame(uid, pcm))
                if frame.is_final:
                    break
        except grpc.aio.AioRpcError as exc:
            self._metrics.worker_errors_total.inc()
            if exc.code() in _WORKER_GONE:
                link.broken = True
                self._excluded.add(link.name)
            self._post(SynthesisFailed(uid, f"{exc.code().name}: {exc.details()}"))
            return
        self._post(SynthesisDone(uid))

    async def _control(self, command: str) -> None:
        link = self._link
        if link is None or link.broken:
            return
        try:
            await link.client.stub.Control(
                tts_pb2.ControlRequest(session_id=link.session_id, command=_COMMANDS[command]),
                timeout=self.config.worker_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            self._metrics.worker_errors_total.inc()
            log.warning("session %s: worker Control %s failed: %s", self.session_id, command,
                        exc.code().name)

    async def _release_worker(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream.task is not None and not stream.task.done():
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stream.task
            # The machine still waits for this stream's end.
            self._post(SynthesisDone(stream.utterance_id))
        await self._end_link()

    async def _end_link(self) -> None:
        """EndSession on the current worker session, if it is still there."""
        link, self._link = self._link, None
        if link is None:
            return
        self._clients.drop(link.name)
        if link.broken:
            return
        try:
            await link.client.stub.EndSession(
                tts_pb2.EndSessionRequest(session_id=link.session_id),
                timeout=self.config.worker_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("session %s: EndSession: %s", self.session_id, exc.code().name)
