"""LoRA voices through the worker's runtime and servicer, with a fake family whose
``load_lora`` records what it was asked: the base loads first and stays resident while
a LoRA voice is, unloads in the wrong order are refused with the reason, the registry
record says which base each LoRA voice needs, and a LoRA pack with a bad base fails
cleanly. (Real LoRA adapters over Sesame CSM: tests/families/csm.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from duplexvoice.rpc import tts_pb2
from duplexvoice.worker.adapters.base import AdapterError
from duplexvoice.worker.config import WorkerConfig
from duplexvoice.worker.model_policy import ModelManagerConfig
from duplexvoice.worker.runtime import WorkerRuntime
from duplexvoice.worker.service import TTSServicer
from duplexvoice.worker.voicepacks import VoicePack
from tests.support.fake_grpc import Aborted, FakeContext
from tests.support.fake_tts import FAMILY, MODEL_ID, FakeAdapter, write_fake_pack

pytestmark = pytest.mark.unit

LORA = "fake-en-us-warm"
ORPHAN = "fake-en-us-orphan"


class LoraFake(FakeAdapter):
    """A fake base voice whose LoRA voices are fakes that remember their base."""

    def load_lora(self, pack: VoicePack) -> FakeAdapter:
        if self.closed:
            raise AdapterError("base is closed")
        voice = FakeAdapter()
        voice.base = self  # type: ignore[attr-defined]
        voice.lora_name = pack.model_id  # type: ignore[attr-defined]
        return voice


@pytest.fixture
async def servicer(tmp_path: Path) -> AsyncIterator[TTSServicer]:
    write_fake_pack(tmp_path, MODEL_ID)
    write_fake_pack(tmp_path, "fake-en-us-other")
    write_fake_pack(tmp_path, LORA, base_model=MODEL_ID)
    write_fake_pack(tmp_path, ORPHAN, base_model="fake-en-us-missing")
    config = WorkerConfig(
        name="tts-worker-lora", voicepack_dirs=[tmp_path], synthesis_niceness=0,
        models=ModelManagerConfig(default_model_id="fake-en-us-other", warmup_enabled=False),
    )
    rt = WorkerRuntime(config, adapters={FAMILY: LoraFake})
    assert rt.scan_errors == []
    await rt.start()
    yield TTSServicer(rt)
    await rt.close()


async def start(servicer: TTSServicer, sid: str, model_id: str) -> None:
    reply = await servicer.StartSession(
        tts_pb2.StartSessionRequest(session_id=sid, model_id=model_id), FakeContext())
    assert reply.success


async def unload(servicer: TTSServicer, model_id: str) -> tts_pb2.UnloadModelResponse:
    return await servicer.UnloadModel(tts_pb2.UnloadModelRequest(model_id=model_id),
                                      FakeContext())


async def test_a_lora_session_loads_the_base_then_the_adapter_over_it(
    servicer: TTSServicer,
) -> None:
    rt = servicer.rt
    await start(servicer, "s1", LORA)
    assert set(rt.models.resident_models()) == {"fake-en-us-other", MODEL_ID, LORA}
    lora, base = rt.models.get(LORA), rt.models.get(MODEL_ID)
    assert lora is not None and base is not None
    assert lora.adapter.base is base.adapter  # type: ignore[attr-defined]
    assert rt.models.refcount(LORA) == 1 and rt.models.refcount(MODEL_ID) == 0
    record = rt.record()
    assert record["model_bases"] == {LORA: MODEL_ID, ORPHAN: "fake-en-us-missing"}
    assert record["capabilities"]["lora"] is True  # type: ignore[index]
    listed = await servicer.ListModels(tts_pb2.ListModelsRequest(), FakeContext())
    meta = {m.model_id: dict(m.metadata) for m in listed.models}
    assert meta[LORA]["base_model"] == MODEL_ID and "base_model" not in meta[MODEL_ID]


async def test_unloads_in_the_wrong_order_are_refused_with_the_reason(
    servicer: TTSServicer,
) -> None:
    await start(servicer, "s1", LORA)
    reply = await unload(servicer, LORA)
    assert not reply.success and "in use by 1 session" in reply.message
    reply = await unload(servicer, MODEL_ID)
    assert not reply.success and f"base of LoRA voice(s) {LORA}" in reply.message
    assert servicer.rt.end_session("s1")
    assert (await unload(servicer, LORA)).success
    base = servicer.rt.models.get(MODEL_ID)
    assert (await unload(servicer, MODEL_ID)).success
    assert base is not None and base.adapter.closed  # type: ignore[attr-defined]


async def test_a_lora_voice_whose_base_has_no_pack_is_refused(servicer: TTSServicer) -> None:
    with pytest.raises(Aborted) as err:
        await servicer.StartSession(
            tts_pb2.StartSessionRequest(session_id="s2", model_id=ORPHAN), FakeContext())
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    assert "no voice pack for its base 'fake-en-us-missing'" in str(err.value)
    assert ORPHAN not in servicer.rt.models.resident_models()


async def test_a_lora_voice_loads_without_a_warm_up_and_starts_at_its_base_loudness(
    servicer: TTSServicer,
) -> None:
    import numpy as np

    rt = servicer.rt
    await rt.models.load(MODEL_ID)
    base = rt.models.get(MODEL_ID)
    assert base is not None
    tone = 0.05 * np.sin(np.linspace(0, 2 * np.pi * 440, 48_000)).astype(np.float32)
    base.loudness.calibrate(tone, 48_000)
    assert base.loudness.calibrated
    await start(servicer, "s1", LORA)
    lora = rt.models.get(LORA)
    assert lora is not None and lora.warmup_ms == 0.0
    assert lora.adapter.texts() == []  # type: ignore[attr-defined]  # nothing synthesized
    assert lora.loudness is not base.loudness  # its own, seeded from the base's
    assert lora.loudness.gain_db == base.loudness.gain_db and lora.loudness.calibrated
