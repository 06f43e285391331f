"""The conversation half of the session machine: microphone speech, the user's
turns, replies and barge-in (WIRE §1.2). Pure, like :mod:`.machine`, which owns it and
hands it the conversation's events; both work on the session's
:class:`~.state.SessionCore`.

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

from collections.abc import Callable

from duplexvoice.audio import FRAME_MS
from duplexvoice.orchestrator.sessions import turns
from duplexvoice.orchestrator.sessions.events import (
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
    UserTurnScore,
    UserTyped,
    WorkerControl,
)
from duplexvoice.orchestrator.sessions.state import (
    PendingReply,
    SessionCore,
    State,
    Utterance,
)
from duplexvoice.text import speakable
from duplexvoice.wire.messages import (
    Command,
    EndReason,
    ErrorCode,
    Pause,
    ReplyText,
    Resume,
    Transcript,
)


class Conversation:
    """The conversation half of one session: it works on the session's core, and
    calls back the machine's ``stop`` (a real barge-in ends the utterances as STOP
    does)."""

    def __init__(self, core: SessionCore, *, stop: Callable[[EndReason], None]) -> None:
        self._core = core
        self._stop = stop
        self._paused: int | None = None  # the utterance a hold sent ``pause`` for
        # A speculative reply that failed: (turn, error) sent if that turn is confirmed
        # (it gets no other reply: it must not end in silence).
        self._failed: tuple[int, ReplyFailed] | None = None

    def on_speech_started(self, event: UserSpeechStarted) -> None:
        self._core.idle_since = self._core.now
        self.decide(self._core.turns.speech_started(self._core.now, event.lead_s))

    def on_speech_paused(self, event: UserSpeechPaused) -> None:
        self.decide(self._core.turns.speech_paused(self._core.now, event.silence_s))

    def on_speech_resumed(self, _: UserSpeechResumed) -> None:
        self.decide(self._core.turns.speech_resumed(self._core.now))

    def on_speech_ended(self, event: UserSpeechEnded) -> None:
        self._core.idle_since = self._core.now
        self.decide(self._core.turns.speech_ended(self._core.now, event.silence_s,
                                                  event.checking_words))

    def on_transcript(self, event: UserTranscript) -> None:
        if not event.final and event.turn == self._core.turns.turn and event.text.strip():
            self._core.send(Transcript(event.text, False, event.turn))
        core = self._core
        self.decide(core.turns.transcript(event.turn, event.text, event.final, core.now))

    def on_turn_score(self, event: UserTurnScore) -> None:
        core = self._core
        self.decide(core.turns.acoustic(event.turn, event.p_complete, core.now))

    def on_typed(self, event: UserTyped) -> None:
        self._core.idle_since = self._core.now
        if self._core.state is State.INITIALIZING:
            self._core.error(ErrorCode.INVALID_STATE, "the session has not started")
            return
        if not speakable(event.text):
            self._core.error(ErrorCode.INVALID_MESSAGE, "user_text has no words")
            return
        self.decide(self._core.turns.typed(self._core.now, event.text))

    def on_reply_chunk(self, event: ReplyChunk) -> None:
        reply = self._core.reply
        if reply is None or reply.turn != event.turn:
            return  # cancelled
        utterance = reply.utterance
        if utterance is None:
            if not speakable(event.text):
                if event.final:
                    self._core.reply = None  # nothing to say
                return
            if len(self._core.live) > self._core.config.max_queued_utterances:
                self._core.error(ErrorCode.QUEUE_FULL, "too many queued utterances; reply dropped")
                self._cancel_reply()
                return
            utterance = Utterance(self._core.next_id, reply_turn=reply.turn,
                                  gated=not reply.confirmed)
            self._core.next_id += 1
            reply.utterance = utterance
            self._core.live.append(utterance)
        if event.text or event.final:
            if not self._core.add_text(utterance, event.text, event.final):
                self._cancel_reply()
                return
            if event.text.strip():
                if utterance.gated:
                    utterance.unannounced.append(event.text)
                else:
                    self._core.send(ReplyText(utterance.utterance_id, event.text, reply.turn))
        if event.final:
            self._core.reply = None  # generated; its utterance plays on as any other

    def on_reply_failed(self, event: ReplyFailed) -> None:
        reply = self._core.reply
        if reply is None or reply.turn != event.turn:
            return
        self._core.reply = None
        if reply.confirmed:
            self._core.error(event.code, event.message)
        else:
            self._failed = (event.turn, event)  # told when (if) the turn is confirmed
        utterance = reply.utterance
        if utterance is not None and not utterance.text_final:
            # Speak what was generated (the apology, say), then end; a speculative one
            # only once its turn is confirmed (else it is dropped unheard).
            self._core.add_text(utterance, "", True)

    def decide(self, decisions: list[turns.Decision]) -> None:
        """Carry out the turn-taking core's decisions."""
        for decision in decisions:
            if isinstance(decision, turns.HoldSpeech):
                head = self._core.live[0] if self._core.live else None
                if not self._core.playout.held:
                    self._core.playout.hold(self._core.now)
                    if self._core.worker_held:
                        self._core.actions.append(WorkerControl(Command.PAUSE))
                if head is not None and not head.gated:
                    self._paused = head.utterance_id
                    self._core.send(Pause(head.utterance_id))
            elif isinstance(decision, turns.InterruptSpeech):
                self._paused = None
                self._stop(EndReason.INTERRUPTED)
            elif isinstance(decision, turns.ResumeSpeech):
                paused, self._paused = self._paused, None
                if paused is not None and any(u.utterance_id == paused
                                              for u in self._core.live):
                    # Every pause gets its resume (and only a pause: an utterance that
                    # came during the hold was never paused); a client that sent PAUSE
                    # itself stays paused (so does the server) until it sends RESUME.
                    self._core.send(Resume(paused))
                self.unhold()
            elif isinstance(decision, turns.Transcribe):
                self._core.actions.append(TranscribeTurn(decision.turn))
            elif isinstance(decision, turns.Abandon):
                self.cancel_replies(heard_too=False)
                if decision.closed:
                    self._core.actions.append(TurnClosed(decision.turn))
            elif isinstance(decision, turns.Reply):
                self._start_reply(decision)
            elif isinstance(decision, turns.Heard):
                self._core.send(Transcript(decision.text.strip(), True, decision.turn))
            elif isinstance(decision, turns.Confirm):
                if decision.text is not None:  # "" too: the client learns nothing was heard
                    self._core.send(Transcript(decision.text.strip(), True, decision.turn))
                self._core.actions.append(TurnClosed(decision.turn))
                self._confirm_reply(decision.turn)

    def _start_reply(self, decision: turns.Reply) -> None:
        if decision.confirmed:
            self._core.send(Transcript(decision.text, True, decision.turn))
        old = self._core.reply
        if old is not None and old.confirmed:
            # One reply generated at a time: a new confirmed turn (after a forced end)
            # stops the old one's generation. What it generated is spoken to its end and
            # stays in the history as said: it is cut only if it is interrupted later.
            self._core.reply = None
            self._core.actions.append(CancelReply(old.turn))
            if old.utterance is not None and not old.utterance.text_final:
                self._core.add_text(old.utterance, "", True)
        self._core.reply = PendingReply(decision.turn, decision.confirmed)
        self._core.actions.append(StartReply(decision.turn, decision.text))

    def _confirm_reply(self, turn: int) -> None:
        """The turn really ended: its speculative reply (still being generated, or
        generated and waiting) is announced and heard."""
        reply = self._core.reply
        if reply is not None and reply.turn == turn:
            reply.confirmed = True
        if self._failed is not None:
            failed_turn, failed = self._failed
            self._failed = None
            if failed_turn == turn:
                self._core.error(failed.code, failed.message)
        for utterance in self._core.live:
            if utterance.gated and utterance.reply_turn == turn:
                utterance.gated = False
                for text in utterance.unannounced:
                    self._core.send(ReplyText(utterance.utterance_id, text, turn))
                utterance.unannounced = []

    def _cancel_reply(self) -> None:
        """Stop the reply being generated (``CancelReply``), and drop its utterance if
        it was never announced."""
        reply, self._core.reply = self._core.reply, None
        if reply is None:
            return
        if reply.utterance is None:
            self._core.actions.append(CancelReply(reply.turn, unheard=not reply.confirmed))
        else:
            self._cancel_utterance(reply.utterance)

    def cancel_replies(self, *, heard_too: bool) -> None:
        """Cancel every reply still live: the one being generated and those generated in
        full but not done playing. Not ``heard_too`` (the user went on before the end of
        turn): only the speculative ones, never announced."""
        done = None
        self._failed = None  # its turn went on or was interrupted: no reply was owed
        if self._core.reply is not None and (heard_too or not self._core.reply.confirmed):
            done = self._core.reply.utterance
            self._cancel_reply()
        for utterance in list(self._core.live):
            if (utterance.reply_turn is not None and utterance is not done
                    and (heard_too or utterance.gated)):
                self._cancel_utterance(utterance)

    def _cancel_utterance(self, utterance: Utterance) -> None:
        """The reply engine's history is cut to what was heard of it (nothing, for a
        speculative reply: then it is gone without a trace for the client too)."""
        assert utterance.reply_turn is not None
        self._core.actions.append(CancelReply(
            utterance.reply_turn, utterance.utterance_id, "".join(utterance.text),
            float(utterance.sent * FRAME_MS), unheard=utterance.gated))
        if utterance.gated:
            self._drop_gated(utterance)

    def _drop_gated(self, utterance: Utterance) -> None:
        """A speculative reply nobody heard of: gone without a trace for the client."""
        if utterance in self._core.live:
            self._core.live.remove(utterance)
        self._core.playout.drop(utterance.utterance_id)
        if self._core.stream == utterance.utterance_id:
            self._core.actions.append(WorkerControl(Command.STOP))

    def unhold(self) -> None:
        """Release a hold once neither the client's PAUSE nor the turn core keeps it."""
        core = self._core
        if core.playout.held and not core.client_paused and not core.turns.holding:
            self._core.playout.unhold(self._core.now)
            self._core.actions.append(WorkerControl(Command.RESUME))
