"""A small WebRTC client of the orchestrator (aiortc), for tests and benchmarks.

It does what the web page does: one data channel labelled ``events`` and one audio
transceiver (sendrecv) carrying a microphone, an offer POSTed to ``/webrtc/offer``,
the answer applied. The microphone is a paced track (20 ms a frame, real time) that
plays what :meth:`RtcClient.feed` queues and silence otherwise. Every JSON event is
recorded with its arrival time; the received audio (the session's voice, decoded
from Opus) is recorded frame by frame with its arrival time.

    client = await connect("http://127.0.0.1:8080", api_key=None)
    await client.until(lambda m: m["type"] == "session_start")
    await client.send_json({"type": "text", "text": "Hello."})
    ...
    await client.close()
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from duplexvoice.orchestrator.transports.rtc_audio import frame_to_pcm16_mono
from duplexvoice.orchestrator.transports.rtc_ice import (
    HOST_ADDRESSES,
    LOOPBACK,
    add_loopback_candidate,
    rtc_configuration,
)
from tests.support.aio import first_match

RATE = 48_000
FRAME_SAMPLES = 960
FRAME_S = 0.02


class OfferRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"offer refused: HTTP {status} {body[:200]!r}")
        self.status = status
        self.body = body


@dataclass
class Event:
    at: float  # time.monotonic() of arrival
    message: dict[str, Any]


@dataclass
class Heard:
    at: float  # time.monotonic() of arrival
    pcm: bytes  # PCM16 mono at ``rate``
    rate: int


class MicTrack(MediaStreamTrack):
    """A microphone: queued PCM16 mono 48 kHz, 20 ms a frame in real time; silence
    when nothing is queued."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._frames: deque[bytes] = deque()
        self._empty = asyncio.Event()
        self._empty.set()
        self._start: float | None = None
        self._pts = 0
        self.first_sent_at: float | None = None  # when the first queued frame went out

    def feed(self, pcm: bytes) -> None:
        step = FRAME_SAMPLES * 2
        pcm = pcm + bytes(-len(pcm) % step)
        for at in range(0, len(pcm), step):
            self._frames.append(pcm[at:at + step])
        if self._frames:
            self._empty.clear()

    async def drained(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self._empty.wait(), timeout)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME_SAMPLES
            delay = self._start + self._pts / RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing to the clock: this is the microphone
        if self._frames:
            pcm = self._frames.popleft()
            if self.first_sent_at is None:
                self.first_sent_at = time.monotonic()
            if not self._frames:
                self._empty.set()
        else:
            pcm = bytes(FRAME_SAMPLES * 2)
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, "<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


@dataclass
class RtcClient:
    pc: RTCPeerConnection
    channel: RTCDataChannel
    mic: MicTrack
    session_id: str = ""
    log: list[Event] = field(default_factory=list)
    heard: list[Heard] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # -- sending ----------------------------------------------------------------------

    def send_json(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    def send_raw(self, data: str | bytes) -> None:
        self.channel.send(data)

    def feed(self, pcm: bytes) -> None:
        """Queue PCM16 mono 48 kHz on the microphone (played in real time)."""
        self.mic.feed(pcm)

    # -- receiving --------------------------------------------------------------------

    def _on_message(self, data: str | bytes) -> None:
        message = json.loads(data) if isinstance(data, str) else {"type": "_binary"}
        self.log.append(Event(time.monotonic(), message))
        self._changed.set()

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            self.heard.append(Heard(time.monotonic(), frame_to_pcm16_mono(frame),
                                    int(frame.sample_rate)))

    async def until(self, predicate: Any, timeout: float = 20.0) -> Event:
        """The first event (from the start) satisfying ``predicate``."""
        return await first_match(self.log, self._changed, predicate, timeout)

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [e.message for e in self.log if e.message.get("type") == kind]

    def audio(self, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
        """Received samples (int16) of frames that arrived in [since, until]."""
        parts = [np.frombuffer(h.pcm, "<i2") for h in self.heard if since <= h.at <= until]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def rms(self, since: float = 0.0, until: float = float("inf")) -> float:
        """RMS of the received audio in [since, until], full scale = 1.0."""
        samples = self.audio(since, until).astype(np.float64) / 32768.0
        return float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0

    def loud_frames(self, threshold: float = 0.01, since: float = 0.0) -> list[Heard]:
        out = []
        for h in self.heard:
            if h.at < since:
                continue
            s = np.frombuffer(h.pcm, "<i2").astype(np.float64) / 32768.0
            if np.sqrt(np.mean(s ** 2)) > threshold:
                out.append(h)
        return out

    # -- leaving ----------------------------------------------------------------------

    async def close(self) -> None:
        """Leave properly: the data channel and the connection closed."""
        for task in self._tasks:
            task.cancel()
        self.mic.stop()
        await self.pc.close()

    async def vanish(self) -> None:
        """Leave without a word: the ICE sockets closed, nothing sent (a crashed page,
        a lost network). The server must notice on its own."""
        for transceiver in self.pc.getTransceivers():
            ice = transceiver.sender.transport.transport
            for protocol in ice.iceGatherer._connection._protocols:
                protocol.transport.close()
        await self.close()


def offer_url(url: str) -> str:
    url = url.rstrip("/")
    if url.startswith("ws"):
        url = "http" + url[2:]
    if url.endswith("/ws"):
        url = url[:-3]
    return url if url.endswith("/webrtc/offer") else url + "/webrtc/offer"


async def connect(url: str, api_key: str | None = None, *, loopback_only: bool = False,
                  timeout: float = 15.0) -> RtcClient:
    """Connect as the page does; ``url``: the orchestrator's base URL (http or ws) or
    its offer URL. Raises :class:`OfferRefused` on a non-200 answer. With
    ``loopback_only`` this client offers 127.0.0.1 alone as its host candidate."""
    add_loopback_candidate()
    pc = RTCPeerConnection(rtc_configuration())
    mic = MicTrack()
    channel = pc.createDataChannel("events")
    pc.addTransceiver(mic, direction="sendrecv")
    client = RtcClient(pc, channel, mic)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    channel.on("message", client._on_message)
    channel.on("close", client.closed.set)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            client._tasks.append(asyncio.create_task(client._listen(track)))

    try:
        token = HOST_ADDRESSES.set((LOOPBACK,) if loopback_only else None)
        try:
            await pc.setLocalDescription(await pc.createOffer())  # gathers candidates
        finally:
            HOST_ADDRESSES.reset(token)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with aiohttp.ClientSession() as http, http.post(
                offer_url(url), json=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.text()
            if response.status != 200:
                raise OfferRefused(response.status, text)
        answer = json.loads(text)
        client.session_id = answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.wait_for(opened.wait(), timeout)
    except BaseException:
        await pc.close()
        raise
    return client
