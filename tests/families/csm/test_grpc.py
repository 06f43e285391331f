"""The CSM family over real gRPC: a worker process in this environment serving tiny
CSM packs (and LoRA voices over them): streaming frames, STOP, PAUSE/RESUME,
load/unload/TTL, bad checkpoints, LoRA voices through the model manager, and seeded
sessions that repeat bit for bit with warm-up on."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="CSM family not installed: run `make worker-env FAMILY=csm`")

from duplexvoice.client.worker_client import WorkerClient, synthesize_text
from duplexvoice.launcher import WorkerProcess
from duplexvoice.rpc import tts_pb2
from tests.families.csm.conftest import BASE, LORA_A, LORA_B, TinyCsm
from tests.integration.test_worker_stream import collect
from tests.support.eventually import eventually
from tests.support.grpc_stream import Receiver, check_frames, models, same_audio
from tests.support.tiny import csm as tiny

pytestmark = pytest.mark.integration

LONG = (
    "One, two, three, four, five, six, seven, eight, nine, ten. "
    "The quick brown fox jumps over the lazy dog, again and again."
)
SHORT = "Hello there."
SEED = {"seed": "11"}
BAD_CODES = "csm-en-bad-codes"
CODEC_RANGE = "outside the codec's 0..63 range"


def new_id() -> str:
    return f"csm-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def packs_dir(tiny_csm: TinyCsm, bad_codes_checkpoint: Path) -> Path:
    folder = tiny_csm.root / f"grpc-packs-{uuid.uuid4().hex[:6]}"
    tiny.write_pack(folder, BASE, tiny_csm.checkpoint, threads=1, frames_per_char=1.0)
    for model_id, seed in ((LORA_A, 1), (LORA_B, 2)):
        tiny.write_lora_pack(folder, model_id, tiny_csm.root / f"lora-{seed}", BASE)
    missing = tiny_csm.root / "grpc-missing"
    shutil.copytree(tiny_csm.checkpoint, missing, dirs_exist_ok=True)
    (missing / "tokenizer.json").unlink()
    tiny.write_pack(folder, "csm-en-missing", missing)
    wrong = tiny_csm.root / "grpc-shapes"
    shutil.copytree(tiny_csm.checkpoint, wrong, dirs_exist_ok=True)
    config = json.loads((wrong / "config.json").read_text())
    config["intermediate_size"] = 96  # the weights were saved for 128
    (wrong / "config.json").write_text(json.dumps(config))
    tiny.write_pack(folder, "csm-en-shapes", wrong)
    tiny.write_pack(folder, BAD_CODES, bad_codes_checkpoint, threads=1, frames_per_char=1.0)
    return folder


@pytest.fixture(scope="module")
def worker(packs_dir: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(
        "--voicepack-dirs", str(packs_dir), "--default-model-id", BASE, "--device", "cpu",
        "--keep-default-resident", "true", "--ttl-ms", "1500", "--min-residency-ms", "0",
        "--evict-check-interval-ms", "200", "--resident-cap", "6",
        "--warmup-text", "Hi.", "--synthesis-threads", "4",
        name=f"tts-worker-csm-{uuid.uuid4().hex[:6]}",
    ).start(timeout=180)
    yield proc
    proc.terminate()


@pytest.fixture
async def client(worker: WorkerProcess) -> AsyncIterator[WorkerClient]:
    async with WorkerClient(worker.addr) as c:
        await c.wait_ready()
        yield c


async def test_streams_frames(client: WorkerClient) -> None:
    sid = new_id()
    await client.start_session(sid, BASE, SEED)
    got = Receiver(client.synthesize(sid, LONG), "csm stream")
    await got.wait_for_count(3)
    # Frames arrive while the model is still generating (the stream has not ended).
    assert not got.task.done()
    frames = await got.end()
    pcm = check_frames(frames)
    assert len(frames) > 100 and max(abs(b - 128) for b in pcm[1::2]) > 0
    await client.end_session(sid)
    again = await synthesize_text(client, SHORT, BASE, SEED)
    same = await synthesize_text(client, SHORT, BASE, SEED)
    assert same_audio(again.pcm, same.pcm)  # seeded: the same audio


async def test_stop_mid_stream_then_the_next_utterance(client: WorkerClient) -> None:
    whole = await synthesize_text(client, LONG, BASE, SEED)
    sid = new_id()
    await client.start_session(sid, BASE, SEED)
    got = Receiver(client.synthesize(sid, LONG), "stopped")
    await got.wait_for_count(5)
    reply = await client.control(sid, tts_pb2.STOP)
    assert reply.success and reply.message == "stopped"
    frames = await got.end()
    check_frames(frames)
    assert len(frames) < len(whole.frames) // 2
    after = await collect(client.synthesize(sid, SHORT))
    assert len(check_frames(after)) > 10
    await client.end_session(sid)


async def test_pause_resume(client: WorkerClient) -> None:
    reference = await synthesize_text(client, LONG, BASE, SEED)
    a, b = new_id(), new_id()
    await client.start_session(a, BASE, SEED)
    await client.start_session(b, BASE, SEED)
    got_a = Receiver(client.synthesize(a, LONG), "paused")
    got_b = Receiver(client.synthesize(b, LONG), "other")
    await got_a.wait_for_count(5)
    assert (await client.control(a, tts_pb2.PAUSE)).success
    held_at = await held_while(got_a, got_b, 30)
    assert not got_a.task.done(), "the paused stream ran to its end"
    assert (await client.control(a, tts_pb2.RESUME)).success
    frames_a, frames_b = await got_a.end(), await got_b.end()
    assert len(frames_a) > held_at + 1  # it went on after RESUME
    assert same_audio(check_frames(frames_a), reference.pcm)
    assert same_audio(check_frames(frames_b), reference.pcm)
    for sid in (a, b):
        await client.end_session(sid)


async def held_while(paused: Receiver, other: Receiver, n: int, tries: int = 5) -> int:
    """Frames sent before a PAUSE may still be on their way, however many: wait for a
    window in which ``other`` receives ``n`` frames and ``paused`` none, and return the
    count ``paused`` holds at. Fails when no such window comes in ``tries`` windows."""
    for _ in range(tries):
        held_at = len(paused.frames)
        await other.wait_for_count(len(other.frames) + n)
        if len(paused.frames) == held_at:
            return held_at
    raise AssertionError(f"{paused.name}: frames kept arriving while paused")


async def test_bad_checkpoints_are_clear_errors_and_the_worker_stays_up(
    client: WorkerClient,
) -> None:
    for model_id, reason in (("csm-en-missing", "missing tokenizer.json"),
                             ("csm-en-shapes", "cannot load CSM checkpoint")):
        reply = await client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=model_id))
        assert not reply.success and reason in reply.message, reply.message
    ok = await synthesize_text(client, SHORT, BASE, SEED)
    assert len(ok.frames) > 10


async def test_load_unload_and_ttl(client: WorkerClient) -> None:
    loaded = await client.stub.LoadModel(
        tts_pb2.LoadModelRequest(model_id=LORA_B, preload_only=True)
    )
    assert loaded.success, loaded.message
    assert (await models(client))[LORA_B].is_loaded
    done = await client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=LORA_B))
    assert done.success, done.message
    assert not (await models(client))[LORA_B].is_loaded
    again = await client.stub.LoadModel(
        tts_pb2.LoadModelRequest(model_id=LORA_B, preload_only=True)
    )
    assert again.success, again.message

    async def expired() -> bool:  # --ttl-ms 1500: idle, it goes on its own
        return not (await models(client))[LORA_B].is_loaded

    await eventually(expired, what="the idle LoRA voice expired", timeout=30)
    assert (await models(client))[BASE].is_loaded  # the default stays


async def test_fresh_seeded_sessions_repeat_bit_for_bit_with_warm_up_on(
    client: WorkerClient,
) -> None:
    """The worker warms up (and calibrates loudness) as by default; sessions of other
    texts and seeds in between must not change a fresh seeded session's PCM at all."""
    text, seed = "Hello there, how are you today?", {"seed": "7"}
    for model_id in (BASE, LORA_A):
        first = await synthesize_text(client, text, model_id, seed)
        await synthesize_text(client, LONG, model_id, {"seed": "8"})
        await synthesize_text(client, "Please say that again.", model_id)
        again = await synthesize_text(client, text, model_id, seed)
        assert len(first.frames) > 25, model_id  # over 400 ms: loudness learns from it
        assert again.pcm == first.pcm, model_id


