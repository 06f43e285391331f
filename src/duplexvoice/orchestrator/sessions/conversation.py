"""The conversation half of the session machine: microphone speech, the user's
turns, replies and barge-in (WIRE §1.2). Pure, like :mod:`.machine`, of which it is a
part (a mixin of :class:`~.session.SessionMachine`, split only to keep files small).

What to do is decided by the turn-taking core (:mod:`.turns`); this carries its
decisions out on the session's utterances and playout:

- ``HoldSpeech``: the playout holds (no audio released), the worker pauses, the client gets
  ``pause`` for the utterance playing. State ``BARGED_IN``.
- ``InterruptSpeech``: as STOP, with reason ``interrupted``: ``interrupt`` first, the worker
  stops, every live utterance is fenced, a reply being generated is cancelled.
- ``ResumeSpeech``: ``resume`` to the client, the playout and the worker go on; nothing lost.
- A reply opens an utterance with its first speakable clause. A speculative reply
  (started before the end of the user's turn is confirmed) is *gated*: synthesized
  and buffered, but no frame released and no ``reply`` sent until ``Confirm``; if
  the user goes on, it disappears without a trace for the client (its utterance id
  is skipped). ``transcript`` (final) is sent when the turn is confirmed.
- A reply that fails after some text was spoken ends with what it had.
"""

from __future__ import annotations

from collections import deque

from duplexvoice.audio import FRAME_MS
from duplexvoice.orchestrator.sessions import turns
from duplexvoice.orchestrator.sessions.events import (
    Action,
    CancelReply,
    ReplyChunk,
    ReplyFailed,
    StartReply,
    TranscribeTurn,
    TurnClosed,
    UserSpeechEnded,
    UserSpeechPaused,
    UserSpeechResumed,
    UserSpeechStarted,
    UserTranscript,
    UserTyped,
    WorkerControl,
)
from duplexvoice.orchestrator.sessions.playout import Playout
from duplexvoice.orchestrator.sessions.state import (
    PendingReply,
    SessionConfig,
    State,
    Utterance,
)
from duplexvoice.text import speakable
from duplexvoice.wire.messages import (
    Command,
    EndReason,
    ErrorCode,
    Outbound,
    Pause,
    ReplyText,
    Resume,
    Transcript,
)


