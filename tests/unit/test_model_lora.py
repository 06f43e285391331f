"""LoRA voices in the model manager: an adapter over a resident base model.

The policy rules with scripted events (no loop), then the asyncio driver with
synchronous fakes: a LoRA voice loads its base first, keeps it resident while it is,
does not count against ``resident_cap``, and goes before its base at close.
"""

from __future__ import annotations

import threading

import pytest

from duplexvoice.worker.model_manager import ModelManager
from duplexvoice.worker.model_policy import (
    CapacityError,
    LoadAction,
    ModelInUseError,
    ModelManagerConfig,
    ModelNotLoadedError,
    ModelPolicy,
)

pytestmark = pytest.mark.unit

MIN_RES = 120.0
TTL = 600.0


def policy(**overrides: object) -> ModelPolicy:
    return ModelPolicy(ModelManagerConfig(default_model_id="base", **overrides))  # type: ignore[arg-type]


def loaded(p: ModelPolicy, model_id: str, at: float, base: str | None = None) -> None:
    assert p.plan_load(model_id, at, base=base).action is LoadAction.LOAD
    p.mark_loaded(model_id, at)


# -- policy ----------------------------------------------------------------------


def test_a_lora_voice_needs_its_base_resident() -> None:
    p = policy()
    with pytest.raises(ModelNotLoadedError, match="base model 'base'"):
        p.plan_load("lora-a", 0.0, base="base")
    assert p.entry("lora-a") is None
    p.plan_load("base", 0.0)  # loading is not resident yet
    with pytest.raises(ModelNotLoadedError):
        p.plan_load("lora-a", 0.0, base="base")
    p.mark_loaded("base", 1.0)
    loaded(p, "lora-a", 2.0, base="base")
    assert p.dependents("base") == ["lora-a"] and p.base_of("lora-a") == "base"


def test_lora_voices_do_not_take_model_slots_and_have_their_own_cap() -> None:
    p = policy(resident_cap=1, lora_resident_cap=2)
    loaded(p, "base", 0.0)
    loaded(p, "lora-a", 0.0, base="base")
    loaded(p, "lora-b", 0.0, base="base")  # resident_cap=1 is not touched by adapters
    with pytest.raises(CapacityError, match="lora_resident_cap=2"):
        p.plan_load("lora-c", 1.0, base="base")  # both adapters inside min residency
    plan = p.plan_load("lora-c", MIN_RES + 1, base="base")
    assert plan.action is LoadAction.LOAD and plan.evict == ("lora-a",)  # LRU adapter
    assert p.resident() == ["base", "lora-b"]


def test_a_base_with_lora_voices_is_never_evicted_and_unload_is_refused() -> None:
    p = policy(resident_cap=1)
    loaded(p, "base", 0.0)
    loaded(p, "lora-a", 0.0, base="base")
    late = MIN_RES + TTL + 10
    assert p.plan_evictions(late) == ["lora-a"]  # the idle adapter expires like a model
    assert p.plan_evictions(late) == []  # its base waits until it is gone
    with pytest.raises(ModelInUseError, match="base of LoRA voice"):
        p.begin_unload("base")
    p.mark_unloaded("lora-a")
    assert p.plan_evictions(late) == ["base"]


def test_a_full_model_cannot_evict_a_base_with_adapters() -> None:
    p = policy(resident_cap=1)
    loaded(p, "base", 0.0)
    loaded(p, "lora-a", 0.0, base="base")
    with pytest.raises(CapacityError, match=r"base \(base of lora-a\)"):
        p.plan_load("other", MIN_RES + TTL)


def test_references_on_an_adapter_block_its_unload_never_go_negative() -> None:
    p = policy()
    loaded(p, "base", 0.0)
    loaded(p, "lora-a", 0.0, base="base")
    p.acquire("lora-a", 1.0)
    with pytest.raises(ModelInUseError, match="in use by 1 session"):
        p.begin_unload("lora-a")
    assert p.release("lora-a", 2.0) and not p.release("lora-a", 2.0)
    assert p.refcount("lora-a") == 0 and p.refcount("base") == 0
    assert p.begin_unload("lora-a")