async def test_a_checkpoint_emitting_codes_the_codec_lacks_fails_with_the_reason(
    client: WorkerClient,
) -> None:
    import grpc

    # The warm-up is the first utterance: it fails, and so does the load, with the reason.
    reply = await client.stub.LoadModel(tts_pb2.LoadModelRequest(model_id=BAD_CODES))
    assert not reply.success and CODEC_RANGE in reply.message, reply.message
    assert "IndexError" not in reply.message
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.start_session(new_id(), BAD_CODES, SEED)
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert CODEC_RANGE in (err.value.details() or "")


# LoRA voices through the model manager (the lead's runtime): the adapter voice holds
# its base, unloads in the wrong order are refused.
def refused(reply: tts_pb2.UnloadModelResponse, reason: str) -> bool:
    return not reply.success and reason in reply.message


async def test_lora_sessions_and_refused_unloads(client: WorkerClient) -> None:
    a, b, plain = new_id(), new_id(), new_id()
    alone_a = await synthesize_text(client, SHORT, LORA_A, SEED)
    alone_b = await synthesize_text(client, SHORT, LORA_B, SEED)
    alone_base = await synthesize_text(client, SHORT, BASE, SEED)
    assert not same_audio(alone_a.pcm, alone_b.pcm)
    assert not same_audio(alone_a.pcm, alone_base.pcm)
    for sid, model_id in ((a, LORA_A), (b, LORA_B)):
        reply = await client.start_session(sid, model_id, SEED)
        assert reply.success, reply.message
    # No session holds the base itself: refused because LoRA voices are loaded over it.
    reply = await client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=BASE))
    assert refused(reply, "base of LoRA voice"), reply.message
    reply = await client.stub.UnloadModel(tts_pb2.UnloadModelRequest(model_id=LORA_A))
    assert refused(reply, "in use by 1 session"), reply.message
    reply = await client.start_session(plain, BASE, SEED)
    assert reply.success, reply.message
    # Three sessions at once on one model, two adapters and the base: no leaking.
    got = {sid: Receiver(client.synthesize(sid, SHORT), sid) for sid in (a, b, plain)}
    pcm = {sid: check_frames(await r.end()) for sid, r in got.items()}
    assert same_audio(pcm[a], alone_a.pcm)
    assert same_audio(pcm[b], alone_b.pcm)
    assert same_audio(pcm[plain], alone_base.pcm)
    for sid in (a, b, plain):
        await client.end_session(sid)
    listed = await models(client)
    assert listed[LORA_A].is_loaded and listed[BASE].is_loaded


@pytest.mark.parametrize(("options", "reason"), [
    ({"context": "not json"}, "option context is not JSON"),
    ({"speaker": "-5"}, "option speaker=-5 out of range"),
    ({"seed": "abc"}, "option seed='abc' is not an integer"),
])
async def test_bad_session_options_are_refused_at_start(
    client: WorkerClient, options: dict[str, str], reason: str
) -> None:
    import grpc

    sid = new_id()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.start_session(sid, LORA_A, options)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or "")
    again = await synthesize_text(client, SHORT, LORA_A, SEED)  # the worker is unharmed
    assert len(again.frames) > 1 and again.first_audio_ms is not None
