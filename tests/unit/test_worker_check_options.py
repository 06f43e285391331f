"""A family's session options are checked at StartSession: a bad one is refused there
with the reason (INVALID_ARGUMENT) and the model reference it took is given back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from duplexvoice.rpc import tts_pb2
from duplexvoice.worker.adapters.base import AdapterError, SynthesisOptions
from duplexvoice.worker.config import WorkerConfig
from duplexvoice.worker.model_policy import ModelManagerConfig
from duplexvoice.worker.runtime import WorkerRuntime
from duplexvoice.worker.service import TTSServicer
from tests.support.fake_grpc import Aborted, FakeContext
from tests.support.fake_tts import FAMILY, MODEL_ID, FakeAdapter, write_fake_pack

pytestmark = pytest.mark.unit


class PickyFake(FakeAdapter):
    def check_options(self, options: SynthesisOptions) -> None:
        if options.extra.get("speaker", "0") != "0":
            raise AdapterError(f"fake: option speaker={options.extra['speaker']!r} unknown")


@pytest.fixture
async def servicer(tmp_path: Path) -> AsyncIterator[TTSServicer]:
    write_fake_pack(tmp_path, MODEL_ID)
    config = WorkerConfig(
        name="tts-worker-options", voicepack_dirs=[tmp_path], synthesis_niceness=0,
        models=ModelManagerConfig(default_model_id=MODEL_ID, warmup_enabled=False),
    )
    rt = WorkerRuntime(config, adapters={FAMILY: PickyFake})
    await rt.start()
    yield TTSServicer(rt)
    await rt.close()


async def test_a_bad_family_option_is_refused_at_start_session(servicer: TTSServicer) -> None:
    with pytest.raises(Aborted) as err:
        await servicer.StartSession(tts_pb2.StartSessionRequest(
            session_id="s1", options={"speaker": "7"}), FakeContext())
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "speaker='7' unknown" in str(err.value)
    assert servicer.rt.sessions == {} and servicer.rt.models.refcount(MODEL_ID) == 0
    reply = await servicer.StartSession(tts_pb2.StartSessionRequest(
        session_id="s1", options={"speaker": "0"}), FakeContext())
    assert reply.success and servicer.rt.models.refcount(MODEL_ID) == 1
