"""LoRA voices over one resident tiny CSM, in process: distinct voices, hot-swap, and
concurrent sessions on different adapters with no leaking between them."""

from __future__ import annotations

import json
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("peft", reason="CSM family not installed: run `make worker-env FAMILY=csm`")

from duplexvoice.worker.adapters.base import AdapterError
from duplexvoice.worker.adapters.csm import CsmAdapter
from tests.families.csm.conftest import BASE, LORA_A, LORA_B, TinyCsm
from tests.families.csm.helpers import audio, packs, speak

pytestmark = pytest.mark.integration

TEXT = "Hello there, how are you?"


@pytest.fixture
def base(tiny_csm: TinyCsm) -> Iterator[CsmAdapter]:
    adapter = CsmAdapter.load(packs(tiny_csm.packs)[BASE], "cpu")
    yield adapter
    adapter.close()


def together(
    jobs: dict[str, tuple[CsmAdapter, int]],
) -> tuple[dict[str, np.ndarray[Any, Any]], int]:
    """Run one utterance per job on its own thread, all in flight at once: the model is
    held until every job waits for it, so from the first frame on they take turns (the
    lock is FIFO). Returns the audio and the adapter switches made meanwhile."""
    results: dict[str, np.ndarray[Any, Any]] = {}
    errors: list[BaseException] = []
    sched = next(iter(jobs.values()))[0].scheduler

    def run(key: str, adapter: CsmAdapter, seed: int) -> None:
        try:
            results[key] = audio(speak(adapter, TEXT, seed=seed))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k, *v)) for k, v in jobs.items()]
    switches = len(sched.switch_ms)
    with sched.exclusive():
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while sched.lock.waiting() < 1 + len(jobs):  # us, then every job's generate
            assert time.monotonic() < deadline, "the jobs never queued for the model"
            assert not errors, errors
            threading.Event().wait(0.005)
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return results, len(sched.switch_ms) - switches


def frames(chunks: np.ndarray[Any, Any]) -> int:
    return len(chunks) // 1920  # Mimi: 1920 samples per frame at 24 kHz


def test_adapters_speak_differently_from_each_other_and_the_base(
    base: CsmAdapter, tiny_csm: TinyCsm
) -> None:
    alone = audio(speak(base, TEXT, seed=1))
    found = packs(tiny_csm.packs)
    a, b = base.load_lora(found[LORA_A]), base.load_lora(found[LORA_B])
    assert a.sample_rate == 24000 and a.capabilities.lora
    out_a, out_b = audio(speak(a, TEXT, seed=1)), audio(speak(b, TEXT, seed=1))
    out_base = audio(speak(base, TEXT, seed=1))
    assert np.array_equal(out_base, alone)  # adapters loaded: the base voice is unchanged
    assert not np.array_equal(out_a, out_base)
    assert not np.array_equal(out_b, out_base)
    assert not np.array_equal(out_a, out_b)
    assert np.array_equal(audio(speak(a, TEXT, seed=1)), out_a)  # and each repeats


def test_hot_swap(base: CsmAdapter, tiny_csm: TinyCsm) -> None:
    found = packs(tiny_csm.packs)
    a = base.load_lora(found[LORA_A])
    out_a = audio(speak(a, TEXT, seed=2))
    b = base.load_lora(found[LORA_B])
    out_b = audio(speak(b, TEXT, seed=2))
    a.close()
    assert np.array_equal(audio(speak(b, TEXT, seed=2)), out_b)
    with pytest.raises(AdapterError, match="closed"):
        speak(a, TEXT)
    again = base.load_lora(found[LORA_A])  # reloaded after unload: same voice
    assert np.array_equal(audio(speak(again, TEXT, seed=2)), out_a)
    again.close()
    b.close()
    assert base.scheduler.peft is None  # last adapter gone: the base model is plain again


def test_two_adapters_at_once_do_not_leak(base: CsmAdapter, tiny_csm: TinyCsm) -> None:
    found = packs(tiny_csm.packs)
    a, b = base.load_lora(found[LORA_A]), base.load_lora(found[LORA_B])
    alone = {"a": audio(speak(a, TEXT, seed=3)), "b": audio(speak(b, TEXT, seed=4))}
    both, switches = together({"a": (a, 3), "b": (b, 4)})
    assert np.array_equal(both["a"], alone["a"])
    assert np.array_equal(both["b"], alone["b"])
    # They interleaved frame by frame (one after the other would switch at most twice).
    assert switches >= min(frames(alone["a"]), frames(alone["b"])) > 2


