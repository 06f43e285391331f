"""The asyncio driver of one client session.

It feeds the pure :class:`~duplexvoice.orchestrator.sessions.machine.SessionMachine` with events
(client messages, worker frames, timer ticks) through an :class:`~.inbox.Inbox`
(inputs before audio) and carries out the actions it returns: messages to the client,
worker calls. Decisions are the machine's (and the router's, and the settings'); this
module does I/O and measures time. What goes to the client goes typed to the
transport's :class:`~.output.SessionOutput`, which encodes it its own way.

Worker side, through :mod:`..workers.link` only: a worker session is taken when an
utterance starts and none is held (routed over the registry's workers, minus those
down), kept while the machine keeps it, and ended on ``ReleaseWorker``, on every
exit of the session, including a StartSession still in flight. A worker that fails
is routed around by every session until it answers again; the next utterance takes
a new worker session wherever one can be had (:mod:`..workers.placement`). ``mode:
conversation`` makes a :class:`~.listener.Listener`: microphone audio goes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from duplexvoice.audio import FRAME_MS
from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions.events import (
    Action,
    BeginSynthesis,
    CancelReply,
    ClientDisconnected,
    Close,
    Connected,
    ControlReceived,
    Event,
    ReleaseWorker,
    Send,
    SendAudio,
    ServerShutdown,
    StartReply,
    SynthesisDone,
    SynthesisFailed,
    SynthesizeText,
    TextReceived,
    Tick,
    TranscribeTurn,
    TurnClosed,
    UserTyped,
    WorkerControl,
    WorkerFrame,
)
from duplexvoice.orchestrator.sessions.inbox import Inbox
from duplexvoice.orchestrator.sessions.listener import Listener
from duplexvoice.orchestrator.sessions.listening import NotListening
from duplexvoice.orchestrator.sessions.machine import SessionConfig, SessionMachine
from duplexvoice.orchestrator.sessions.output import OutputItem, SessionOutput
from duplexvoice.orchestrator.sessions.playout import PlayoutConfig
from duplexvoice.orchestrator.sessions.settings import SessionSettings
from duplexvoice.orchestrator.sessions.shared import ConversationServices
from duplexvoice.orchestrator.sessions.turn_metrics import TurnFigures
from duplexvoice.orchestrator.workers.link import (
    WorkerError,
    WorkerPool,
    WorkerSession,
)
from duplexvoice.orchestrator.workers.placement import open_worker_session
from duplexvoice.orchestrator.workers.registry import WorkerRegistry
from duplexvoice.wire.messages import (
    Command,
    EndReason,
    Error,
    ErrorCode,
    Interrupt,
    Outbound,
    Pause,
    ReplyText,
    Resume,
    Transcript,
    UtteranceEnd,
    UtteranceMetrics,
)
from duplexvoice.wire.protocol import (
    AudioInput,
    ClientMessage,
    ConfigMessage,
    ControlMessage,
    PlaybackMessage,
    TextMessage,
    UserTextMessage,
)

log = logging.getLogger(__name__)

_TEXT_QUEUE = 64  # text pieces of one utterance waiting for the worker stream
_CALLS = 64  # worker Control calls waiting to be made


@dataclass(frozen=True)
class _ConfigChange:
    """A ``config`` message, queued in order with the session's other inputs."""

    message: ConfigMessage


