"""The WebSocket client protocol (WIRE §1) as pure code: parse what clients send,
encode what the server sends. No sockets, no asyncio. ``docs/protocol.md`` is the
reference for clients.

Parsing never raises: ``parse_client_message`` returns one of the frozen message
classes (``ClientMessage``) or a ``ProtocolError`` whose ``code`` is one of:

- ``INVALID_MESSAGE`` (WIRE §1.1): not JSON, not an object, unknown ``type`` or
  ``command``, a required field missing, or a field of the wrong JSON type. A field
  that is present must have its type: ``null`` is not absence, ``"true"`` is not a
  boolean, ``true`` and ``1.0`` are not integers.
- ``INVALID_CONFIG`` (WIRE §1.2): a ``config`` value of the right type out of range
  or not one of the allowed values.
- ``MESSAGE_TOO_LARGE`` (extension): the frame is larger than
  ``ProtocolLimits.max_message_bytes``; checked before any JSON parsing.
- ``TEXT_TOO_LONG`` (extension): ``text`` longer than ``max_text_chars``.
- ``INVALID_AUDIO`` (extension): invalid base64, empty or odd-length PCM, or a
  ``sample_rate`` other than the session's ``input_sample_rate``.

Unknown fields are ignored (forward compatibility). The encoding helpers are for the
server's own messages and raise ``ValueError`` on a programming error (wrong frame
size, id out of range).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from duplexvoice.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from duplexvoice.wire.messages import Command, Error, ErrorCode

# -- error codes ---------------------------------------------------------------------

INVALID_MESSAGE: Final = ErrorCode.INVALID_MESSAGE
INVALID_CONFIG: Final = ErrorCode.INVALID_CONFIG
MESSAGE_TOO_LARGE: Final = ErrorCode.MESSAGE_TOO_LARGE
TEXT_TOO_LONG: Final = ErrorCode.TEXT_TOO_LONG
INVALID_AUDIO: Final = ErrorCode.INVALID_AUDIO

# -- audio constants (WIRE §1.1) -----------------------------------------------------

# The frame itself is the audio package's (one definition for every part).
OUTPUT_SAMPLE_RATE: Final = SAMPLE_RATE
MIN_INPUT_SAMPLE_RATE: Final = 8_000
MAX_INPUT_SAMPLE_RATE: Final = 48_000
DEFAULT_INPUT_SAMPLE_RATE: Final = 16_000

CONTROL_COMMANDS: Final = frozenset(c.value for c in Command)
MODES: Final = frozenset({"tts", "conversation"})
OUTPUT_FORMATS: Final = frozenset({"json", "binary"})

# -- binary output frame (WIRE §1.2, output_format "binary") -------------------------

BINARY_MAGIC: Final = b"DV"
BINARY_VERSION: Final = 1
FLAG_LAST: Final = 0x01  # last frame of the utterance; other bits reserved (send 0)
_KNOWN_FLAGS: Final = FLAG_LAST
_HEADER: Final = struct.Struct("<2sBBII")  # magic, version, flags, utterance_id, sequence
BINARY_HEADER_BYTES: Final = _HEADER.size  # 12
BINARY_FRAME_BYTES: Final = BINARY_HEADER_BYTES + FRAME_BYTES  # 1932
_U32_MAX: Final = 0xFFFF_FFFF


@dataclass(frozen=True)
class ProtocolLimits:
    max_message_bytes: int = 1_048_576  # one frame, text or binary, in bytes (UTF-8)
    max_text_chars: int = 10_000  # characters of ``text`` in one ``text`` message

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1 or self.max_text_chars < 1:
            raise ValueError("max_message_bytes and max_text_chars must be >= 1")


@dataclass(frozen=True)
class ProtocolError:
    """A client message that was refused; sent back as an ``error`` message."""

    code: ErrorCode
    message: str

    def to_message(self) -> Error:
        """The ``error`` message that answers it."""
        return Error(self.code, self.message)


@dataclass(frozen=True)
class TextMessage:
    text: str
    is_final: bool = True


@dataclass(frozen=True)
class UserTextMessage:
    """Conversation mode: words the user typed instead of speaking (a whole turn)."""

    text: str


@dataclass(frozen=True)
class ControlMessage:
    command: Command


@dataclass(frozen=True)
class ConfigMessage:
    """Only the settings the client gave; ``None`` means "not given"."""

    voice: str | None = None
    mode: str | None = None
    input_sample_rate: int | None = None
    output_format: str | None = None
    language: str | None = None
    reply: str | None = None

    def given(self) -> dict[str, str | int]:
        """The settings that were given, by wire field name."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class AudioInput:
    """Microphone audio, PCM16LE mono, from a binary frame or an ``audio`` message."""

    pcm: bytes
    sample_rate: int