def test_base_session_beside_an_adapter_session(base: CsmAdapter, tiny_csm: TinyCsm) -> None:
    a = base.load_lora(packs(tiny_csm.packs)[LORA_A])
    alone = {"base": audio(speak(base, TEXT, seed=5)), "a": audio(speak(a, TEXT, seed=5))}
    both, switches = together({"base": (base, 5), "a": (a, 5)})
    assert np.array_equal(both["base"], alone["base"])
    assert np.array_equal(both["a"], alone["a"])
    assert switches >= min(frames(alone["base"]), frames(alone["a"])) > 2  # interleaved


def test_bad_adapter_folder(base: CsmAdapter, tiny_csm: TinyCsm) -> None:
    from tests.support.tiny import csm as tiny

    empty = tiny_csm.root / "empty-adapter"
    empty.mkdir(exist_ok=True)
    tiny.write_lora_pack(tiny_csm.root / "bad-lora", "csm-en-lora-empty", empty, BASE)
    with pytest.raises(AdapterError, match=r"adapter_config\.json"):
        base.load_lora(packs(tiny_csm.root / "bad-lora")["csm-en-lora-empty"])


@pytest.fixture(scope="module")
def broken_adapters(tiny_csm: TinyCsm) -> dict[str, tuple[Path, str]]:
    """Adapters that must not load, with the reason each error names."""
    from tests.support.tiny import csm as tiny

    root = tiny_csm.root / "broken-adapters"
    good = tiny_csm.root / "lora-1"
    truncated = root / "truncated"
    shutil.copytree(good, truncated, dirs_exist_ok=True)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    ranked = root / "rank"
    shutil.copytree(good, ranked, dirs_exist_ok=True)
    config = json.loads((ranked / "adapter_config.json").read_text())
    config["r"] = 8  # the weights were saved for rank 4
    (ranked / "adapter_config.json").write_text(json.dumps(config))
    # A plain target list: PEFT matches by suffix, so Mimi's attention is wrapped too.
    mimi = tiny.build_lora(
        root / "mimi", tiny_csm.checkpoint, 3, targets=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    return {
        "truncated": (truncated, "cannot load LoRA adapter"),
        "rank": (ranked, "size mismatch"),
        "mimi": (mimi, r"codec_model\..*target_modules="),
    }


def lora_layers(model: Any) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def test_a_broken_adapter_leaves_the_model_as_it_was(
    base: CsmAdapter, tiny_csm: TinyCsm, broken_adapters: dict[str, tuple[Path, str]]
) -> None:
    from tests.support.tiny import csm as tiny

    found = packs(tiny_csm.packs)
    folder = tiny_csm.root / "broken-packs"
    for kind, (adapter_dir, _) in broken_adapters.items():
        tiny.write_lora_pack(folder, f"csm-en-lora-{kind}", adapter_dir, BASE)
    broken = packs(folder)
    plain = audio(speak(base, TEXT, seed=6))

    def refused() -> None:
        for kind, (_, reason) in broken_adapters.items():
            with pytest.raises(AdapterError, match=reason):
                base.load_lora(broken[f"csm-en-lora-{kind}"])

    # As the first adapter: the model is plain again afterwards.
    refused()
    assert base.scheduler.peft is None
    assert lora_layers(base.model) == [] and not hasattr(base.model, "peft_config")
    assert np.array_equal(audio(speak(base, TEXT, seed=6)), plain)
    # Beside a resident adapter: no stray adapter, both voices unchanged.
    a = base.load_lora(found[LORA_A])
    out_a = audio(speak(a, TEXT, seed=6))
    layers_a = lora_layers(base.model)
    refused()
    assert list(base.scheduler.peft.peft_config) == [LORA_A]
    assert lora_layers(base.model) == layers_a  # nothing left wrapped, Mimi included
    assert all(set(base.model.get_submodule(n).lora_A) == {LORA_A} for n in layers_a)
    assert np.array_equal(audio(speak(base, TEXT, seed=6)), plain)
    assert np.array_equal(audio(speak(a, TEXT, seed=6)), out_a)
    # A good adapter still loads and speaks.
    b = base.load_lora(found[LORA_B])
    assert not np.array_equal(audio(speak(b, TEXT, seed=6)), out_a)
    a.close()
    b.close()
    assert base.scheduler.peft is None and lora_layers(base.model) == []
    assert np.array_equal(audio(speak(base, TEXT, seed=6)), plain)


def test_a_closed_voice_lets_go_of_the_model(base: CsmAdapter, tiny_csm: TinyCsm) -> None:
    a = base.load_lora(packs(tiny_csm.packs)[LORA_A])
    a.close()
    assert a.model is None and a.processor is None
    assert base.model is not None  # a LoRA voice's close leaves its base
    assert audio(speak(base, TEXT, seed=1)).size > 0
    model = weakref.ref(base.model)
    base.close()
    assert base.model is None and base.processor is None
    assert model() is None  # nothing else kept it: its memory went back
    with pytest.raises(AdapterError, match="closed"):
        speak(base, TEXT)
