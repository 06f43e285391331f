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
from duplexvoice.orchestrator.worker_link import WorkerPool
from duplexvoice.speech.wer import wer
from tests.support.eventually import eventually
from tests.support.rtc_client import OfferRefused, RtcClient, connect
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
