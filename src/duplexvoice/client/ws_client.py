"""WebSocket client of the orchestrator (``docs/protocol.md``): ``say`` speaks one text
and collects its audio; ``interactive`` is a small line-driven console session.

Playback goes through the sound card when one seems present (``find_player``), else
the audio is written to WAV files. The message handling (``AudioCollector``) is pure
code, tested without a server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

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


# -- playback ------------------------------------------------------------------------


def _has_alsa_device(dev_snd: Path) -> bool:
    if not dev_snd.is_dir():
        return False
    try:
        return any(dev_snd.iterdir())
    except OSError:
        return False


def _has_pulse(env: Mapping[str, str]) -> bool:
    if env.get("PULSE_SERVER"):
        return True
    runtime = env.get("XDG_RUNTIME_DIR")
    return runtime is not None and runtime != "" and Path(runtime, "pulse", "native").exists()


def find_player(env: Mapping[str, str] | None = None,
                dev_snd: Path = Path("/dev/snd")) -> list[str] | None:
    """A command that plays raw PCM16LE mono 48 kHz from stdin, or None when no player
    is installed or no sound device seems present (then audio goes to WAV files).
    ``DUPLEXVOICE_NO_PLAYER=1`` forces None."""
    env = os.environ if env is None else env
    if env.get("DUPLEXVOICE_NO_PLAYER"):
        return None
    path = env.get("PATH", os.defpath)
    alsa = _has_alsa_device(dev_snd)
    pulse = _has_pulse(env)
    rate = str(OUTPUT_SAMPLE_RATE)
    if alsa and (exe := shutil.which("aplay", path=path)):
        return [exe, "-q", "-t", "raw", "-f", "S16_LE", "-r", rate, "-c", "1"]
    if pulse and (exe := shutil.which("paplay", path=path)):
        return [exe, "--raw", f"--rate={rate}", "--channels=1", "--format=s16le"]
    if (alsa or pulse) and (exe := shutil.which("ffplay", path=path)):
        return [exe, "-nodisp", "-autoexit", "-loglevel", "quiet",
                "-f", "s16le", "-ar", rate, "-ac", "1", "-i", "-"]
    return None


class Player:
    """A player subprocess fed with PCM as it arrives (writes never block the loop)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Player:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return self

    def write(self, pcm: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        proc.stdin.write(pcm)

    async def close(self, wait_s: float = 30.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), wait_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


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
            message = _loads(msg.data)
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
                frame = collector.on_json(_loads(msg.data), now)
            else:  # closed or failed
                if collector.session_end is None:
                    collector.session_end = {"type": "closed", "close_code": ws.close_code}
                collector.give_up(now, "connection closed before utterance_end")
                break
            if frame is not None and on_audio is not None:
                on_audio(frame.pcm)
    return collector.result()


def _loads(data: str) -> dict[str, Any]:
    import json

    try:
        obj = json.loads(data)
    except ValueError:
        return {"type": "client_bad_json", "data": data[:200]}
    return obj if isinstance(obj, dict) else {"type": "client_bad_json", "data": data[:200]}


# -- interactive ---------------------------------------------------------------------


HELP: Final = (
    "Type a line to speak it. Commands: /pause /resume /stop /voice ID /quit"
)


def parse_command(line: str) -> dict[str, Any] | Literal["quit"] | None:
    """The message a typed line stands for; "quit"; or None for nothing to send."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("/"):
        word, _, rest = line.partition(" ")
        word = word.lower()
        if word in ("/quit", "/exit", "/q"):
            return "quit"
        if word in ("/pause", "/resume", "/stop"):
            return {"type": "control", "command": word[1:].upper()}
        if word == "/voice" and rest.strip():
            return {"type": "config", "voice": rest.strip()}
        raise ValueError(f"unknown command {line!r}. {HELP}")
    return {"type": "text", "text": line}


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines of stdin from a daemon thread (None at EOF); it never blocks exit."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="stdin-reader", daemon=True).start()
    return queue


async def interactive(url: str = DEFAULT_URL, *, voice: str = "", api_key: str = "",
                      out_dir: Path | None = None,
                      player: list[str] | Literal["auto"] | None = "auto") -> int:
    """A console session: typed lines are spoken; audio is played as it arrives
    (``player``; "auto": ``find_player()``) or written to ``utterance-<id>.wav`` in
    ``out_dir`` (default: the current directory). Returns an exit code."""
    import aiohttp

    from duplexvoice.client.worker_client import write_wav

    command = find_player() if player == "auto" else player
    out_dir = Path.cwd() if out_dir is None else out_dir
    loop = asyncio.get_running_loop()
    sink: Player | None = await Player(command).start() if command else None
    buffers: dict[int | None, list[bytes]] = {}
    ended: set[int] = set()
    seq = SequenceCheck()
    sent_at: list[float] = []  # when texts were sent, for first-audio latency
    first_at: dict[int | None, float] = {}

    def emit(line: str) -> None:
        print(line, flush=True)

    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(
            url, headers=auth_headers(api_key), max_msg_size=0
        ) as ws:
            if (config := config_message(voice, binary=True)) is not None:
                await ws.send_str(encode_json(config))
            emit(f"connected to {url}; " + (f"playing with {Path(command[0]).name}"
                 if command else f"writing utterance-<id>.wav files to {out_dir}"))
            emit(HELP)

            async def reader() -> None:
                lines = _stdin_lines(loop)
                while (line := await lines.get()) is not None:
                    try:
                        cmd = parse_command(line)
                    except ValueError as exc:
                        emit(str(exc))
                        continue
                    if cmd == "quit":
                        break
                    if cmd is not None:
                        if cmd["type"] == "text":
                            sent_at.append(time.perf_counter())
                        await ws.send_str(encode_json(cmd))
                await ws.close()

            def on_frame(frame: AudioFrame) -> None:
                seq.add(frame.sequence)
                if frame.utterance_id is not None and frame.utterance_id in ended:
                    return
                if frame.utterance_id not in first_at:
                    first_at[frame.utterance_id] = time.perf_counter()
                if sink is not None:
                    sink.write(frame.pcm)
                else:
                    buffers.setdefault(frame.utterance_id, []).append(frame.pcm)

            def on_end(message: Mapping[str, Any]) -> None:
                uid = message.get("utterance_id")
                if isinstance(uid, int):
                    ended.add(uid)
                key = uid if isinstance(uid, int) else None
                pcm = b"".join(buffers.pop(key, []))
                started = sent_at.pop(0) if sent_at else None
                first = first_at.pop(key, None)
                latency = (f", first audio after {(first - started) * 1000:.0f} ms"
                           if first is not None and started is not None else "")
                where = ""
                if sink is None and pcm:
                    path = out_dir / f"utterance-{uid}.wav"
                    write_wav(path, pcm)
                    where = f", wrote {path} ({len(pcm) / 2 / OUTPUT_SAMPLE_RATE:.2f} s)"
                emit(f"[utterance {uid} {message.get('reason')}: "
                     f"{message.get('frames')} frames{latency}{where}]")

            read_task = asyncio.create_task(reader())
            try:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        try:
                            on_frame(parse_audio(msg.data))
                        except ValueError as exc:
                            emit(f"[bad audio frame: {exc}]")
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    message = _loads(msg.data)
                    kind = message.get("type")
                    if kind == "audio":
                        try:
                            on_frame(parse_audio(message))
                        except ValueError as exc:
                            emit(f"[bad audio message: {exc}]")
                    elif kind == "utterance_end":
                        on_end(message)
                    elif kind == "error":
                        emit(f"[error {message.get('code')}: {message.get('message')}]")
                    elif kind == "session_start":
                        emit(f"[session {message.get('session_id')}]")
                    elif kind == "session_end":
                        emit(f"[session ended: {message.get('reason')}]")
                    elif kind in ("interrupt", "pause", "resume"):
                        emit(f"[{kind} utterance {message.get('utterance_id')}]")
            finally:
                read_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read_task
    except aiohttp.ClientError as exc:
        emit(f"cannot talk to {url}: {exc}")
        return 1
    finally:
        if sink is not None:
            await sink.close()
    if not seq.ok:
        emit(f"[warning: audio sequence gaps {seq.gaps[:5]}]")
    return 0


__all__ = [
    "DEFAULT_URL", "AudioCollector", "AudioFrame", "Player", "SayResult",
    "SequenceCheck", "auth_headers", "config_message", "find_player", "interactive",
    "parse_audio", "parse_command", "say",
]
