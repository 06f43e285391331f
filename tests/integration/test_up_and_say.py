"""`duplexvoice up` started as a user would, spoken to with `duplexvoice say`."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from tests.support.eventually import eventually, eventually_sync
from tests.support.redis_server import RedisServer
from tests.support.up_process import BANNER, READY, UpProcess, alive, speaks

pytestmark = pytest.mark.integration


def test_up_then_say_writes_speech(tmp_path: Path) -> None:
    with UpProcess() as up:  # the real default voice: Piper
        ws_url = up.wait_for(BANNER, timeout=180).group(2)
        out = tmp_path / "hello.wav"
        said = subprocess.run(
            [sys.executable, "-m", "duplexvoice", "say", "Hello from the whole stack.",
             "--url", ws_url, "--out", str(out)],
            capture_output=True, text=True, timeout=60,
        )
        assert said.returncode == 0, said.stdout + said.stderr
        assert "first audio after" in said.stdout
        with wave.open(str(out)) as wav:
            assert wav.getframerate() == 48000 and wav.getnchannels() == 1
            assert wav.getnframes() / 48000 > 0.8  # Piper speaking six words
    assert up.proc.returncode == 0, up.text
    assert "duplexvoice orchestrator stopped" in up.lines, up.text
    assert "duplexvoice up: worker stopped" in up.lines, up.text
    assert any(line.startswith("[worker] ") for line in up.lines), up.text  # its output


def test_up_with_an_unknown_voice_names_the_known_ones() -> None:
    env = {"DUPLEXVOICE_WORKER_DEFAULT_MODEL_ID": "mock-en-us-tone"}
    with UpProcess("--voice", "no-such-voice", env=env) as up:
        worker_pid = int(up.wait_for(READY).group(2))
        code = up.proc.wait(60)
    assert code == 2, up.text
    assert len(up.errors) == 1 and "Traceback" not in up.text, up.text
    assert "--voice no-such-voice" in up.errors[0]
    for known in ("espeak-en-us-default", "mock-en-us-tone", "piper-en-us-joe-medium"):
        assert known in up.errors[0]
    assert not any(BANNER.search(line) for line in up.lines), up.text  # never announced
    eventually_sync(lambda: not alive(worker_pid), what="the worker stopped with up")


async def test_up_with_redis_registers_the_worker_there(redis_server: RedisServer) -> None:
    env = {"DUPLEXVOICE_WORKER_DEFAULT_MODEL_ID": "mock-en-us-tone"}
    with UpProcess("--redis", redis_server.url, env=env) as up:
        ws_url = (await up.await_line(BANNER)).group(2)
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            assert await client.exists("worker:tts-worker-0")
        finally:
            await client.aclose()
        await eventually(lambda: speaks(ws_url), what="audio through the Redis registry")
    assert up.proc.returncode == 0, up.text


async def test_up_takes_the_orchestrators_environment() -> None:
    # The issue: DUPLEXVOICE_ORCH_API_KEYS=secret duplexvoice up served with no key.
    env = {"DUPLEXVOICE_ORCH_API_KEYS": "secret",
           "DUPLEXVOICE_WORKER_DEFAULT_MODEL_ID": "mock-en-us-tone"}
    with UpProcess(env=env) as up:
        http_url = (await up.await_line(BANNER)).group(1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{http_url}/client-config") as reply:
                assert (await reply.json())["auth_required"] is True
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(http_url.replace("http", "ws") + "/ws")
            assert refused.value.status == 401
            async with http.ws_connect(http_url.replace("http", "ws") + "/ws",
                                       headers={"Authorization": "Bearer secret"}) as ws:
                assert (await ws.receive_json(timeout=30))["type"] == "session_start"
    assert up.proc.returncode == 0, up.text
