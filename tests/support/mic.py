"""A microphone client for conversation-mode tests: feeds an input timeline in real
time (20 ms PCM16 binary frames, paced by the clock, not by fixed sleeps) while a
receiver records every server message with its arrival time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from duplexvoice.wire.protocol import decode_binary_frame
from tests.support.aio import first_match
from tests.support.speech import RATE, FloatAudio, pcm16

FRAME_S = 0.02


@dataclass
class Recorded:
    at: float  # time.monotonic() of arrival
    message: dict[str, Any]


@dataclass
class MicClient:
    ws: aiohttp.ClientWebSocketResponse
    log: list[Recorded] = field(default_factory=list)
    started: float = 0.0  # monotonic time of the timeline's first sample
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    async def start(self, *, output_format: str = "binary", **config: Any) -> None:
        first = await self.ws.receive_json(timeout=10)
        assert first["type"] == "session_start", first
        await self.ws.send_json({"type": "config", "mode": "conversation",
                                 "input_sample_rate": RATE, "output_format": output_format,
                                 **config})
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                frame = decode_binary_frame(msg.data)
                item: dict[str, Any] = {"type": "binary", "sequence": frame.sequence,
                                        "utterance_id": frame.utterance_id}
            elif msg.type == aiohttp.WSMsgType.TEXT:
                item = json.loads(msg.data)
            else:
                break
            self.log.append(Recorded(time.monotonic(), item))
            self._changed.set()

    async def stop(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def feed(self, audio: FloatAudio, *, then_silence_s: float = 0.0,
                   rate: int = RATE) -> float:
        """Send ``audio`` (at ``rate``, the session's input_sample_rate) then silence,
        in real time. Returns the monotonic time the timeline started (sample 0)."""
        track = np.concatenate([audio, np.zeros(round(then_silence_s * rate), np.float32)])
        step = round(FRAME_S * rate)
        self.started = start = time.monotonic()
        for i, at in enumerate(range(0, len(track), step)):
            due = start + i * FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing to the clock: this is the microphone
            await self.ws.send_bytes(pcm16(track[at:at + step]))
        return start

    async def until(self, predicate: Any, timeout: float = 30.0) -> Recorded:
        """The first recorded message (from the start) satisfying ``predicate``."""
        return await first_match(self.log, self._changed, predicate, timeout)

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [r.message for r in self.log if r.message["type"] == kind]

    def frames(self, utterance_id: int) -> list[Recorded]:
        return [r for r in self.log
                if r.message["type"] == "binary" and r.message["utterance_id"] == utterance_id]


@contextlib.asynccontextmanager
async def connected_mic(ws_url: str, **config: Any) -> AsyncIterator[MicClient]:
    """A :class:`MicClient` on a new WebSocket session in conversation mode, closed on
    exit (``config``: more fields of its ``config`` message)."""
    async with aiohttp.ClientSession() as http:
        client = MicClient(await http.ws_connect(ws_url))
        await client.start(**config)
        try:
            yield client
        finally:
            await client.stop()
