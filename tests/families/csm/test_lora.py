"""LoRA voices over one resident tiny CSM, in process: distinct voices, hot-swap, and
concurrent sessions on different adapters with no leaking between them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("peft", reason="CSM family not installed: run `make worker-env FAMILY=csm`")

from duplexvoice.worker.adapters.base import AdapterError, TTSAdapter
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


def together(jobs: dict[str, tuple[TTSAdapter, int]]) -> dict[str, np.ndarray[Any, Any]]:
    """Run one utterance per job on its own thread, all at once."""
    results: dict[str, np.ndarray[Any, Any]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def run(key: str, adapter: TTSAdapter, seed: int) -> None:
        try:
            start.wait(timeout=30)
            results[key] = audio(speak(adapter, TEXT, seed=seed))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k, *v)) for k, v in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return results


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
    switches = len(base.scheduler.switch_ms)
    both = together({"a": (a, 3), "b": (b, 4)})
    assert np.array_equal(both["a"], alone["a"])
    assert np.array_equal(both["b"], alone["b"])
    assert len(base.scheduler.switch_ms) > switches  # they did interleave


def test_base_session_beside_an_adapter_session(base: CsmAdapter, tiny_csm: TinyCsm) -> None:
    a = base.load_lora(packs(tiny_csm.packs)[LORA_A])
    alone = {"base": audio(speak(base, TEXT, seed=5)), "a": audio(speak(a, TEXT, seed=5))}
    both = together({"base": (base, 5), "a": (a, 5)})
    assert np.array_equal(both["base"], alone["base"])
    assert np.array_equal(both["a"], alone["a"])


def test_bad_adapter_folder(base: CsmAdapter, tiny_csm: TinyCsm) -> None:
    from tests.support.tiny import csm as tiny

    empty = tiny_csm.root / "empty-adapter"
    empty.mkdir(exist_ok=True)
    tiny.write_lora_pack(tiny_csm.root / "bad-lora", "csm-en-lora-empty", empty, BASE)
    with pytest.raises(AdapterError, match=r"adapter_config\.json"):
        base.load_lora(packs(tiny_csm.root / "bad-lora")["csm-en-lora-empty"])