class ConversationMixin:
    # Provided by SessionMachine.
    config: SessionConfig
    _now: float
    _idle_since: float
    _state: State
    _next_id: int
    _live: deque[Utterance]
    _stream: int | None
    _worker_held: bool
    _playout: Playout
    _turns: turns.TurnTaking
    _reply: PendingReply | None
    _client_paused: bool
    _actions: list[Action]

    def _add_text(self, target: Utterance, text: str, is_final: bool) -> bool:
        raise NotImplementedError

    def _stop(self, reason: EndReason = EndReason.STOPPED) -> None:
        raise NotImplementedError

    def _send(self, message: Outbound) -> None:
        raise NotImplementedError

    def _error(self, code: ErrorCode, message: str) -> None:
        raise NotImplementedError

    def _on_speech_started(self, event: UserSpeechStarted) -> None:
        self._idle_since = self._now
        self._decide(self._turns.speech_started(self._now, event.lead_s))

    def _on_speech_paused(self, event: UserSpeechPaused) -> None:
        self._decide(self._turns.speech_paused(self._now, event.silence_s))

    def _on_speech_resumed(self, _: UserSpeechResumed) -> None:
        self._decide(self._turns.speech_resumed(self._now))

    def _on_speech_ended(self, event: UserSpeechEnded) -> None:
        self._idle_since = self._now
        self._decide(self._turns.speech_ended(self._now, event.silence_s,
                                              event.checking_words))

    def _on_transcript(self, event: UserTranscript) -> None:
        if not event.final and event.turn == self._turns.turn and event.text.strip():
            self._send(Transcript(event.text, False, event.turn))
        self._decide(self._turns.transcript(event.turn, event.text, event.final, self._now))

    def _on_typed(self, event: UserTyped) -> None:
        self._idle_since = self._now
        if self._state is State.INITIALIZING:
            self._error(ErrorCode.INVALID_STATE, "the session has not started")
            return
        if not speakable(event.text):
            self._error(ErrorCode.INVALID_MESSAGE, "user_text has no words")
            return
        self._decide(self._turns.typed(self._now, event.text))

    def _on_reply_chunk(self, event: ReplyChunk) -> None:
        reply = self._reply
        if reply is None or reply.turn != event.turn:
            return  # cancelled
        utterance = reply.utterance
        if utterance is None:
            if not speakable(event.text):
                if event.final:
                    self._reply = None  # nothing to say
                return
            if len(self._live) > self.config.max_queued_utterances:
                self._error(ErrorCode.QUEUE_FULL, "too many queued utterances; reply dropped")
                self._cancel_reply()
                return
            utterance = Utterance(self._next_id, reply_turn=reply.turn,
                                   gated=not reply.confirmed)
            self._next_id += 1
            reply.utterance = utterance
            self._live.append(utterance)
        if event.text or event.final:
            if not self._add_text(utterance, event.text, event.final):
                self._cancel_reply()
                return
            if event.text.strip():
                if utterance.gated:
                    utterance.unannounced.append(event.text)
                else:
                    self._send(ReplyText(utterance.utterance_id, event.text, reply.turn))
        if event.final:
            self._reply = None  # generated; its utterance plays on as any other

    def _on_reply_failed(self, event: ReplyFailed) -> None:
        reply = self._reply
        if reply is None or reply.turn != event.turn:
            return
        self._reply = None
        if reply.confirmed:
            self._error(event.code, event.message)
        utterance = reply.utterance
        if utterance is None:
            return
        if utterance.gated:
            self._drop_gated(utterance)
        elif not utterance.text_final:
            self._add_text(utterance, "", True)  # speak what was generated, then end

    def _decide(self, decisions: list[turns.Decision]) -> None:
        """Carry out the turn-taking core's decisions."""
        for decision in decisions:
            if isinstance(decision, turns.HoldSpeech):
                head = self._live[0] if self._live else None
                if not self._playout.held:
                    self._playout.hold(self._now)
                    if self._worker_held:
                        self._actions.append(WorkerControl(Command.PAUSE))
                if head is not None and not head.gated:
                    self._send(Pause(head.utterance_id))
            elif isinstance(decision, turns.InterruptSpeech):
                self._stop(EndReason.INTERRUPTED)
            elif isinstance(decision, turns.ResumeSpeech):
                head = self._live[0] if self._live else None
                if head is not None and not head.gated:
                    # Every pause gets its resume; a client that sent PAUSE itself
                    # stays paused (so does the server) until it sends RESUME.
                    self._send(Resume(head.utterance_id))
                self._unhold()
            elif isinstance(decision, turns.Transcribe):
                self._actions.append(TranscribeTurn(decision.turn))
            elif isinstance(decision, turns.Abandon):
                self._cancel_replies(heard_too=False)
                if decision.closed:
                    self._actions.append(TurnClosed(decision.turn))
            elif isinstance(decision, turns.Reply):
                self._start_reply(decision)
            elif isinstance(decision, turns.Confirm):
                if decision.text is not None and decision.text.strip():
                    self._send(Transcript(decision.text, True, decision.turn))
                self._actions.append(TurnClosed(decision.turn))
                self._confirm_reply(decision.turn)

    def _start_reply(self, decision: turns.Reply) -> None:
        if decision.confirmed:
            self._send(Transcript(decision.text, True, decision.turn))
        old = self._reply
        if old is not None and old.confirmed:
            # One reply generated at a time: a new confirmed turn (after a forced end)
            # stops the old one's generation. What it generated is spoken to its end and
            # stays in the history as said: it is cut only if it is interrupted later.
            self._reply = None
            self._actions.append(CancelReply(old.turn))
            if old.utterance is not None and not old.utterance.text_final:
                self._add_text(old.utterance, "", True)
        self._reply = PendingReply(decision.turn, decision.confirmed)
        self._actions.append(StartReply(decision.turn, decision.text))

    def _confirm_reply(self, turn: int) -> None:
        """The turn really ended: its speculative reply (still being generated, or
        generated and waiting) is announced and heard."""
        reply = self._reply
        if reply is not None and reply.turn == turn:
            reply.confirmed = True
        for utterance in self._live:
            if utterance.gated and utterance.reply_turn == turn:
                utterance.gated = False
                for text in utterance.unannounced:
                    self._send(ReplyText(utterance.utterance_id, text, turn))
                utterance.unannounced = []

    def _cancel_reply(self) -> None:
        """Stop the reply being generated (``CancelReply``), and drop its utterance if
        it was never announced."""
        reply, self._reply = self._reply, None
        if reply is None:
            return
        if reply.utterance is None:
            self._actions.append(CancelReply(reply.turn, unheard=not reply.confirmed))
        else:
            self._cancel_utterance(reply.utterance)

    def _cancel_replies(self, *, heard_too: bool) -> None:
        """Cancel every reply still live: the one being generated and those generated in
        full but not done playing. Not ``heard_too`` (the user went on before the end of
        turn): only the speculative ones, never announced."""
        done = None
        if self._reply is not None and (heard_too or not self._reply.confirmed):
            done = self._reply.utterance
            self._cancel_reply()
        for utterance in list(self._live):
            if (utterance.reply_turn is not None and utterance is not done
                    and (heard_too or utterance.gated)):
                self._cancel_utterance(utterance)

    def _cancel_utterance(self, utterance: Utterance) -> None:
        """The reply engine's history is cut to what was heard of it (nothing, for a
        speculative reply: then it is gone without a trace for the client too)."""
        assert utterance.reply_turn is not None
        self._actions.append(CancelReply(
            utterance.reply_turn, utterance.utterance_id, "".join(utterance.text),
            float(utterance.sent * FRAME_MS), unheard=utterance.gated))
        if utterance.gated:
            self._drop_gated(utterance)

    def _drop_gated(self, utterance: Utterance) -> None:
        """A speculative reply nobody heard of: gone without a trace for the client."""
        if utterance in self._live:
            self._live.remove(utterance)
        self._playout.drop(utterance.utterance_id)
        if self._stream == utterance.utterance_id:
            self._actions.append(WorkerControl(Command.STOP))

    def _unhold(self) -> None:
        """Release a hold once neither the client's PAUSE nor the turn core keeps it."""
        if self._playout.held and not self._client_paused and not self._turns.holding:
            self._playout.unhold(self._now)
            self._actions.append(WorkerControl(Command.RESUME))
