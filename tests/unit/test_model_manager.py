"""The asyncio model manager driver, with fake load/unload functions and a fake clock.

The fake load/unload functions run on threads, so "has not started yet" can mean
"is not allowed to start" or "its thread has not run yet". Tests that assert the
former watch the hand-over to a thread instead (``submitted``), which happens on the
event loop, at once, and is therefore deterministic after ``settle()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from duplexvoice.worker.model_manager import (
    CapacityError,
    ModelError,
    ModelInUseError,
    ModelLoadError,
    ModelManager,
    ModelManagerConfig,
    ModelNotLoadedError,
    UnknownModelError,
)
from tests.support.aio import settle
from tests.support.eventually import eventually

pytestmark = pytest.mark.unit

WAIT_S = 5.0  # upper bound for a fake to wait on a gate; never reached when tests pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeModel:
    model_id: str
    generation: int
    unloaded: bool = False


class FakeLoader:
    """Slow synchronous load/unload stand-ins: record calls, count concurrent loads,
    block on gates (threading.Event) and fail on demand."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.log: list[str] = []  # "load:m" / "unload:m", in the order they started
        self.active = 0
        self.max_active = 0
        self.generation = 0
        self.load_gates: dict[str, threading.Event] = {}
        self.unload_gates: dict[str, threading.Event] = {}
        self.fail_load: dict[str, Exception] = {}
        self.fail_unload: set[str] = set()
        self.load_seconds: dict[str, float] = {}
        self._started: dict[str, threading.Event] = {}

    def started(self, what: str) -> threading.Event:
        with self.lock:
            return self._started.setdefault(what, threading.Event())

    async def wait_started(self, what: str) -> None:
        assert await asyncio.to_thread(self.started(what).wait, WAIT_S), what

    def loads(self) -> list[str]:
        return [e.split(":")[1] for e in self.log if e.startswith("load:")]

    def unloads(self) -> list[str]:
        return [e.split(":")[1] for e in self.log if e.startswith("unload:")]

    def load(self, model_id: str) -> FakeModel:
        with self.lock:
            self.log.append(f"load:{model_id}")
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.generation += 1
            generation = self.generation
        self.started(f"load:{model_id}").set()
        try:
            if gate := self.load_gates.get(model_id):
                assert gate.wait(WAIT_S)
            self.clock.advance(self.load_seconds.get(model_id, 0.0))
            if model_id in self.fail_load:
                raise self.fail_load[model_id]
            return FakeModel(model_id, generation)
        finally:
            with self.lock:
                self.active -= 1

    def unload(self, model_id: str, model: FakeModel) -> None:
        assert model.model_id == model_id and not model.unloaded
        with self.lock:
            self.log.append(f"unload:{model_id}")
        self.started(f"unload:{model_id}").set()
        if gate := self.unload_gates.get(model_id):
            assert gate.wait(WAIT_S)
        model.unloaded = True
        if model_id in self.fail_unload:
            raise RuntimeError("unload blew up")


class Rig:
    def __init__(self, on_change: Callable[[], None] | None = None, **config: object) -> None:
        config.setdefault("default_model_id", "m-default")
        self.config = ModelManagerConfig(**config)  # type: ignore[arg-type]
        self.clock = FakeClock()
        self.fake = FakeLoader(self.clock)
        # "load:m" / "unload:m" as the manager hands each call to a thread (on the loop).
        self.submitted: list[str] = []
        self.known = {"m-default", "m-a", "m-b", "m-c"}
        self.changes = 0
        self.manager: ModelManager[FakeModel] = ModelManager(
            self.config,
            load=self.fake.load,
            unload=self.fake.unload,
            known_models=lambda: self.known,
            clock=self.clock,
            on_change=on_change or self._changed,
        )

    def _changed(self) -> None:
        self.changes += 1


