"""The orchestrator's registries against a real Redis server and a real worker process.

Tests call ``refresh()`` instead of waiting for the poll loop; where the loop itself
is tested, it is polled for with a generous bounded deadline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from duplexvoice.launcher import WorkerProcess
from duplexvoice.orchestrator.workers.registry import EmbeddedRegistry, RedisRegistry
from duplexvoice.worker.registry import build_record
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

LOGGER = "duplexvoice.orchestrator.workers.registry"
CAPS: dict[str, object] = {
    "streaming": True, "zero_shot": False, "lora": False, "cpu_ok": True,
    "languages": ["en-US"], "emotive_zero_prompt": False, "max_concurrent_sessions": 8,
}


def record(name: str, *, age_s: float = 0.0, port: int = 50051) -> str:
    return json.dumps(build_record(
        name=name, addr=f"grpc://127.0.0.1:{port}", capabilities=CAPS,
        resident_models=["piper-en-us-joe"], metrics={"rtf": 0.1, "queue_depth": 0.0},
        now=time.time() - age_s, extra={"version": "0.1.0"},
    ))


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def registry(redis_server: RedisServer) -> AsyncIterator[RedisRegistry]:
    reg = RedisRegistry(redis_server.url, ttl_s=30.0, poll_interval_s=60.0, timeout_s=0.5)
    yield reg
    await reg.stop()


def names(reg: RedisRegistry | EmbeddedRegistry) -> list[str]:
    return [w.name for w in reg.workers()]


async def test_redis_lists_fresh_records_and_ignores_stale_and_junk(
    redis: aioredis.Redis, registry: RedisRegistry
) -> None:
    await redis.set("worker:tts-b", record("tts-b", port=2), ex=30)
    await redis.set("worker:tts-a", record("tts-a", port=1), ex=30)
    await redis.set("worker:tts-old", record("tts-old", age_s=100.0), ex=30)
    await redis.set("worker:junk", "not json", ex=30)
    await redis.set("worker:list", "[1, 2]", ex=30)
    await redis.hset("worker:hash", "name", "x")
    await redis.set("other:tts-c", record("tts-c"), ex=30)

    await registry.start()  # start() has polled once before returning
    assert names(registry) == ["tts-a", "tts-b"]
    first = registry.workers()[0]
    assert first.addr == "grpc://127.0.0.1:1"
    assert first.resident_models == frozenset({"piper-en-us-joe"})
    assert first.cpu_ok and first.rtf == 0.1

    await redis.delete("worker:tts-a")
    await registry.refresh()
    assert names(registry) == ["tts-b"]


async def test_redis_poll_loop_sees_changes_without_refresh(
    redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    reg = RedisRegistry(redis_server.url, poll_interval_s=0.1, timeout_s=0.5)
    await reg.start()
    try:
        assert reg.workers() == []
        await redis.set("worker:tts-a", record("tts-a"), ex=30)

        async def listed() -> bool:
            return names(reg) == ["tts-a"]

        await eventually(listed)
    finally:
        await reg.stop()


async def test_redis_outage_keeps_last_known_and_logs_once(
    redis_server: RedisServer, registry: RedisRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set("worker:tts-a", record("tts-a"), ex=30)
    finally:
        await client.aclose()
    await registry.start()
    before = registry.workers()
    assert [w.name for w in before] == ["tts-a"]

    redis_server.stop()
    for _ in range(4):
        await registry.refresh()  # never raises
        assert registry.workers() == before
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]

    redis_server.start()  # same port, empty data set
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set("worker:tts-z", record("tts-z"), ex=30)
    finally:
        await client.aclose()

    async def recovered() -> bool:
        await registry.refresh()
        return names(registry) == ["tts-z"]

    await eventually(recovered)
    infos = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert len(infos) == 1, [r.getMessage() for r in infos]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1


@pytest.fixture
def mock_worker_proc() -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        "--default-model-id", "mock-en-us-tone", name="tts-worker-embedded"
    ).start()
    try:
        yield worker
    finally:
        worker.kill()


async def test_embedded_lists_a_real_worker_and_drops_it_when_killed(
    mock_worker_proc: WorkerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    reg = EmbeddedRegistry([f"tts-0={mock_worker_proc.addr}"], poll_interval_s=60.0,
                           timeout_s=2.0)

    async def listed() -> bool:
        await reg.refresh()
        return names(reg) == ["tts-0"]

    try:
        await reg.start()
        await eventually(listed)  # a loaded machine may be slow to answer the first call
        (info,) = reg.workers()
        assert info.addr == f"grpc://{mock_worker_proc.addr}"
        assert "mock-en-us-tone" in info.resident_models
        assert info.streaming and info.max_concurrent_sessions > 0
        assert info.languages

        def warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.name == LOGGER and r.levelno == logging.WARNING]

        before = len(warnings())
        mock_worker_proc.kill()
        await reg.refresh()
        assert reg.workers() == []
        await reg.refresh()
        assert reg.workers() == []
        assert len(warnings()) == before + 1, warnings()  # one per outage, not per check
    finally:
        await reg.stop()


async def test_embedded_unreachable_address_never_raises() -> None:
    addr = f"127.0.0.1:{free_port()}"
    reg = EmbeddedRegistry([addr], poll_interval_s=0.05, timeout_s=0.3)
    await reg.start()
    try:
        await reg.refresh()
        assert reg.workers() == []
        polls = 0
        real_poll = reg._poll

        async def counting_poll() -> bool:
            nonlocal polls
            polls += 1
            return await real_poll()

        reg._poll = counting_poll  # type: ignore[method-assign]
        await eventually(lambda: polls >= 3, what="the background loop polls again")
        assert reg.workers() == []
    finally:
        await reg.stop()
    await reg.stop()  # twice is harmless
