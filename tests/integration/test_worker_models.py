"""Model RPCs over real gRPC: ListModels, LoadModel, UnloadModel, GetCapabilities,
RELOAD of voice packs."""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from duplexvoice.client.worker_client import WorkerClient, synthesize_text
from duplexvoice.launcher import WorkerProcess
from duplexvoice.rpc import tts_pb2
from duplexvoice.worker.config import BUNDLED_VOICEPACKS
from tests.support.eventually import eventually
from tests.support.grpc_stream import models

pytestmark = pytest.mark.integration


async def capabilities(client: WorkerClient) -> tts_pb2.GetCapabilitiesResponse:
    return await client.stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest())


async def test_list_models_and_capabilities(real_client: WorkerClient) -> None:
    listed = await models(real_client)
    assert {"piper-en-us-joe-medium", "espeak-en-us-default", "mock-en-us-tone"} <= set(listed)
    piper = listed["piper-en-us-joe-medium"]
    assert piper.family == "piper" and piper.is_loaded and "en" in piper.languages
    assert piper.metadata["native_sample_rate"] == "22050"
    caps = await capabilities(real_client)
    assert caps.capabilities.streaming and caps.capabilities.cpu_ok
    assert "en" in caps.capabilities.languages
    assert caps.capabilities.max_concurrent_sessions == 32
    assert "piper-en-us-joe-medium" in caps.resident_models  # ready means the default is

    async def espeak_preloaded() -> bool:  # the preload list follows in the background
        return "espeak-en-us-default" in (await capabilities(real_client)).resident_models

    await eventually(espeak_preloaded, what="espeak preloaded")
    for key in ("rtf", "queue_depth", "active_streams"):
        assert key in caps.metrics


async def test_capabilities_report_measured_figures(real_client: WorkerClient) -> None:
    sid = f"c-{uuid.uuid4().hex[:8]}"
    await real_client.start_session(sid)
    _ = [f async for f in real_client.synthesize(sid, "Measure me, please.")]
    caps = await capabilities(real_client)
    # Measured, not a placeholder. How fast is a figure for bench/, not an assertion
    # here: on a loaded machine any bound would flake.
    assert caps.metrics["rtf"] > 0.0 and math.isfinite(caps.metrics["rtf"])
    assert caps.metrics["queue_depth"] >= 1
    await real_client.end_session(sid)


async def test_load_use_unload(mock_client: WorkerClient) -> None:
    model = "espeak-en-us-default"
    assert not (await models(mock_client))[model].is_loaded
    loaded = await mock_client.stub.LoadModel(
        tts_pb2.LoadModelRequest(model_id=model, preload_only=True)
    )
    assert loaded.success and loaded.load_duration_ms > 0
    again = await mock_client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=model))
    assert again.success and again.message == "already resident"
    assert (await models(mock_client))[model].is_loaded
    sid = f"m-{uuid.uuid4().hex[:8]}"
    await mock_client.start_session(sid, model)
    refused = await mock_client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=model))
    assert not refused.success and "in use" in refused.message
    await mock_client.end_session(sid)
    done = await mock_client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=model))
    assert done.success
    assert not (await models(mock_client))[model].is_loaded
    twice = await mock_client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=model))
    assert not twice.success
    # A session asking for it loads it again on first use.
    result = await synthesize_text(mock_client, "Back again.", model)
    assert result.frames


async def test_unknown_model_rpcs(mock_client: WorkerClient) -> None:
    for call in (
        mock_client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id="nope-xx-yy")),
        mock_client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id="nope-xx-yy")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def pack_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "packs"


async def test_reload_discovers_new_packs_and_skips_bad_ones(pack_dir: Path) -> None:
    pack_dir.mkdir()
    worker = WorkerProcess(
        "--default-model-id", "mock-en-us-tone",
        "--voicepack-dirs", f"{BUNDLED_VOICEPACKS},{pack_dir}", name="tts-worker-reload",
    ).start()
    try:
        async with WorkerClient(worker.addr) as client:
            assert "mock-en-us-slow" not in await models(client)
            new = pack_dir / "mock" / "mock-en-us-slow"
            new.mkdir(parents=True)
            source = BUNDLED_VOICEPACKS / "mock/mock-en-us-tone/metadata.yaml"
            shutil.copy(source, new / "metadata.yaml")
            text = (new / "metadata.yaml").read_text().replace("mock-en-us-tone", "mock-en-us-slow")
            (new / "metadata.yaml").write_text(text)
            broken = pack_dir / "mock" / "broken"
            broken.mkdir()
            (broken / "metadata.yaml").write_text("model_id: [not, valid\n")
            reply = await client.control("", tts_pb2.RELOAD)
            assert reply.success and "skipped 1" in reply.message
            assert "mock-en-us-slow" in await models(client)
            result = await synthesize_text(client, "A new voice.", "mock-en-us-slow")
            assert result.frames
    finally:
        assert worker.terminate() == 0