@pytest.fixture
async def make_rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []
    to_thread = asyncio.to_thread

    async def recording_to_thread(func: Callable[..., object], /, *args: object) -> object:
        # Runs on the loop when the manager awaits it, before any thread is involved.
        for rig in rigs:
            if func == rig.fake.load:
                rig.submitted.append(f"load:{args[0]}")
            elif func == rig.fake.unload:
                rig.submitted.append(f"unload:{args[0]}")
        return await to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", recording_to_thread)

    def make(on_change: Callable[[], None] | None = None, **config: object) -> Rig:
        rigs.append(Rig(on_change, **config))
        return rigs[-1]

    yield make
    for rig in rigs:
        for gate in [*rig.fake.load_gates.values(), *rig.fake.unload_gates.values()]:
            gate.set()
        await rig.manager.close()


# -- acquire / release ---------------------------------------------------------


async def test_acquire_loads_once_and_counts_references(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    m = rig.manager
    a1 = await m.acquire("m-a")
    a2 = await m.acquire("m-a")
    assert a1 is a2 and a1.model_id == "m-a"
    assert rig.fake.loads() == ["m-a"] and rig.changes == 1
    assert m.refcount("m-a") == 2 and m.get("m-a") is a1 and m.resident_models() == ["m-a"]
    m.release("m-a")
    m.release("m-a")
    assert m.refcount("m-a") == 0 and m.get("m-a") is a1  # idle models stay until evicted


async def test_unknown_model_is_refused_without_loading(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    with pytest.raises(UnknownModelError):
        await rig.manager.acquire("m-nope")
    with pytest.raises(UnknownModelError):
        await rig.manager.load("m-nope")
    assert rig.fake.log == []


async def test_unmatched_release_is_logged_not_raised(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    await rig.manager.acquire("m-a")
    rig.manager.release("m-a")
    with caplog.at_level(logging.ERROR):
        rig.manager.release("m-a")
        rig.manager.release("m-unknown")
    assert rig.manager.refcount("m-a") == 0
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 2
    assert "without a matching acquire" in caplog.text


# -- shared loads, failures, parallelism ---------------------------------------


async def test_concurrent_acquires_share_one_load(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.fake.load_gates["m-a"] = threading.Event()
    t1 = asyncio.create_task(rig.manager.acquire("m-a"))
    await rig.fake.wait_started("load:m-a")
    t2 = asyncio.create_task(rig.manager.acquire("m-a"))
    await settle()
    assert not t1.done() and not t2.done() and rig.manager.get("m-a") is None
    rig.fake.load_gates["m-a"].set()
    a1, a2 = await asyncio.gather(t1, t2)
    assert a1 is a2 and rig.fake.loads() == ["m-a"] and rig.manager.refcount("m-a") == 2


async def test_load_failure_reaches_every_waiter_and_leaves_nothing(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    boom = OSError("model file missing")
    rig.fake.fail_load["m-a"] = boom
    rig.fake.load_gates["m-a"] = threading.Event()
    waiters: list[asyncio.Task[object]] = [
        asyncio.create_task(rig.manager.acquire("m-a")) for _ in range(2)
    ]
    waiters.append(asyncio.create_task(rig.manager.load("m-a")))
    await rig.fake.wait_started("load:m-a")
    await settle()
    rig.fake.load_gates["m-a"].set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ModelLoadError) and r.cause is boom for r in results)
    assert rig.fake.loads() == ["m-a"] and rig.changes == 0
    assert rig.manager.resident_models() == [] and rig.manager.refcount("m-a") == 0
    del rig.fake.fail_load["m-a"]
    assert (await rig.manager.acquire("m-a")).generation == 2  # a later request retries


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.fake.load_gates["m-a"] = threading.Event()
    first = asyncio.create_task(rig.manager.acquire("m-a"))
    await rig.fake.wait_started("load:m-a")
    second = asyncio.create_task(rig.manager.acquire("m-a"))
    await settle()
    first.cancel()
    await settle()
    rig.fake.load_gates["m-a"].set()
    assert (await second).model_id == "m-a"
    assert first.cancelled() and rig.manager.refcount("m-a") == 1


@pytest.mark.parametrize("parallel", [1, 2])
async def test_max_parallel_loads(make_rig: Callable[..., Rig], parallel: int) -> None:
    rig = make_rig(max_parallel_loads=parallel)
    for mid in ("m-a", "m-b"):
        rig.fake.load_gates[mid] = threading.Event()
    ta = asyncio.create_task(rig.manager.acquire("m-a"))
    await rig.fake.wait_started("load:m-a")
    tb = asyncio.create_task(rig.manager.acquire("m-b"))
    if parallel == 1:
        await settle()
        # b queues behind a: not even handed to a thread while a holds the one slot.
        assert rig.submitted == ["load:m-a"] and not tb.done()
        rig.fake.load_gates["m-a"].set()
        await ta
        await rig.fake.wait_started("load:m-b")  # a's slot is free: b goes
    else:
        await rig.fake.wait_started("load:m-b")  # both at once
    rig.fake.load_gates["m-a"].set()
    rig.fake.load_gates["m-b"].set()
    await asyncio.gather(ta, tb)
    assert rig.fake.max_active == parallel
    assert rig.manager.resident_models() == ["m-a", "m-b"]


# -- preload_only loads --------------------------------------------------------


async def test_load_takes_no_reference_and_reports_its_duration(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.fake.load_seconds["m-a"] = 0.25
    assert await rig.manager.load("m-a") == pytest.approx(250.0)
    assert rig.manager.refcount("m-a") == 0 and rig.manager.resident_models() == ["m-a"]
    assert await rig.manager.load("m-a") == 0.0
    assert rig.fake.loads() == ["m-a"]


# -- unload --------------------------------------------------------------------


async def test_unload_refuses_a_model_in_use(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    await rig.manager.acquire("m-a")
    with pytest.raises(ModelInUseError, match="refcount=1"):
        await rig.manager.unload("m-a")
    assert rig.fake.unloads() == [] and rig.manager.refcount("m-a") == 1
    with pytest.raises(ModelNotLoadedError):
        await rig.manager.unload("m-b")
    with pytest.raises(ModelNotLoadedError):
        await rig.manager.unload("m-nope")


async def test_unload_of_an_idle_model(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    model = await rig.manager.acquire("m-a")
    rig.manager.release("m-a")
    await rig.manager.unload("m-a")
    assert model.unloaded and rig.fake.unloads() == ["m-a"] and rig.changes == 2
    assert rig.manager.get("m-a") is None and rig.manager.resident_models() == []


async def test_an_unload_that_raises_still_forgets_the_model(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    await rig.manager.load("m-a")
    rig.fake.fail_unload.add("m-a")
    with caplog.at_level(logging.ERROR):
        await rig.manager.unload("m-a")
    assert rig.manager.resident_models() == [] and "unload blew up" in caplog.text
    assert (await rig.manager.load("m-a")) == 0.0  # loads again, fake clock stands still
    assert rig.fake.loads() == ["m-a", "m-a"]


# -- eviction ------------------------------------------------------------------


async def test_evict_idle_at_the_ttl_boundary(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(ttl_ms=600_000, min_residency_ms=120_000)
    model = await rig.manager.acquire("m-a")
    rig.clock.advance(100.0)
    rig.manager.release("m-a")  # the TTL counts from here
    rig.clock.advance(600.0)
    assert await rig.manager.evict_idle() == []
    rig.clock.advance(0.001)
    assert await rig.manager.evict_idle() == ["m-a"]
    assert model.unloaded and rig.manager.resident_models() == []


async def test_references_block_eviction(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    await rig.manager.acquire("m-a")
    rig.clock.advance(10_000.0)
    assert await rig.manager.evict_idle() == []
    assert rig.manager.resident_models() == ["m-a"]


async def test_pinned_default_stays(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(keep_default_resident=True)
    await rig.manager.start()
    await rig.manager.load("m-a")
    rig.clock.advance(10_000.0)
    assert await rig.manager.evict_idle() == ["m-a"]
    assert rig.manager.resident_models() == ["m-default"]


async def test_cap_evicts_lru_before_loading(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(resident_cap=2)
    await rig.manager.load("m-a")
    await rig.manager.load("m-b")
    rig.clock.advance(200.0)
    await rig.manager.acquire("m-a")  # a used more recently than b
    rig.manager.release("m-a")
    rig.fake.unload_gates["m-b"] = threading.Event()
    tc = asyncio.create_task(rig.manager.acquire("m-c"))
    await rig.fake.wait_started("unload:m-b")
    await settle()
    # c waits for b's memory to be freed: its load is not even handed to a thread.
    assert rig.submitted[-1] == "unload:m-b" and "load:m-c" not in rig.submitted
    assert not tc.done()
    rig.fake.unload_gates["m-b"].set()
    await tc
    assert rig.fake.log[-2:] == ["unload:m-b", "load:m-c"]
    assert rig.manager.resident_models() == ["m-a", "m-c"]


async def test_cap_with_nothing_evictable_refuses(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(resident_cap=1)
    await rig.manager.acquire("m-a")
    rig.clock.advance(10_000.0)
    with pytest.raises(CapacityError, match="refcount=1"):
        await rig.manager.acquire("m-b")
    assert rig.fake.loads() == ["m-a"] and rig.manager.resident_models() == ["m-a"]


async def test_acquire_during_an_unload_waits_and_loads_afresh(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    await rig.manager.load("m-a")
    old = rig.manager.get("m-a")
    assert old is not None
    rig.clock.advance(10_000.0)
    rig.fake.unload_gates["m-a"] = threading.Event()
    evict = asyncio.create_task(rig.manager.evict_idle())
    await rig.fake.wait_started("unload:m-a")
    acq = asyncio.create_task(rig.manager.acquire("m-a"))
    await settle()
    assert not acq.done() and rig.manager.get("m-a") is None
    rig.fake.unload_gates["m-a"].set()
    new = await acq
    assert await evict == ["m-a"]
    assert new is not old and not new.unloaded and old.unloaded
    assert rig.fake.log == ["load:m-a", "unload:m-a", "load:m-a"]
    assert rig.manager.refcount("m-a") == 1


async def test_evictor_loop_runs_in_the_background(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(evict_check_interval_ms=1, ttl_ms=1, min_residency_ms=0)
    await rig.manager.start()
    assert rig.manager.resident_models() == ["m-default"]
    rig.clock.advance(1.0)  # idle past its TTL: the next (real-time) evictor tick unloads it
    await eventually(lambda: rig.manager.resident_models() == [], what="the idle model evicted")
    assert rig.fake.unloads() == ["m-default"]


# -- start / close ---------------------------------------------------------------


async def test_start_loads_default_then_preloads_skipping_failures(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(preload_model_ids=["m-a", "m-nope", "m-b"], resident_cap=4)
    rig.fake.fail_load["m-a"] = RuntimeError("bad weights")
    with caplog.at_level(logging.WARNING):
        await rig.manager.start()
        assert rig.manager.get("m-default") is not None  # ready when start returns
        await rig.manager.wait_preloaded()
    assert rig.fake.loads() == ["m-default", "m-a", "m-b"]
    assert rig.manager.resident_models() == ["m-b", "m-default"]
    assert "bad weights" in caplog.text and "m-nope" in caplog.text


async def test_start_fails_when_the_default_fails(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(preload_model_ids=["m-a"])
    rig.fake.fail_load["m-default"] = RuntimeError("no onnx")
    with pytest.raises(ModelLoadError, match="no onnx"):
        await rig.manager.start()
    await rig.manager.wait_preloaded()
    assert rig.fake.loads() == ["m-default"]


async def test_close_waits_for_loads_then_unloads_everything(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    await rig.manager.start()
    await rig.manager.acquire("m-a")
    rig.fake.load_gates["m-b"] = threading.Event()
    tb = asyncio.create_task(rig.manager.acquire("m-b"))
    await rig.fake.wait_started("load:m-b")
    closing = asyncio.create_task(rig.manager.close())
    await settle()
    assert not closing.done()
    rig.fake.load_gates["m-b"].set()
    with caplog.at_level(logging.WARNING):
        await closing
    with pytest.raises(ModelError, match="closed"):
        await tb  # its load finished, but the manager closed meanwhile
    assert sorted(rig.fake.unloads()) == ["m-a", "m-b", "m-default"]
    assert rig.manager.resident_models() == [] and "refcount=1" in caplog.text
    with pytest.raises(ModelError, match="closed"):
        await rig.manager.acquire("m-a")


async def test_on_change_errors_are_contained(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ValueError("registry down")

    rig = make_rig(on_change=broken)
    with caplog.at_level(logging.ERROR):
        await rig.manager.load("m-a")
    assert rig.manager.resident_models() == ["m-a"] and "on_change" in caplog.text
