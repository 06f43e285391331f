"""The worker registry record (WIRE §3) against a real Redis-compatible server.

TTLs and intervals are scaled down (ttl ~2 s, interval 0.3 s) to keep the file fast.
Waits are for the behaviour (the key expires, heartbeats retry and recover), with
generous deadlines that only bound a failure; no assertion depends on how fast a
loaded machine gets there. The first tests are pure checks of ``build_record``
(marked unit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from duplexvoice.worker.registry import (
    CAPABILITY_FIELDS,
    RegistryPublisher,
    build_record,
    list_workers,
    worker_key,
)
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer, free_port

LOGGER = "duplexvoice.worker.registry"
unit = pytest.mark.unit
integration = pytest.mark.integration

CAPS: dict[str, object] = {
    "streaming": True,
    "zero_shot": False,
    "lora": False,
    "cpu_ok": True,
    "languages": ["en-US"],
    "emotive_zero_prompt": False,
    "max_concurrent_sessions": 8,
}


def record(name: str = "tts-worker-0", **overrides: Any) -> dict[str, object]:
    args: dict[str, Any] = {
        "name": name,
        "addr": "grpc://127.0.0.1:50051",
        "capabilities": CAPS,
        "resident_models": ["piper-en-us-joe"],
        "metrics": {"rtf": 0.1, "queue_depth": 0.0},
        "now": time.time(),
        "extra": {"version": "0.1.0", "audio": {"sr": 48000, "frame_ms": 20}},
    }
    args.update(overrides)
    return build_record(**args)


# -- build_record (pure) ---------------------------------------------------------------


@unit
def test_build_record_has_every_contract_field_with_its_type() -> None:
    rec = record(now=1700000000.5)
    assert rec["name"] == "tts-worker-0"
    assert rec["addr"] == "grpc://127.0.0.1:50051"
    caps = rec["capabilities"]
    assert isinstance(caps, dict) and set(CAPABILITY_FIELDS) <= set(caps)
    assert caps["languages"] == ["en-US"]
    assert rec["resident_models"] == ["piper-en-us-joe"]
    assert rec["metrics"] == {"rtf": 0.1, "queue_depth": 0.0}
    assert rec["last_heartbeat_ts"] == 1700000000.5
    assert rec["version"] == "0.1.0" and rec["audio"] == {"sr": 48000, "frame_ms": 20}
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec


@unit
def test_extra_fields_never_override_the_contract() -> None:
    rec = record(extra={"name": "impostor", "metrics": {}, "last_heartbeat_ts": 0, "x": 1})
    assert rec["name"] == "tts-worker-0"
    assert rec["metrics"] == {"rtf": 0.1, "queue_depth": 0.0}
    assert rec["last_heartbeat_ts"] != 0
    assert rec["x"] == 1


@unit
def test_non_finite_metrics_become_null_so_the_record_stays_strict_json() -> None:
    rec = record(metrics={"rtf": math.nan, "queue_depth": 2, "x": math.inf})
    assert rec["metrics"] == {"rtf": None, "queue_depth": 2.0, "x": None}
    json.dumps(rec, allow_nan=False)


@unit
@pytest.mark.parametrize(
    "overrides",
    [
        {"addr": "127.0.0.1:50051"},
        {"name": ""},
        {"capabilities": {k: v for k, v in CAPS.items() if k != "lora"}},
        {"capabilities": {**CAPS, "languages": "en-US"}},
        {"metrics": {"rtf": 0.1}},
        {"resident_models": "piper-en-us-joe"},
    ],
)
def test_build_record_rejects_contract_violations(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        record(**overrides)


@unit
def test_worker_key_and_publisher_arguments() -> None:
    assert worker_key("worker:", "tts-worker-0") == "worker:tts-worker-0"
    with pytest.raises(ValueError, match="must exceed"):
        RegistryPublisher("redis://127.0.0.1:1/0", "w", record, ttl_s=1.0, interval_s=1.0)


# -- a publisher against a real server -------------------------------------------------


class FakeWorker:
    """The state a worker reports; counts snapshots to check poke() coalescing."""

    def __init__(self, name: str = "tts-worker-0") -> None:
        self.name = name
        self.resident_models = ["piper-en-us-joe"]
        self.queue_depth = 0
        self.snapshots = 0

    def snapshot(self) -> dict[str, object]:
        self.snapshots += 1
        return record(
            self.name,
            resident_models=list(self.resident_models),
            metrics={"rtf": 0.1, "queue_depth": float(self.queue_depth)},
        )


PublisherFactory = Callable[..., Awaitable[RegistryPublisher]]


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield redis_client
    await redis_client.aclose()


@pytest.fixture
async def start_publisher(redis_server: RedisServer) -> AsyncIterator[PublisherFactory]:
    started: list[RegistryPublisher] = []

    async def start(worker: FakeWorker, **kwargs: Any) -> RegistryPublisher:
        options: dict[str, Any] = {"ttl_s": 2.0, "interval_s": 0.3, "timeout_s": 0.5}
        options.update(kwargs)
        url = options.pop("url", redis_server.url)
        publisher = RegistryPublisher(url, worker.name, worker.snapshot, **options)
        started.append(publisher)
        await publisher.start()
        return publisher

    yield start
    for publisher in started:
        await publisher.stop()


async def read(client: aioredis.Redis, name: str = "tts-worker-0") -> dict[str, Any] | None:
    raw = await client.get(worker_key("worker:", name))
    return None if raw is None else dict(json.loads(raw))


@integration
async def test_record_is_written_on_start_with_every_field(
    client: aioredis.Redis, start_publisher: PublisherFactory
) -> None:
    before = time.time()
    publisher = await start_publisher(FakeWorker())
    assert publisher.registered
    rec = await read(client)
    assert rec is not None
    assert isinstance(rec["name"], str) and rec["name"] == "tts-worker-0"
    assert isinstance(rec["addr"], str) and rec["addr"].startswith("grpc://")
    assert set(CAPABILITY_FIELDS) <= set(rec["capabilities"])
    assert isinstance(rec["capabilities"]["languages"], list)
    assert isinstance(rec["capabilities"]["max_concurrent_sessions"], int)
    assert rec["resident_models"] == ["piper-en-us-joe"]
    assert {"rtf", "queue_depth"} <= set(rec["metrics"])
    assert all(isinstance(v, float) for v in rec["metrics"].values())
    assert before <= rec["last_heartbeat_ts"] <= time.time()
    assert rec["audio"] == {"sr": 48000, "frame_ms": 20}


@integration
@pytest.mark.parametrize("ttl_s", [2.0, 1.5])
async def test_key_carries_a_ttl_no_longer_than_configured(
    client: aioredis.Redis, start_publisher: PublisherFactory, ttl_s: float
) -> None:
    await start_publisher(FakeWorker(), ttl_s=ttl_s)
    pttl = await client.pttl("worker:tts-worker-0")
    assert 0 < pttl <= ttl_s * 1000


@integration
async def test_heartbeat_refreshes_timestamp_ttl_and_snapshot(
    client: aioredis.Redis, start_publisher: PublisherFactory
) -> None:
    worker = FakeWorker()
    await start_publisher(worker, ttl_s=1.0, interval_s=0.3)
    first = await read(client)
    assert first is not None
    worker.resident_models = ["piper-en-us-joe", "espeak-en-us-default"]
    worker.queue_depth = 3

    async def refreshed() -> dict[str, Any] | None:
        rec = await read(client)
        if rec is None or rec["last_heartbeat_ts"] <= first["last_heartbeat_ts"]:
            return None
        return rec

    rec = await eventually(refreshed, what="a heartbeat rewrote the record")
    assert rec["resident_models"] == ["piper-en-us-joe", "espeak-en-us-default"]
    assert rec["metrics"]["queue_depth"] == 3.0

    # Heartbeats renew the expiry: a record written more than one TTL after the first
    # write still carries a fresh TTL (the first write alone would have expired).
    async def renewed_past_the_first_ttl() -> bool:
        rec = await read(client)
        pttl = await client.pttl("worker:tts-worker-0")
        return (rec is not None and rec["last_heartbeat_ts"] > first["last_heartbeat_ts"] + 1.0
                and 0 < pttl <= 1000)

    await eventually(renewed_past_the_first_ttl, what="the record renewed past its first TTL")


@integration
async def test_poke_refreshes_promptly_and_coalesces(
    client: aioredis.Redis, start_publisher: PublisherFactory
) -> None:
    worker = FakeWorker()
    # No heartbeat during the test (10 minutes apart): every write here is a poke's.
    publisher = await start_publisher(worker, ttl_s=1200.0, interval_s=600.0)
    worker.resident_models = []
    snapshots = worker.snapshots
    for _ in range(50):
        publisher.poke()

    async def shows(models: list[str]) -> bool:
        rec = await read(client)
        return rec is not None and rec["resident_models"] == models

    await eventually(lambda: shows([]), what="the poked write")

    # From another thread too (models load in executor threads).
    worker.resident_models = ["espeak-en-us-default"]
    thread = threading.Thread(target=publisher.poke)
    thread.start()
    thread.join()
    await eventually(lambda: shows(["espeak-en-us-default"]), what="the write poked from a thread")
    # Fifty pokes made one write: the later poke's write is only the second one.
    assert worker.snapshots - snapshots == 2


@integration
async def test_stop_deletes_the_key(
    client: aioredis.Redis, start_publisher: PublisherFactory
) -> None:
    worker = FakeWorker()
    publisher = await start_publisher(worker)
    assert await client.exists("worker:tts-worker-0") == 1
    await publisher.stop()
    assert await client.exists("worker:tts-worker-0") == 0
    assert not publisher.registered
    snapshots = worker.snapshots
    publisher.poke()  # after stop: a no-op, not an error
    # A live publisher on the same loop and server, poked after it, gets its write
    # through: the stopped one had the same chance, and wrote nothing.
    witness = FakeWorker("tts-worker-witness")
    live = await start_publisher(witness)
    witness.queue_depth = 5
    live.poke()

    async def witness_updated() -> bool:
        rec = await read(client, "tts-worker-witness")
        return rec is not None and rec["metrics"]["queue_depth"] == 5.0

    await eventually(witness_updated, what="the witness publisher's poked write")
    assert await client.exists("worker:tts-worker-0") == 0
    assert worker.snapshots == snapshots


CRASHY_WORKER = textwrap.dedent(
    """
    import asyncio, sys, time
    from duplexvoice.worker.registry import RegistryPublisher

    def snapshot():
        return {"name": "crashy", "addr": "grpc://127.0.0.1:1", "last_heartbeat_ts": time.time()}

    async def main():
        publisher = RegistryPublisher(sys.argv[1], "crashy", snapshot, ttl_s=3, interval_s=0.3)
        await publisher.start()
        print("registered" if publisher.registered else "down", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


@integration
async def test_record_expires_after_the_ttl_when_the_worker_dies(
    client: aioredis.Redis, redis_server: RedisServer
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHY_WORKER, redis_server.url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.strip() == b"registered"
        first = await read(client, "crashy")
        assert first is not None

        async def heartbeat_seen() -> bool:
            rec = await read(client, "crashy")
            return rec is not None and rec["last_heartbeat_ts"] > first["last_heartbeat_ts"]

        await eventually(heartbeat_seen, what="a heartbeat of the crashy worker")
    finally:
        proc.send_signal(signal.SIGKILL)  # no stop(), no DEL: a crash
        await proc.wait()
    # A crash is not a goodbye: the key stays until its TTL (3 s, renewed every 0.3 s)...
    assert await client.exists("worker:crashy") == 1

    async def gone() -> bool:
        return await client.exists("worker:crashy") == 0

    # ...and then expires on its own (the deadline only bounds a failure).
    await eventually(gone, what="the dead worker's key expired")


@integration
async def test_redis_outage_logs_once_and_reregisters_when_back(
    client: aioredis.Redis,
    redis_server: RedisServer,
    start_publisher: PublisherFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    worker = FakeWorker()
    publisher = await start_publisher(worker, ttl_s=2.0, interval_s=0.3, timeout_s=0.3)
    assert publisher.registered
    redis_server.stop()
    snapshots = worker.snapshots
    # It keeps retrying while Redis is down (each attempt builds a record).
    await eventually(lambda: worker.snapshots - snapshots >= 4 and not publisher.registered,
                     what="several failed heartbeats")
    publisher.poke()  # the worker's own calls still never raise
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage()

    redis_server.start()  # same port, empty: only a re-registration brings the key back

    async def back() -> bool:
        # The key can be visible a moment before the publisher sees its write succeed.
        try:
            return publisher.registered and await read(client) is not None
        except (aioredis.ConnectionError, OSError):
            return False

    await eventually(back, what="re-registered after the outage")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("is back" in m for m in infos) == 1
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1


@integration
async def test_start_with_redis_down_does_not_raise_and_registers_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = RedisServer(free_port())  # not started yet
    publisher = RegistryPublisher(
        server.url, "late", FakeWorker("late").snapshot, ttl_s=2.0, interval_s=0.3,
        timeout_s=0.3,
    )
    try:
        await asyncio.wait_for(publisher.start(), 20)  # returns, does not raise
        assert not publisher.registered
        server.start()
        redis_client = aioredis.Redis.from_url(server.url)

        async def registered() -> bool:
            return await redis_client.exists("worker:late") == 1

        try:
            await eventually(registered, what="registered once Redis is up")
        finally:
            await redis_client.aclose()
        assert publisher.registered
    finally:
        await publisher.stop()
        server.close()
    assert sum(r.levelno == logging.WARNING for r in caplog.records if r.name == LOGGER) == 1


@integration
async def test_hung_redis_does_not_block_heartbeats_or_shutdown(
    redis_server: RedisServer, start_publisher: PublisherFactory
) -> None:
    worker = FakeWorker()
    publisher = await start_publisher(worker, ttl_s=2.0, interval_s=0.3, timeout_s=0.3)
    redis_server.freeze()  # accepts connections, answers nothing
    try:
        snapshots = worker.snapshots
        # A write that hangs times out, and the next heartbeats still come.
        await eventually(lambda: worker.snapshots - snapshots >= 3 and not publisher.registered,
                         what="heartbeats timing out against the hung server")
        # cancel + DEL + close, each bounded by timeout_s: stop() returns (a hang
        # would run into this generous deadline).
        await asyncio.wait_for(publisher.stop(), 20)
    finally:
        redis_server.thaw()


@integration
async def test_list_workers_uses_scan_and_skips_junk() -> None:
    # KEYS is disabled on this server: list_workers would fail if it used it.
    with RedisServer(extra_args=["--rename-command", "KEYS", ""]) as server:
        redis_client = aioredis.Redis.from_url(server.url)  # bytes, not str
        try:
            with pytest.raises(aioredis.ResponseError):
                await redis_client.keys("*")
            for i in range(250):  # more than one SCAN page and one MGET batch
                rec = record(f"tts-worker-{i:03d}", extra={"future_field": {"x": i}})
                await redis_client.set(worker_key("worker:", str(rec["name"])), json.dumps(rec))
            await redis_client.set("worker:not-json", "{nope")
            await redis_client.set("worker:a-list", "[1, 2]")
            await redis_client.set("worker:no-name", json.dumps({"addr": "grpc://h:1"}))
            await redis_client.set("worker:binary", b"\xff\xfe")
            await redis_client.hset("worker:a-hash", "name", "x")
            await redis_client.set("other:tts-worker-x", json.dumps(record("tts-worker-x")))

            workers = await list_workers(redis_client)
            assert [w["name"] for w in workers] == [f"tts-worker-{i:03d}" for i in range(250)]
            assert workers[7]["future_field"] == {"x": 7}  # unknown fields are tolerated

            # A prefix with glob characters matches only itself.
            await redis_client.set("tts[a]:w1", json.dumps(record("w1")))
            await redis_client.set("ttsa:w2", json.dumps(record("w2")))
            assert [w["name"] for w in await list_workers(redis_client, "tts[a]:")] == ["w1"]
        finally:
            await redis_client.aclose()


@integration
async def test_list_workers_sees_live_publishers(
    client: aioredis.Redis, start_publisher: PublisherFactory
) -> None:
    first = await start_publisher(FakeWorker("tts-worker-a"))
    await start_publisher(FakeWorker("tts-worker-b"))
    assert [w["name"] for w in await list_workers(client)] == ["tts-worker-a", "tts-worker-b"]
    await first.stop()
    assert [w["name"] for w in await list_workers(client)] == ["tts-worker-b"]
