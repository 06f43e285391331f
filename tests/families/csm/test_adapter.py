"""CsmAdapter in process on a tiny random checkpoint: streaming, incremental decoding,
STOP, session options, the seeded warm-up, bad checkpoints."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "transformers", reason="CSM family not installed: run `make worker-env FAMILY=csm`"
)

from duplexvoice.audio.loudness import VoiceLoudness
from duplexvoice.worker.adapters.base import AdapterError, SynthesisOptions
from duplexvoice.worker.adapters.csm import CsmAdapter
from duplexvoice.worker.adapters.csm_decode import IncrementalMimiDecoder
from duplexvoice.worker.voice import LoadedVoice
from tests.families.csm.conftest import BASE, TinyCsm
from tests.families.csm.helpers import audio, packs, speak
from tests.support.tiny import csm as tiny

pytestmark = pytest.mark.integration

TEXT = "Hello there, how are you?"


@pytest.fixture(scope="module")
def base(tiny_csm: TinyCsm) -> Iterator[CsmAdapter]:
    adapter = CsmAdapter.load(packs(tiny_csm.packs)[BASE], "cpu")
    yield adapter
    adapter.close()


def test_streams_several_chunks_before_the_end(base: CsmAdapter) -> None:
    options = SynthesisOptions(extra={"seed": "3"})
    stream = base.stream(TEXT, options, threading.Event())
    first = next(stream)
    # One frame (1920 samples at 24 kHz) is out while the model is still generating.
    assert first.dtype == np.float32 and first.shape == (1920,)
    rest = list(stream)
    assert len(rest) >= 5
    assert all(c.shape[0] % 1920 == 0 for c in rest)
    whole = np.concatenate([first, *rest])
    assert np.abs(whole).max() <= 1.0 and np.abs(whole).max() > 0.01
    assert base.sample_rate == 24000


def test_seeded_utterances_repeat(base: CsmAdapter) -> None:
    a, b = audio(speak(base, TEXT, seed=5)), audio(speak(base, TEXT, seed=5))
    c = audio(speak(base, TEXT, seed=6))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_incremental_decode_matches_one_shot(base: CsmAdapter) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(1, tiny.CODEBOOK_SIZE, size=(tiny.NUM_CODEBOOKS, 40))
    one_shot = base._decode(codes)
    decoder = IncrementalMimiDecoder(base._decode, tiny.NUM_CODEBOOKS, context_frames=12)
    pieces = [decoder.push(codes[:, :1])]
    pieces += [decoder.push(codes[:, i : i + 3]) for i in range(1, 40, 3)]
    incremental = np.concatenate(pieces)
    assert incremental.shape == one_shot.shape
    scale = float(np.abs(one_shot).max())
    early = np.abs(incremental[: 12 * 1920] - one_shot[: 12 * 1920]).max()
    overall = np.abs(incremental - one_shot).max()
    assert early <= 1e-5 * scale, f"within the context window: max diff {early}"
    assert overall <= 1e-3 * scale, f"beyond it: max diff {overall} (peak {scale})"
    # Frame by frame with no context does not match: context is what makes it right.
    bare = IncrementalMimiDecoder(base._decode, tiny.NUM_CODEBOOKS, context_frames=0)
    no_context = np.concatenate([bare.push(codes[:, i : i + 1]) for i in range(40)])
    assert np.abs(no_context - one_shot).max() > 100 * overall


def test_stop_mid_stream_then_a_full_utterance(base: CsmAdapter) -> None:
    reference = audio(speak(base, TEXT, seed=9))
    cancel = threading.Event()
    options = SynthesisOptions(extra={"seed": "9"})
    got = []
    for chunk in base.stream("One, two, three, four, five, six, seven, eight.", options, cancel):
        got.append(chunk)
        if len(got) == 2:
            cancel.set()
    assert len(got) == 2  # nothing after the STOP
    assert not [t for t in threading.enumerate() if t.name == "csm-generate"]
    assert np.array_equal(audio(speak(base, TEXT, seed=9)), reference)


def test_abandoned_stream_joins_its_thread(base: CsmAdapter) -> None:
    stream = base.stream(TEXT, SynthesisOptions(), threading.Event())
    next(stream)
    stream.close()  # the consumer goes away without cancel
    assert not [t for t in threading.enumerate() if t.name == "csm-generate"]


def _context(turns: list[tuple[int, str, np.ndarray[Any, Any]]]) -> str:
    return json.dumps([
        {"speaker": s, "text": t,
         "audio": base64.b64encode((a * 32767).astype("<i2").tobytes()).decode()}
        for s, t, a in turns
    ])


def test_speaker_and_context_change_the_prompt(base: CsmAdapter) -> None:
    plain = base._inputs([], 0, TEXT)["input_ids"]
    other = base._inputs([], 3, TEXT)["input_ids"]
    assert plain.shape == other.shape and not bool((plain == other).all())
    clip = np.sin(np.arange(24000 // 2) / 10.0).astype(np.float32) * 0.3
    memory: dict[str, Any] = {}
    ctx = _context([(1, "Earlier words.", clip)])
    from duplexvoice.worker.adapters.csm_options import session_context

    turns = session_context({"context": ctx}, memory)
    with_ctx = base._inputs(turns, 0, TEXT)
    assert with_ctx["input_ids"].shape[1] > plain.shape[1] + 6  # one token per Mimi frame
    assert "input_values" in with_ctx
    a = audio(speak(base, TEXT, seed=4))
    b = audio(speak(base, TEXT, seed=4, speaker="3"))
    c = audio(speak(base, TEXT, seed=4, context=ctx))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_own_turns_are_remembered_and_bounded(base: CsmAdapter) -> None:
    memory: dict[str, Any] = {}
    first = audio(speak(base, TEXT, seed=2, memory=memory))
    assert len(memory["csm_turns"]) == 1 and np.array_equal(memory["csm_turns"][0].audio, first)
    second = audio(speak(base, TEXT, seed=2, memory=memory))
    assert not np.array_equal(first, second)  # the first turn is now context
    speak(base, "Third.", seed=2, memory=memory)
    assert [t.text for t in memory["csm_turns"]] == [TEXT, "Third."]  # context_turns: 2


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        ("not json", "not JSON"),
        ('{"speaker": 0}', "JSON list"),
        ('[{"speaker": 0, "text": "hi", "audio": "@@@"}]', "base64"),
        ('[{"speaker": 0, "text": "hi"}]', "speaker, text and audio"),
        ('[{"speaker": -1, "text": "hi", "audio": "AAAA"}]', "speaker"),
        ('[{"speaker": 0, "text": "hi", "audio": "AA=="}]', "even byte count"),
        (json.dumps([{"speaker": 0, "text": "x", "audio": "AAAA"}] * 9), "at most 8"),
    ],
)
def test_bad_context_is_an_adapter_error(base: CsmAdapter, context: str, reason: str) -> None:
    with pytest.raises(AdapterError, match=reason):
        speak(base, TEXT, context=context)


def test_too_much_context_audio_is_refused(base: CsmAdapter) -> None:
    long = np.zeros(24000 * 16, np.float32)
    ctx = _context([(0, "a", long), (1, "b", long)])
    with pytest.raises(AdapterError, match="at most 30 s"):
        speak(base, TEXT, context=ctx)


def test_bad_options_are_adapter_errors(base: CsmAdapter) -> None:
    with pytest.raises(AdapterError, match="speaker"):
        speak(base, TEXT, speaker="two")
    with pytest.raises(AdapterError, match="seed"):
        list(base.stream(TEXT, SynthesisOptions(extra={"seed": "-4"}), threading.Event()))


def test_missing_file_and_wrong_shapes(tiny_csm: TinyCsm) -> None:
    broken = tiny_csm.root / "broken-missing"
    shutil.copytree(tiny_csm.checkpoint, broken)
    (broken / "model.safetensors").unlink()
    tiny.write_pack(tiny_csm.root / "bad-packs", "csm-en-missing", broken)
    wrong = tiny_csm.root / "broken-shapes"
    shutil.copytree(tiny_csm.checkpoint, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["hidden_size"] = 96  # weights were saved for 64
    (wrong / "config.json").write_text(json.dumps(config))
    tiny.write_pack(tiny_csm.root / "bad-packs", "csm-en-shapes", wrong)
    bad = packs(tiny_csm.root / "bad-packs")
    with pytest.raises(AdapterError, match=r"missing model\*\.safetensors"):
        CsmAdapter.load(bad["csm-en-missing"], "cpu")
    with pytest.raises(AdapterError, match="cannot load CSM checkpoint") as err:
        CsmAdapter.load(bad["csm-en-shapes"], "cpu")
    assert "\n" not in str(err.value)


def test_cuda_without_a_gpu_is_a_clear_error(tiny_csm: TinyCsm) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(AdapterError, match="CUDA"):
        CsmAdapter.load(packs(tiny_csm.packs)[BASE], "cuda:0")


def test_the_warm_up_is_seeded_so_every_load_calibrates_the_same_gain(
    tiny_csm: TinyCsm, base: CsmAdapter
) -> None:
    """The loudness gain is calibrated on the warm-up: unseeded, each load of the same
    checkpoint would get another gain, and seeded sessions would not repeat."""
    pack = packs(tiny_csm.packs)[BASE]
    loads = [LoadedVoice.warmed(pack, base, "Hello there.") for _ in range(2)]
    assert all(v.loudness.calibrated for v in loads)
    assert loads[0].loudness.gain_db == loads[1].loudness.gain_db
    assert loads[0].loudness.makeup_db == loads[1].loudness.makeup_db
    # What the seed prevents: two other seeds calibrate differently.
    gains = set()
    for seed in (1, 2):
        voice = VoiceLoudness()
        voice.calibrate(audio(speak(base, "Hello there.", seed=seed)), base.sample_rate)
        gains.add(voice.gain_db)
    assert len(gains) == 2


def test_a_code_outside_the_codec_fails_each_utterance_naming_the_cause(
    bad_codes_checkpoint: Path, tmp_path: Path
) -> None:
    tiny.write_pack(tmp_path, "csm-en-bad-codes", bad_codes_checkpoint, threads=1)
    adapter = CsmAdapter.load(packs(tmp_path)["csm-en-bad-codes"], "cpu")
    try:
        for seed in (1, 2):
            with pytest.raises(AdapterError) as err:
                speak(adapter, TEXT, seed=seed)
            message = str(err.value)
            assert "outside the codec's 0..63 range" in message, message
            assert "vocab_size 128, codec_config.codebook_size 64" in message
            assert int(message.split("audio code ")[1].split()[0]) >= 64
    finally:
        adapter.close()
