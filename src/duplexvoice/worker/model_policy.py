"""Model manager policy: which models to load, keep and evict, with no I/O.

A sans-I/O core (like ``websockets.protocol``): every method takes the current
monotonic time ``now`` (seconds) and returns what to do; the asyncio driver in
``model_manager`` only carries the decisions out. No event loop, threads or clocks
here, so every rule is tested with scripted events.

An entry moves ``LOADING -> RESIDENT -> UNLOADING -> (gone)``; a failed load removes
its ``LOADING`` entry. Decisions that pick models (``plan_load``, ``plan_evictions``,
``begin_unload``) also claim them in the same call, so two concurrent decisions
never pick the same victim, and a model being unloaded is never handed out again.

Slots: ``LOADING`` and ``RESIDENT`` entries count against ``resident_cap``.
``UNLOADING`` entries do not (they are leaving), but every load plan lists the
unloads in flight that must finish before the load starts, so at most
``resident_cap`` models are ever in memory.

LoRA voices: an entry with a ``base`` is a small adapter over another resident
model. It loads, counts references and expires like a model, but counts against
``lora_resident_cap`` instead of ``resident_cap`` (it shares its base's weights),
needs its base resident to load, and keeps the base resident while it is: a base
with adapters is never evicted, and unloading it is refused until they are gone.

Errors::

    ModelError                  base of every model manager error
    ├── UnknownModelError       no voice pack has this id               (not retryable)
    ├── ModelLoadError          the loader raised; ``cause`` keeps why   (retryable)
    ├── CapacityError           resident_cap reached, nothing evictable (retryable later)
    ├── ModelInUseError         unload refused: sessions hold references (retryable later)
    └── ModelNotLoadedError     unload/acquire of a model not resident   (not retryable)
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelError(Exception):
    """Base of the model manager errors."""

    retryable: ClassVar[bool] = False


class UnknownModelError(ModelError):
    """The model id is not in the catalogue of known voice packs."""


class ModelLoadError(ModelError):
    """Loading (or warming up) the model raised; ``cause`` is the original error."""

    retryable = True

    def __init__(self, model_id: str, cause: BaseException) -> None:
        super().__init__(f"loading model {model_id!r} failed: {cause!r}")
        self.model_id = model_id
        self.cause = cause


class CapacityError(ModelError):
    """Loading would exceed ``resident_cap`` and no resident model may be evicted."""

    retryable = True


class ModelInUseError(ModelError):
    """Unload refused because sessions hold references to the model."""

    retryable = True

    def __init__(self, model_id: str, refcount: int, lora_voices: Iterable[str] = ()) -> None:
        lora = list(lora_voices)
        if lora:
            why = f"model {model_id!r} is in use as the base of LoRA voice(s) {', '.join(lora)}"
            super().__init__(f"{why}; unload them first; not unloaded")
        else:
            super().__init__(
                f"model {model_id!r} is in use by {refcount} session(s) "
                f"(refcount={refcount}); not unloaded"
            )
        self.model_id = model_id
        self.refcount = refcount
        self.lora_voices = lora


class ModelNotLoadedError(ModelError):
    """The model is not resident (unknown to the manager, loading or unloading)."""


class ModelManagerConfig(BaseModel):
    """Options of the worker's model manager (design: MODELS_AND_ROUTING, "Model manager")."""

    model_config = ConfigDict(extra="forbid")

    default_model_id: str = Field(
        default="piper-en-us-joe-medium",
        min_length=1,
        description="Loaded and warmed at start-up; the worker is not ready until it is.",
    )
    preload_model_ids: list[str] = Field(
        default_factory=list,
        description="Loaded and warmed after the default, one by one; failures are logged.",
    )
    ttl_ms: int = Field(
        default=600_000,
        gt=0,
        description="An idle model (refcount 0) unused for longer than this is unloaded.",
    )
    min_residency_ms: int = Field(
        default=120_000,
        ge=0,
        description="Never unload a model loaded less than this long ago (no thrashing).",
    )
    evict_check_interval_ms: int = Field(
        default=30_000, gt=0, description="How often the evictor looks for idle models."
    )
    resident_cap: int = Field(
        default=3,
        ge=1,
        description="At most this many models resident (loading included); over it the "
        "least recently used idle model is evicted, or the load refused.",
    )
    max_parallel_loads: int = Field(
        default=1, ge=1, description="Loads of different models at once (memory spikes)."
    )
    warmup_enabled: bool = Field(
        default=True,
        description="After each load, synthesize a hidden utterance so the first is fast.",
    )
    warmup_text: str = Field(
        default="Hello, this is a warm-up.",
        min_length=1,
        description="Text of the warm-up utterance (used by the loader).",
    )
    lora_resident_cap: int = Field(
        default=16,
        ge=1,
        description="At most this many LoRA voices resident (they share their base "
        "model's weights, so they do not count against resident_cap).",
    )
    keep_default_resident: bool = Field(
        default=False,
        description="Never evict the default model automatically (TTL or cap); "
        "otherwise it is a model like the others.",
    )

    @model_validator(mode="after")
    def _startup_models_fit(self) -> ModelManagerConfig:
        # Preloads are idle and inside min residency right after start-up, so more
        # than resident_cap of them could never all be resident.
        wanted = {self.default_model_id, *self.preload_model_ids}
        if len(wanted) > self.resident_cap:
            raise ValueError(
                f"default_model_id plus preload_model_ids name {len(wanted)} models, "
                f"more than resident_cap={self.resident_cap}"
            )
        return self


