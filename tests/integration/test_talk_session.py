"""The talk client's session against a scripted WebSocket server on 127.0.0.1 (no
models): the config check, what it sends (microphone frames, playback reports),
how it follows pause / resume / interrupt, and how it ends when the server refuses,
ends the session, or goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from duplexvoice.client.audio_io import NullSpeaker, TrackMicrophone
from duplexvoice.client.echo_cancel import NoEchoCanceller
from duplexvoice.client.talk import TalkClient, TalkOptions, TalkResult
from duplexvoice.wire.protocol import encode_binary_frame
from tests.support.speech import silence

pytestmark = pytest.mark.integration

Script = Callable[["Peer"], Awaitable[None]]


class ConnectionClosed(Exception):
    pass


class Peer:
    """The server side of one connection, as a test script sees it."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.texts: list[dict[str, Any]] = []
        self.audio_bytes: list[int] = []
        self._sequence = 0

    async def next_text(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type == WSMsgType.BINARY:
                    self.audio_bytes.append(len(msg.data))
                elif msg.type == WSMsgType.TEXT:
                    message = json.loads(msg.data)
                    self.texts.append(message)
                    if message["type"] == kind:
                        return dict(message)
                else:
                    raise ConnectionClosed(f"closed while waiting for {kind}")

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(json.dumps(message))

    async def frames(self, uid: int, count: int) -> None:
        for _ in range(count):
            self._sequence += 1
            await self.ws.send_bytes(encode_binary_frame(bytes(1920), self._sequence, uid))

    async def handshake(self) -> dict[str, Any]:
        await self.send(type="session_start", session_id="s1")
        config = await self.next_text("config")
        await self.next_text("control")  # the config check's probe
        await self.send(type="error", code="INVALID_STATE", message="nothing is playing")
        return config

    async def drain(self, seconds: float) -> None:
        """Take what the client sends for ``seconds`` (or until it closes)."""
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await self.next_text("never", timeout=seconds)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    runners: list[web.AppRunner] = []
    failures: list[BaseException] = []

    async def start(script: Script) -> str:
        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            try:
                await script(Peer(ws))
            except Exception as exc:  # the script's own checks: reported by the test
                failures.append(exc)
            await ws.close()
            return ws

        app = web.Application()
        app.router.add_get("/ws", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"ws://127.0.0.1:{port}/ws"

    yield start
    for runner in runners:
        await runner.cleanup()
    assert not failures, f"the server script failed: {failures!r}"


PRINTED: list[str] = []  # what the last session printed


async def talk(url: str, seconds: float = 0.2, **options: Any) -> TalkResult:
    PRINTED.clear()
    client = TalkClient(TalkOptions(url=url, quiet_s=0.3, linger_s=5, **options),
                        TrackMicrophone(silence(seconds)), NullSpeaker(), NoEchoCanceller(),
                        write=PRINTED.append, record=True)
    return await asyncio.wait_for(client.run(), 20)


async def test_config_then_microphone_frames_then_settles(serve: Any) -> None:
    seen: dict[str, Any] = {}

    async def script(peer: Peer) -> None:
        seen["config"] = await peer.handshake()
        await peer.send(type="state", state="LISTENING")
        await peer.drain(1.0)
        seen["audio"] = peer.audio_bytes

    result = await talk(await serve(script), voice="v1", reply="echo")
    assert seen["config"] == {"type": "config", "mode": "conversation",
                              "input_sample_rate": 16000, "output_format": "binary",
                              "voice": "v1", "reply": "echo"}
    assert set(seen["audio"]) == {640} and len(seen["audio"]) >= 10  # 20 ms at 16 kHz
    assert result.code == 0 and result.ended_by == "settled"
    printed = "".join(PRINTED)
    assert "state LISTENING" in printed and "summary:" in printed
    assert "INVALID_STATE" not in printed  # the probe's answer is not shown as an error


async def test_a_refused_config_is_an_error(serve: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(type="session_start", session_id="s1")
        await peer.next_text("control")
        await peer.send(type="error", code="INVALID_CONFIG", message="unknown voice 'x'")
        await peer.drain(1.0)

    result = await talk(await serve(script), voice="x")
    assert result.code == 1 and "refused the config" in (result.problem or "")
    assert "unknown voice" in (result.problem or "")


async def test_pause_resume_interrupt_and_playback_reports(serve: Any) -> None:
    reports: list[dict[str, Any]] = []

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.send(type="state", state="SPEAKING")
        await peer.send(type="reply", utterance_id=1, text="hello", turn=1)
        await peer.frames(1, 15)
        await peer.next_text("playback")  # 200 ms played
        await peer.send(type="pause", utterance_id=1)
        paused = await peer.next_text("playback")
        await peer.drain(0.2)
        await peer.send(type="resume", utterance_id=1)
        await peer.drain(0.06)
        await peer.send(type="interrupt", utterance_id=1, reason="interrupted")
        interrupted = await peer.next_text("playback")
        await peer.frames(1, 3)  # late frames of the interrupted utterance
        await peer.send(type="utterance_end", utterance_id=1, reason="interrupted", frames=18)
        await peer.send(type="state", state="LISTENING")
        await peer.drain(1.0)
        reports.extend([paused, interrupted])

    result = await talk(await serve(script))
    paused, interrupted = reports
    assert paused["utterance_id"] == 1 and 200 <= paused["played_ms"] < 300
    # Nothing played during the 200 ms hold; a little after the resume.
    assert paused["played_ms"] < interrupted["played_ms"] < paused["played_ms"] + 200
    assert result.playback.dropped_fenced == 3
    assert result.playback.played_frames == interrupted["played_ms"] / 20
    assert result.code == 0


async def test_the_server_ending_the_session_is_an_error(serve: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.send(type="session_end", session_id="s1", reason="idle_timeout")

    result = await talk(await serve(script), seconds=2.0)
    assert result.code == 1 and "idle_timeout" in (result.problem or "")


async def test_a_lost_connection_is_an_error(serve: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.drain(0.1)

    result = await talk(await serve(script), seconds=2.0)
    assert result.code == 1 and "lost" in (result.problem or "")


async def test_a_failed_utterance_makes_the_exit_code_1(serve: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.send(type="error", code="SYNTHESIS_FAILED", message="worker died")
        await peer.send(type="utterance_end", utterance_id=1, reason="error", frames=0)
        await peer.send(type="state", state="LISTENING")
        await peer.drain(1.0)

    result = await talk(await serve(script))
    assert result.code == 1 and "failed" in (result.problem or "")


async def test_silence_only_input_ends_quietly(serve: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.drain(2.0)

    result = await talk(await serve(script), seconds=0.0)
    assert result.code == 0 and result.sent_frames >= 10
    assert np.isfinite(result.sent_frames)


async def test_turns_the_server_failed_are_an_error(serve: Any) -> None:
    # The issue: talk exited 0 when every turn failed with REPLY_FAILED.
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.send(type="transcript", text="hello", final=True, turn=1)
        await peer.send(type="error", code="REPLY_FAILED", message="the reply engine failed")
        await peer.drain(1.0)

    result = await talk(await serve(script))
    assert result.code == 1 and result.ended_by == "settled"
    assert result.problem == "the server reported 1 error(s) (REPLY_FAILED)"
