"""`duplexvoice up` keeps its worker: restarts one that dies (on its port, so the
orchestrator finds it again), shows its output, and never leaves it behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import aiohttp
import pytest

from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.rpc import tts_pb2
from duplexvoice.wire.ports import bind_error
from tests.support.eventually import eventually, eventually_sync
from tests.support.up_process import BANNER, READY, UpProcess, alive, speaks

pytestmark = pytest.mark.integration

# The mock voice loads in milliseconds: a restart costs the worker's start-up only.
MOCK = "mock-en-us-tone"
MOCK_WORKER = {"DUPLEXVOICE_WORKER_DEFAULT_MODEL_ID": MOCK}
ESPEAK = "espeak-en-us-default"


async def ready(http_url: str) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{http_url}/ready") as reply:
        return reply.status == 200 and bool((await reply.json())["ready"])


async def loaded_models(addr: str) -> set[str]:
    async with WorkerClient(addr) as client:
        reply = await client.stub.ListModels(tts_pb2.ListModelsRequest(), timeout=5)
    return {m.model_id for m in reply.models if m.is_loaded}


async def both_loaded(addr: str) -> bool:
    return await loaded_models(addr) == {MOCK, ESPEAK}


async def models_in_use(ws_url: str, addr: str) -> set[str]:
    """The worker's models that a speaking session holds: UnloadModel refuses those
    (and unloads the others)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        # Paced to real time, this speaks for seconds: in use while we ask.
        await ws.send_json({"type": "text", "text": "Which voice is speaking now? " * 4})
        async with asyncio.timeout(30):
            async for msg in ws:
                assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
                if msg.type == aiohttp.WSMsgType.BINARY or msg.json()["type"] == "audio":
                    break
                assert msg.json()["type"] not in ("error", "session_end"), msg.data
        in_use = set()
        async with WorkerClient(addr) as client:
            for model_id in await loaded_models(addr):
                reply = await client.stub.UnloadModel(
                    tts_pb2.UnloadModelRequest(model_id=model_id), timeout=10)
                if not reply.success:
                    in_use.add(model_id)
        return in_use


async def test_a_killed_worker_is_restarted_and_serves_again() -> None:
    env = {**MOCK_WORKER, "DUPLEXVOICE_WORKER_PRELOAD_MODEL_IDS": ESPEAK}
    with UpProcess("--log-level", "info", "--voice", MOCK, env=env) as up:
        first = await up.await_line(READY)
        addr, pid = first.group(1), int(first.group(2))
        http_url, ws_url = (await up.await_line(BANNER)).groups()
        # --log-level reaches the worker: its INFO lines, prefixed, in up's output.
        assert any(re.match(r"\[worker\] .* INFO ", line) for line in up.lines), up.text
        # --voice is the sessions' default. Without it the router would pick either
        # resident voice (eSpeak: first by name).
        await eventually(lambda: both_loaded(addr), timeout=60, what="eSpeak preloaded")
        assert await models_in_use(ws_url, addr) == {MOCK}

        os.kill(pid, signal.SIGKILL)
        restart = await up.await_line(rf"worker \(pid {pid}\) exited \(killed by SIGKILL\) "
                                      r"after [\d.]+ s; restart 1 in 0\.5 s")
        again = await up.await_line(r"worker ready again on ([\d.]+:\d+) \(pid (\d+)\)",
                                    after=up.lines.index(restart.string))
        assert again.group(1) == addr and int(again.group(2)) != pid
        await eventually(lambda: ready(http_url), timeout=60, what="/ready true again")
        await eventually(lambda: speaks(ws_url), timeout=60, what="audio after the restart")
        new_pid = int(again.group(2))
    assert up.proc.returncode == 0, up.text
    assert "duplexvoice up: worker stopped" in up.lines, up.text
    eventually_sync(lambda: not alive(new_pid), what="the restarted worker ended with up")


def test_killing_up_ends_its_worker() -> None:
    with UpProcess(env=MOCK_WORKER) as up:
        first = up.wait_for(READY)
        up.wait_for(BANNER)
        host, port = first.group(1).split(":")
        pid = int(first.group(2))
        # The default log level (WARNING) reaches the worker too: no INFO lines from it.
        assert not any(re.match(r"\[worker\] .* INFO ", line) for line in up.lines), up.text
        up.proc.send_signal(signal.SIGKILL)
        assert up.proc.wait(30) == -signal.SIGKILL
        eventually_sync(lambda: not alive(pid), timeout=30, what="the worker ended")
        eventually_sync(lambda: bind_error(host, int(port)) is None, timeout=30,
                        what="the worker's port is free")
