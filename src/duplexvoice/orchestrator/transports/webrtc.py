"""The WebRTC transport (aiortc): one peer connection is one session.

Signalling is one HTTP request on the orchestrator's port: ``POST /webrtc/offer`` with
``{"sdp", "type": "offer"}``, answered ``{"sdp", "type": "answer", "session_id"}``
once aiortc has gathered its candidates (no trickle ICE). Access (API key, Origin)
and capacity are checked as for a WebSocket, before any SDP is read; a malformed
offer gets 400 with an ``INVALID_MESSAGE`` error object. ``docs/protocol.md``
("WebRTC transport") is the client's reference.

The peer carries what the WebSocket carries, translated, and decides nothing:

- the data channel (the page's, labelled ``events``) carries the protocol's JSON
  text messages both ways, through the same parser and rate limiter as the
  WebSocket's text frames. Binary messages and JSON ``audio`` messages are refused
  (``INVALID_MESSAGE``): audio goes on the media track;
- the page's microphone track is read (:mod:`.rtc_audio`), folded to PCM16 mono and
  handed to the driver as ``AudioInput`` at the track's rate (48 kHz with Opus),
  only while the session listens (conversation mode). In tts mode the track still
  flows: it is read and dropped, silently. The session's ``input_sample_rate``
  setting concerns audio sent as messages and has no effect here;
- the session's output (:mod:`..sessions.output`): its audio frames are queued on
  the outgoing track as they are (PCM), never sent on the data channel (the
  session's ``output_format`` setting has no effect here); its messages go on the
  channel as JSON. ``pause``/``resume``/``interrupt`` are applied to the track's
  queue on the way, by type (hold, rewind, fence).

A session starts (driver, ``orch.drivers``, ``sessions_*`` metrics) when the offer is
answered; its first messages wait (bounded) until the data channel opens. It ends,
and the peer connection is closed and freed, when: the data channel closes; the
connection state becomes ``failed`` or ``closed``; nothing at all has arrived from
the peer for ``silent_peer_s`` (aiortc has no ``disconnected`` state, and its ICE
consent checks take about 30 s to fail: the peer's RTP, RTCP and SCTP traffic,
counted on the transport, tells sooner); the data channel has not opened within
``open_timeout_s`` of the answer; or the driver ends the session itself (then the
data channel is closed gracefully first, so ``session_end`` gets through).

Loopback and ICE: :mod:`.rtc_ice`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiortc import (
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from duplexvoice.orchestrator.access import RateDecision, RateLimiter
from duplexvoice.orchestrator.sessions.driver import SessionDriver
from duplexvoice.orchestrator.sessions.output import OutputItem, SendAudio
from duplexvoice.orchestrator.transports import finish_session, refusal, start_session
from duplexvoice.orchestrator.transports.rtc_audio import (
    OutgoingAudioTrack,
    hand_on_at_once,
    read_pcm,
)
from duplexvoice.orchestrator.transports.rtc_ice import (
    add_loopback_candidate,
    rtc_configuration,
)
from duplexvoice.wire.messages import Error, ErrorCode, Interrupt, Pause, Resume
from duplexvoice.wire.protocol import (
    MAX_INPUT_SAMPLE_RATE,
    MIN_INPUT_SAMPLE_RATE,
    AudioInput,
    ProtocolError,
    encode_json,
    parse_client_message,
)

if TYPE_CHECKING:
    from duplexvoice.orchestrator.server import Orchestrator

log = logging.getLogger(__name__)

_RATE_STRIKES = 20  # as the WebSocket's
_HIGH_WATER = 64 * 1024  # bytes buffered on the data channel before the sender waits
_PENDING = 64  # messages held until the data channel opens
_AUDIO_ONLY = "audio goes on the media track, not on the data channel"
@dataclass(frozen=True)
class WebRtcOptions:
    open_timeout_s: float = 10.0  # the data channel must open this soon after the answer
    silent_peer_s: float = 10.0  # nothing received this long: the peer is gone
    liveness_poll_s: float = 1.0
    hold_rewind_ms: float = 40.0  # see rtc_audio: RTP + the browser's jitter buffer, LAN
    max_offer_bytes: int = 64 * 1024  # a browser's offer is a few kB
    output_frames: int = 50  # bound of the outgoing track's queue (1 s)


class _BadOffer(Exception):
    pass


def _invalid(message: str) -> web.Response:
    body = {"error": {"code": ErrorCode.INVALID_MESSAGE.value, "message": message}}
    return web.json_response(body, status=400)


class WebRtcTransport:
    """The ``/webrtc/offer`` handler and the registry of live peers."""

    def __init__(self, orch: Orchestrator, options: WebRtcOptions | None = None) -> None:
        self.orch = orch
        self.options = options or WebRtcOptions()
        self.peers: set[RtcPeer] = set()
        self._negotiating = 0  # offers being answered: they count against capacity

    async def offer(self, request: web.Request) -> web.Response:
        orch = self.orch
        refused = refusal(request, orch, "a WebRTC offer")
        if refused is not None:
            return refused
        if not self._has_room():
            orch.metrics.rejected_connections_total.inc()
            return web.Response(status=503)
        self._negotiating += 1
        try:
            sdp = await self._read_offer(request)
            peer = await self._answer(sdp)
        except _BadOffer as bad:
            return _invalid(str(bad))
        finally:
            self._negotiating -= 1
        if not orch.accepting:  # shutting down while we negotiated
            await peer.discard()
            return web.Response(status=503)
        peer.start()
        answer = peer.pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type,
                                  "session_id": peer.session_id})

    def _has_room(self) -> bool:
        orch = self.orch
        busy = len(orch.drivers) + self._negotiating
        return orch.accepting and busy < orch.config.max_sessions

    async def _read_offer(self, request: web.Request) -> str:
        limit = self.options.max_offer_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _BadOffer(f"offer larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > limit:
                raise _BadOffer(f"offer larger than {limit} bytes")
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            raise _BadOffer("the body is not JSON") from None
        if not isinstance(obj, dict):
            raise _BadOffer("the body must be a JSON object")
        if obj.get("type") != "offer":
            raise _BadOffer('field "type" must be "offer"')
        sdp = obj.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise _BadOffer('field "sdp" must be a non-empty string')
        return sdp

    async def _answer(self, sdp: str) -> RtcPeer:
        add_loopback_candidate()
        pc = RTCPeerConnection(rtc_configuration())
        peer = RtcPeer(self, pc, uuid.uuid4().hex)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                peer.attach_output()
                await pc.setLocalDescription(await pc.createAnswer())
            except _BadOffer:
                raise
            except Exception as exc:  # aiortc's SDP parser raises anything
                log.info("refused a WebRTC offer: %r", exc)
                raise _BadOffer(f"the offer was refused: {_short(repr(exc))}") from None
        except BaseException:
            await asyncio.shield(peer.discard())
            raise
        return peer

    async def on_shutdown(self, app: web.Application) -> None:
        """Every peer closed: sessions told (``session_end server_shutdown``) first."""
        peers = list(self.peers)
        for peer in peers:
            peer.shutdown()
        lives = {p.life for p in peers if p.life is not None}
        grace = self.orch.config.shutdown_grace_s + 1.0
        if lives:
            await asyncio.wait(lives, timeout=grace)
        for peer in peers:
            peer.end("server shutdown")
        lives = {p.life for p in peers if p.life is not None and not p.life.done()}
        if lives:
            await asyncio.wait(lives, timeout=self.orch.config.worker_timeout_s + 2.0)
        for peer in list(self.peers):  # never started, or stuck: free them anyway
            await peer.discard()


@dataclass(frozen=True)
class _Refusal:
    """An ``error`` for the client, queued in order with its messages."""

    error: Error
    close: bool = False


class RtcPeer:
    """One peer connection and its session; its :meth:`send` and :meth:`close` are the
    session's output (``SessionOutput``)."""

    def __init__(self, transport: WebRtcTransport, pc: RTCPeerConnection,
                 session_id: str) -> None:
        orch = transport.orch
        config = orch.config
        options = transport.options
        self.transport = transport
        self.orch = orch
        self.pc = pc
        self.session_id = session_id
        self.track = OutgoingAudioTrack(max_frames=options.output_frames,
                                        hold_rewind_ms=options.hold_rewind_ms)
        self.channel: RTCDataChannel | None = None
        self.driver = SessionDriver(session_id, config, orch.registry, orch.pool, orch.metrics,
                                    output=self, services=orch.services)
        self.end_reason = ""
        self.life: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()
        self._graceful = False  # the driver ended the session: let session_end through
        self._pending: list[str] = []
        self._room = asyncio.Event()
        self._room.set()
        self._inbox: asyncio.Queue[str | bytes | _Refusal] = asyncio.Queue(
            2 * config.rate_limit_burst + 8)
        self._limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst,
                                    strikes_to_close=_RATE_STRIKES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._mic: MediaStreamTrack | None = None
        self._open_timer: asyncio.TimerHandle | None = None
        self._freed = False
        transport.peers.add(self)
        orch.metrics.webrtc_peers_active.inc()
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)

    # -- negotiation ------------------------------------------------------------------

    def attach_output(self) -> None:
        """Check the offer's shape and answer its audio with the session's track (Opus)."""
        kinds = [t.kind for t in self.pc.getTransceivers()]
        if self.pc.sctp is None:
            raise _BadOffer('the offer has no data channel (create one labelled "events")')
        if kinds != ["audio"]:
            raise _BadOffer(f"the offer must have exactly one audio transceiver (got {kinds})")
        transceiver = self.pc.getTransceivers()[0]
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs
                if c.mimeType.lower() == "audio/opus"]
        transceiver.setCodecPreferences(opus)
        if not hand_on_at_once(transceiver.receiver):
            log.warning("aiortc's audio jitter buffer not found: the microphone is 80 ms late")
        self.pc.addTrack(self.track)

    def start(self) -> None:
        """The offer is answered: the session starts."""
        runner = start_session(self.orch, self.driver)
        self._runner = runner
        runner.add_done_callback(self._runner_done)
        self._spawn(self._read_channel())
        self._spawn(self._watch_liveness())
        self._open_timer = asyncio.get_running_loop().call_later(
            self.transport.options.open_timeout_s, self._check_open)
        self.life = asyncio.create_task(self._live(), name=f"rtc-{self.session_id}")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the end ----------------------------------------------------------------------

    def end(self, reason: str) -> None:
        """Ask for the session's end (idempotent; the first reason is kept)."""
        if not self._ended.is_set():
            self.end_reason = reason
            log.debug("session %s: WebRTC peer ends: %s", self.session_id, reason)
            self._ended.set()

    def shutdown(self) -> None:
        self.driver.shutdown()

    def _runner_done(self, runner: asyncio.Task[None]) -> None:
        self._graceful = self._graceful or not self._ended.is_set()
        self.end("session ended")

    async def close(self, code: int, reason: str) -> None:
        """The driver ends the session: the data channel closes after what was sent."""
        self._graceful = self._graceful or not self._ended.is_set()
        self.end(f"session closed: {reason}")

    def _check_open(self) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            self.end("data channel not opened in time")

    def _on_connection_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.end(f"connection {self.pc.connectionState}")

    async def _live(self) -> None:
        await self._ended.wait()
        runner = self._runner
        if runner is not None:
            await finish_session(self.orch, self.driver, runner)
            if not runner.cancelled() and runner.exception() is not None:
                log.info("session %s ended: %r", self.session_id, runner.exception())
        channel = self.channel
        if self._graceful and channel is not None and channel.readyState == "open":
            # Closing the stream lets what was sent before it arrive (an SCTP reset
            # waits for earlier data); closing the connection at once would not.
            closed = asyncio.Event()
            channel.on("close", closed.set)
            channel.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), 1.0)
        await self.discard()

    async def discard(self) -> None:
        """Close the peer connection and forget it (idempotent)."""
        if self._freed:
            return
        self._freed = True
        self.end(self.end_reason or "discarded")
        if self._open_timer is not None:
            self._open_timer.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.track.stop()
        try:
            await asyncio.wait_for(self.pc.close(), 5.0)
        except Exception as exc:  # a close that fails still frees the peer here
            log.info("session %s: closing the peer connection: %r", self.session_id, exc)
        finally:
            self.transport.peers.discard(self)
            self.orch.metrics.webrtc_peers_active.dec()

    # -- to the client ----------------------------------------------------------------

    async def send(self, items: Sequence[OutputItem]) -> None:
        """The driver's output: audio to the track, the rest to the data channel."""
        track = self.track
        for item in items:
            if isinstance(item, SendAudio):
                track.push(item.utterance_id, item.pcm)
                continue
            if isinstance(item, Pause | Resume | Interrupt):
                track.control(item)
            self._deliver(encode_json(item.to_wire()))
        await self._drain()

    def _deliver(self, message: str) -> None:
        channel = self.channel
        if channel is None:
            if len(self._pending) >= _PENDING:
                raise ConnectionResetError("the data channel never opened")
            self._pending.append(message)
        elif channel.readyState == "open":
            channel.send(message)
        else:
            raise ConnectionResetError("the data channel is closed")

    async def _drain(self) -> None:
        """Wait while too much is buffered on the channel; a client that reads nothing
        for ``send_timeout_s`` gets ``TimeoutError`` (the session then ends)."""
        channel = self.channel
        if channel is None or channel.bufferedAmount <= _HIGH_WATER:
            return
        self._room.clear()
        async with asyncio.timeout(self.orch.config.send_timeout_s):
            while channel.bufferedAmount > _HIGH_WATER and channel.readyState == "open":
                await self._room.wait()
                self._room.clear()

    # -- from the client --------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:
            channel.close()  # one channel per session
            return
        self.channel = channel
        channel.bufferedAmountLowThreshold = _HIGH_WATER // 2
        channel.on("bufferedamountlow", self._room.set)
        channel.on("message", self._on_message)
        channel.on("close", self._on_channel_close)
        pending, self._pending = self._pending, []
        for message in pending:
            channel.send(message)

    def _on_channel_close(self) -> None:
        self._room.set()  # a sender waiting for room stops waiting
        self.end("data channel closed")

    def _on_message(self, data: str | bytes) -> None:
        verdict = self._limiter.allow(time.monotonic())
        if verdict is RateDecision.CLOSE:
            self._post(_Refusal(Error(ErrorCode.RATE_LIMITED, "too many messages: closing"),
                                close=True))
        elif verdict is RateDecision.LIMITED:
            self._post(_Refusal(Error(ErrorCode.RATE_LIMITED,
                                      "too many messages: message dropped")))
        else:
            self._post(data)

    def _post(self, item: str | bytes | _Refusal) -> None:
        try:
            self._inbox.put_nowait(item)
        except asyncio.QueueFull:  # the session is not keeping up: drop, as a rate limit
            if isinstance(item, _Refusal) and item.close:
                self.end("rate limited")

    async def _read_channel(self) -> None:
        driver = self.driver
        limits = self.orch.limits
        while True:
            item = await self._inbox.get()
            if isinstance(item, _Refusal):
                await driver.send_message(item.error)
                if item.close:
                    self.end("rate limited")
                    return
                continue
            if isinstance(item, bytes):
                await driver.send_message(Error(ErrorCode.INVALID_MESSAGE, _AUDIO_ONLY))
                continue
            parsed = parse_client_message(item, limits, driver.input_sample_rate)
            if isinstance(parsed, AudioInput) or (
                    isinstance(parsed, ProtocolError) and parsed.code is ErrorCode.INVALID_AUDIO):
                await driver.send_message(Error(ErrorCode.INVALID_MESSAGE, _AUDIO_ONLY))
            elif isinstance(parsed, ProtocolError):
                await driver.send_message(parsed.to_message())
            else:
                await driver.client_message(parsed)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._mic is not None:
            return
        self._mic = track
        self._spawn(self._read_microphone(track))

    async def _read_microphone(self, track: MediaStreamTrack) -> None:
        """Every frame is read (aiortc queues them unbounded otherwise); those that
        arrive while the session listens go to it."""
        driver = self.driver
        while True:
            got = await read_pcm(track)
            if got is None:
                return
            pcm, rate = got
            if (self._runner is None or not driver.listening or not pcm
                    or not MIN_INPUT_SAMPLE_RATE <= rate <= MAX_INPUT_SAMPLE_RATE):
                continue
            await driver.client_message(AudioInput(pcm, rate))

    async def _watch_liveness(self) -> None:
        """End the session when nothing has arrived from the peer for ``silent_peer_s``.
        Polled: no event tells that nothing happened."""
        options = self.transport.options
        loop = asyncio.get_running_loop()
        last_count, last_change = -1, loop.time()
        while True:
            await asyncio.sleep(options.liveness_poll_s)
            stats = await self.pc.getStats()
            count = sum(int(getattr(s, "packetsReceived", 0)) for s in stats.values()
                        if getattr(s, "type", "") == "transport")
            now = loop.time()
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > options.silent_peer_s:
                self.end(f"nothing received for {options.silent_peer_s:g} s")
                return


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