def test_shutdown_lists_lora_voices_before_their_bases() -> None:
    p = policy()
    loaded(p, "base", 0.0)
    loaded(p, "z-lora", 0.0, base="base")
    assert p.plan_shutdown() == ["z-lora", "base"]


# -- driver ----------------------------------------------------------------------


class Loads:
    """Synchronous load/unload stand-ins recording the order of calls."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.log: list[str] = []
        self.fail = fail or set()
        self.lock = threading.Lock()

    def load(self, model_id: str) -> str:
        with self.lock:
            self.log.append(f"load:{model_id}")
        if model_id in self.fail:
            raise RuntimeError(f"{model_id} is broken")
        return model_id

    def unload(self, model_id: str, _obj: str) -> None:
        with self.lock:
            self.log.append(f"unload:{model_id}")


BASES = {"lora-a": "base", "lora-b": "base"}


def manager(loads: Loads, **config: object) -> ModelManager[str]:
    return ModelManager(
        ModelManagerConfig(default_model_id="base", **config),  # type: ignore[arg-type]
        load=loads.load,
        unload=loads.unload,
        known_models=lambda: {"base", "lora-a", "lora-b", "other"},
        base_of=BASES.get,
    )


async def test_acquiring_a_lora_voice_loads_its_base_first_without_a_reference() -> None:
    loads = Loads()
    m = manager(loads)
    assert await m.acquire("lora-a") == "lora-a"
    assert loads.log == ["load:base", "load:lora-a"]
    assert m.refcount("lora-a") == 1 and m.refcount("base") == 0
    assert await m.acquire("lora-b") == "lora-b"
    assert loads.log == ["load:base", "load:lora-a", "load:lora-b"]  # base loaded once
    m.release("lora-a")
    m.release("lora-b")
    await m.close()
    assert loads.log[3:5] == ["unload:lora-a", "unload:lora-b"] or loads.log[3:5] == [
        "unload:lora-b", "unload:lora-a"]
    assert loads.log[-1] == "unload:base"


async def test_unloading_the_base_under_an_adapter_is_refused() -> None:
    loads = Loads()
    m = manager(loads)
    await m.load("lora-a")
    with pytest.raises(ModelInUseError, match="lora-a"):
        await m.unload("base")
    await m.unload("lora-a")
    await m.unload("base")
    assert m.resident_models() == []
    await m.close()


async def test_a_failed_adapter_load_leaves_the_base_resident_and_unreferenced() -> None:
    loads = Loads(fail={"lora-b"})
    m = manager(loads)
    with pytest.raises(Exception, match="lora-b is broken"):
        await m.acquire("lora-b")
    assert m.resident_models() == ["base"] and m.refcount("base") == 0
    await m.unload("base")  # nothing depends on it any more
    await m.close()


async def test_a_failed_base_load_fails_the_adapter_with_the_reason() -> None:
    loads = Loads(fail={"base"})
    m = manager(loads)
    with pytest.raises(Exception, match="base is broken"):
        await m.acquire("lora-a")
    assert m.resident_models() == [] and loads.log == ["load:base"]
    await m.close()


async def test_a_lora_load_reports_its_base_load_when_it_made_it() -> None:
    """LoadModel's load_duration_ms: the base's load (and warm-up) that the call had to
    wait for counts; over a resident base only the adapter's own load does."""
    now = [0.0]
    costs = {"base": 0.7, "lora-a": 0.05, "lora-b": 0.03}

    def load(model_id: str) -> str:
        now[0] += costs[model_id]  # a fake clock: the load "takes" this long
        return model_id

    m: ModelManager[str] = ModelManager(
        ModelManagerConfig(default_model_id="base"),
        load=load,
        unload=lambda _model_id, _obj: None,
        known_models=lambda: {"base", "lora-a", "lora-b"},
        clock=lambda: now[0],
        base_of=BASES.get,
    )
    assert await m.load("lora-a") == pytest.approx(750.0)
    assert await m.load("lora-b") == pytest.approx(30.0)
    assert await m.load("lora-a") == 0.0  # already resident
    await m.close()