@dataclass
class _Stream:
    """One utterance's Synthesize stream. Its text waits in ``texts`` for the worker,
    bounded by ``_TEXT_QUEUE`` pieces; the final piece always gets in (one per
    stream), so an utterance is never left without its end."""

    utterance_id: int
    texts: asyncio.Queue[tuple[str, bool]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    final_sent_at: float | None = None


class SessionDriver:
    def __init__(
        self,
        session_id: str,
        config: OrchestratorConfig,
        registry: WorkerRegistry,
        pool: WorkerPool,
        metrics: OrchestratorMetrics,
        *,
        output: SessionOutput,
        settings: SessionSettings | None = None,
        services: ConversationServices | None = None,
    ) -> None:
        """``settings``: the session's, where the transport reads them too (the
        WebSocket's output format); made here otherwise."""
        self.session_id = session_id
        self.config = config
        self.machine = SessionMachine(
            SessionConfig(
                session_id,
                idle_timeout_s=config.idle_timeout_s,
                max_queued_utterances=config.max_queued_utterances,
                worker_linger_s=config.worker_linger_s,
                playout=PlayoutConfig(
                    lead_ms=config.lead_ms, send_quantum_ms=config.send_quantum_ms,
                    max_frames=max(1, config.buffer_ms // FRAME_MS),
                ),
                turns=config.conversation.turns,
            ),
            now=time.monotonic(),
        )
        self.settings = (settings if settings is not None
                         else SessionSettings(voice=config.default_voice))
        self._registry = registry
        self._pool = pool
        self._metrics = metrics
        self._output = output
        self._inbox: Inbox[Event | _ConfigChange] = Inbox()
        # One timer per session for the machine's next deadline, re-armed only when
        # the deadline moves: it posts a Tick (cheaper than a timeout per wait).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._room = asyncio.Event()  # set while the outbound buffer has room
        self._room.set()
        self._send_lock = asyncio.Lock()
        self._client_gone = False
        # The worker session: taken by a stream task, given back in order.
        self._worker: WorkerSession | None = None
        self._last_worker: str | None = None  # affinity
        self._idle = False  # what the pool was last told about the held worker session
        self._stream: _Stream | None = None
        # Worker calls that must keep their order but never hold up the session's
        # inputs (a Control to a dead worker waits for its deadline).
        self._calls: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(_CALLS)
        self._caller: asyncio.Task[None] | None = None
        self._first_sent_upto = 0  # utterance ids are sent in order: the last with audio
        self._first_audio_ms: dict[int, float] = {}  # until its metrics message is sent
        self._stop_at: float | None = None
        # Conversation mode: the listening half, made when the client asks for it.
        self._services = services
        self._reply_names = set(services.replies) if services is not None else set()
        self._listener: Listener | None = None
        self._not_listening = NotListening()
        self._turns = TurnFigures(metrics)

    # -- inputs ---------------------------------------------------------------------

    @property
    def input_sample_rate(self) -> int:
        return self.settings.input_sample_rate

    @property
    def listening(self) -> bool:
        """Whether microphone audio is wanted now (conversation mode). A transport
        whose audio flows regardless (a WebRTC track) drops it silently otherwise."""
        return self._listener is not None

    async def client_message(self, message: ClientMessage) -> None:
        """A parsed, valid client message (the server answers malformed ones itself)."""
        if isinstance(message, TextMessage):
            await self._inbox.put_input(TextReceived(message.text, message.is_final))
        elif isinstance(message, UserTextMessage):
            if self._listener is None:
                await self.send_message(Error(
                    ErrorCode.INVALID_STATE, "user_text needs conversation mode: "
                    'send {"type": "config", "mode": "conversation"} first'))
                return
            await self._inbox.put_input(UserTyped(message.text))
        elif isinstance(message, ControlMessage):
            if message.command is Command.STOP:
                self._stop_at = time.perf_counter()
            await self._inbox.put_input(ControlReceived(message.command))
        elif isinstance(message, ConfigMessage):
            error = self.settings.check(message, self._offered_voices(),
                                        self._reply_names)
            if error is not None:
                await self.send_message(error)
                return
            # The mode and the input rate concern the audio that follows this message
            # on the socket: they apply now. The rest goes in order with the texts
            # before it: from the next utterance opened after it.
            if message.input_sample_rate is not None:
                self.settings.input_sample_rate = message.input_sample_rate
            if message.mode is not None:
                await self._set_mode(message.mode)
            if message.reply is not None and self._listener is not None:
                self._listener.reply_engine = message.reply
            await self._inbox.put_input(_ConfigChange(message))
        elif isinstance(message, AudioInput):
            now = time.monotonic()
            if self._listener is not None:
                await self._listener.audio(message.pcm, message.sample_rate,
                                           self.machine.state, now)
            elif (error := self._not_listening.refuse(now)) is not None:
                await self.send_message(error)
        elif isinstance(message, PlaybackMessage) and self._listener is not None:
            self._listener.playback(message.utterance_id, message.played_ms)

    async def _set_mode(self, mode: str) -> None:
        if mode == "conversation" and self._listener is None and self._services is not None:
            self._listener = Listener(
                self.session_id, self._services, post=self._inbox.post,
                send_error=self.send_message, current_turn=lambda: self.machine.turn,
                lead_ms=self.config.lead_ms)
        elif mode == "tts" and self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()

    def _offered_voices(self) -> set[str]:
        return {m for w in self._registry.workers() for m in w.available_models}

    def client_gone(self) -> None:
        self._inbox.post(ClientDisconnected())

    def shutdown(self) -> None:
        self._inbox.post(ServerShutdown())

    async def send_message(self, message: Outbound) -> None:
        """A message from outside the machine (the reader's errors)."""
        self._observe(message)
        await self._write([message])

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Process events until the session is closed; the worker session is always
        given back, whatever ends the loop."""
        try:
            await self._apply(Connected())
            while not self.machine.closed:
                self._arm_timer()
                event = await self._inbox.get()
                if isinstance(event, _ConfigChange):
                    await self._configure(event.message)
                else:
                    await self._apply(event)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            # Shielded: the server may cancel this task; the worker session must end.
            await asyncio.shield(self._finish_worker())
            if self._listener is not None:
                await asyncio.shield(self._listener.close())

    async def _finish_worker(self) -> None:
        await self._end_stream()
        if self._caller is not None:
            self._caller.cancel()  # only Control calls: moot once the session ends
            with contextlib.suppress(asyncio.CancelledError):
                await self._caller
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.end()

    async def _configure(self, message: ConfigMessage) -> None:
        error = self.settings.apply(message, self._offered_voices(),
                                    self.machine.next_utterance_id,
                                    self._reply_names)
        if error is not None:
            await self.send_message(error)

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
        self._inbox.post(Tick())

    async def _apply(self, event: Event) -> None:
        # The messages of one event go to the client in one write (a quantum of audio
        # frames, or a frame with the state change that follows it).
        out: list[OutputItem] = []
        for action in self.machine.handle(event, time.monotonic()):
            if isinstance(action, SendAudio):
                self._audio_sent(action)
                out.append(action)  # as it is: the transport encodes
            elif isinstance(action, Send):
                self._observe(action.message)
                out.append(action.message)
                if isinstance(action.message, UtteranceEnd):
                    out.extend(self._utterance_metrics(action.message))
            else:
                if out:
                    await self._write(out)
                    out = []
                await self._do(action)
        out.extend(self._turns.take_messages())
        if out:
            await self._write(out)
        if self.machine.output_full:
            self._room.clear()
        else:
            self._room.set()
        idle = self.machine.current_utterance is None
        if idle is not self._idle and self._worker is not None and not self._worker.ended:
            # Nothing to say: the pool may give it to a session that needs it. Told on
            # a change only, not per frame.
            self._idle = idle
            self._pool.set_idle(self._worker, idle)

    async def _do(self, action: Action) -> None:
        if isinstance(action, BeginSynthesis):
            self._begin(action.utterance_id)
        elif isinstance(action, SynthesizeText):
            await self._synthesize_text(action)
        elif isinstance(action, WorkerControl):
            await self._worker_control(action.command)
        elif isinstance(action, ReleaseWorker):
            await self._end_stream()
            worker, self._worker = self._worker, None
            if worker is not None:
                self._pool.spawn(worker.end())  # the pool waits for it on shutdown
        elif isinstance(action, Close):
            await self._output.close(action.code, action.reason)
        elif (isinstance(action, TranscribeTurn | TurnClosed | StartReply | CancelReply)
              and self._listener is not None):
            self._listener.act(action)

    # -- to the client --------------------------------------------------------------

    async def _write(self, items: list[OutputItem]) -> None:
        """Send in order. A client that went away is normal: the rest is dropped and the
        reader's end of the connection ends the session."""
        if self._client_gone:
            return
        async with self._send_lock:  # the reader task sends errors too: keep the order
            try:
                await self._output.send(items)
            except ConnectionError as exc:
                self._client_gone = True
                log.debug("session %s: client gone while sending: %s", self.session_id, exc)

    def _audio_sent(self, action: SendAudio) -> None:
        uid = action.utterance_id
        self._metrics.frames_sent_total.inc()
        if uid > self._first_sent_upto:  # a new utterance's first frame
            self._first_sent_upto = uid
            self._turns.first_frame(uid)
            stream = self._stream
            if stream is not None and stream.utterance_id == uid and stream.final_sent_at:
                first_audio_ms = (time.perf_counter() - stream.final_sent_at) * 1000
                self._metrics.first_audio_ms.observe(first_audio_ms)
                self._first_audio_ms[uid] = first_audio_ms

    def _utterance_metrics(self, end: UtteranceEnd) -> list[UtteranceMetrics]:
        """The ``metrics`` extension message: this utterance's timings, after its end."""
        first_audio_ms = self._first_audio_ms.pop(end.utterance_id, None)
        if first_audio_ms is None:
            return []
        return [UtteranceMetrics(end.utterance_id, round(first_audio_ms, 2))]

    def _observe(self, message: Outbound) -> None:
        if isinstance(message, Transcript | ReplyText | Pause | Resume):
            listener = self._listener
            if listener is not None:
                self._turns.observe(message, listener, self.machine.turn)
        elif isinstance(message, UtteranceEnd):
            self._turns.utterance_ended(message.utterance_id)
            self._metrics.utterances_total.inc()
            if message.reason is EndReason.ERROR:
                self._metrics.utterances_failed_total.inc()
        elif isinstance(message, Interrupt) and message.reason is EndReason.INTERRUPTED:
            self._metrics.interruptions_total.inc()
        elif isinstance(message, Interrupt) and self._stop_at is not None:
            self._metrics.stop_latency_ms.observe((time.perf_counter() - self._stop_at) * 1000)
            self._stop_at = None
        elif isinstance(message, Error):
            self._metrics.client_errors_total.inc()

    # -- to the worker --------------------------------------------------------------

    def _begin(self, utterance_id: int) -> None:
        stream = _Stream(utterance_id)
        self._stream = stream
        stream.task = asyncio.create_task(self._run_stream(stream))

    async def _synthesize_text(self, action: SynthesizeText) -> None:
        stream = self._stream
        if stream is None or stream.utterance_id != action.utterance_id or (
                stream.task is not None and stream.task.done()):
            return  # its end is reported by the stream task
        # Never waits: the session loop must not hang on a stream that stopped reading
        # (a StartSession that hangs, then fails).
        if not action.is_final and stream.texts.qsize() >= _TEXT_QUEUE:
            await self.send_message(Error(
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
            self._inbox.post(SynthesisFailed(uid, exc.message, ErrorCode.WORKER_UNAVAILABLE))
            return

        async def texts() -> AsyncIterator[tuple[str, bool]]:
            while True:
                yield await stream.texts.get()

        try:
            async for pcm in worker.synthesize(texts()):
                if not self._room.is_set():
                    await self._room.wait()  # back-pressure: the client buffer is full
                await self._inbox.put_frame(WorkerFrame(uid, pcm))
        except WorkerError as exc:
            self._metrics.worker_errors_total.inc()
            self._inbox.post(SynthesisFailed(uid, str(exc)))
            return
        # Behind its frames: an input would overtake those still queued (lost audio).
        await self._inbox.put_frame(SynthesisDone(uid))

    async def _acquire(self) -> WorkerSession:
        """The session's worker session on the wanted voice, taken now if needed
        (:func:`~.placement.open_worker_session`). Only the open stream's task calls
        this: one at a time."""
        worker = self._worker
        voice = self.settings.voice
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
            self._pool, self._registry, self.config.mode, session_id=self.session_id,
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

    async def _worker_control(self, command: Command) -> None:
        worker, stream = self._worker, self._stream
        if worker is None and command is Command.STOP and stream is not None:
            # Still taking a worker session: stop by cancelling the task that would
            # produce the audio, and report the stream's end as the worker would.
            await self._end_stream()
            self._inbox.post(SynthesisDone(stream.utterance_id))
            return
        if worker is None or worker.broken:
            return  # nothing playing on a worker yet, or nobody to tell
        self._call(lambda: self._control(worker, command))

    async def _control(self, worker: WorkerSession, command: Command) -> None:
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