@dataclass(frozen=True)
class PlaybackMessage:
    utterance_id: int
    played_ms: float


ClientMessage = (TextMessage | UserTextMessage | ControlMessage | ConfigMessage | AudioInput
                 | PlaybackMessage)


class _Refused(Exception):
    """Internal: carries a ProtocolError out of the field checks."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = ProtocolError(code, message)


# -- parsing -------------------------------------------------------------------------


def parse_client_message(
    raw: str | bytes, limits: ProtocolLimits, input_sample_rate: int
) -> ClientMessage | ProtocolError:
    """Parse one WebSocket frame from a client: ``str`` is a text frame (JSON),
    ``bytes`` a binary frame (raw PCM16LE mono at ``input_sample_rate``)."""
    try:
        if isinstance(raw, bytes | bytearray | memoryview):
            data = bytes(raw)
            _check_size(len(data), limits)
            return AudioInput(_check_pcm(data), input_sample_rate)
        # A character is at least one byte: skip encoding what is surely too large.
        _check_size(len(raw), limits)
        _check_size(len(raw.encode("utf-8", "surrogatepass")), limits)
        return _parse_json(raw, limits, input_sample_rate)
    except _Refused as refused:
        return refused.error


def _check_size(size: int, limits: ProtocolLimits) -> None:
    if size > limits.max_message_bytes:
        raise _Refused(
            MESSAGE_TOO_LARGE,
            f"message of {size} bytes is larger than {limits.max_message_bytes}",
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(raw: str, limits: ProtocolLimits, input_sample_rate: int) -> ClientMessage:
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise _Refused(INVALID_MESSAGE, f"not valid JSON: {_short(str(exc))}") from None
    if not isinstance(obj, dict):
        raise _Refused(INVALID_MESSAGE, "a message must be a JSON object")
    kind = obj.get("type")
    if kind is None:
        raise _Refused(INVALID_MESSAGE, "missing field 'type'")
    if not isinstance(kind, str):
        raise _Refused(INVALID_MESSAGE, "field 'type' must be a string")
    if kind == "text":
        return _parse_text(obj, limits)
    if kind == "user_text":
        return UserTextMessage(_parse_text(obj, limits).text)
    if kind == "control":
        command = _field(obj, "command", str, required=True)
        if command not in CONTROL_COMMANDS:
            raise _Refused(INVALID_MESSAGE, f"unknown command {_short(repr(command))}")
        return ControlMessage(Command(command))
    if kind == "config":
        return _parse_config(obj)
    if kind == "audio":
        return _parse_audio(obj, input_sample_rate)
    if kind == "playback":
        return _parse_playback(obj)
    raise _Refused(INVALID_MESSAGE, f"unknown message type {_short(repr(kind))}")


def _parse_text(obj: dict[str, Any], limits: ProtocolLimits) -> TextMessage:
    text = _field(obj, "text", str, required=True)
    if not text:
        raise _Refused(INVALID_MESSAGE, "field 'text' must not be empty")
    if len(text) > limits.max_text_chars:
        raise _Refused(
            TEXT_TOO_LONG,
            f"text of {len(text)} characters is longer than {limits.max_text_chars}",
        )
    is_final = _field(obj, "is_final", bool)
    return TextMessage(text, True if is_final is None else is_final)


def _parse_config(obj: dict[str, Any]) -> ConfigMessage:
    mode = _field(obj, "mode", str)
    if mode is not None and mode not in MODES:
        raise _Refused(INVALID_CONFIG, f"mode must be one of {sorted(MODES)}")
    output_format = _field(obj, "output_format", str)
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise _Refused(INVALID_CONFIG, f"output_format must be one of {sorted(OUTPUT_FORMATS)}")
    rate = _field(obj, "input_sample_rate", int)
    if rate is not None and not MIN_INPUT_SAMPLE_RATE <= rate <= MAX_INPUT_SAMPLE_RATE:
        raise _Refused(
            INVALID_CONFIG,
            f"input_sample_rate must be {MIN_INPUT_SAMPLE_RATE}..{MAX_INPUT_SAMPLE_RATE}",
        )
    names: dict[str, str | None] = {}
    for name in ("voice", "language", "reply"):
        value = _field(obj, name, str)
        if value is not None and not value.strip():
            raise _Refused(INVALID_CONFIG, f"{name} must not be empty")
        names[name] = value
    return ConfigMessage(
        voice=names["voice"],
        mode=mode,
        input_sample_rate=rate,
        output_format=output_format,
        language=names["language"],
        reply=names["reply"],
    )


def _parse_audio(obj: dict[str, Any], input_sample_rate: int) -> AudioInput:
    encoded = _field(obj, "pcm", str, required=True)
    rate = _field(obj, "sample_rate", int)
    if rate is not None and rate != input_sample_rate:
        raise _Refused(
            INVALID_AUDIO,
            f"sample_rate {rate} is not the session's input_sample_rate {input_sample_rate}",
        )
    try:
        pcm = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Refused(INVALID_AUDIO, "field 'pcm' is not valid base64") from None
    return AudioInput(_check_pcm(pcm), input_sample_rate)


def _parse_playback(obj: dict[str, Any]) -> PlaybackMessage:
    utterance_id = _field(obj, "utterance_id", int, required=True)
    if utterance_id < 1:
        raise _Refused(INVALID_MESSAGE, "utterance_id must be >= 1")
    try:
        played = float(_field(obj, "played_ms", float, required=True))
    except OverflowError:  # an integer too large for a float
        played = math.inf
    if not math.isfinite(played) or played < 0:
        raise _Refused(INVALID_MESSAGE, "played_ms must be a finite number >= 0")
    return PlaybackMessage(utterance_id, played)


def _check_pcm(pcm: bytes) -> bytes:
    if not pcm:
        raise _Refused(INVALID_AUDIO, "empty audio")
    if len(pcm) % 2:
        raise _Refused(INVALID_AUDIO, f"PCM16 audio of odd length {len(pcm)}")
    return pcm


_TYPE_NAMES: Final = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}


def _field(obj: dict[str, Any], name: str, kind: type[Any], required: bool = False) -> Any:
    """``obj[name]`` checked to be of JSON type ``kind`` (``float``: any number);
    ``None`` when absent and not required. Strings must be valid Unicode."""
    if name not in obj:
        if required:
            raise _Refused(INVALID_MESSAGE, f"missing field {name!r}")
        return None
    value = obj[name]
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if ok and isinstance(value, str):
        try:
            value.encode("utf-8")  # "\ud800" parses, but is no text
        except UnicodeEncodeError:
            ok = False
    if not ok:
        raise _Refused(INVALID_MESSAGE, f"field {name!r} must be {_TYPE_NAMES[kind]}")
    return value


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- server -> client ----------------------------------------------------------------


def encode_json(message: Mapping[str, object]) -> str:
    """Compact JSON for a text frame; NaN and infinities are refused (ValueError)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def audio_message(pcm: bytes, sequence: int, utterance_id: int) -> dict[str, Any]:
    """WIRE §1.1 ``audio`` plus the ``utterance_id`` extension field."""
    _check_frame(pcm, sequence, utterance_id)
    return {
        "type": "audio",
        "pcm": base64.b64encode(pcm).decode("ascii"),
        "sample_rate": OUTPUT_SAMPLE_RATE,
        "frame_ms": FRAME_MS,
        "sequence": sequence,
        "utterance_id": utterance_id,
    }


