"""The orchestrator's WebSocket protocol (``docs/protocol.md``) as a client sees it,
as pure code: audio frames (binary or JSON) and their sequence check, what one ``say``
collects (``AudioCollector`` -> ``SayResult``), the config check's probe, and how the
server's errors read for a person. No I/O: :mod:`.ws_client` and :mod:`.interactive`
carry it out.

The config check: the protocol has no acknowledgement of a good ``config``, only
``error INVALID_CONFIG`` for a bad one. The server handles one connection's messages
in order (a refused config is answered before the next message is handled), and a
``PAUSE`` with nothing playing is answered ``error INVALID_STATE`` and changes nothing
(docs/protocol.md). So after a ``config`` that names a voice the client sends
``PAUSE`` (``PROBE``) and waits: ``INVALID_STATE`` first means the config was taken,
``INVALID_CONFIG`` first means it was refused, and no text has left yet. Only a voice
needs this: ``output_format: binary`` is a value the protocol defines, and a refused
one would only change the encoding of the audio, which the client reads in either
form.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from duplexvoice.audio import FRAME_BYTES
from duplexvoice.wire.protocol import OUTPUT_SAMPLE_RATE, decode_binary_frame

# Errors that refuse the text itself: no utterance will follow, stop waiting.
TEXT_REFUSED_CODES: Final = frozenset(
    {"INVALID_MESSAGE", "TEXT_TOO_LONG", "MESSAGE_TOO_LARGE", "QUEUE_FULL"}
)
# The config check (module docstring): the probe and the two answers it can meet.
PROBE: Final = {"type": "control", "command": "PAUSE"}
PROBE_ANSWER: Final = "INVALID_STATE"
CONFIG_REFUSED: Final = "INVALID_CONFIG"


def probe_verdict(message: Mapping[str, Any]) -> Literal["accepted", "refused"] | None:
    """What an ``error`` met while the config check is pending says about the config."""
    code = message.get("code")
    if code == PROBE_ANSWER:
        return "accepted"
    if code == CONFIG_REFUSED:
        return "refused"
    return None


def describe_error(error: Mapping[str, Any]) -> str:
    """``error CODE: message`` for the server's errors; our own (``CLIENT_*``) plainly."""
    code, message = error.get("code"), error.get("message")
    if isinstance(code, str) and code.startswith("CLIENT_"):
        return str(message)
    return f"error {code}: {message}"


def describe_end(end: Mapping[str, Any]) -> str:
    if end.get("type") == "session_end":
        return f"session ended: {end.get('reason')}"
    return f"connection closed (code {end.get('close_code')})"


# -- result and message collection (pure) -------------------------------------------


@dataclass
class SayResult:
    pcm: bytes
    first_audio_ms: float | None  # text sent -> first audio frame received
    frames: int
    sequence_ok: bool  # every audio frame's sequence was the previous one + 1
    errors: list[dict[str, Any]]
    utterance_id: int | None = None
    end_reason: str | None = None  # utterance_end reason; None: it never came
    session_end: dict[str, Any] | None = None
    total_ms: float | None = None  # text sent -> utterance_end (or give-up)
    text_sent: bool = False

    @property
    def audio_ms(self) -> float:
        return len(self.pcm) / 2 / OUTPUT_SAMPLE_RATE * 1000

    @property
    def ok(self) -> bool:
        """Completed with audio, and no error (e.g. a refused voice) on the way."""
        return self.end_reason == "completed" and self.frames > 0 and not self.errors

    def problems(self) -> list[str]:
        """What to show a person when it did not go well: the server's errors as it
        sent them, then how the session ended (if it did)."""
        lines = [describe_error(e) for e in self.errors]
        if self.session_end is not None and (lines or self.session_end.get("reason")
                                             != "completed"):
            lines.append(describe_end(self.session_end))
        return lines

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view (no PCM)."""
        return {
            "utterance_id": self.utterance_id,
            "end_reason": self.end_reason,
            "frames": self.frames,
            "audio_ms": round(self.audio_ms, 1),
            "first_audio_ms": None if self.first_audio_ms is None
            else round(self.first_audio_ms, 1),
            "total_ms": None if self.total_ms is None else round(self.total_ms, 1),
            "sequence_ok": self.sequence_ok,
            "text_sent": self.text_sent,
            "errors": self.errors,
            "session_end": self.session_end,
        }


@dataclass(frozen=True)
class AudioFrame:
    utterance_id: int | None  # None: a JSON audio message without the extension field
    sequence: int
    pcm: bytes


class SequenceCheck:
    """Sequences are per connection, shared by all utterances, +1 per audio frame."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.ok = True
        self.gaps: list[tuple[int, int]] = []  # (expected, got)

    def add(self, sequence: int) -> bool:
        if self.last is not None and sequence != self.last + 1:
            self.ok = False
            self.gaps.append((self.last + 1, sequence))
        self.last = sequence
        return self.ok


def parse_audio(raw: str | bytes | Mapping[str, Any]) -> AudioFrame:
    """One server audio frame, binary or a decoded JSON ``audio`` message;
    ``ValueError`` when it is malformed."""
    if isinstance(raw, bytes | bytearray):
        frame = decode_binary_frame(bytes(raw))
        return AudioFrame(frame.utterance_id, frame.sequence, frame.pcm)
    if not isinstance(raw, Mapping):
        raise ValueError("not an audio message")
    sequence = raw.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise ValueError("audio without a valid sequence")
    encoded = raw.get("pcm")
    if not isinstance(encoded, str):
        raise ValueError("audio without pcm")
    try:
        pcm = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("audio pcm is not valid base64") from None
    if len(pcm) != FRAME_BYTES:
        raise ValueError(f"audio frame of {len(pcm)} bytes, expected {FRAME_BYTES}")
    uid = raw.get("utterance_id")
    return AudioFrame(uid if isinstance(uid, int) and not isinstance(uid, bool) else None,
                      sequence, pcm)


