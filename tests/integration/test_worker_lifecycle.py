"""The worker process as an operator sees it: registry record in a real Redis,
graceful SIGTERM, crash expiry, Redis outages.

Every wait is for an event or a state (with ``eventually``), under a generous
deadline that only bounds a failure.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest
import redis.asyncio as aioredis

from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.launcher import WorkerProcess
from duplexvoice.rpc import tts_pb2
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def read_record(client: aioredis.Redis, name: str) -> dict[str, object] | None:
    raw = await client.get(f"worker:{name}")
    return None if raw is None else dict(json.loads(raw))


def start_worker(redis_url: str, name: str) -> WorkerProcess:
    return WorkerProcess(
        "--default-model-id", "mock-en-us-tone", "--redis-url", redis_url,
        "--heartbeat-interval-s", "0.5", "--registry-ttl-s", "2", name=name,
    ).start()


async def test_registers_refreshes_and_deregisters(redis_server: RedisServer) -> None:
    name = f"w-{uuid.uuid4().hex[:6]}"
    worker = start_worker(redis_server.url, name)
    client = aioredis.from_url(redis_server.url)
    try:
        record = await read_record(client, name)
        assert record is not None
        assert record["name"] == name and str(record["addr"]).startswith("grpc://")
        assert str(record["addr"]).endswith(worker.addr.split(":")[1])
        assert record["resident_models"] == ["mock-en-us-tone"]
        metrics = record["metrics"]
        assert isinstance(metrics, dict) and {"rtf", "queue_depth"} <= set(metrics)
        caps = record["capabilities"]
        assert isinstance(caps, dict) and caps["streaming"] is True
        assert 0 < await client.ttl(f"worker:{name}") <= 2
        first_ts = record["last_heartbeat_ts"]
        assert isinstance(first_ts, float)
        async with WorkerClient(worker.addr) as grpc_client:
            await grpc_client.stub.LoadModel(
                tts_pb2.LoadModelRequest(model_id="espeak-en-us-default", preload_only=True)
            )

            async def shows_espeak() -> bool:
                rec = await read_record(client, name)
                return rec is not None and "espeak-en-us-default" in rec["resident_models"]  # type: ignore[operator]

            await eventually(shows_espeak, what="the record lists the loaded model")
            await grpc_client.start_session("s1")

            async def shows_session() -> bool:
                rec = await read_record(client, name)
                return rec is not None and rec["metrics"]["queue_depth"] == 1  # type: ignore[index]

            await eventually(shows_session, what="the record counts the session")
        later = await read_record(client, name)
        assert later is not None and float(later["last_heartbeat_ts"]) > first_ts  # type: ignore[arg-type]
        assert worker.terminate() == 0
        assert await read_record(client, name) is None  # deregistered at once
    finally:
        worker.kill()
        await client.aclose()


async def test_crashed_worker_expires(redis_server: RedisServer) -> None:
    name = f"w-{uuid.uuid4().hex[:6]}"
    worker = start_worker(redis_server.url, name)
    client = aioredis.from_url(redis_server.url)
    try:
        assert await read_record(client, name) is not None
        worker.kill()  # SIGKILL: no chance to deregister

        async def gone() -> bool:
            return await read_record(client, name) is None

        await eventually(gone, what="the killed worker's record expired")
    finally:
        await client.aclose()


async def test_redis_outage_never_stops_synthesis(redis_server: RedisServer) -> None:
    name = f"w-{uuid.uuid4().hex[:6]}"
    worker = start_worker(redis_server.url, name)
    try:
        redis_server.stop()
        async with WorkerClient(worker.addr) as grpc_client:
            await grpc_client.start_session("s1")
            frames = [f async for f in grpc_client.synthesize("s1", "Redis is down.")]
            assert frames[-1].is_final and len(frames) > 10
        redis_server.start()  # same port
        client = aioredis.from_url(redis_server.url)
        try:
            async def back() -> bool:
                return await read_record(client, name) is not None

            await eventually(back, what="the worker re-registered")
        finally:
            await client.aclose()
        assert worker.terminate() == 0
        # One warning for the outage, not one per heartbeat.
        assert worker.text().count("WARNING") <= 2
    finally:
        worker.kill()


async def test_sigterm_ends_active_streams_within_grace() -> None:
    worker = WorkerProcess(
        "--default-model-id", "mock-en-us-tone", "--shutdown-grace-s", "1",
        name="tts-worker-grace",
    ).start()
    try:
        async with WorkerClient(worker.addr) as client:
            await client.start_session("s1")
            # About a minute of audio, rendered at real time: far longer than the grace.
            frames = aiter(client.synthesize("s1", "[[slow:40]] " + "A very long speech. " * 40))
            first = await asyncio.wait_for(anext(frames), 30)
            assert first.audio_data and not first.is_final  # streaming
            assert worker.proc is not None
            worker.proc.terminate()

            async def read_to_the_end() -> None:
                async for frame in frames:
                    assert not frame.is_final, "the stream ended normally: the worker waited"
                raise AssertionError("the stream ended without an error or a final marker")

            # The stream outlives the 1 s grace: the worker cuts it (well before the
            # minute it would take to finish), then exits cleanly.
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(read_to_the_end(), 30)
            code = await asyncio.get_running_loop().run_in_executor(None, worker.proc.wait, 30)
            assert code == 0
    finally:
        worker.kill()
