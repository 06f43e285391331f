"""CosyVoice 2 over real gRPC from a worker process in the family's environment."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "cosyvoice",
    reason="the cosyvoice family is not installed: run `make worker-env FAMILY=cosyvoice`",
)

from duplexvoice.client.worker_client import WorkerClient, synthesize_text
from duplexvoice.launcher import WorkerProcess
from duplexvoice.rpc import tts_pb2
from tests.support.eventually import eventually
from tests.support.grpc_stream import models

pytestmark = pytest.mark.integration
WAIT_S = 60.0
LONG = "Hello there, how are you doing today?"  # ~15 chunks of random speech


@pytest.fixture(scope="module")
def worker(cosy_packs: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(
        "--voicepack-dirs", str(cosy_packs), "--default-model-id", "cosyvoice-en-tiny",
        "--device", "cpu", "--ttl-ms", "1500", "--min-residency-ms", "0",
        "--evict-check-interval-ms", "100", "--warmup-enabled", "false",
        "--keep-default-resident", "true",
        name="tts-worker-cosyvoice",
    ).start(timeout=180)
    yield proc
    proc.terminate()


@pytest.fixture
async def client(worker: WorkerProcess) -> AsyncIterator[WorkerClient]:
    async with WorkerClient(worker.addr) as c:
        await c.wait_ready(within_s=120)
        yield c


async def test_streams_stop_and_pause(client: WorkerClient) -> None:
    whole = await asyncio.wait_for(synthesize_text(client, "Hi."), WAIT_S)
    assert whole.frames and whole.first_audio_ms is not None
    sid = f"s-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid)
    frames: list[tts_pb2.AudioFrame] = []
    call = client.synthesize(sid, LONG)

    async def first(n: int) -> None:
        async for frame in call:
            frames.append(frame)
            if len(frames) >= n:
                return

    await asyncio.wait_for(first(5), WAIT_S)  # frames flow before the end
    assert (await client.control(sid, tts_pb2.PAUSE)).success
    assert (await client.control(sid, tts_pb2.RESUME)).success
    await asyncio.wait_for(first(len(frames) + 5), WAIT_S)  # it goes on after RESUME
    reply = await client.control(sid, tts_pb2.STOP)
    assert reply.success and reply.message == "stopped"

    async def rest() -> None:
        async for frame in call:
            frames.append(frame)

    await asyncio.wait_for(rest(), WAIT_S)
    assert frames[-1].is_final and len(frames) < 15 * 50  # it did not run to the end
    after = [f async for f in client.synthesize(sid, "Hi.")]  # the voice still works
    assert after[-1].is_final and len(after) > 10
    await client.end_session(sid)


async def test_load_unload_ttl(client: WorkerClient) -> None:
    model = "cosyvoice-en-second"
    loaded = await client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=model))
    assert loaded.success, loaded.message
    assert (await models(client))[model].is_loaded
    done = await client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=model))
    assert done.success
    again = await client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=model))
    assert again.success

    async def expired() -> bool:
        return not (await models(client))[model].is_loaded

    await eventually(expired, timeout=WAIT_S, what="the second voice expires (TTL)")
    assert (await models(client))["cosyvoice-en-tiny"].is_loaded  # the default stays


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("cosyvoice-en-missing", "is missing campplus.onnx"),
        ("cosyvoice-en-wrong", "flow.pt does not match the yaml"),
    ],
)
async def test_bad_checkpoint_is_a_clear_error(
    client: WorkerClient, model_id: str, message: str
) -> None:
    reply = await client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=model_id))
    assert not reply.success and message in reply.message
    result = await asyncio.wait_for(synthesize_text(client, "Hi."), WAIT_S)
    assert result.frames  # the worker is up and serves its default voice
