"""Discovery through a real Redis: two workers register, one dies without
deregistering, its record expires, and sessions go to the other."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def ready_workers(http: aiohttp.ClientSession, addr: str) -> list[str]:
    async with http.get(f"http://{addr}/ready") as response:
        body: dict[str, Any] = await response.json()
        return sorted(body["workers"])


async def speak(http: aiohttp.ClientSession, url: str) -> str:
    async with http.ws_connect(url) as ws:
        await ws.send_json({"type": "text", "text": "Who serves me?"})
        frames = 0
        async for msg in ws:
            message = msg.json()
            frames += message["type"] == "audio"
            if message["type"] in ("utterance_end", "session_end"):
                assert frames > 0, message
                return str(message.get("reason"))
    return "closed"


async def test_two_workers_one_expires_routing_moves(redis_server: RedisServer) -> None:
    common = ("--default-model-id", "mock-en-us-tone", "--redis-url", redis_server.url,
              "--heartbeat-interval-s", "0.5", "--registry-ttl-s", "2")
    a = WorkerProcess(*common, name="w-a").start()
    b = WorkerProcess(*common, name="w-b").start()
    orch = OrchestratorProcess("--redis-url", redis_server.url, "--registry-ttl-s", "2",
                               "--registry-poll-s", "0.3").start()
    try:
        async with aiohttp.ClientSession() as http:
            async def both() -> bool:
                return await ready_workers(http, orch.addr) == ["w-a", "w-b"]

            await eventually(both)
            assert await speak(http, orch.ws_url) == "completed"
            a.kill()  # no chance to deregister: only the TTL removes it

            async def only_b() -> bool:
                return await ready_workers(http, orch.addr) == ["w-b"]

            await eventually(only_b)
            for _ in range(3):  # every new session lands on the survivor
                assert await speak(http, orch.ws_url) == "completed"
    finally:
        orch.terminate()
        a.kill()
        b.terminate()
