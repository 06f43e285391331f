"""The session machine's plain data: its states, its settings, its utterances.

Split from :mod:`.machine` (which re-exports ``State`` and ``SessionConfig``) so the
conversation half of the machine (:mod:`.conversation`) can share them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from duplexvoice.orchestrator.sessions.playout import PlayoutConfig
from duplexvoice.orchestrator.sessions.turns import TurnConfig


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
