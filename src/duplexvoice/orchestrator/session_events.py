"""Events (driver -> machine) and actions (machine -> driver) of the session machine.

Plain frozen dataclasses, no behaviour: see :mod:`duplexvoice.orchestrator.session`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# -- events (driver -> machine); new inputs (VAD, ASR, playback) subclass Event --------

@dataclass(frozen=True)
class Event:
    """Base of everything fed to ``handle``."""

@dataclass(frozen=True)
class Connected(Event):
    """The socket was accepted."""

@dataclass(frozen=True)
class WorkerSessionStarted(Event):
    """StartSession succeeded."""

@dataclass(frozen=True)
class WorkerSessionFailed(Event):
    """StartSession failed, or the worker session is gone for good. Fatal."""

    message: str

@dataclass(frozen=True)
class TextReceived(Event):
    text: str
    is_final: bool = True

@dataclass(frozen=True)
class ControlReceived(Event):
    command: str  # "PAUSE" | "RESUME" | "STOP"

@dataclass(frozen=True)
class WorkerFrame(Event):
    utterance_id: int  # of the Synthesize stream it came from
    pcm: bytes

@dataclass(frozen=True)
class SynthesisDone(Event):
    """The utterance's Synthesize stream ended (final marker), stopped or not."""

    utterance_id: int

@dataclass(frozen=True)
class SynthesisFailed(Event):
    utterance_id: int
    message: str

@dataclass(frozen=True)
class Tick(Event):
    """Time passed; due at ``next_deadline``."""

@dataclass(frozen=True)
class ClientDisconnected(Event):
    """The socket is gone; nothing can be sent."""

@dataclass(frozen=True)
class ServerShutdown(Event):
    """The server is stopping."""


# -- actions (machine -> driver), carried out in order --------------------------------

@dataclass(frozen=True)
class Action:
    """Base of everything ``handle`` returns."""

@dataclass(frozen=True)
class Send(Action):
    message: dict[str, Any]  # a JSON message exactly as on the wire

@dataclass(frozen=True)
class SendAudio(Action):
    """One frame to send now; the driver encodes it (JSON base64 or binary)."""

    utterance_id: int
    sequence: int
    pcm: bytes

@dataclass(frozen=True)
class StartWorkerSession(Action):
    """StartSession; answer with WorkerSessionStarted or WorkerSessionFailed."""

@dataclass(frozen=True)
class BeginSynthesis(Action):
    """Open a Synthesize stream; tag its frames with this id."""

    utterance_id: int

@dataclass(frozen=True)
class SynthesizeText(Action):
    utterance_id: int
    text: str
    is_final: bool

@dataclass(frozen=True)
class WorkerControl(Action):
    command: str  # "PAUSE" | "RESUME" | "STOP", session-wide on the worker

@dataclass(frozen=True)
class EndWorkerSession(Action):
    """Cancel any open Synthesize stream, then EndSession (best effort)."""

@dataclass(frozen=True)
class Close(Action):
    code: int
    reason: str
