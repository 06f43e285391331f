"""The asyncio driver of one client session.

It feeds the pure :class:`~duplexvoice.orchestrator.sessions.machine.SessionMachine` with events
(client messages, worker frames, timer ticks) through an :class:`~.inbox.Inbox`
(inputs before audio) and carries out the actions it returns: messages to the client,
worker calls. Decisions are the machine's (and the router's, and the settings'); this
module does I/O and measures time. What goes to the client goes typed to the
transport's :class:`~.output.SessionOutput`, which encodes it its own way.

Its worker half (streams, the worker session, control calls) is
:class:`~.worker_side.WorkerSide`. ``mode: conversation`` makes a
:class:`~.listener.Listener`: microphone audio goes there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

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
    SynthesizeText,
    TextReceived,
    Tick,
    TranscribeTurn,
    TurnClosed,
    UserTyped,
    WorkerControl,
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
from duplexvoice.orchestrator.sessions.worker_side import WorkerSide
from duplexvoice.orchestrator.workers.link import (
    WorkerPool,
)
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



@dataclass(frozen=True)
class _ConfigChange:
    """A ``config`` message, queued in order with the session's other inputs."""

    message: ConfigMessage


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
                # The services' copy: without the end-of-turn model, fused runs as text.
                turns=(services.config if services is not None else config.conversation).turns,
            ),
            now=time.monotonic(),
        )
        self.settings = (settings if settings is not None
                         else SessionSettings(voice=config.default_voice))
        self._registry = registry
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
        self._workers = WorkerSide(
            session_id, registry, pool, metrics, mode=config.mode,
            voice=lambda: self.settings.voice, post=self._inbox.post,
            put_frame=self._inbox.put_frame, room=self._room, send_error=self.send_message)
        self._first_sent_upto = 0  # utterance ids are sent in order: the last with audio
        self._first_audio_ms: dict[int, float] = {}  # until its metrics message is sent
        self._stop_at: float | None = None
        # Conversation mode: the listening half, made when the client asks for it.
        self._services = services
        self._reply_names = set(services.replies) if services is not None else set()
        self._listener: Listener | None = None
        self._not_listening = NotListening()
        self._turns = TurnFigures(metrics)
        self._typing = False  # the event being handled is a typed turn

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
            await asyncio.shield(self._workers.finish())
            if self._listener is not None:
                await asyncio.shield(self._listener.close())

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
        if self._listener is not None:
            self._turns.event(event, self._listener, self.machine.turn)
        # The final transcript sent while a typed turn is handled is that turn's.
        self._typing = isinstance(event, UserTyped)
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
        self._typing = False
        out.extend(self._turns.take_messages())
        if out:
            await self._write(out)
        if self.machine.output_full:
            self._room.clear()
        else:
            self._room.set()
        self._workers.set_idle(self.machine.current_utterance is None)

    async def _do(self, action: Action) -> None:
        if isinstance(action, BeginSynthesis):
            self._workers.begin(action.utterance_id)
        elif isinstance(action, SynthesizeText):
            await self._workers.synthesize_text(action)
        elif isinstance(action, WorkerControl):
            await self._workers.control(action.command)
        elif isinstance(action, ReleaseWorker):
            await self._workers.release()
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
            final_sent_at = self._workers.final_sent_at(uid)
            if final_sent_at:
                first_audio_ms = (time.perf_counter() - final_sent_at) * 1000
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
                self._turns.observe(message, listener, self.machine.turn,
                                    typed=self._typing)
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