class ModelState(enum.Enum):
    LOADING = "loading"
    RESIDENT = "resident"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class ModelEntry:
    """One model known to the policy. ``loaded_at`` is None until the load finishes."""

    model_id: str
    state: ModelState
    last_used: float
    loaded_at: float | None = None
    refcount: int = 0
    pinned: bool = False
    base: str | None = None  # a LoRA voice: the model its adapter goes over


class LoadAction(enum.Enum):
    READY = "ready"  # resident: acquire it now, in the same step
    WAIT = "wait"  # a load or unload of this model is in flight: await it, then plan again
    LOAD = "load"  # now LOADING and claimed by the caller: unload ``evict``, then load


@dataclass(frozen=True)
class LoadPlan:
    """What ``plan_load`` decided.

    ``evict``: models just claimed for unloading to make room (LRU first).
    ``await_unloads``: every unload in flight, ``evict`` included, that must finish
    before the load starts so that memory never holds more than ``resident_cap``.
    """

    action: LoadAction
    evict: tuple[str, ...] = ()
    await_unloads: tuple[str, ...] = ()


class ModelPolicy:
    """Model entries and the rules over them; mutated only through its methods."""

    def __init__(self, config: ModelManagerConfig) -> None:
        self.config = config
        self._entries: dict[str, ModelEntry] = {}

    # -- queries -------------------------------------------------------------

    def entry(self, model_id: str) -> ModelEntry | None:
        return self._entries.get(model_id)

    def entries(self) -> list[ModelEntry]:
        return sorted(self._entries.values(), key=lambda e: e.model_id)

    def state(self, model_id: str) -> ModelState | None:
        e = self._entries.get(model_id)
        return e.state if e else None

    def resident(self) -> list[str]:
        return sorted(m for m, e in self._entries.items() if e.state is ModelState.RESIDENT)

    def refcount(self, model_id: str) -> int:
        e = self._entries.get(model_id)
        return e.refcount if e else 0

    def unloading(self) -> list[str]:
        return sorted(m for m, e in self._entries.items() if e.state is ModelState.UNLOADING)

    def dependents(self, model_id: str) -> list[str]:
        """The LoRA voices (in any state) over ``model_id``."""
        return sorted(m for m, e in self._entries.items() if e.base == model_id)

    def base_of(self, model_id: str) -> str | None:
        e = self._entries.get(model_id)
        return e.base if e else None

    # -- decisions -----------------------------------------------------------

    def plan_load(self, model_id: str, now: float, *, base: str | None = None) -> LoadPlan:
        """Decide how to make ``model_id`` resident; claim the load and its victims.

        ``base``: ``model_id`` is a LoRA voice over that model, which must be resident
        (ModelNotLoadedError otherwise: the driver loads the base first, in the same
        step as this plan). Raises CapacityError, changing nothing, when the cap is
        reached and too few resident models are evictable.
        """
        e = self._entries.get(model_id)
        if e is not None:
            if e.state is ModelState.RESIDENT:
                return LoadPlan(LoadAction.READY)
            return LoadPlan(LoadAction.WAIT)
        if base is not None and self.state(base) is not ModelState.RESIDENT:
            raise ModelNotLoadedError(
                f"base model {base!r} of LoRA voice {model_id!r} is not resident"
            )
        is_lora = base is not None
        cap = self.config.lora_resident_cap if is_lora else self.config.resident_cap
        occupied = sum(
            1
            for x in self._entries.values()
            if x.state is not ModelState.UNLOADING and (x.base is not None) == is_lora
        )
        need = occupied + 1 - cap
        victims: list[str] = []
        if need > 0:
            candidates = [c for c in self._evictable(now) if (c.base is not None) == is_lora]
            if len(candidates) < need:
                raise CapacityError(self._capacity_message(model_id, now, cap, is_lora))
            victims = [c.model_id for c in candidates[:need]]
        self._claim_unloads(victims)
        self._entries[model_id] = ModelEntry(
            model_id, ModelState.LOADING, last_used=now, pinned=self._pins(model_id), base=base
        )
        return LoadPlan(LoadAction.LOAD, tuple(victims), tuple(self.unloading()))

    def plan_evictions(self, now: float) -> list[str]:
        """TTL pass: claim for unloading every idle model past its TTL (LRU first).

        Idle means refcount 0, unused for strictly more than ``ttl_ms`` and loaded at
        least ``min_residency_ms`` ago; a pinned default is never chosen.
        """
        ttl_s = self.config.ttl_ms / 1000.0
        victims = [c.model_id for c in self._evictable(now) if now - c.last_used > ttl_s]
        self._claim_unloads(victims)
        return victims

    def begin_unload(self, model_id: str) -> bool:
        """Explicit unload (operator command): claim it; False if already unloading.

        Ignores min residency and pinning (an operator asked), but never drops a
        model with references: raises ModelInUseError, or ModelNotLoadedError when
        the model is not resident.
        """
        e = self._entries.get(model_id)
        if e is None:
            raise ModelNotLoadedError(f"model {model_id!r} is not loaded")
        if e.state is ModelState.UNLOADING:
            return False
        if e.state is ModelState.LOADING:
            raise ModelNotLoadedError(f"model {model_id!r} is still loading")
        if e.refcount > 0:
            raise ModelInUseError(model_id, e.refcount)
        if lora := self.dependents(model_id):
            raise ModelInUseError(model_id, 0, lora_voices=lora)
        self._claim_unloads([model_id])
        return True

    def plan_shutdown(self) -> list[str]:
        """Claim every resident model for unloading, references or not (closing).

        LoRA voices come first in the list: the driver unloads them before their bases.
        """
        victims = sorted(self.resident(), key=lambda m: (self._entries[m].base is None, m))
        self._claim_unloads(victims)
        return victims

    # -- events --------------------------------------------------------------

    def mark_loaded(self, model_id: str, now: float) -> None:
        e = self._require(model_id, ModelState.LOADING)
        self._entries[model_id] = dataclasses.replace(
            e, state=ModelState.RESIDENT, loaded_at=now, last_used=now
        )

    def mark_failed(self, model_id: str) -> None:
        """The load failed: forget the entry so that a later request retries."""
        self._require(model_id, ModelState.LOADING)
        del self._entries[model_id]

    def mark_unloaded(self, model_id: str) -> None:
        self._require(model_id, ModelState.UNLOADING)
        del self._entries[model_id]

    def acquire(self, model_id: str, now: float) -> int:
        """A session takes a reference; returns the new refcount."""
        e = self._entries.get(model_id)
        if e is None or e.state is not ModelState.RESIDENT:
            raise ModelNotLoadedError(f"model {model_id!r} is not resident")
        self._entries[model_id] = dataclasses.replace(e, refcount=e.refcount + 1, last_used=now)
        return e.refcount + 1

    def release(self, model_id: str, now: float) -> bool:
        """A session drops its reference. False, changing nothing, when there is no
        reference to drop (unknown model or refcount 0): counts never go negative."""
        e = self._entries.get(model_id)
        if e is None or e.refcount == 0:
            return False
        self._entries[model_id] = dataclasses.replace(e, refcount=e.refcount - 1, last_used=now)
        return True

    # -- helpers -------------------------------------------------------------

    def _pins(self, model_id: str) -> bool:
        return self.config.keep_default_resident and model_id == self.config.default_model_id

    def _evictable(self, now: float) -> list[ModelEntry]:
        """Resident, unreferenced, unpinned, past min residency; least recently used first."""
        min_res_s = self.config.min_residency_ms / 1000.0
        out = [
            e
            for e in self._entries.values()
            if e.state is ModelState.RESIDENT
            and e.refcount == 0
            and not e.pinned
            and e.loaded_at is not None
            and now - e.loaded_at >= min_res_s
            and not self.dependents(e.model_id)
        ]
        out.sort(key=lambda e: (e.last_used, e.loaded_at or 0.0, e.model_id))
        return out

    def _claim_unloads(self, model_ids: Iterable[str]) -> None:
        for m in model_ids:
            self._entries[m] = dataclasses.replace(self._entries[m], state=ModelState.UNLOADING)

    def _require(self, model_id: str, state: ModelState) -> ModelEntry:
        e = self._entries.get(model_id)
        if e is None or e.state is not state:
            # A driver bug, not a user error: the event does not match the state.
            found = e.state.value if e else "absent"
            raise RuntimeError(f"model {model_id!r} is {found}, expected {state.value}")
        return e

    def _capacity_message(self, model_id: str, now: float, cap: int, is_lora: bool) -> str:
        min_res_s = self.config.min_residency_ms / 1000.0
        reasons: list[str] = []
        for e in self.entries():
            if (e.base is not None) != is_lora:
                continue
            if e.state is ModelState.LOADING:
                reasons.append(f"{e.model_id} (loading)")
            elif e.state is ModelState.RESIDENT:
                if e.refcount:
                    reasons.append(f"{e.model_id} (in use, refcount={e.refcount})")
                elif e.pinned:
                    reasons.append(f"{e.model_id} (pinned default)")
                elif lora := self.dependents(e.model_id):
                    reasons.append(f"{e.model_id} (base of {', '.join(lora)})")
                elif e.loaded_at is not None and now - e.loaded_at < min_res_s:
                    reasons.append(f"{e.model_id} (loaded {now - e.loaded_at:.0f} s ago)")
                else:
                    reasons.append(f"{e.model_id} (idle)")
        name = "lora_resident_cap" if is_lora else "resident_cap"
        return (
            f"cannot load {model_id!r}: {name}={cap} reached and "
            f"no model can be evicted (min residency {min_res_s:.0f} s): " + ", ".join(reasons)
        )
