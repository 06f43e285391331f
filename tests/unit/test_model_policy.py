"""The model manager's pure policy: scripted events, explicit times, no event loop."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from duplexvoice.worker.model_policy import (
    CapacityError,
    LoadAction,
    LoadPlan,
    ModelError,
    ModelInUseError,
    ModelLoadError,
    ModelManagerConfig,
    ModelNotLoadedError,
    ModelPolicy,
    ModelState,
    UnknownModelError,
)

pytestmark = pytest.mark.unit

TTL = 600.0  # seconds, the default ttl_ms
MIN_RES = 120.0  # seconds, the default min_residency_ms


def policy(**overrides: object) -> ModelPolicy:
    return ModelPolicy(ModelManagerConfig(default_model_id="m-default", **overrides))  # type: ignore[arg-type]


def resident(p: ModelPolicy, model_id: str, at: float) -> None:
    """Script a successful load of ``model_id`` at time ``at``."""
    plan = p.plan_load(model_id, at)
    assert plan.action is LoadAction.LOAD
    p.mark_loaded(model_id, at)


# -- configuration -------------------------------------------------------------


def test_config_defaults_are_the_documented_contract() -> None:
    c = ModelManagerConfig()
    assert c.default_model_id == "piper-en-us-joe-medium"
    assert c.preload_model_ids == []
    assert (c.ttl_ms, c.min_residency_ms, c.evict_check_interval_ms) == (600_000, 120_000, 30_000)
    assert (c.resident_cap, c.max_parallel_loads) == (3, 1)
    assert c.warmup_enabled is True
    assert c.warmup_text == "Hello, this is a warm-up."
    assert c.keep_default_resident is False
    assert all(f.description for f in ModelManagerConfig.model_fields.values())


@pytest.mark.parametrize(
    "bad",
    [
        {"ttl_ms": 0},
        {"min_residency_ms": -1},
        {"evict_check_interval_ms": 0},
        {"resident_cap": 0},
        {"max_parallel_loads": 0},
        {"warmup_text": ""},
        {"default_model_id": ""},
        {"no_such_option": 1},
        {"resident_cap": 2, "preload_model_ids": ["m-a", "m-b"]},
    ],
)
def test_config_rejects_invalid_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelManagerConfig(**bad)  # type: ignore[arg-type]


def test_config_counts_startup_models_once() -> None:
    c = ModelManagerConfig(
        default_model_id="m-a", preload_model_ids=["m-a", "m-b", "m-b"], resident_cap=2
    )
    assert c.resident_cap == 2
    assert ModelManagerConfig(min_residency_ms=0).min_residency_ms == 0


def test_error_tree_and_retryable_marks() -> None:
    for cls in (UnknownModelError, ModelLoadError, CapacityError, ModelInUseError,
                ModelNotLoadedError):
        assert issubclass(cls, ModelError)
    cause = OSError("no such file")
    err = ModelLoadError("m-a", cause)
    assert err.cause is cause and "m-a" in str(err)
    assert ModelLoadError.retryable and CapacityError.retryable and ModelInUseError.retryable
    assert not UnknownModelError.retryable and not ModelNotLoadedError.retryable


# -- loading -------------------------------------------------------------------


def test_load_then_wait_then_ready() -> None:
    p = policy()
    assert p.plan_load("m-a", 1.0) == LoadPlan(LoadAction.LOAD)
    assert p.state("m-a") is ModelState.LOADING
    assert p.plan_load("m-a", 2.0).action is LoadAction.WAIT  # one load per model
    assert p.resident() == []
    p.mark_loaded("m-a", 5.0)
    e = p.entry("m-a")
    assert e is not None and e.loaded_at == 5.0 and e.last_used == 5.0 and e.refcount == 0
    assert p.plan_load("m-a", 6.0) == LoadPlan(LoadAction.READY)
    assert p.resident() == ["m-a"]


def test_load_failure_leaves_no_entry_and_a_later_request_retries() -> None:
    p = policy()
    p.plan_load("m-a", 0.0)
    p.mark_failed("m-a")
    assert p.entry("m-a") is None and p.entries() == []
    assert p.plan_load("m-a", 1.0).action is LoadAction.LOAD


def test_events_that_do_not_match_the_state_are_driver_bugs() -> None:
    p = policy()
    with pytest.raises(RuntimeError):
        p.mark_loaded("m-a", 0.0)
    with pytest.raises(RuntimeError):
        p.mark_unloaded("m-a")
    resident(p, "m-a", 0.0)
    with pytest.raises(RuntimeError):
        p.mark_failed("m-a")
    with pytest.raises(RuntimeError):
        p.mark_loaded("m-a", 1.0)


# -- references ----------------------------------------------------------------


def test_acquire_and_release_count_and_touch_last_used() -> None:
    p = policy()
    resident(p, "m-a", 0.0)
    assert p.acquire("m-a", 10.0) == 1
    assert p.acquire("m-a", 20.0) == 2
    e = p.entry("m-a")
    assert e is not None and e.refcount == 2 and e.last_used == 20.0
    assert p.release("m-a", 30.0)
    e = p.entry("m-a")
    assert e is not None and e.refcount == 1 and e.last_used == 30.0
    assert p.release("m-a", 40.0)
    e = p.entry("m-a")
    assert e is not None and e.refcount == 0 and e.last_used == 40.0


def test_acquire_requires_a_resident_model() -> None:
    p = policy()
    with pytest.raises(ModelNotLoadedError):
        p.acquire("m-a", 0.0)
    p.plan_load("m-a", 0.0)
    with pytest.raises(ModelNotLoadedError):
        p.acquire("m-a", 0.0)


def test_refcount_never_goes_negative() -> None:
    p = policy()
    assert p.release("m-unknown", 0.0) is False
    resident(p, "m-a", 0.0)
    assert p.release("m-a", 1.0) is False
    p.acquire("m-a", 2.0)
    assert p.release("m-a", 3.0) is True
    assert p.release("m-a", 4.0) is False
    assert p.refcount("m-a") == 0
    e = p.entry("m-a")
    assert e is not None and e.last_used == 3.0  # an ignored release changes nothing


# -- TTL eviction --------------------------------------------------------------


def test_ttl_boundary_is_strictly_greater_than_ttl() -> None:
    p = policy()
    resident(p, "m-a", 0.0)
    assert p.plan_evictions(TTL) == []
    assert p.state("m-a") is ModelState.RESIDENT
    assert p.plan_evictions(TTL + 0.001) == ["m-a"]
    assert p.state("m-a") is ModelState.UNLOADING


def test_ttl_counts_from_the_last_release() -> None:
    p = policy()
    resident(p, "m-a", 0.0)
    p.acquire("m-a", 100.0)
    p.release("m-a", 500.0)
    assert p.plan_evictions(500.0 + TTL) == []
    assert p.plan_evictions(500.0 + TTL + 1.0) == ["m-a"]


def test_references_block_ttl_eviction() -> None:
    p = policy()
    resident(p, "m-a", 0.0)
    p.acquire("m-a", 0.0)
    assert p.plan_evictions(10 * TTL) == []
    p.release("m-a", 10 * TTL)
    assert p.plan_evictions(11 * TTL + 1.0) == ["m-a"]


def test_min_residency_blocks_ttl_eviction_until_reached() -> None:
    p = policy(ttl_ms=1_000, min_residency_ms=5_000)
    resident(p, "m-a", 0.0)
    assert p.plan_evictions(2.0) == []  # idle past the TTL, but loaded 2 s ago
    assert p.plan_evictions(4.999) == []
    assert p.plan_evictions(5.0) == ["m-a"]  # loaded exactly min_residency ago


def test_default_is_a_model_like_the_others_unless_pinned() -> None:
    p = policy()
    resident(p, "m-default", 0.0)
    assert p.plan_evictions(TTL + 1.0) == ["m-default"]

    p = policy(keep_default_resident=True)
    resident(p, "m-default", 0.0)
    resident(p, "m-a", 0.0)
    assert p.plan_evictions(10 * TTL) == ["m-a"]
    assert p.resident() == ["m-default"]


def test_ttl_victims_in_lru_order_and_claimed_once() -> None:
    p = policy()
    for m in ("m-a", "m-b", "m-c"):
        resident(p, m, 0.0)
    p.acquire("m-b", 1.0)
    p.release("m-b", 1.0)
    p.acquire("m-a", 2.0)
    p.release("m-a", 2.0)
    assert p.plan_evictions(TTL + 3.0) == ["m-c", "m-b", "m-a"]
    assert p.plan_evictions(TTL + 4.0) == []  # already being unloaded


def test_a_model_being_unloaded_is_not_handed_out() -> None:
    p = policy()
    resident(p, "m-a", 0.0)
    p.plan_evictions(TTL + 1.0)
    assert p.plan_load("m-a", TTL + 2.0).action is LoadAction.WAIT
    with pytest.raises(ModelNotLoadedError):
        p.acquire("m-a", TTL + 2.0)
    assert p.resident() == []
    p.mark_unloaded("m-a")
    assert p.entry("m-a") is None
    assert p.plan_load("m-a", TTL + 3.0).action is LoadAction.LOAD  # load it again


# -- resident cap --------------------------------------------------------------


def test_cap_evicts_the_least_recently_used_idle_model() -> None:
    p = policy(resident_cap=2)
    resident(p, "m-a", 0.0)
    resident(p, "m-b", 1.0)
    p.acquire("m-a", MIN_RES + 5.0)  # a is older but used more recently
    p.release("m-a", MIN_RES + 5.0)
    plan = p.plan_load("m-c", MIN_RES + 10.0)
    assert plan == LoadPlan(LoadAction.LOAD, evict=("m-b",), await_unloads=("m-b",))
    assert p.state("m-b") is ModelState.UNLOADING
    assert p.state("m-c") is ModelState.LOADING
    assert p.state("m-a") is ModelState.RESIDENT


def test_cap_under_the_limit_evicts_nothing() -> None:
    p = policy(resident_cap=2)
    resident(p, "m-a", 0.0)
    assert p.plan_load("m-b", 1.0) == LoadPlan(LoadAction.LOAD)


def test_cap_never_evicts_referenced_models() -> None:
    p = policy(resident_cap=2)
    resident(p, "m-a", 0.0)
    resident(p, "m-b", 1.0)
    p.acquire("m-a", 2.0)
    p.acquire("m-b", 3.0)
    p.release("m-a", 4.0)  # b is now the least recently used, but referenced
    plan = p.plan_load("m-c", 10 * MIN_RES)
    assert plan.evict == ("m-a",)


def test_cap_respects_min_residency_exactly() -> None:
    p = policy(resident_cap=1)
    resident(p, "m-a", 0.0)
    with pytest.raises(CapacityError, match="loaded"):
        p.plan_load("m-b", MIN_RES - 0.001)
    assert p.plan_load("m-b", MIN_RES).evict == ("m-a",)


def test_cap_never_evicts_a_pinned_default() -> None:
    p = policy(resident_cap=1, keep_default_resident=True)
    resident(p, "m-default", 0.0)
    with pytest.raises(CapacityError, match="pinned"):
        p.plan_load("m-a", 10 * TTL)


def test_loading_models_count_against_the_cap() -> None:
    p = policy(resident_cap=2)
    resident(p, "m-a", 0.0)
    p.plan_load("m-b", 0.0)
    with pytest.raises(CapacityError, match="m-b \\(loading\\)"):
        p.plan_load("m-c", 1.0)  # a is inside min residency, b is loading
    assert p.plan_load("m-c", MIN_RES).evict == ("m-a",)


def test_nothing_evictable_refuses_the_load_and_changes_nothing() -> None:
    p = policy(resident_cap=2)
    resident(p, "m-a", 0.0)
    resident(p, "m-b", 0.0)
    p.acquire("m-a", 1.0)
    p.acquire("m-b", 1.0)
    p.acquire("m-b", 1.0)
    before = p.entries()
    with pytest.raises(CapacityError) as info:
        p.plan_load("m-c", 10 * TTL)
    msg = str(info.value)
    assert "resident_cap=2" in msg and "m-c" in msg
    assert "m-a (in use, refcount=1)" in msg and "m-b (in use, refcount=2)" in msg
    assert p.entries() == before


def test_unloads_in_flight_free_slots_but_the_load_waits_for_them() -> None:
    p = policy(resident_cap=2)
    resident(p, "m-a", 0.0)
    resident(p, "m-b", 0.0)
    assert p.plan_evictions(TTL + 1.0) == ["m-a", "m-b"]
    plan = p.plan_load("m-c", TTL + 2.0)
    assert plan == LoadPlan(LoadAction.LOAD, evict=(), await_unloads=("m-a", "m-b"))
    p.mark_unloaded("m-a")
    assert p.plan_load("m-d", TTL + 3.0).await_unloads == ("m-b",)


# -- explicit unload and shutdown ----------------------------------------------


def test_unload_of_a_model_in_use_is_refused_naming_the_refcount() -> None:
    p = policy()
    resident(p, "m-a", 0.0)
    p.acquire("m-a", 1.0)
    p.acquire("m-a", 1.0)
    with pytest.raises(ModelInUseError, match="refcount=2") as info:
        p.begin_unload("m-a")
    assert info.value.refcount == 2
    assert p.state("m-a") is ModelState.RESIDENT and p.refcount("m-a") == 2


def test_unload_of_a_model_not_resident() -> None:
    p = policy()
    with pytest.raises(ModelNotLoadedError):
        p.begin_unload("m-a")
    p.plan_load("m-a", 0.0)
    with pytest.raises(ModelNotLoadedError, match="loading"):
        p.begin_unload("m-a")


def test_explicit_unload_ignores_min_residency_and_pin_and_is_idempotent() -> None:
    p = policy(keep_default_resident=True)
    resident(p, "m-default", 0.0)
    assert p.begin_unload("m-default") is True
    assert p.state("m-default") is ModelState.UNLOADING
    assert p.begin_unload("m-default") is False  # already on its way out
    p.mark_unloaded("m-default")
    with pytest.raises(ModelNotLoadedError):
        p.begin_unload("m-default")


def test_shutdown_claims_every_resident_model() -> None:
    p = policy()
    resident(p, "m-a", 0.0)
    resident(p, "m-b", 0.0)
    p.acquire("m-b", 0.0)
    p.plan_load("m-c", 0.0)
    assert p.plan_shutdown() == ["m-a", "m-b"]
    assert p.unloading() == ["m-a", "m-b"] and p.state("m-c") is ModelState.LOADING


# -- scripted random sequences: the invariants hold after every event ----------


@pytest.mark.parametrize("seed", range(20))
def test_invariants_under_random_event_sequences(seed: int) -> None:
    rng = random.Random(seed)
    p = policy(resident_cap=2, ttl_ms=3_000, min_residency_ms=2_000, keep_default_resident=True)
    models = ["m-default", "m-a", "m-b", "m-c"]
    refs: dict[str, int] = dict.fromkeys(models, 0)  # what the sessions believe they hold
    now = 0.0
    for _ in range(300):
        now += rng.choice([0.0, 0.5, 1.0, 2.0])
        m = rng.choice(models)
        op = rng.choice(["plan", "loaded", "failed", "acquire", "release", "ttl", "unload",
                         "unloaded"])
        state = p.state(m)
        before = p.entries()
        try:
            if op == "plan":
                plan = p.plan_load(m, now)
                assert set(plan.evict) <= set(plan.await_unloads)
                for v in plan.evict:
                    assert refs[v] == 0 and v != "m-default"
            elif op == "loaded" and state is ModelState.LOADING:
                p.mark_loaded(m, now)
            elif op == "failed" and state is ModelState.LOADING:
                p.mark_failed(m)
                assert p.entry(m) is None
            elif op == "acquire" and state is ModelState.RESIDENT:
                p.acquire(m, now)
                refs[m] += 1
            elif op == "release":
                assert p.release(m, now) is (refs[m] > 0)
                refs[m] = max(0, refs[m] - 1)
            elif op == "ttl":
                for v in p.plan_evictions(now):
                    assert refs[v] == 0 and v != "m-default"
            elif op == "unload" and state is ModelState.RESIDENT:
                p.begin_unload(m)
                assert refs[m] == 0
            elif op == "unloaded" and state is ModelState.UNLOADING:
                p.mark_unloaded(m)
        except (CapacityError, ModelInUseError):
            assert p.entries() == before  # a refusal changes nothing
        entries = p.entries()
        occupied = [e for e in entries if e.state is not ModelState.UNLOADING]
        assert len(occupied) <= 2
        for e in entries:
            assert e.refcount == refs[e.model_id] >= 0
            if e.state is not ModelState.RESIDENT:
                assert e.refcount == 0
        for mid in models:
            if p.entry(mid) is None:
                assert refs[mid] == 0
