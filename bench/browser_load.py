"""Orchestrator CPU per session, WebRTC against WebSocket (part of ``bench/browser.py``).

Load clients run in this (the benchmark's) process; the orchestrator is its own
process, and its CPU time (user + system, from ``/proc/<pid>/stat``) is read over a
window while ``n`` sessions are held. Each session does what a talking user's does
to the orchestrator, with no speech recognition in the way: it is in ``tts`` mode,
streams its microphone (silence, in real time: the WebRTC track is decoded from
Opus whatever the mode) and has the system speak one long text after another (Opus
encoded per WebRTC session). The windows are interleaved: idle, WebSocket x n,
WebRTC x n, idle, ... The cost of one session is (window CPU - idle CPU) / n.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

from duplexvoice.wire.protocol import decode_binary_frame

TEXT = ("The quick brown fox jumps over the lazy dog, and then it runs far away into the "
        "woods, where it waits until the evening comes and the stars are out again.")
_TICK = 0.02


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _SilentMic(MediaStreamTrack):
    """A microphone track of silence, paced in real time (48 kHz, 20 ms frames)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / 48000
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16",
                                        layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, 48000)
        self._pts += 960
        return frame


class _Speaker:
    """Asks for the next text each time an utterance ends, so the system never stops."""

    def __init__(self) -> None:
        self.utterances = 0

    def answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if message.get("type") not in ("session_start", "utterance_end"):
            return None
        self.utterances += message.get("type") == "utterance_end"
        return {"type": "text", "text": TEXT}


async def ws_session(http: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> int:
    async with http.ws_connect(base.replace("http", "ws", 1) + "/ws") as ws:
        speaker = _Speaker()
        frames = 0

        async def mic() -> None:
            start, silence = time.monotonic(), bytes(640)
            i = 0
            while not stop.is_set():
                i += 1
                await asyncio.sleep(max(0.0, start + i * _TICK - time.monotonic()))
                await ws.send_bytes(silence)

        first = await ws.receive_json(timeout=10)
        await ws.send_json({"type": "config", "output_format": "binary"})
        await ws.send_json(speaker.answer(first))
        feeder = asyncio.create_task(mic())
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    msg = await ws.receive(timeout=0.5)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        decode_binary_frame(msg.data)
                        frames += 1
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        reply = speaker.answer(msg.json())
                        if reply is not None:
                            await ws.send_json(reply)
                    else:
                        break
        finally:
            feeder.cancel()
        return frames


async def rtc_session(http: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> int:
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("events")
    pc.addTrack(_SilentMic())
    frames = 0
    readers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            nonlocal frames
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()  # decoded from Opus, as a page would
                    frames += 1
        readers.append(asyncio.create_task(read()))

    speaker = _Speaker()

    @channel.on("message")
    def on_message(raw: object) -> None:
        reply = speaker.answer(json.loads(raw)) if isinstance(raw, str) else None
        if reply is not None:
            channel.send(json.dumps(reply))

    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(base + "/webrtc/offer", json={
                "sdp": pc.localDescription.sdp, "type": "offer"}) as resp:
            resp.raise_for_status()
            answer = await resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await stop.wait()
    finally:
        for reader in readers:
            reader.cancel()
        await pc.close()
    return frames


async def measure_cpu(base: str, pid: int, *, sessions: int, window_s: float, rounds: int,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved windows of idle, WebSocket and WebRTC load; CPU % of one core."""
    kinds = {"websocket": ws_session, "webrtc": rtc_session}
    samples: dict[str, list[float]] = {"idle": [], "websocket": [], "webrtc": []}
    async with aiohttp.ClientSession() as http:
        for r in range(rounds):
            for kind in ("idle", "websocket", "webrtc"):
                stop = asyncio.Event()
                tasks = [] if kind == "idle" else [
                    asyncio.create_task(kinds[kind](http, base, stop)) for _ in range(sessions)]
                await asyncio.sleep(3.0)  # settle: connected, speaking
                before, t0 = cpu_seconds(pid), time.monotonic()
                await asyncio.sleep(window_s)
                used = cpu_seconds(pid) - before
                percent = 100.0 * used / (time.monotonic() - t0)
                stop.set()
                frames = [await t for t in tasks]
                samples[kind].append(percent)
                log(f"  round {r + 1}/{rounds} {kind:9s} x{0 if kind == 'idle' else sessions}: "
                    f"orchestrator {percent:5.1f} % of a core, audio frames {sum(frames)}")
                await asyncio.sleep(1.0)  # sessions closed before the next window
    idle = float(np.median(samples["idle"]))
    out: dict[str, Any] = {"sessions": sessions, "window_s": window_s, "rounds": rounds,
                           "idle_percent": idle, "samples": samples}
    for kind in ("websocket", "webrtc"):
        per = max(1e-9, (float(np.median(samples[kind])) - idle) / sessions)
        out[kind] = {"percent_per_session": per, "sessions_per_core": 100.0 / per}
    out["webrtc_over_websocket"] = (out["webrtc"]["percent_per_session"]
                                    / out["websocket"]["percent_per_session"])
    return out
