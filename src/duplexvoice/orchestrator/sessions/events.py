"""Events (driver -> machine) and actions (machine -> driver) of the session machine.

Plain frozen dataclasses, no behaviour: see :mod:`duplexvoice.orchestrator.sessions.machine`.
A new input (microphone frames, VAD edges, transcripts) is a new ``Event`` subclass
and a new handler in the machine; a new effect is a new ``Action``.
"""

from __future__ import annotations

from dataclasses import dataclass

from duplexvoice.wire.messages import Command, ErrorCode, Outbound

# -- events (driver -> machine) -------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """Base of everything fed to ``handle``."""

@dataclass(frozen=True)
class Connected(Event):
    """The socket was accepted."""

@dataclass(frozen=True)
class TextReceived(Event):
    text: str
    is_final: bool = True

@dataclass(frozen=True)
class UserTyped(Event):
    """Conversation mode: the user typed a turn instead of speaking it."""

    text: str

@dataclass(frozen=True)
class ControlReceived(Event):
    command: Command

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
    """The utterance could not be spoken: no worker (``WORKER_UNAVAILABLE``) or the
    worker failed it (``SYNTHESIS_FAILED``). Never fatal to the session."""

    utterance_id: int
    message: str
    code: ErrorCode = ErrorCode.SYNTHESIS_FAILED

@dataclass(frozen=True)
class UserSpeechStarted(Event):
    """Conversation mode: the VAD confirmed speech onset in the microphone audio,
    ``lead_s`` after the speech began."""

    lead_s: float = 0.0

@dataclass(frozen=True)
class UserSpeechEnded(Event):
    """The VAD confirmed the speech offset, ``silence_s`` after the last speech.
    ``checking_words``: a partial transcript of it is on its way."""

    silence_s: float = 0.0
    checking_words: bool = False

@dataclass(frozen=True)
class UserSpeechPaused(Event):
    """The VAD has heard no voice for ``silence_s``, short of confirming an offset: the
    speech may be over (a barge-in's speech is not counted past it)."""

    silence_s: float

@dataclass(frozen=True)
class UserSpeechResumed(Event):
    """Voice again after ``UserSpeechPaused``, before any offset."""

@dataclass(frozen=True)
class UserTranscript(Event):
    """A transcript of the user's ``turn``: partial, or the final asked for by
    ``TranscribeTurn``."""

    turn: int
    text: str
    final: bool

@dataclass(frozen=True)
class UserTurnScore(Event):
    """The acoustic end-of-turn model's p(complete) for ``turn``'s speech as it stopped
    (asked at the offset, beside the final transcript)."""

    turn: int
    p_complete: float

@dataclass(frozen=True)
class ReplyChunk(Event):
    """A clause of the reply to ``turn``; ``final`` ends the reply (text may be empty)."""

    turn: int
    text: str
    final: bool = False

@dataclass(frozen=True)
class ReplyFailed(Event):
    turn: int
    message: str
    code: ErrorCode = ErrorCode.REPLY_FAILED

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
    message: Outbound  # encoded to wire JSON by the transport

@dataclass(frozen=True)
class SendAudio(Action):
    """One frame to send now; the driver hands it to the transport as it is (:mod:`.output`)."""

    utterance_id: int
    sequence: int
    pcm: bytes

@dataclass(frozen=True)
class BeginSynthesis(Action):
    """Open a Synthesize stream, tagging its frames with this id. The driver takes a
    worker session first if it holds none (capacity is taken on demand); it reports
    exactly one ``SynthesisDone`` or ``SynthesisFailed`` for this id."""

    utterance_id: int

@dataclass(frozen=True)
class SynthesizeText(Action):
    utterance_id: int
    text: str
    is_final: bool

@dataclass(frozen=True)
class WorkerControl(Action):
    command: Command  # session-wide on the worker

@dataclass(frozen=True)
class ReleaseWorker(Action):
    """Give the worker session back: cancel any open stream, then EndSession
    (including a StartSession still in flight). A no-op when none is held."""

@dataclass(frozen=True)
class TranscribeTurn(Action):
    """Transcribe the user turn's audio so far; report a final ``UserTranscript``."""

    turn: int

@dataclass(frozen=True)
class TurnClosed(Action):
    """The turn is over (ended, or noise): its audio may go; the next speech opens a
    new turn."""

    turn: int

@dataclass(frozen=True)
class StartReply(Action):
    """Ask the reply engine for the answer to ``text``; report ``ReplyChunk``s (the last
    one ``final``) or ``ReplyFailed``."""

    turn: int
    text: str

@dataclass(frozen=True)
class CancelReply(Action):
    """Stop generating the reply to ``turn`` (the user went on or barged in).
    ``heard_ms``: audio of it released to the client, None if none was."""

    turn: int
    utterance_id: int | None = None
    text: str = ""  # what of it was given to the worker
    released_ms: float = 0.0
    unheard: bool = False  # a speculative reply never announced: as if never said

@dataclass(frozen=True)
class Close(Action):
    code: int
    reason: str
