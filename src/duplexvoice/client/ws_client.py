"""WebSocket client of the orchestrator (``docs/protocol.md``): ``say`` speaks one text
and collects its audio. The message handling (``AudioCollector``) is pure code, tested
without a server. The console session and playback live in :mod:`.console`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from duplexvoice.orchestrator.protocol import (
    FRAME_BYTES,
    OUTPUT_SAMPLE_RATE,
    decode_binary_frame,
    encode_json,
)

DEFAULT_URL: Final = "ws://127.0.0.1:8080/ws"

# Errors that refuse the text itself: no utterance will follow, stop waiting.
TEXT_REFUSED_CODES: Final = frozenset(
    {"INVALID_MESSAGE", "TEXT_TOO_LONG", "MESSAGE_TOO_LARGE", "QUEUE_FULL"}
)
# Errors after which the session cannot speak (a ``session_end`` follows).
FATAL_CODES: Final = frozenset({"WORKER_UNAVAILABLE", "CONNECTION_ERROR", "INTERNAL_ERROR"})


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

    @property
    def audio_ms(self) -> float:
        return len(self.pcm) / 2 / OUTPUT_SAMPLE_RATE * 1000

    @property
    def ok(self) -> bool:
        """Completed with audio, and no error (e.g. a refused voice) on the way."""
        return self.end_reason == "completed" and self.frames > 0 and not self.errors

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

    Frames of an utterance that already ended are dropped (stale audio fence)."""

    def __init__(self, sent_at: float | None = None) -> None:
        self.sent_at = sent_at
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
        if kind == "utterance_end":
            uid = message.get("utterance_id")
            if isinstance(uid, int):
                self._ended.add(uid)
            if self.utterance_id is None or uid == self.utterance_id:
                self.utterance_id = uid if isinstance(uid, int) else self.utterance_id
                reason = message.get("reason")
                self.end_reason = reason if isinstance(reason, str) else "unknown"
                self._finish(now)
        elif kind == "error":
            self.errors.append(dict(message))
            code = message.get("code")
            if code in FATAL_CODES or (code in TEXT_REFUSED_CODES and self.utterance_id is None
                                       and not self.chunks):
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


# -- say -----------------------------------------------------------------------------


async def say(url: str, text: str, *, voice: str = "", api_key: str = "",
              binary: bool = True, timeout_s: float = 30,
              on_audio: Callable[[bytes], None] | None = None) -> SayResult:
    """Speak ``text`` on a new session and collect its audio until its ``utterance_end``
    (or a fatal error, the session's end, or ``timeout_s``). Connection failures raise
    ``aiohttp.ClientError``; a timeout is reported in ``errors`` (``CLIENT_TIMEOUT``)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    collector = AudioCollector()
    async with aiohttp.ClientSession() as http, http.ws_connect(
        url, headers=auth_headers(api_key), timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        max_msg_size=0,
    ) as ws:

        async def receive() -> aiohttp.WSMessage | None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                return await asyncio.wait_for(ws.receive(), remaining)
            except TimeoutError:
                return None

        # Wait for session_start (anything before it is kept: errors, session_end).
        while True:
            msg = await receive()
            if msg is None:
                collector.give_up(time.perf_counter(), "no session_start before the timeout")
                return collector.result()
            if msg.type != aiohttp.WSMsgType.TEXT:
                collector.session_end = {"type": "closed", "close_code": ws.close_code}
                collector.give_up(time.perf_counter(), "connection closed before session_start")
                return collector.result()
            message = load_message(msg.data)
            if message.get("type") == "session_start":
                break
            collector.on_json(message, time.perf_counter())
            if collector.done:
                return collector.result()

        if (config := config_message(voice, binary)) is not None:
            await ws.send_str(encode_json(config))
        await ws.send_str(encode_json({"type": "text", "text": text}))
        collector.sent_at = time.perf_counter()

        while not collector.done:
            msg = await receive()
            now = time.perf_counter()
            if msg is None:
                collector.give_up(now, f"no utterance_end within {timeout_s:g} s")
                break
            frame: AudioFrame | None = None
            if msg.type == aiohttp.WSMsgType.BINARY:
                frame = collector.on_binary(msg.data, now)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                frame = collector.on_json(load_message(msg.data), now)
            else:  # closed or failed
                if collector.session_end is None:
                    collector.session_end = {"type": "closed", "close_code": ws.close_code}
                collector.give_up(now, "connection closed before utterance_end")
                break
            if frame is not None and on_audio is not None:
                on_audio(frame.pcm)
    return collector.result()


def load_message(data: str) -> dict[str, Any]:
    import json

    try:
        obj = json.loads(data)
    except ValueError:
        return {"type": "client_bad_json", "data": data[:200]}
    return obj if isinstance(obj, dict) else {"type": "client_bad_json", "data": data[:200]}


__all__ = [
    "DEFAULT_URL", "AudioCollector", "AudioFrame", "SayResult", "SequenceCheck",
    "auth_headers", "config_message", "load_message", "parse_audio", "say",
]
