"""The orchestrator over real sockets: a real orchestrator process, real worker
processes (the mock voice), the WebSocket protocol message by message."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from tests.support.ws import Client

pytestmark = pytest.mark.integration

SENTENCES = "The weather is nice today. Shall we go for a walk?"


@pytest.fixture(scope="module")
def orchestrator(mock_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    proc = OrchestratorProcess("--workers", mock_worker.addr, "--max-text-chars", "300",
                               "--registry-poll-s", "0.5").start()
    yield proc
    proc.terminate()


@pytest.fixture
async def connect(orchestrator: OrchestratorProcess) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as http:
        async def open_client(url: str | None = None, **kwargs: Any) -> Client:
            ws = await http.ws_connect(url or orchestrator.ws_url, **kwargs)
            return Client(ws)

        yield open_client


def audio_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] in ("audio", "binary")]


async def test_session_start_then_text_to_audio(connect: Any) -> None:
    client = await connect()
    start = await client.next()
    assert start["type"] == "session_start" and start["session_id"]
    assert (await client.next("state"))["state"] == "LISTENING"
    await client.send(type="text", text=SENTENCES)
    got = await client.until_end(1)
    frames = audio_of(got)
    assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
    for f in frames:
        assert f["sample_rate"] == 48000 and f["frame_ms"] == 20 and f["utterance_id"] == 1
        assert len(base64.b64decode(f["pcm"])) == 1920
    end = got[-1]
    assert end["reason"] == "completed" and end["frames"] == len(frames) > 50
    assert "SPEAKING" in [m["state"] for m in got if m["type"] == "state"]
    # A second utterance continues the connection's sequence with no gap.
    await client.send(type="text", text="Again.")
    second = audio_of(await client.until_end(2))
    assert second[0]["sequence"] == len(frames) + 1
    await client.ws.close()


async def test_binary_output_and_streamed_text(connect: Any) -> None:
    client = await connect()
    await client.next("session_start")
    await client.send(type="config", output_format="binary")
    await client.send(type="text", text="Hello there, ", is_final=False)
    await client.send(type="text", text="my friend.", is_final=True)
    frames = audio_of(await client.until_end(1))
    assert frames and all(f["type"] == "binary" and len(f["pcm"]) == 1920 for f in frames)
    assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
    await client.ws.close()


async def test_audio_is_paced_to_real_time(connect: Any) -> None:
    client = await connect()
    await client.next("session_start")
    await client.send(type="text", text=SENTENCES)
    await client.next("audio")
    start, received = time.monotonic(), 1
    while (item := await client.next())["type"] != "utterance_end":
        if item["type"] == "audio":
            received += 1
            # Paced, not dumped: the audio received never runs further ahead of the time
            # since the first frame than the lead (100 ms) plus that first frame. A slow
            # machine only makes it later, so this cannot flake from load.
            ahead_s = received * 0.02 - (time.monotonic() - start)
            assert ahead_s <= 0.1 + 0.02 + 1e-3, f"{ahead_s:.3f} s ahead at frame {received}"
    assert received > 50  # long enough for the check to mean something
    await client.ws.close()


async def test_stop_interrupts_and_drops_then_next_works(connect: Any) -> None:
    client = await connect()
    await client.next("session_start")
    await client.send(type="text", text=SENTENCES * 3)
    for _ in range(5):
        await client.next("audio")
    await client.send(type="control", command="STOP")
    got = await client.until_end(1)
    kinds = [m["type"] for m in got]
    assert "interrupt" in kinds
    after_interrupt = kinds[kinds.index("interrupt"):]
    assert "audio" not in after_interrupt  # nothing of it after the interrupt
    assert got[-1]["reason"] == "stopped"
    await client.send(type="text", text="Fresh start.")
    fresh = await client.until_end(2)
    assert fresh[-1]["reason"] == "completed" and audio_of(fresh)
    await client.ws.close()


async def _record(client: Client, log: list[tuple[float, dict[str, Any]]]) -> None:
    while True:
        item = await client.next(timeout=30)
        log.append((time.monotonic(), item))
        if item["type"] in ("utterance_end", "closed"):
            return


async def test_pause_holds_one_session_only(connect: Any) -> None:
    a, b = await connect(), await connect()
    logs: dict[str, list[tuple[float, dict[str, Any]]]] = {"a": [], "b": []}
    for c in (a, b):
        await c.next("session_start")
        await c.send(type="text", text=SENTENCES)
        await c.next("audio")
    await a.send(type="control", command="PAUSE")
    while (await a.next("state"))["state"] != "PAUSED":
        pass
    paused_at = len(a.messages)
    # While a is paused, b goes on: 25 more frames (half a second of audio) arrive.
    for _ in range(25):
        await b.next("audio")
    await a.send(type="control", command="RESUME")
    while (await a.next("state"))["state"] != "SPEAKING":
        pass
    # The socket is ordered: between PAUSED and SPEAKING, nothing of a's audio.
    held = [m["type"] for m in a.messages[paused_at:]]
    assert "audio" not in held, held
    tasks = [asyncio.create_task(_record(a, logs["a"])), asyncio.create_task(_record(b, logs["b"]))]
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert logs["a"][-1][1]["reason"] == "completed"
    seq = [m["sequence"] for m in audio_of(a.messages)]
    assert seq == list(range(1, len(seq) + 1))  # nothing lost, nothing replayed
    for c in (a, b):
        await c.ws.close()


@pytest.mark.parametrize("raw,code", [
    ("not json", "INVALID_MESSAGE"),
    ('{"type": "shout"}', "INVALID_MESSAGE"),
    ('{"type": "control", "command": "JUMP"}', "INVALID_MESSAGE"),
    ('{"type": "text", "text": ""}', "INVALID_MESSAGE"),
    (json.dumps({"type": "text", "text": "x" * 400}), "TEXT_TOO_LONG"),
    ('{"type": "config", "voice": "no-such-voice"}', "INVALID_CONFIG"),
    ('{"type": "config", "input_sample_rate": 5}', "INVALID_CONFIG"),
])
async def test_bad_input_gets_an_error_and_the_session_goes_on(
        connect: Any, raw: str, code: str) -> None:
    client = await connect()
    await client.next("session_start")
    await client.ws.send_str(raw)
    error = await client.next("error")
    assert error["code"] == code and error["message"]
    await client.send(type="text", text="Still fine.")
    assert (await client.until_end(1))[-1]["reason"] == "completed"
    await client.ws.close()


async def test_http_endpoints(orchestrator: OrchestratorProcess) -> None:
    base = f"http://{orchestrator.addr}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/health") as r:
            assert r.status == 200
        async with http.get(base + "/ready") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with http.get(base + "/models") as r:
            ids = [m["model_id"] for m in (await r.json())["models"]]
            assert "mock-en-us-tone" in ids
        async with http.get(base + "/metrics") as r:
            text = await r.text()
            assert "# TYPE duplexvoice_sessions_total counter" in text
            assert "duplexvoice_first_audio_ms_bucket" in text


async def test_access_control_before_the_upgrade(mock_worker: WorkerProcess) -> None:
    proc = OrchestratorProcess("--workers", mock_worker.addr, "--api-keys", "s3cret",
                               "--allowed-origins", "https://ok.example").start()
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(proc.ws_url)
            assert refused.value.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as wrong_origin:
                await http.ws_connect(proc.ws_url + "?api_key=s3cret",
                                      headers={"Origin": "https://evil.example"})
            assert wrong_origin.value.status == 403
            ws = await http.ws_connect(proc.ws_url,
                                       headers={"Authorization": "Bearer s3cret",
                                                "Origin": "https://ok.example"})
            assert (await ws.receive_json())["type"] == "session_start"
            await ws.close()
    finally:
        assert proc.terminate() == 0


async def test_no_worker_means_worker_unavailable() -> None:
    proc = OrchestratorProcess("--workers", "127.0.0.1:9", "--registry-poll-s", "0.5").start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{proc.addr}/ready") as r:
                assert r.status == 503
            client = Client(await http.ws_connect(proc.ws_url))
            await client.next("session_start")
            # Connected costs no worker: the session waits, and an utterance that
            # finds none fails alone; the session goes on.
            assert (await client.next("state"))["state"] == "LISTENING"
            await client.send(type="text", text="Hello there.")
            error = await client.next("error")
            assert error["code"] == "WORKER_UNAVAILABLE"
            end = await client.next("utterance_end")
            assert (end["utterance_id"], end["reason"], end["frames"]) == (1, "error", 0)
            await client.send(type="text", text="Again.")
            assert (await client.next("error"))["code"] == "WORKER_UNAVAILABLE"
            assert (await client.next("utterance_end"))["utterance_id"] == 2
    finally:
        proc.terminate()


async def test_worker_killed_mid_utterance_fails_fast_and_moves_on() -> None:
    doomed = WorkerProcess("--default-model-id", "mock-en-us-tone", name="w-doomed").start()
    spare = WorkerProcess("--default-model-id", "mock-en-us-tone", name="w-spare").start()
    proc = OrchestratorProcess(
        "--workers", f"w-doomed={doomed.addr},w-spare={spare.addr}", "--registry-poll-s", "0.3",
    ).start()
    try:
        async with aiohttp.ClientSession() as http:
            # Both idle: the router breaks the tie by name, so w-doomed serves first.
            client = Client(await http.ws_connect(proc.ws_url))
            await client.next("session_start")
            await client.send(type="text", text="[[slow:40]] " + SENTENCES * 4)
            await client.next("audio")
            doomed.kill()
            error = await client.next("error")
            got = await client.until_end(1)
            assert error["code"] == "SYNTHESIS_FAILED"
            assert got[-1]["reason"] == "error"  # how fast: bench/orchestrator.py
            await client.send(type="text", text="On another worker.")
            after = await client.until_end(2)
            assert after[-1]["reason"] == "completed" and audio_of(after)
    finally:
        proc.terminate()
        doomed.kill()
        spare.terminate()


async def test_sigterm_ends_sessions_with_server_shutdown(mock_worker: WorkerProcess) -> None:
    proc = OrchestratorProcess("--workers", mock_worker.addr).start()
    try:
        async with aiohttp.ClientSession() as http:
            client = Client(await http.ws_connect(proc.ws_url))
            await client.next("session_start")
            assert proc.proc is not None
            proc.proc.terminate()
            end = await client.next("session_end")
            assert end["reason"] == "server_shutdown"
        assert proc.proc.wait(10) == 0
    finally:
        proc.kill()


async def test_metrics_message_follows_each_utterance(connect: Any) -> None:
    client = await connect()
    await client.next("session_start")
    await client.send(type="text", text="Measure this.")
    await client.until_end(1)
    metrics = await client.next("metrics")
    assert metrics["utterance_id"] == 1 and 0 < metrics["first_audio_ms"] < 5000
    await client.ws.close()


async def test_oversize_message_is_refused_and_the_session_goes_on(
        mock_worker: WorkerProcess) -> None:
    proc = OrchestratorProcess("--workers", mock_worker.addr, "--max-message-bytes",
                               "2048").start()
    try:
        async with aiohttp.ClientSession() as http:
            client = Client(await http.ws_connect(proc.ws_url))
            await client.next("session_start")
            await client.send(type="text", text="y" * 3000)
            assert (await client.next("error"))["code"] == "MESSAGE_TOO_LARGE"
            await client.send(type="text", text="Small enough.")
            assert (await client.until_end(1))[-1]["reason"] == "completed"
            await client.ws.send_bytes(b"\0" * 100_000)  # far too large: cut off
            assert (await client.next("closed"))["type"] == "closed"
    finally:
        proc.terminate()


async def test_a_flooding_client_is_limited_then_closed(mock_worker: WorkerProcess) -> None:
    proc = OrchestratorProcess("--workers", mock_worker.addr, "--rate-limit-per-s", "5",
                               "--rate-limit-burst", "5").start()
    try:
        async with aiohttp.ClientSession() as http:
            client = Client(await http.ws_connect(proc.ws_url))
            await client.next("session_start")
            for _ in range(60):
                if client.ws.closed:
                    break
                await client.ws.send_json({"type": "control", "command": "STOP"})
            codes = []
            while (item := await client.next())["type"] != "closed":
                if item["type"] == "error":
                    codes.append(item["code"])
            assert "RATE_LIMITED" in codes
            # Other sessions are unaffected.
            other = Client(await http.ws_connect(proc.ws_url))
            await other.next("session_start")
            await other.send(type="text", text="Unaffected.")
            assert (await other.until_end(1))[-1]["reason"] == "completed"
            await other.ws.close()
    finally:
        proc.terminate()
