"""The session machine's data: its states, its settings, its utterances, and the
:class:`SessionCore` that both halves of the machine work on.

The machine (:mod:`.machine`: lifecycle, texts, controls, worker frames) and its
conversation half (:mod:`.conversation`: the user's turns, replies, barge-in) are two
objects sharing one ``SessionCore``: the session's state, the actions decided so far
in this event, and the few operations both need (send a message, an error, an
utterance's end; give text to an utterance). Pure, like both.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from duplexvoice.orchestrator.sessions.events import Action, Send, SynthesizeText
from duplexvoice.orchestrator.sessions.playout import Playout, PlayoutConfig
from duplexvoice.orchestrator.sessions.turns import TurnConfig, TurnTaking
from duplexvoice.text import speakable
from duplexvoice.wire.messages import EndReason, Error, ErrorCode, Outbound, UtteranceEnd


class State(enum.StrEnum):
    INITIALIZING = "INITIALIZING"
    LISTENING = "LISTENING"
    SPEAKING = "SPEAKING"
    PAUSED = "PAUSED"  # the client's PAUSE
    BARGED_IN = "BARGED_IN"  # the user spoke over the system (turn-taking core)
    ERROR = "ERROR"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class SessionConfig:
    session_id: str
    idle_timeout_s: float = 60.0  # LISTENING this long with no client message: close
    max_queued_utterances: int = 8  # utterances waiting behind the current one
    max_pending_chars: int = 20_000  # text held here for utterances not yet at the worker
    # The worker session is given back after this long in LISTENING (0: at once); a
    # conversation's next turn within it skips StartSession.
    worker_linger_s: float = 1.0
    playout: PlayoutConfig = field(default_factory=PlayoutConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("session_id must not be empty")
        if self.idle_timeout_s <= 0 or self.worker_linger_s < 0:
            raise ValueError("idle_timeout_s must be positive and worker_linger_s >= 0")
        if self.max_queued_utterances < 0 or self.max_pending_chars < 1:
            raise ValueError("max_queued_utterances >= 0 and max_pending_chars >= 1")


@dataclass
class Utterance:
    utterance_id: int
    pending: list[str] = field(default_factory=list)  # text not yet given to the worker
    text_final: bool = False
    has_words: bool = False  # any speakable text so far
    started: bool = False  # BeginSynthesis sent
    synthesized: bool = False  # its worker stream ended
    sent: int = 0  # frames of it released to the client
    reply_turn: int | None = None  # the user turn it answers (conversation mode)
    gated: bool = False  # a speculative reply: nothing released, nothing announced yet
    text: list[str] = field(default_factory=list)  # all its text, for the reply history
    unannounced: list[str] = field(default_factory=list)  # reply text held while gated


@dataclass
class PendingReply:
    """The reply being generated (conversation mode); its utterance opens with its
    first text."""

    turn: int
    confirmed: bool
    utterance: Utterance | None = None


class SessionCore:
    """One session's state, shared by the machine and its conversation half."""

    def __init__(self, config: SessionConfig, now: float) -> None:
        self.config = config
        self.state = State.INITIALIZING
        self.now = now
        self.next_id = 1
        self.live: deque[Utterance] = deque()  # not yet ended, in order; [0] is current
        self.stream: int | None = None  # utterance id of the open Synthesize stream
        self.worker_held = False  # a worker session was asked for and not given back
        self.playout = Playout(config.playout, now)
        self.turns = TurnTaking(config.turns)
        self.reply: PendingReply | None = None  # generating (its utterance may still play)
        self.client_paused = False  # the client's PAUSE (the turn core holds on its own)
        self.idle_since = now  # last client message, or entering LISTENING
        self.actions: list[Action] = []  # decided in this event, for the driver

    def add_text(self, target: Utterance, text: str, is_final: bool) -> bool:
        """Give text to an utterance: held here until its synthesis starts, else
        straight to the worker. False (and an error) if too much text is held."""
        if not target.started:
            held = sum(len(c) for u in self.live for c in u.pending)
            if held + len(text) > self.config.max_pending_chars:
                self.error(ErrorCode.QUEUE_FULL, "too much queued text; text dropped")
                return False
            target.pending.append(text)
        else:
            self.actions.append(SynthesizeText(target.utterance_id, text, is_final))
        target.text_final = is_final
        target.has_words = target.has_words or speakable(text)
        if target.reply_turn is not None:
            target.text.append(text)  # bounded: a reply engine's output, not the client's
        return True

    def send(self, message: Outbound) -> None:
        self.actions.append(Send(message))

    def utterance_end(self, utterance: Utterance, reason: EndReason) -> None:
        self.send(UtteranceEnd(utterance.utterance_id, reason, utterance.sent))

    def error(self, code: ErrorCode, message: str) -> None:
        self.send(Error(code, message))