class AudioCollector:
    """Follows the server's messages for one spoken text (the first utterance that
    shows up after it was sent) and says when the wait is over.

    While ``probing`` (the config check, module docstring) the probe's answer is taken
    out of the stream and a refused config ends the wait. Frames of an utterance that
    already ended are dropped (stale audio fence)."""

    def __init__(self, sent_at: float | None = None) -> None:
        self.sent_at = sent_at
        self.session_id: str | None = None
        self.probing = False
        self.first_audio_at: float | None = None
        self.ended_at: float | None = None
        self.utterance_id: int | None = None
        self.chunks: list[bytes] = []
        self.sequence = SequenceCheck()
        self.errors: list[dict[str, Any]] = []
        self.end_reason: str | None = None
        self.session_end: dict[str, Any] | None = None
        self.done = False
        self._ended: set[int] = set()

    def on_binary(self, data: bytes, now: float) -> AudioFrame | None:
        try:
            frame = parse_audio(data)
        except ValueError as exc:
            self.errors.append({"type": "error", "code": "CLIENT_BAD_FRAME", "message": str(exc)})
            return None
        return self._audio(frame, now)

    def on_json(self, message: Mapping[str, Any], now: float) -> AudioFrame | None:
        """Handle one decoded JSON message; returns the audio frame it carried, if any."""
        kind = message.get("type")
        if kind == "audio":
            try:
                frame = parse_audio(message)
            except ValueError as exc:
                self.errors.append(
                    {"type": "error", "code": "CLIENT_BAD_FRAME", "message": str(exc)}
                )
                return None
            return self._audio(frame, now)
        if kind == "session_start":
            sid = message.get("session_id")
            self.session_id = sid if isinstance(sid, str) else ""
        elif kind == "utterance_end":
            uid = message.get("utterance_id")
            if isinstance(uid, int):
                self._ended.add(uid)
            if self.utterance_id is None or uid == self.utterance_id:
                self.utterance_id = uid if isinstance(uid, int) else self.utterance_id
                reason = message.get("reason")
                self.end_reason = reason if isinstance(reason, str) else "unknown"
                self._finish(now)
        elif kind == "error":
            verdict = probe_verdict(message) if self.probing else None
            if verdict == "accepted":
                self.probing = False  # the probe's own answer: not an error of ours
                return None
            self.errors.append(dict(message))
            code = message.get("code")
            # A fatal error is followed by session_end (or the close): wait for it, so
            # that its reason is reported too.
            if verdict == "refused" or (
                    code in TEXT_REFUSED_CODES and self.utterance_id is None and not self.chunks):
                self._finish(now)
        elif kind == "session_end":
            self.session_end = dict(message)
            self._finish(now)
        return None

    def _audio(self, frame: AudioFrame, now: float) -> AudioFrame | None:
        self.sequence.add(frame.sequence)
        uid = frame.utterance_id
        if uid is not None and uid in self._ended:
            return None  # stale: that utterance is over
        if self.utterance_id is None:
            self.utterance_id = uid
        elif uid is not None and uid != self.utterance_id:
            return None  # another utterance's audio (not ours)
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.chunks.append(frame.pcm)
        return frame

    def _finish(self, now: float) -> None:
        if not self.done:
            self.done = True
            self.ended_at = now

    def give_up(self, now: float, message: str) -> None:
        self.errors.append({"type": "error", "code": "CLIENT_TIMEOUT", "message": message})
        self._finish(now)

    def on_closed(self, close_code: int | None, now: float, waiting_for: str) -> None:
        """The connection closed (the server's messages before it were all handled)."""
        if self.session_end is None:
            self.session_end = {"type": "closed", "close_code": close_code}
        if not self.done:
            self.errors.append({"type": "error", "code": "CLIENT_CLOSED",
                                "message": f"the server closed the connection before "
                                f"{waiting_for}"})
        self._finish(now)

    def result(self) -> SayResult:
        def since_sent(t: float | None) -> float | None:
            if t is None or self.sent_at is None:
                return None
            return (t - self.sent_at) * 1000

        return SayResult(
            pcm=b"".join(self.chunks),
            first_audio_ms=since_sent(self.first_audio_at),
            frames=len(self.chunks),
            sequence_ok=self.sequence.ok,
            errors=self.errors,
            utterance_id=self.utterance_id,
            end_reason=self.end_reason,
            session_end=self.session_end,
            total_ms=since_sent(self.ended_at),
            text_sent=self.sent_at is not None,
        )


def config_message(voice: str = "", binary: bool = True) -> dict[str, Any] | None:
    """The ``config`` to send first, or None when there is nothing to set."""
    message: dict[str, Any] = {"type": "config"}
    if voice:
        message["voice"] = voice
    if binary:
        message["output_format"] = "binary"
    return message if len(message) > 1 else None


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def load_message(data: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        return {"type": "client_bad_json", "data": data[:200]}
    return obj if isinstance(obj, dict) else {"type": "client_bad_json", "data": data[:200]}


__all__ = [
    "CONFIG_REFUSED", "PROBE", "PROBE_ANSWER", "TEXT_REFUSED_CODES", "AudioCollector",
    "AudioFrame", "SayResult", "SequenceCheck", "auth_headers", "config_message",
    "describe_end", "describe_error", "load_message", "parse_audio", "probe_verdict",
]
