"""One client session as a pure state machine: events in, actions out.

No sockets, no asyncio, no clock (sans-I/O, like websockets' ``protocol.py``). The
driver feeds ``SessionMachine.handle(event, now)``, carries out the returned actions in
order, sends ``Tick`` at ``next_deadline`` and stops reading the worker while
``output_full``. Decisions (WIRE §1 and the seed's state machine, reconciled):

- States are the seed's. ERROR is transient: a fatal failure passes through it and
  ends in CLOSED within the same ``handle`` call. Fatal means the worker session is
  gone (``WorkerSessionFailed``: StartSession failed, or the worker died with no
  replacement): ``error WORKER_UNAVAILABLE``, ``session_end error``, close. A failed
  *utterance* (``SynthesisFailed``) is not fatal: ``error SYNTHESIS_FAILED``,
  ``utterance_end error``, and the session goes on (next queued utterance, or
  LISTENING).
- Utterance ids are 1, 2, ... in the order texts open utterances; a text rejected with
  ``QUEUE_FULL`` takes no id. Every id given out gets exactly one ``utterance_end``
  unless the client disconnects (queued texts dropped by STOP get ``stopped``, frames 0).
- Text that arrives before the worker session is ready is kept and spoken once it is
  (WIRE sends ``session_start`` as soon as the socket is accepted, so clients may).
- The outbound audio buffer lives here, not in the driver, so that the audio
  ``sequence`` is assigned at the moment a frame is released: dropping buffered audio
  on STOP can never leave a gap. Frames are paced so the client is never more than
  ``lead_ms`` ahead of real time. ``utterance_end completed`` (and the return to
  LISTENING) come when the utterance's last frame is released, not when the worker
  finishes; the next queued utterance's synthesis starts as soon as the worker is free.
- The worker allows one Synthesize stream per session: ``BeginSynthesis`` waits until
  the previous stream reported ``SynthesisDone``/``SynthesisFailed``. The driver must
  report exactly one of those for every ``BeginSynthesis``, stopped streams included.
- A stopped, failed or interrupted utterance is fenced: its frames are dropped from the
  buffer and any that still arrive are ignored.
- Controls: STOP with nothing live is a silent no-op. PAUSE while already BARGED_IN and
  RESUME while SPEAKING are no-ops (already so). PAUSE/RESUME with nothing playing get
  ``error INVALID_STATE`` and change nothing: a PAUSE that silently did nothing could
  let a client believe the next utterance will start paused.
- Idle timeout: only while LISTENING, counted from the later of the last client
  message and the moment LISTENING was entered.
- Events that make no sense in the current state are ignored (stale worker events) or
  answered with an ``error`` (client's); none raises. After CLOSED all are ignored.

Extension error codes: ``QUEUE_FULL`` (too many queued utterances or too much queued
text; the text is dropped), ``INVALID_STATE`` (a control with nothing to act on).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from duplexvoice.orchestrator.session_events import (  # re-exported: the machine's API
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

__all__ = [
    "INVALID_STATE",
    "QUEUE_FULL",
    "Action",
    "BeginSynthesis",
    "ClientDisconnected",
    "Close",
    "Connected",
    "ControlReceived",
    "EndWorkerSession",
    "Event",
    "Send",
    "SendAudio",
    "ServerShutdown",
    "SessionConfig",
    "SessionMachine",
    "StartWorkerSession",
    "State",
    "SynthesisDone",
    "SynthesisFailed",
    "SynthesizeText",
    "TextReceived",
    "Tick",
    "WorkerControl",
    "WorkerFrame",
    "WorkerSessionFailed",
    "WorkerSessionStarted",
]

QUEUE_FULL = "QUEUE_FULL"
INVALID_STATE = "INVALID_STATE"
_EPS = 1e-6  # seconds; absorbs float error when a Tick lands exactly on a deadline
_LOW_WATER = 0.8  # of max_buffered_frames: where reading the worker resumes


class State(enum.StrEnum):
    INITIALIZING = "INITIALIZING"
    LISTENING = "LISTENING"
    SPEAKING = "SPEAKING"
    BARGED_IN = "BARGED_IN"
    ERROR = "ERROR"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class SessionConfig:
    session_id: str
    idle_timeout_s: float = 60.0  # LISTENING this long with no client message: close
    max_queued_utterances: int = 8  # utterances waiting behind the current one
    max_pending_chars: int = 20_000  # text held here for utterances not yet at the worker
    frame_ms: int = 20
    lead_ms: int = 100  # how far released audio may run ahead of real time
    # Audio is released this much at a time (one wake-up and one socket write per
    # quantum, not per frame); the client then holds between lead - quantum + frame
    # and lead ms. Equal to frame_ms: one frame at a time.
    send_quantum_ms: int = 40
    max_buffered_frames: int = 250  # high-water mark for ``output_full`` (back-pressure)

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("session_id must not be empty")
        if self.idle_timeout_s <= 0 or self.frame_ms <= 0:
            raise ValueError("idle_timeout_s and frame_ms must be positive")
        if self.max_queued_utterances < 0 or self.max_pending_chars < 1:
            raise ValueError("max_queued_utterances >= 0 and max_pending_chars >= 1")
        if self.lead_ms < self.frame_ms or self.max_buffered_frames < 1:
            raise ValueError("lead_ms must be >= frame_ms and max_buffered_frames >= 1")
        if not self.frame_ms <= self.send_quantum_ms <= self.lead_ms:
            raise ValueError("send_quantum_ms must be between frame_ms and lead_ms")


# -- the machine ---------------------------------------------------------------------


@dataclass
class _Utterance:
    utterance_id: int
    pending: list[str] = field(default_factory=list)  # text not yet given to the worker
    text_final: bool = False
    started: bool = False  # BeginSynthesis sent
    synthesized: bool = False  # its worker stream ended
    buffered: int = 0  # frames of it in the outbound buffer
    sent: int = 0  # frames of it released to the client


class SessionMachine:
    def __init__(self, config: SessionConfig, now: float) -> None:
        self.config = config
        self._state = State.INITIALIZING
        self._now = now
        self._connected = False
        self._worker_started = False  # so EndSession is owed
        self._next_id = 1
        self._live: deque[_Utterance] = deque()  # not yet ended, in order; [0] is current
        self._stream: int | None = None  # utterance id of the open Synthesize stream
        self._out: deque[tuple[int, bytes]] = deque()  # outbound audio, FIFO
        self._throttled = False  # see output_full
        self._held = False
        self._held_ahead = 0.0
        self._play_end = now  # when the client will have played all released audio
        self._sequence = 0
        self._idle_since = now
        self._actions: list[Action] = []
        # One handler per event type; a new input is a new entry here.
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            Connected: self._on_connected, WorkerSessionStarted: self._on_worker_started,
            WorkerSessionFailed: self._on_worker_failed, TextReceived: self._on_text,
            ControlReceived: self._on_control, WorkerFrame: self._on_frame,
            SynthesisDone: self._on_done, SynthesisFailed: self._on_failed,
            Tick: self._on_tick, ClientDisconnected: self._on_disconnected,
            ServerShutdown: self._on_shutdown,
        }

    # -- public surface ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def current_utterance(self) -> int | None:
        """The utterance being played (or about to be), if any."""
        return self._live[0].utterance_id if self._live else None

    @property
    def queued_utterances(self) -> list[int]:
        return [u.utterance_id for u in list(self._live)[1:]]

    @property
    def buffered_frames(self) -> int:
        return len(self._out)

    @property
    def output_full(self) -> bool:
        """Stop reading the worker stream for now: set at the high-water mark, cleared
        once the buffer is down to the low-water mark (the reader then takes a burst,
        not one frame per frame played)."""
        return self._throttled

    @property
    def next_deadline(self) -> float | None:
        """When the driver should send the next ``Tick``; None when nothing is timed."""
        if self._state is State.CLOSED:
            return None
        times: list[float] = []
        if self._state is State.LISTENING:
            times.append(self._idle_since + self.config.idle_timeout_s)
        if self._head_frame_ready():
            # When the client is down to lead - quantum + frame ms: a quantum goes.
            quantum_s = self.config.send_quantum_ms / 1000
            times.append(self._play_end + quantum_s - self.config.lead_ms / 1000)
        return min(times, default=None)

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time ``now``; return what the driver must do, in order."""
        if self._state is State.CLOSED:
            return []
        self._now = max(self._now, now)  # never run backwards, whatever the caller's clock
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)
        if not self.closed:
            self._pump(paced=isinstance(event, Tick))
            self._sync_state()
        buffered = len(self._out)
        if buffered >= self.config.max_buffered_frames:
            self._throttled = True
        elif buffered <= self.config.max_buffered_frames * _LOW_WATER:
            self._throttled = False
        actions, self._actions = self._actions, []
        return actions

    # -- event handlers ------------------------------------------------------------

    def _on_connected(self, _: Connected) -> None:
        if self._connected:
            return
        self._connected = True
        self._send({"type": "session_start", "session_id": self.config.session_id})
        self._actions.append(StartWorkerSession())

    def _on_worker_started(self, _: WorkerSessionStarted) -> None:
        if self._state is not State.INITIALIZING:
            return  # a duplicate or stale report
        self._worker_started = True
        self._set_state(State.LISTENING)  # the seed's path, even if text is waiting

    def _on_worker_failed(self, event: WorkerSessionFailed) -> None:
        self._error("WORKER_UNAVAILABLE", event.message)
        self._end_all("error")
        self._set_state(State.ERROR)
        self._finish("error", 1011)

    def _on_text(self, event: TextReceived) -> None:
        self._idle_since = self._now
        if not event.text:
            self._error("INVALID_MESSAGE", "text must not be empty")
            return
        last = self._live[-1] if self._live else None
        if last is not None and not last.text_final:
            target = last  # streamed text of the utterance still being written
        else:
            if len(self._live) > self.config.max_queued_utterances:
                self._error(QUEUE_FULL, "too many queued utterances; text dropped")
                return
            target = _Utterance(self._next_id)
        if not target.started:
            held = sum(len(c) for u in self._live for c in u.pending)
            if held + len(event.text) > self.config.max_pending_chars:
                self._error(QUEUE_FULL, "too much queued text; text dropped")
                return
            target.pending.append(event.text)
        else:
            self._actions.append(SynthesizeText(target.utterance_id, event.text, event.is_final))
        target.text_final = event.is_final
        if target is not last:
            self._next_id += 1
            self._live.append(target)

    def _on_control(self, event: ControlReceived) -> None:
        self._idle_since = self._now
        command = event.command
        if command == "STOP":
            self._stop()
        elif command == "PAUSE":
            if self._state is State.SPEAKING:
                self._held = True
                self._held_ahead = max(0.0, self._play_end - self._now)
                self._actions.append(WorkerControl("PAUSE"))
            elif self._state is not State.BARGED_IN:
                self._error(INVALID_STATE, f"nothing to pause in state {self._state}")
        elif command == "RESUME":
            if self._state is State.BARGED_IN:
                self._held = False
                self._play_end = self._now + self._held_ahead
                self._actions.append(WorkerControl("RESUME"))
            elif self._state is not State.SPEAKING:
                self._error(INVALID_STATE, f"nothing to resume in state {self._state}")
        else:
            self._error("INVALID_MESSAGE", f"unknown command {command!r}")

    def _on_frame(self, event: WorkerFrame) -> None:
        utterance = self._find(event.utterance_id)
        if utterance is None or event.utterance_id != self._stream or not event.pcm:
            return  # fenced, stale or an empty marker: never forwarded
        self._out.append((event.utterance_id, event.pcm))
        utterance.buffered += 1

    def _on_done(self, event: SynthesisDone) -> None:
        if event.utterance_id != self._stream:
            return
        self._stream = None
        utterance = self._find(event.utterance_id)
        if utterance is not None:
            utterance.synthesized = True
            utterance.text_final = True  # later text opens a new utterance

    def _on_failed(self, event: SynthesisFailed) -> None:
        if event.utterance_id != self._stream:
            return
        self._stream = None
        utterance = self._find(event.utterance_id)
        if utterance is None:
            return  # already stopped: its failure changes nothing for the client
        self._error("SYNTHESIS_FAILED", event.message)
        self._live.remove(utterance)
        self._fence(utterance, "error")

    def _on_tick(self, _: Tick) -> None:
        idle_s = self._now - self._idle_since
        if self._state is State.LISTENING and idle_s >= self.config.idle_timeout_s - _EPS:
            self._finish("idle_timeout", 1000)

    def _on_disconnected(self, _: ClientDisconnected) -> None:
        self._live.clear()
        self._out.clear()
        if self._worker_started:
            self._actions.append(EndWorkerSession())
        self._state = State.CLOSED  # nobody to tell

    def _on_shutdown(self, _: ServerShutdown) -> None:
        self._end_all("interrupted")
        self._finish("server_shutdown", 1001)

    # -- internals -----------------------------------------------------------------

    def _stop(self) -> None:
        """STOP: end the current utterance and drop what is queued."""
        if not self._live:
            return
        head = self._live[0].utterance_id
        self._send({"type": "interrupt", "utterance_id": head, "reason": "stopped"})
        if self._worker_started and (self._stream is not None or self._held):
            self._actions.append(WorkerControl("STOP"))  # also un-pauses the worker
        self._held = False
        self._end_all("stopped")

    def _end_all(self, reason: str) -> None:
        while self._live:
            self._fence(self._live.popleft(), reason)
        self._held = False

    def _fence(self, utterance: _Utterance, reason: str) -> None:
        """End an utterance already removed from ``_live``: drop its audio, tell the client."""
        uid = utterance.utterance_id
        if utterance.buffered:
            self._out = deque(item for item in self._out if item[0] != uid)
        self._utterance_end(utterance, reason)

    def _finish(self, reason: str, code: int) -> None:
        """End the session from our side: state, session_end, worker, close."""
        self._set_state(State.CLOSED)
        self._send({"type": "session_end", "session_id": self.config.session_id,
                    "reason": reason})
        if self._worker_started:
            self._actions.append(EndWorkerSession())
        self._actions.append(Close(code, reason.replace("_", " ")))

    def _pump(self, *, paced: bool = False) -> None:
        """Start the next synthesis when the worker is free; release audio that is due."""
        if self._worker_started and self._stream is None:
            waiting = next((u for u in self._live if not u.started), None)
            if waiting is not None:
                waiting.started = True
                self._stream = waiting.utterance_id
                text, waiting.pending = "".join(waiting.pending), []
                self._actions += [BeginSynthesis(waiting.utterance_id),
                                  SynthesizeText(waiting.utterance_id, text, waiting.text_final)]
        if self._held:
            return
        lead_s, frame_s = self.config.lead_ms / 1000, self.config.frame_ms / 1000
        # Frames never go further ahead than lead_ms. On the pacing clock (Tick), a
        # release starts only once a whole quantum fits under the lead, so frames
        # leave in groups; other events (new frames, RESUME) fill up to the lead.
        start_below_s = lead_s - self.config.send_quantum_ms / 1000 + frame_s
        releasing = not paced
        while self._live:
            head = self._live[0]
            if self._head_frame_ready():
                start = max(self._play_end, self._now)
                ahead = start + frame_s - self._now  # held by the client once sent
                if ahead > lead_s + _EPS or (not releasing and ahead > start_below_s + _EPS):
                    break  # far enough ahead; wait for the next Tick
                releasing = True
                uid, pcm = self._out.popleft()
                head.buffered -= 1
                head.sent += 1
                self._sequence += 1
                self._play_end = start + frame_s
                self._actions.append(SendAudio(uid, self._sequence, pcm))
            elif head.synthesized and head.buffered == 0:
                self._live.popleft()
                self._utterance_end(head, "completed")
            else:
                break

    def _head_frame_ready(self) -> bool:
        return (not self._held and bool(self._out) and bool(self._live)
                and self._out[0][0] == self._live[0].utterance_id)

    def _sync_state(self) -> None:
        if self._held and not self._live:
            # The paused utterance ended on its own (failure): don't leave the worker paused.
            self._held = False
            self._actions.append(WorkerControl("RESUME"))
        if not self._worker_started:
            new = State.INITIALIZING
        elif not self._live:
            new = State.LISTENING
        else:
            new = State.BARGED_IN if self._held else State.SPEAKING
        if new is not self._state:
            self._set_state(new)

    def _set_state(self, state: State) -> None:
        if state is State.LISTENING:
            self._idle_since = self._now
        self._state = state
        self._send({"type": "state", "state": state.value})

    def _find(self, utterance_id: int) -> _Utterance | None:
        return next((u for u in self._live if u.utterance_id == utterance_id), None)

    def _send(self, message: dict[str, Any]) -> None:
        self._actions.append(Send(message))

    def _utterance_end(self, utterance: _Utterance, reason: str) -> None:
        self._send({"type": "utterance_end", "utterance_id": utterance.utterance_id,
                    "reason": reason, "frames": utterance.sent})

    def _error(self, code: str, message: str) -> None:
        self._send({"type": "error", "code": code, "message": message})
