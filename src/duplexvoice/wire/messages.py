"""Typed messages of the WebSocket protocol, server to client (WIRE §1), and the
client's control commands.

The session core builds these; only the transport turns them into wire JSON
(``to_wire``), so field names live in one place and the metrics read typed values,
never JSON parsed back. Audio frames are not here: they are the hot path, handed to
the transport as they are (the session machine's ``SendAudio``) and encoded only by
a transport that sends them as messages (``protocol.audio_message`` /
``encode_binary_frame``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar


class Command(enum.StrEnum):
    """``control`` commands (WIRE §1.1), also sent to the worker (WIRE §2)."""

    PAUSE = "PAUSE"
    RESUME = "RESUME"
    STOP = "STOP"


class EndReason(enum.StrEnum):
    """Why an utterance ended (``utterance_end.reason``)."""

    COMPLETED = "completed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class SessionEndReason(enum.StrEnum):
    """Why a session ended (``session_end.reason``)."""

    COMPLETED = "completed"
    IDLE_TIMEOUT = "idle_timeout"
    SERVER_SHUTDOWN = "server_shutdown"
    ERROR = "error"


class ErrorCode(enum.StrEnum):
    """``error.code``: WIRE §1.1's codes, then our extensions (docs/protocol.md)."""

    INVALID_MESSAGE = "INVALID_MESSAGE"
    WORKER_UNAVAILABLE = "WORKER_UNAVAILABLE"
    SYNTHESIS_FAILED = "SYNTHESIS_FAILED"
    CONNECTION_ERROR = "CONNECTION_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    INVALID_CONFIG = "INVALID_CONFIG"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    TEXT_TOO_LONG = "TEXT_TOO_LONG"
    INVALID_AUDIO = "INVALID_AUDIO"
    QUEUE_FULL = "QUEUE_FULL"
    INVALID_STATE = "INVALID_STATE"
    RATE_LIMITED = "RATE_LIMITED"
    ASR_BUSY = "ASR_BUSY"
    ASR_FAILED = "ASR_FAILED"
    REPLY_FAILED = "REPLY_FAILED"


@dataclass(frozen=True)
class Outbound:
    """Base of the server's JSON messages; ``type`` is the wire ``type``."""

    type: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type}
        for name, value in vars(self).items():
            wire[name] = value.value if isinstance(value, enum.Enum) else value
        return wire


@dataclass(frozen=True)
class SessionStart(Outbound):
    type: ClassVar[str] = "session_start"
    session_id: str


@dataclass(frozen=True)
class SessionEnd(Outbound):
    type: ClassVar[str] = "session_end"
    session_id: str
    reason: SessionEndReason


@dataclass(frozen=True)
class StateChanged(Outbound):
    type: ClassVar[str] = "state"
    state: str


@dataclass(frozen=True)
class Error(Outbound):
    type: ClassVar[str] = "error"
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class Interrupt(Outbound):
    type: ClassVar[str] = "interrupt"
    utterance_id: int
    reason: EndReason


@dataclass(frozen=True)
class UtteranceEnd(Outbound):
    type: ClassVar[str] = "utterance_end"
    utterance_id: int
    reason: EndReason
    frames: int


@dataclass(frozen=True)
class UtteranceMetrics(Outbound):
    type: ClassVar[str] = "metrics"
    utterance_id: int
    first_audio_ms: float


@dataclass(frozen=True)
class Pause(Outbound):
    """Hold playback of the utterance, keep its audio: the user may be barging in."""

    type: ClassVar[str] = "pause"
    utterance_id: int


@dataclass(frozen=True)
class Resume(Outbound):
    """A false interruption: play the held utterance on from where it stopped."""

    type: ClassVar[str] = "resume"
    utterance_id: int


@dataclass(frozen=True)
class Transcript(Outbound):
    type: ClassVar[str] = "transcript"
    text: str
    final: bool
    turn: int  # extension: the user turn it belongs to


@dataclass(frozen=True)
class ReplyText(Outbound):
    """Text of the reply about to be spoken (one clause at a time)."""

    type: ClassVar[str] = "reply"
    utterance_id: int
    text: str
    turn: int  # extension: the user turn it answers


@dataclass(frozen=True)
class TurnMetrics(Outbound):
    """Timings of one conversation turn, in ms, measured in the server (extension)."""

    type: ClassVar[str] = "metrics"
    turn: int
    values: dict[str, float]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "turn": self.turn, **self.values}
