"""The console side of the WebSocket client: ``interactive`` (typed lines are spoken,
``/pause /resume /stop /voice ID /quit`` control it) and playback, through the sound
card when one seems present (``find_player``), else into WAV files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from duplexvoice.client.worker_client import write_wav
from duplexvoice.client.ws_client import (
    DEFAULT_URL,
    AudioFrame,
    SequenceCheck,
    auth_headers,
    config_message,
    load_message,
    parse_audio,
)
from duplexvoice.orchestrator.protocol import OUTPUT_SAMPLE_RATE, encode_json

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
                    message = load_message(msg.data)
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

