"""Model manager driver: carries out ``ModelPolicy`` decisions on an asyncio loop.

The rules live in ``model_policy`` (pure, tested with scripted events); this module
only runs the slow, synchronous ``load``/``unload`` callables in threads, shares one
load per model between its waiters, bounds parallel loads, and runs the preload and
evictor tasks. Errors (tree in ``model_policy``'s docstring) are re-exported here.

Races the policy's claims rule out: a model claimed for unloading is no longer
handed out (``acquire`` waits for the unload, then loads it again), and a load starts
only after the unloads in flight when it was planned, so memory never holds more
than ``resident_cap`` models.

A LoRA voice (``base_of`` names its base model) loads its base first and keeps it
resident while it is (the policy's rule); at close the LoRA voices go before their
bases.

Releasing a model without a matching acquire is logged and ignored, not raised:
``release`` runs in session teardown (``finally`` blocks), where raising would hide
the error that ended the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

from duplexvoice.worker.model_policy import (
    CapacityError,
    LoadAction,
    ModelError,
    ModelInUseError,
    ModelLoadError,
    ModelManagerConfig,
    ModelNotLoadedError,
    ModelPolicy,
    ModelState,
    UnknownModelError,
)

__all__ = [
    "CapacityError",
    "ModelError",
    "ModelInUseError",
    "ModelLoadError",
    "ModelManager",
    "ModelManagerConfig",
    "ModelNotLoadedError",
    "UnknownModelError",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class _LoadOutcome:
    """Result of a shared load task: never raised, so that each waiter raises its own."""

    duration_ms: float = 0.0
    error: BaseException | None = None


class ModelManager(Generic[T]):
    """Loads, shares, and evicts the worker's models; ``T`` is the loaded object."""

    def __init__(
        self,
        config: ModelManagerConfig,
        *,
        load: Callable[[str], T],
        unload: Callable[[str, T], None],
        known_models: Callable[[], Collection[str]],
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
        base_of: Callable[[str], str | None] = lambda _model_id: None,
    ) -> None:
        self.config = config
        self._policy = ModelPolicy(config)
        self._load_fn = load
        self._unload_fn = unload
        self._known = known_models
        self._clock = clock
        self._on_change = on_change
        self._base_of = base_of
        self._objects: dict[str, T] = {}
        self._loads: dict[str, asyncio.Task[_LoadOutcome]] = {}
        self._unloads: dict[str, asyncio.Task[None]] = {}
        self._load_slots = asyncio.Semaphore(config.max_parallel_loads)
        self._preload_task: asyncio.Task[None] | None = None
        self._evictor_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Load the default model (raises if that fails), then start the background
        preloads (one by one, failures logged) and the evictor loop."""
        await self.load(self.config.default_model_id)
        self._preload_task = asyncio.create_task(self._preload(), name="model-preload")
        self._evictor_task = asyncio.create_task(self._evict_loop(), name="model-evictor")

    async def wait_preloaded(self) -> None:
        """Return once the background preloads have finished (or were never started)."""
        if self._preload_task is not None:
            await asyncio.wait([self._preload_task])

    async def close(self) -> None:
        """Stop the background tasks, let loads in flight finish, unload everything."""
        self._closed = True
        background = [t for t in (self._preload_task, self._evictor_task) if t is not None]
        for task in background:
            task.cancel()
        if background:
            await asyncio.gather(*background, return_exceptions=True)
        # Threads cannot be cancelled: wait for the loads and unloads they run.
        while self._loads or self._unloads:
            await asyncio.wait([*self._loads.values(), *self._unloads.values()])
        for model_id in self._policy.resident():
            if n := self._policy.refcount(model_id):
                log.warning("closing: unloading %s although refcount=%d", model_id, n)
        victims = self._policy.plan_shutdown()
        lora = [m for m in victims if self._policy.base_of(m) is not None]
        await self._unload_all([self._start_unload(m) for m in lora])
        await self._unload_all([self._start_unload(m) for m in victims if m not in lora])

    # -- sessions ------------------------------------------------------------

    async def acquire(self, model_id: str) -> T:
        """Take a reference to the model, loading it first (or waiting for its load)."""
        obj, _ = await self._ensure_resident(model_id, take_ref=True)
        return obj

    def release(self, model_id: str) -> None:
        """Drop a reference taken by ``acquire``; an unmatched release is logged."""
        if not self._policy.release(model_id, self._clock()):
            log.error("release of %r without a matching acquire; ignored", model_id)

    # -- operator commands ---------------------------------------------------

    async def load(self, model_id: str) -> float:
        """Make the model resident without taking a reference (LoadModel preload_only).

        Returns the load duration in ms (the shared load's, when waiting on one), or
        0.0 when the model was already resident. A LoRA voice's includes its base's
        load (and warm-up) when this call had to wait for it.
        """
        _, duration_ms = await self._ensure_resident(model_id, take_ref=False)
        return duration_ms

    async def unload(self, model_id: str) -> None:
        """Unload a model now. Raises ModelInUseError while sessions hold it and
        ModelNotLoadedError when it is not resident; waits for an unload in flight."""
        if self._policy.begin_unload(model_id):
            self._start_unload(model_id)
        await self._unload_all([self._unloads[model_id]])

    async def evict_idle(self) -> list[str]:
        """One evictor pass: unload the models idle past their TTL; returns them."""
        victims = self._policy.plan_evictions(self._clock())
        await self._unload_all([self._start_unload(m) for m in victims])
        if victims:
            log.info("evicted idle models: %s", ", ".join(victims))
        return victims

    # -- queries -------------------------------------------------------------

    def get(self, model_id: str) -> T | None:
        """The resident object, or None (also while it is loading or being unloaded)."""
        if self._policy.state(model_id) is ModelState.RESIDENT:
            return self._objects[model_id]
        return None

    def resident_models(self) -> list[str]:
        return self._policy.resident()

    def refcount(self, model_id: str) -> int:
        return self._policy.refcount(model_id)

    # -- internals -----------------------------------------------------------

    async def _ensure_resident(self, model_id: str, *, take_ref: bool) -> tuple[T, float]:
        if model_id not in self._known():
            raise UnknownModelError(f"no voice pack for model {model_id!r}")
        duration_ms = 0.0
        base_ms = 0.0  # loading the base on this call's behalf is part of its load
        base = self._base_of(model_id)
        # Plan again after every wait: whatever we waited for may have changed the state.
        while True:
            if self._closed:
                raise ModelError("model manager is closed")
            if base is not None and self._policy.state(model_id) is None:
                # No await between the base's READY and the plan below: the base
                # cannot be evicted in between, and once planned it has a dependent.
                _, waited_ms = await self._ensure_resident(base, take_ref=False)
                base_ms += waited_ms
            now = self._clock()
            plan = self._policy.plan_load(model_id, now, base=base)
            if plan.action is LoadAction.READY:
                # No await between the READY decision and the reference: an eviction
                # cannot slip in between.
                if take_ref:
                    self._policy.acquire(model_id, now)
                return self._objects[model_id], duration_ms + base_ms
            if plan.action is LoadAction.LOAD:
                for victim in plan.evict:
                    self._start_unload(victim)
                waits = [self._unloads[m] for m in plan.await_unloads]
                self._loads[model_id] = asyncio.create_task(
                    self._run_load(model_id, waits), name=f"load-{model_id}"
                )
            if model_id in self._loads:
                # shield: a cancelled waiter must not cancel the load others share.
                outcome = await asyncio.shield(self._loads[model_id])
                if outcome.error is not None:
                    raise ModelLoadError(model_id, outcome.error) from outcome.error
                duration_ms = outcome.duration_ms
            else:
                await self._unload_all([self._unloads[model_id]])

    async def _run_load(self, model_id: str, waits: list[asyncio.Task[None]]) -> _LoadOutcome:
        """The one load of ``model_id``; its outcome is shared by every waiter."""
        try:
            await self._unload_all(waits)
            async with self._load_slots:
                t0 = self._clock()
                obj = await asyncio.to_thread(self._load_fn, model_id)
                duration_ms = (self._clock() - t0) * 1000.0
        except Exception as exc:
            self._policy.mark_failed(model_id)
            log.error("loading model %s failed: %r", model_id, exc)
            return _LoadOutcome(error=exc)
        except BaseException:
            self._policy.mark_failed(model_id)
            raise
        finally:
            del self._loads[model_id]
        self._objects[model_id] = obj
        self._policy.mark_loaded(model_id, self._clock())
        log.info("loaded model %s in %.0f ms", model_id, duration_ms)
        self._notify()
        return _LoadOutcome(duration_ms=duration_ms)

    def _start_unload(self, model_id: str) -> asyncio.Task[None]:
        """Run the unload of a model the policy has claimed (state UNLOADING)."""
        task = asyncio.create_task(self._run_unload(model_id), name=f"unload-{model_id}")
        self._unloads[model_id] = task
        return task

    async def _run_unload(self, model_id: str) -> None:
        obj = self._objects[model_id]
        try:
            await asyncio.to_thread(self._unload_fn, model_id, obj)
        except Exception:
            # The object is dropped either way; freeing it is the adapter's job.
            log.exception("unloading model %s raised; forgetting it anyway", model_id)
        finally:
            del self._objects[model_id]
            del self._unloads[model_id]
            self._policy.mark_unloaded(model_id)
            self._notify()

    @staticmethod
    async def _unload_all(tasks: list[asyncio.Task[None]]) -> None:
        # asyncio.wait, not gather: cancelling the waiter leaves the unloads running.
        if tasks:
            await asyncio.wait(tasks)

    def _notify(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            log.exception("model manager on_change callback raised")

    async def _preload(self) -> None:
        for model_id in self.config.preload_model_ids:
            try:
                await self.load(model_id)
            except ModelError as exc:
                log.warning("preloading model %s failed: %s", model_id, exc)

    async def _evict_loop(self) -> None:
        interval_s = self.config.evict_check_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.evict_idle()
            except Exception:
                log.exception("evictor pass failed")
