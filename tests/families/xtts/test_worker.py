"""XTTS over real gRPC from a worker process in this environment (tiny checkpoint):
streaming frames, STOP mid-stream, PAUSE/RESUME, LoadModel/UnloadModel and TTL,
bad checkpoint folders (missing file, wrong shapes) with the worker staying up.

One worker serves the whole module (a model load is seconds here). Every wait has a
deadline that only bounds a failure.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("TTS", reason="XTTS needs coqui-tts: run `make worker-env FAMILY=xtts`")

from duplexvoice.audio import SAMPLE_RATE
from duplexvoice.client.worker_client import WorkerClient, synthesize_text
from duplexvoice.launcher import WorkerProcess
from duplexvoice.rpc import tts_pb2
from tests.families.xtts.conftest import FAST
from tests.support.eventually import eventually
from tests.support.grpc_stream import Receiver, check_frames, models, same_audio, within

pytestmark = pytest.mark.integration

DEFAULT = "xtts-en-us-tiny"
SECOND = "xtts-en-us-second"
MISSING = "xtts-en-us-missing"
SHAPES = "xtts-en-us-shapes"
# Two text chunks for the worker (one per sentence): ~1.6 s of tiny-model audio.
TEXT = "Hello, this is a warm-up. The quick brown fox jumps."
WAIT_S = 90.0


def new_id() -> str:
    return f"x-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def packs(
    xtts_checkpoint: Path,
    missing_file_checkpoint: Path,
    wrong_shapes_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from tests.support.tiny.xtts import write_pack

    root = tmp_path_factory.mktemp("xtts-packs")
    write_pack(root, DEFAULT, xtts_checkpoint, **FAST)
    write_pack(root, SECOND, xtts_checkpoint, **FAST)
    write_pack(root, MISSING, missing_file_checkpoint, **FAST)
    write_pack(root, SHAPES, wrong_shapes_checkpoint, **FAST)
    return root


@pytest.fixture(scope="module")
def worker(packs: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        "--voicepack-dirs", str(packs), "--default-model-id", DEFAULT,
        "--keep-default-resident", "true", "--ttl-ms", "1500", "--min-residency-ms", "0",
        "--evict-check-interval-ms", "200",
        name="tts-worker-xtts",
    ).start(timeout=180)
    yield process
    assert process.terminate() == 0


@pytest.fixture
async def client(worker: WorkerProcess) -> AsyncIterator[WorkerClient]:
    async with WorkerClient(worker.addr) as connected:
        yield connected


@pytest.fixture(scope="module")
def reference(worker: WorkerProcess) -> bytes:
    """TEXT spoken whole, once (deterministic settings: every run is the same audio)."""

    async def speak() -> bytes:
        async with WorkerClient(worker.addr) as client:
            frames = await within(collect(client, TEXT), "the reference utterance")
            return check_frames(frames)

    return asyncio.run(speak())


async def collect(client: WorkerClient, text: str, model: str = DEFAULT) -> list[Any]:
    sid = new_id()
    await client.start_session(sid, model)
    try:
        return [frame async for frame in client.synthesize(sid, text)]
    finally:
        await client.end_session(sid)


async def test_streams_well_formed_frames(client: WorkerClient, reference: bytes) -> None:
    listed = await models(client)
    assert listed[DEFAULT].is_loaded and listed[DEFAULT].family == "xtts"
    assert set(listed[DEFAULT].languages) == {"en", "de"}
    seconds = len(reference) / 2 / SAMPLE_RATE
    assert 1.0 < seconds < 4.0  # two sentences of up to 17 tokens each


async def test_stop_mid_stream_then_the_session_goes_on(
    client: WorkerClient, reference: bytes
) -> None:
    sid = new_id()
    await client.start_session(sid)
    got = Receiver(client.synthesize(sid, TEXT), "stopped session")
    await got.wait_for_count(5)
    reply = await client.control(sid, tts_pb2.STOP)
    assert reply.success and reply.message == "stopped"
    stopped = check_frames(await got.end())
    assert len(stopped) < len(reference) * 2 // 3  # it did not run to the end
    after = check_frames(await within(
        _frames(client.synthesize(sid, "Good morning.")), "the utterance after STOP"
    ))
    assert len(after) > 0.5 * SAMPLE_RATE * 2  # a whole one (17 tokens, ~0.8 s)
    await client.end_session(sid)


async def _frames(call: AsyncIterator[tts_pb2.AudioFrame]) -> list[tts_pb2.AudioFrame]:
    return [frame async for frame in call]


async def test_pause_resume_holds_one_session_and_loses_nothing(
    client: WorkerClient, reference: bytes
) -> None:
    a, b = new_id(), new_id()
    await client.start_session(a)
    await client.start_session(b)
    got_a = Receiver(client.synthesize(a, TEXT), "paused session")
    await got_a.wait_for_count(5)
    assert (await client.control(a, tts_pb2.PAUSE)).success
    # Frames already in flight (flow-control window) land before b's later frames on
    # the same connection: once b has received 20, a's count is settled.
    got_b = Receiver(client.synthesize(b, TEXT), "other session")
    await got_b.wait_for_count(15)
    held_at = len(got_a.frames)
    frames_b = await got_b.end()  # a whole utterance of b (on the same model) ...
    assert len(got_a.frames) == held_at, "the paused session received frames"  # ... none to a
    assert not got_a.task.done()
    assert (await client.control(a, tts_pb2.RESUME)).success
    frames_a = await got_a.end()
    assert frames_a[held_at].sequence_number == held_at + 1
    for frames in (frames_a, frames_b):
        assert same_audio(check_frames(frames), reference)
    for sid in (a, b):
        await client.end_session(sid)


async def test_load_unload_refused_in_use(client: WorkerClient) -> None:
    sid = new_id()
    await client.start_session(sid, SECOND)  # loads it on first use
    assert (await models(client))[SECOND].is_loaded
    again = await client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=SECOND))
    assert again.success and again.message == "already resident"
    refused = await client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=SECOND))
    assert not refused.success and "in use" in refused.message
    frames = await within(_frames(client.synthesize(sid, "Hello there.")), "second voice")
    assert len(check_frames(frames)) > 0
    await client.end_session(sid)
    done = await client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=SECOND))
    assert done.success
    assert not (await models(client))[SECOND].is_loaded


async def test_load_then_ttl_unloads_an_idle_model(client: WorkerClient) -> None:
    loaded = await client.stub.LoadModel(
        tts_pb2.LoadModelRequest(model_id=SECOND, preload_only=True)
    )
    assert loaded.success and loaded.load_duration_ms > 0

    async def evicted() -> bool:
        return not (await models(client))[SECOND].is_loaded

    await eventually(evicted, timeout=WAIT_S, what="the idle model expired (--ttl-ms 1500)")
    assert (await models(client))[DEFAULT].is_loaded  # kept resident


@pytest.mark.parametrize(
    ("model_id", "reason"),
    [
        (MISSING, "is missing model.pth"),
        (SHAPES, "does not match its config.json: size mismatch for"),
    ],
)
async def test_bad_checkpoint_is_a_clear_error_and_the_worker_stays_up(
    client: WorkerClient, model_id: str, reason: str
) -> None:
    reply = await client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=model_id))
    assert not reply.success
    assert reason in reply.message and model_id in reply.message
    assert "\n" not in reply.message
    assert not (await models(client))[model_id].is_loaded
    result = await within(synthesize_text(client, "Still here."), "the default voice")
    assert result.frames


async def test_an_unknown_language_is_refused_at_start(client: WorkerClient) -> None:
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.start_session(new_id(), DEFAULT, {"language": "xx"})
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "language 'xx' is not supported" in (err.value.details() or "")
