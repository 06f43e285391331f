"""One client session as a pure state machine: events in, actions out.

No sockets, no asyncio, no clock (sans-I/O, like websockets' ``protocol.py``). The
driver feeds ``SessionMachine.handle(event, now)``, carries out the returned actions in
order, sends ``Tick`` at ``next_deadline`` and stops reading the worker while
``output_full``. The machine owns the lifecycle and the utterance queue; the outbound
audio (buffer, pacing, sequence, fencing) is its :class:`~.playout.Playout`.
Decisions (WIRE §1 and the seed's state machine, reconciled):

- States are the seed's, with the client's PAUSE as its own state: ``PAUSED`` is
  "the client asked to hold playback" and only the client's RESUME or STOP leaves it.
  ``BARGED_IN`` is kept for the user speaking over the system (the turn-taking core,
  :mod:`.turns`), which has its own rules for resuming.
- A connected session costs no worker: it is LISTENING at once, and a worker session
  is taken when an utterance starts (``BeginSynthesis``) and given back
  (``ReleaseWorker``) after ``worker_linger_s`` in LISTENING, and at the end.
- Utterance ids are 1, 2, ... in the order texts open utterances; a refused text
  (``QUEUE_FULL``, nothing speakable) takes no id. Every id given out gets exactly one
  ``utterance_end`` unless the client disconnects (queued texts dropped by STOP get
  ``stopped``, frames 0).
- A failed utterance (``SynthesisFailed``: no worker, or the worker failed it) is
  never fatal: ``error`` with the event's code, ``utterance_end error``, and the
  session goes on (next queued utterance, or LISTENING).
- ``utterance_end completed`` (and the return to LISTENING) come when the utterance's
  last frame is released, not when the worker finishes; the next queued utterance's
  synthesis starts as soon as the worker stream is free.
- The worker allows one Synthesize stream per session: ``BeginSynthesis`` waits until
  the previous stream reported ``SynthesisDone``/``SynthesisFailed``.
- A stopped, failed or interrupted utterance is fenced: its frames are dropped from the
  playout and any that still arrive are ignored.
- Controls: STOP with nothing live is a silent no-op. PAUSE while PAUSED and RESUME
  while SPEAKING are no-ops (already so). PAUSE/RESUME with nothing playing get
  ``error INVALID_STATE`` and change nothing: a PAUSE that silently did nothing could
  let a client believe the next utterance will start paused.
- Text with nothing speakable (:func:`duplexvoice.text.speakable`: no letter, digit
  or symbol read aloud) is refused with ``INVALID_MESSAGE``; it is not a failed
  utterance.
- Idle timeout: only while LISTENING, counted from the later of the last client
  message and the moment LISTENING was entered.
- Events that make no sense in the current state are ignored (stale worker events) or
  answered with an ``error`` (client's); none raises. After CLOSED all are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from duplexvoice.orchestrator.sessions.conversation import Conversation
from duplexvoice.orchestrator.sessions.events import (
    Action,
    BeginSynthesis,
    ClientDisconnected,
    Close,
    Connected,
    ControlReceived,
    Event,
    ReleaseWorker,
    ReplyChunk,
    ReplyFailed,
    SendAudio,
    ServerShutdown,
    SynthesisDone,
    SynthesisFailed,
    SynthesizeText,
    TextReceived,
    Tick,
    UserSpeechEnded,
    UserSpeechPaused,
    UserSpeechResumed,
    UserSpeechStarted,
    UserTranscript,
    UserTurnScore,
    UserTyped,
    WorkerControl,
    WorkerFrame,
)
from duplexvoice.orchestrator.sessions.state import (
    SessionConfig,
    SessionCore,
    State,
    Utterance,
)
from duplexvoice.text import speakable
from duplexvoice.wire.messages import (
    Command,
    EndReason,
    ErrorCode,
    Interrupt,
    SessionEnd,
    SessionEndReason,
    SessionStart,
    StateChanged,
)

__all__ = ["SessionConfig", "SessionMachine", "State"]

_EPS = 1e-6  # seconds; absorbs float error when a Tick lands exactly on a deadline


class SessionMachine:
    def __init__(self, config: SessionConfig, now: float) -> None:
        self.config = config
        self._core = SessionCore(config, now)
        self._conversation = Conversation(self._core, stop=self._stop)
        self._listening_since = now
        # One handler per event type; a new input is a new entry here.
        talk = self._conversation
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            Connected: self._on_connected, TextReceived: self._on_text,
            ControlReceived: self._on_control, WorkerFrame: self._on_frame,
            SynthesisDone: self._on_done, SynthesisFailed: self._on_failed,
            Tick: self._on_tick, ClientDisconnected: self._on_disconnected,
            ServerShutdown: self._on_shutdown,
            UserSpeechStarted: talk.on_speech_started, UserSpeechEnded: talk.on_speech_ended,
            UserSpeechPaused: talk.on_speech_paused,
            UserSpeechResumed: talk.on_speech_resumed,
            UserTranscript: talk.on_transcript, UserTurnScore: talk.on_turn_score,
            ReplyChunk: talk.on_reply_chunk,
            ReplyFailed: talk.on_reply_failed, UserTyped: talk.on_typed,
        }

    # -- public surface ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def closed(self) -> bool:
        return self._core.state is State.CLOSED

    @property
    def current_utterance(self) -> int | None:
        """The utterance being played (or about to be), if any."""
        return self._core.live[0].utterance_id if self._core.live else None

    @property
    def queued_utterances(self) -> list[int]:
        return [u.utterance_id for u in list(self._core.live)[1:]]

    @property
    def next_utterance_id(self) -> int:
        """The id the next utterance opened will get."""
        return self._core.next_id

    @property
    def buffered_frames(self) -> int:
        return len(self._core.playout)

    @property
    def worker_held(self) -> bool:
        return self._core.worker_held

    @property
    def turn(self) -> int:
        """The user's current (or last) turn in conversation mode; 0 before any."""
        return self._core.turns.turn

    @property
    def output_full(self) -> bool:
        """Stop reading the worker stream for now (see ``Playout.full``)."""
        return self._core.playout.full

    @property
    def next_deadline(self) -> float | None:
        """When the driver should send the next ``Tick``; None when nothing is timed."""
        if self._core.state is State.CLOSED:
            return None
        times: list[float] = []
        if self._core.state is State.LISTENING:
            times.append(self._core.idle_since + self.config.idle_timeout_s)
            if self._core.worker_held:
                times.append(self._listening_since + self.config.worker_linger_s)
        if self._core.live and not self._core.live[0].gated:
            due = self._core.playout.next_release(self._core.live[0].utterance_id)
            if due is not None:
                times.append(due)
        turns = self._core.turns.next_deadline
        if turns is not None:
            times.append(turns)
        return min(times, default=None)

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time ``now``; return what the driver must do, in order."""
        if self._core.state is State.CLOSED:
            return []
        # Never run backwards, whatever the caller's clock.
        self._core.now = max(self._core.now, now)
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)
        if not self.closed:
            # A worker frame changes no state; other events may (a RESUME, a false
            # barge-in's end): the state goes out before the audio it lets go.
            self._pump(paced=isinstance(event, Tick),
                       state_first=not isinstance(event, WorkerFrame))
            self._sync_state()
            self._maybe_release_worker()
        actions, self._core.actions = self._core.actions, []
        return actions

    # -- event handlers ------------------------------------------------------------

    def _on_connected(self, _: Connected) -> None:
        if self._core.state is not State.INITIALIZING:
            return
        self._core.send(SessionStart(self.config.session_id))
        self._set_state(State.LISTENING)

    def _on_text(self, event: TextReceived) -> None:
        self._core.idle_since = self._core.now
        if self._core.state is State.INITIALIZING:
            self._core.error(ErrorCode.INVALID_STATE, "the session has not started")
            return
        last = self._core.live[-1] if self._core.live else None
        continuing = last is not None and not last.text_final and last.reply_turn is None
        has_words = speakable(event.text)
        if not event.text.strip() or (not continuing and event.is_final and not has_words):
            self._core.error(ErrorCode.INVALID_MESSAGE, "text has nothing to speak")
            return
        if continuing:
            assert last is not None
            target = last  # streamed text of the utterance still being written
        else:
            if len(self._core.live) > self.config.max_queued_utterances:
                self._core.error(ErrorCode.QUEUE_FULL, "too many queued utterances; text dropped")
                return
            target = Utterance(self._core.next_id)
        if not self._core.add_text(target, event.text, event.is_final):
            return
        if target is not last:
            self._core.next_id += 1
            self._core.live.append(target)
        if target.text_final and not target.has_words and not target.started:
            # A streamed utterance that ended with nothing to say: nothing to synthesize.
            self._core.live.remove(target)
            self._core.error(ErrorCode.INVALID_MESSAGE, "text has nothing to speak")
            self._core.utterance_end(target, EndReason.COMPLETED)

    def _on_control(self, event: ControlReceived) -> None:
        self._core.idle_since = self._core.now
        command = event.command
        if command is Command.STOP:
            self._stop()
        elif command is Command.PAUSE:
            if self._core.state in (State.SPEAKING, State.BARGED_IN):
                if not self._core.playout.held:
                    self._core.playout.hold(self._core.now)
                    self._core.actions.append(WorkerControl(Command.PAUSE))
                self._core.client_paused = True
            elif self._core.state is not State.PAUSED:
                self._core.error(ErrorCode.INVALID_STATE,
                                 f"nothing to pause in state {self._core.state}")
        elif command is Command.RESUME:
            if self._core.state is State.PAUSED:
                self._core.client_paused = False
                self._conversation.unhold()
            elif self._core.state not in (State.SPEAKING, State.BARGED_IN):
                self._core.error(ErrorCode.INVALID_STATE,
                                 f"nothing to resume in state {self._core.state}")
            else:
                self._core.client_paused = False

    def _on_frame(self, event: WorkerFrame) -> None:
        if event.utterance_id != self._core.stream or not event.pcm:
            return  # fenced, stale or an empty marker: never forwarded
        if self._find(event.utterance_id) is not None:
            self._core.playout.push(event.utterance_id, event.pcm)

    def _on_done(self, event: SynthesisDone) -> None:
        if event.utterance_id != self._core.stream:
            return
        self._core.stream = None
        utterance = self._find(event.utterance_id)
        if utterance is not None:
            utterance.synthesized = True
            utterance.text_final = True  # later text opens a new utterance

    def _on_failed(self, event: SynthesisFailed) -> None:
        if event.utterance_id != self._core.stream:
            return
        self._core.stream = None
        utterance = self._find(event.utterance_id)
        if utterance is None:
            return  # already stopped: its failure changes nothing for the client
        self._core.error(event.code, event.message)
        self._core.live.remove(utterance)
        self._fence(utterance, EndReason.ERROR)

    def _on_tick(self, _: Tick) -> None:
        self._conversation.decide(self._core.turns.tick(self._core.now))
        idle_s = self._core.now - self._core.idle_since
        if self._core.state is State.LISTENING and idle_s >= self.config.idle_timeout_s - _EPS:
            self._finish(SessionEndReason.IDLE_TIMEOUT, 1000)

    def _on_disconnected(self, _: ClientDisconnected) -> None:
        # The engine stops; nothing to tell anyone.
        self._conversation.cancel_replies(heard_too=True)
        self._core.live.clear()
        self._core.playout.clear()
        self._release_worker()
        self._core.state = State.CLOSED  # nobody to tell

    def _on_shutdown(self, _: ServerShutdown) -> None:
        self._end_all(EndReason.INTERRUPTED)
        self._finish(SessionEndReason.SERVER_SHUTDOWN, 1001)

    # -- internals -----------------------------------------------------------------

    def _stop(self, reason: EndReason = EndReason.STOPPED) -> None:
        """STOP (or a real barge-in): end the current utterance and drop what is queued,
        including a reply still being generated."""
        self._conversation.cancel_replies(heard_too=True)
        if not self._core.live:
            return
        self._core.send(Interrupt(self._core.live[0].utterance_id, reason))
        if self._core.stream is not None or self._core.playout.held:
            self._core.actions.append(WorkerControl(Command.STOP))  # also un-pauses the worker
        self._end_all(reason)
        self._core.playout.flushed(self._core.now)  # the client drops its buffer

    def _end_all(self, reason: EndReason) -> None:
        while self._core.live:
            utterance = self._core.live.popleft()
            if utterance.gated:
                self._core.playout.drop(utterance.utterance_id)  # never announced: no end
            else:
                self._fence(utterance, reason)
        self._core.client_paused = False
        self._core.playout.unhold(self._core.now)

    def _fence(self, utterance: Utterance, reason: EndReason) -> None:
        """End an utterance already removed from ``_live``: drop its audio, tell the client."""
        self._core.playout.drop(utterance.utterance_id)
        self._core.utterance_end(utterance, reason)

    def _finish(self, reason: SessionEndReason, code: int) -> None:
        """End the session from our side: state, session_end, worker, close."""
        self._set_state(State.CLOSED)
        self._core.send(SessionEnd(self.config.session_id, reason))
        self._release_worker()
        self._core.actions.append(Close(code, reason.value.replace("_", " ")))

    def _release_worker(self) -> None:
        if self._core.worker_held:
            self._core.worker_held = False
            self._core.stream = None
            self._core.actions.append(ReleaseWorker())

    def _maybe_release_worker(self) -> None:
        core = self._core
        if (core.worker_held and core.state is State.LISTENING and core.stream is None
                and core.now >= self._listening_since + self.config.worker_linger_s - _EPS):
            self._release_worker()

    def _pump(self, *, paced: bool = False, state_first: bool = False) -> None:
        """Start the next synthesis when the worker is free; release audio that is due."""
        if self._core.stream is None:
            waiting = next((u for u in self._core.live if not u.started), None)
            if waiting is not None:
                waiting.started = True
                self._core.worker_held = True
                self._core.stream = waiting.utterance_id
                text, waiting.pending = "".join(waiting.pending), []
                self._core.actions += [
                    BeginSynthesis(waiting.utterance_id),
                    SynthesizeText(waiting.utterance_id, text, waiting.text_final)]
        if state_first:
            self._sync_state()
        if self._core.playout.held:
            return  # nothing released, nothing completes: the client holds playback too
        while self._core.live:
            head = self._core.live[0]
            if head.gated:
                break  # a speculative reply waits for the end of the user's turn
            released = self._core.playout.release(head.utterance_id, self._core.now, paced=paced)
            for frame in released:
                self._core.actions.append(SendAudio(frame.utterance_id, frame.sequence, frame.pcm))
            head.sent += len(released)
            if head.synthesized and not self._core.playout.buffered(head.utterance_id):
                self._core.live.popleft()
                self._core.utterance_end(head, EndReason.COMPLETED)
                paced = False  # the next utterance's frames may go at once, up to the lead
            else:
                break

    def _sync_state(self) -> None:
        speaking = any(not u.gated for u in self._core.live) or (
            self._core.reply is not None and self._core.reply.confirmed)
        self._conversation.decide(self._core.turns.system_speaking(speaking))
        if self._core.playout.held and not speaking:
            # The paused utterance ended on its own (failure): don't leave the worker paused.
            self._core.client_paused = False
            self._core.playout.unhold(self._core.now)
            self._core.actions.append(WorkerControl(Command.RESUME))
        if self._core.state is State.INITIALIZING:
            return
        if not speaking:
            new = State.LISTENING
        elif self._core.turns.holding:
            new = State.BARGED_IN
        else:
            new = State.PAUSED if self._core.playout.held else State.SPEAKING
        if new is not self._core.state:
            self._set_state(new)

    def _set_state(self, state: State) -> None:
        if state is State.LISTENING:
            self._core.idle_since = self._listening_since = self._core.now
        self._core.state = state
        self._core.send(StateChanged(state.value))

    def _find(self, utterance_id: int) -> Utterance | None:
        return next((u for u in self._core.live if u.utterance_id == utterance_id), None)