@dataclass(frozen=True)
class BinaryFrame:
    """One decoded binary audio frame (see ``docs/protocol.md``)."""

    utterance_id: int
    sequence: int
    flags: int
    pcm: bytes

    @property
    def last(self) -> bool:
        return bool(self.flags & FLAG_LAST)


def encode_binary_frame(pcm: bytes, sequence: int, utterance_id: int, flags: int = 0) -> bytes:
    """12-byte header then the 1920 PCM bytes."""
    _check_frame(pcm, sequence, utterance_id)
    if sequence > _U32_MAX or utterance_id > _U32_MAX:
        raise ValueError("sequence and utterance_id must fit in 32 bits")
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"unknown flag bits {flags:#x}")
    return _HEADER.pack(BINARY_MAGIC, BINARY_VERSION, flags, utterance_id, sequence) + pcm


def decode_binary_frame(data: bytes) -> BinaryFrame:
    """Parse a binary audio frame; ``ValueError`` if it is not one. Reserved flag bits
    are kept, not refused, so that newer servers work with older clients."""
    if len(data) != BINARY_FRAME_BYTES:
        raise ValueError(f"binary frame must be {BINARY_FRAME_BYTES} bytes, got {len(data)}")
    magic, version, flags, utterance_id, sequence = _HEADER.unpack_from(data)
    if magic != BINARY_MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    if version != BINARY_VERSION:
        raise ValueError(f"unsupported binary frame version {version}")
    if utterance_id < 1 or sequence < 1:
        raise ValueError("utterance_id and sequence must be >= 1")
    return BinaryFrame(utterance_id, sequence, flags, bytes(data[BINARY_HEADER_BYTES:]))


def _check_frame(pcm: bytes, sequence: int, utterance_id: int) -> None:
    if len(pcm) != FRAME_BYTES:
        raise ValueError(f"an audio frame is {FRAME_BYTES} bytes, got {len(pcm)}")
    if sequence < 1 or utterance_id < 1:
        raise ValueError("sequence and utterance_id must be >= 1")
