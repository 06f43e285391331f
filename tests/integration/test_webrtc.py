"""The WebRTC transport end to end: an orchestrator answering offers, a worker
process, and an aiortc client doing what the web page does (tests/support/rtc_client).

Most tests run the orchestrator in this process (its peer registry is read directly,
its liveness bounds shortened) with the mock voice; the conversation test runs a real
orchestrator process with Piper, Whisper and echo replies, like test_conversation."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.orchestrator.server import WEBRTC, Orchestrator, build_app, make_registry
from duplexvoice.orchestrator.transports.webrtc import WebRtcOptions, WebRtcTransport
from duplexvoice.orchestrator.workers.link import WorkerPool
from duplexvoice.speech.wer import wer
from tests.support.eventually import eventually
from tests.support.rtc_client import OfferRefused, connect
from tests.support.speech import SPEAKERS, pcm16, say, silence

pytestmark = [pytest.mark.integration,
              # app["orch"] (the server's own key) is a plain string key
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]

TEXT = "The weather is nice today. Shall we go for a walk?"


@dataclass
class Server:
    url: str
    orch: Orchestrator
    rtc: WebRtcTransport

    async def metric(self, name: str) -> float:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as r:
            text = await r.text()
        match = re.search(rf"^duplexvoice_{name} (\S+)$", text, re.M)
        assert match, name
        return float(match.group(1))

    async def freed(self) -> bool:
        return (not self.rtc.peers and not self.orch.drivers
                and await self.metric("sessions_active") == 0
                and await self.metric("webrtc_peers_active") == 0)


def hosts(sdp: str) -> set[str]:
    """The addresses of the host candidates in ``sdp``."""
    return set(re.findall(r"^a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", sdp, re.M))


@asynccontextmanager
async def serve(worker: WorkerProcess, options: WebRtcOptions | None = None,
                **overrides: Any) -> AsyncIterator[Server]:
    config = OrchestratorConfig(port=0, workers=[worker.addr], **overrides)
    orch = Orchestrator(config, make_registry(config), WorkerPool(timeout_s=2.0))
    await orch.registry.start()
    app = build_app(orch, options)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(f"http://127.0.0.1:{port}", orch, app[WEBRTC])
    finally:
        orch.accepting = False
        for driver in list(orch.drivers):
            driver.shutdown()
        await runner.cleanup()  # on_shutdown: every peer closed
        await orch.registry.stop()
        await orch.pool.close()


OPTIONS = WebRtcOptions(open_timeout_s=3.0, silent_peer_s=2.0, liveness_poll_s=0.25)


@pytest.fixture
async def server(mock_worker: WorkerProcess) -> AsyncIterator[Server]:
    async with serve(mock_worker, OPTIONS, max_sessions=2) as s:
        yield s


async def test_text_is_spoken_on_the_track(server: Server) -> None:
    client = await connect(server.url, loopback_only=True)
    try:
        start = await client.until(lambda m: m["type"] == "session_start")
        assert start.message["session_id"] == client.session_id
        # The server offers a loopback host candidate; this client offered only that.
        assert hosts(client.pc.remoteDescription.sdp) >= {"127.0.0.1"}
        assert hosts(client.pc.localDescription.sdp) == {"127.0.0.1"}
        client.send_json({"type": "text", "text": TEXT})
        first = await client.until(lambda m: m["type"] == "state" and m["state"] == "SPEAKING")
        end = await client.until(lambda m: m["type"] == "utterance_end")
        assert end.message["reason"] == "completed" and end.message["frames"] > 50
        assert not client.messages("audio") and not client.messages("_binary")
        # The voice arrived on the track, with real energy, while it was spoken.
        assert client.rms(first.at, end.at + 0.5) > 0.02
        assert len(client.loud_frames(since=first.at)) > end.message["frames"] // 2
    finally:
        await client.close()
    await eventually(server.freed, what="peer freed")


async def test_stop_silences_the_track_at_once(server: Server) -> None:
    client = await connect(server.url)  # default candidates: every address and loopback
    try:
        client.send_json({"type": "text", "text": TEXT + " " + TEXT})
        await client.until(lambda m: m["type"] == "state" and m["state"] == "SPEAKING")
        loud = await eventually(lambda: client.loud_frames(), what="voice on the track")
        client.send_json({"type": "control", "command": "STOP"})
        stop = await client.until(lambda m: m["type"] == "interrupt")
        assert stop.message["reason"] == "stopped" and loud
        end = await client.until(lambda m: m["type"] == "utterance_end")
        assert end.message["reason"] == "stopped"
        # What was queued on the track is dropped: after the network's delay, silence.
        await client.until(lambda m: m["type"] == "state" and m["state"] == "LISTENING")
        await eventually(lambda: client.heard and client.heard[-1].at > stop.at + 0.5,
                         what="audio after the stop")
        assert not client.loud_frames(since=stop.at + 0.15)
    finally:
        await client.close()
    await eventually(server.freed, what="peer freed")


async def test_malformed_offers_are_answered_400(server: Server) -> None:
    url = f"{server.url}/webrtc/offer"
    bodies: list[Any] = [b"not json", b"[1]", b'{"type": "offer"}',
                         b'{"type": "answer", "sdp": "v=0"}',
                         b'{"type": "offer", "sdp": "garbage"}',
                         b'{"type": "offer", "sdp": "' + b"x" * 70_000 + b'"}']
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(url, data=body) as response:
                assert response.status == 400, body[:40]
                error = (await response.json())["error"]
                assert error["code"] == "INVALID_MESSAGE" and error["message"]
    assert await server.freed()


async def test_keys_are_checked_before_the_offer(mock_worker: WorkerProcess) -> None:
    async with serve(mock_worker, OPTIONS, api_keys=["right"]) as server:
        for key in (None, "wrong"):
            with pytest.raises(OfferRefused) as refused:
                await connect(server.url, api_key=key)
            assert refused.value.status == 401 and refused.value.body == ""
        client = await connect(server.url, api_key="right")
        await client.until(lambda m: m["type"] == "session_start")
        await client.close()
        await eventually(server.freed, what="peer freed")


async def test_bad_messages_on_the_channel_are_answered_and_the_session_goes_on(
        server: Server) -> None:
    client = await connect(server.url)
    try:
        await client.until(lambda m: m["type"] == "session_start")
        client.send_raw("{not json")
        client.send_raw(b"\x00\x01")
        client.send_json({"type": "audio", "pcm": "AAAA"})
        client.send_json({"type": "config", "input_sample_rate": 16000,
                          "output_format": "json"})
        await eventually(lambda: len(client.messages("error")) == 3, what="three errors")
        assert [e["code"] for e in client.messages("error")] == ["INVALID_MESSAGE"] * 3
        assert "media track" in client.messages("error")[1]["message"]
        # Playback reports go on the channel, parsed as over a WebSocket: a good one
        # is taken silently, a bad one answered.
        client.send_json({"type": "playback", "utterance_id": 1, "played_ms": 120})
        client.send_json({"type": "playback", "utterance_id": 0, "played_ms": 120})
        await eventually(lambda: len(client.messages("error")) == 4, what="a fourth error")
        assert client.messages("error")[3]["code"] == "INVALID_MESSAGE"
        assert "utterance_id" in client.messages("error")[3]["message"]
        client.send_json({"type": "text", "text": "Still here."})
        end = await client.until(lambda m: m["type"] == "utterance_end")
        assert end.message["reason"] == "completed"
        assert not client.messages("audio") and client.loud_frames()
        assert len(client.messages("error")) == 4  # none for the good report
    finally:
        await client.close()
    await eventually(server.freed, what="peer freed")


async def test_capacity_is_shared_and_refused_with_503(server: Server) -> None:
    clients = [await connect(server.url) for _ in range(2)]
    with pytest.raises(OfferRefused) as refused:
        await connect(server.url)
    assert refused.value.status == 503 and refused.value.body == ""
    for client in clients:
        await client.close()
    await eventually(server.freed, what="peers freed")
    again = await connect(server.url)
    await again.close()


async def _answered_then_gone(server: Server) -> None:
    """The offer answered, then nothing: the data channel never opens."""
    from aiortc import RTCPeerConnection

    from duplexvoice.orchestrator.transports.rtc_ice import rtc_configuration
    pc = RTCPeerConnection(rtc_configuration())
    pc.createDataChannel("events")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.url}/webrtc/offer",
            json={"sdp": pc.localDescription.sdp, "type": "offer"}) as response:
        assert response.status == 200
    await pc.close()


@pytest.mark.parametrize("moment", ["after_answer", "mid_reply", "after_reply", "vanished"])
async def test_leavers_free_their_session_and_peer(mock_worker: WorkerProcess,
                                                  moment: str) -> None:
    # After the answer, the open timeout must end it (liveness made slower than it).
    options = (WebRtcOptions(open_timeout_s=1.5, silent_peer_s=10.0)
               if moment == "after_answer" else OPTIONS)
    async with serve(mock_worker, options) as server:
        await _leave(server, moment)


async def _leave(server: Server, moment: str) -> None:
    if moment == "after_answer":
        await _answered_then_gone(server)
        assert server.rtc.peers and await server.metric("sessions_active") == 1
    else:
        client = await connect(server.url)
        client.send_json({"type": "text", "text": TEXT})
        if moment == "after_reply":
            await client.until(lambda m: m["type"] == "utterance_end")
        else:
            await eventually(lambda: client.loud_frames(), what="voice on the track")
    (peer,) = server.rtc.peers
    if moment != "after_answer":
        await (client.vanish() if moment == "vanished" else client.close())
    await eventually(server.freed, what="session and peer freed")
    expected = {"after_answer": "data channel not opened", "vanished": "nothing received"}
    assert peer.end_reason.startswith(expected.get(moment, "data channel closed")), \
        peer.end_reason


@pytest.fixture(scope="module")
def conversation_stack(real_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    orch = OrchestratorProcess("--workers", real_worker.addr, "--reply-engine", "echo").start()
    yield orch
    orch.terminate()


async def test_speech_on_the_track_is_transcribed_and_answered_on_the_track(
        conversation_stack: OrchestratorProcess) -> None:
    url = f"http://{conversation_stack.addr}"
    text = "Please book a table for two people tomorrow evening."
    client = await connect(url, loopback_only=True)
    try:
        await client.until(lambda m: m["type"] == "session_start")
        client.send_json({"type": "config", "mode": "conversation"})
        # The microphone flowed (silence) before: in tts mode it was dropped silently.
        assert not client.messages("error")
        speech = say(text, SPEAKERS[0], rate=48_000)
        client.feed(pcm16(np.concatenate([silence(0.3, rate=48_000), speech])))
        final = await client.until(lambda m: m["type"] == "transcript" and m["final"])
        assert wer(text, final.message["text"]) <= 0.25, final.message
        reply = await client.until(lambda m: m["type"] == "reply")
        uid = reply.message["utterance_id"]
        end = await client.until(
            lambda m: m["type"] == "utterance_end" and m["utterance_id"] == uid)
        assert end.message["reason"] == "completed" and end.message["frames"] > 10
        # The echo reply was heard on the track, after the speech was fed.
        assert client.mic.first_sent_at is not None
        assert client.rms(reply.at, end.at + 0.5) > 0.02
        assert not client.messages("error")
    finally:
        await client.close()

    async def freed() -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
            text = await r.text()
        return ("duplexvoice_sessions_active 0\n" in text
                and "duplexvoice_webrtc_peers_active 0\n" in text)

    await eventually(freed, what="session and peer freed")


async def test_shutdown_ends_sessions_and_closes_peers(mock_worker: WorkerProcess) -> None:
    async with serve(mock_worker, OPTIONS) as server:
        client = await connect(server.url)
        await client.until(lambda m: m["type"] == "session_start")
    try:
        end = await client.until(lambda m: m["type"] == "session_end")
        assert end.message["reason"] == "server_shutdown"
        await asyncio.wait_for(client.closed.wait(), 5)
        assert not server.rtc.peers and not server.orch.drivers
    finally:
        await client.close()
