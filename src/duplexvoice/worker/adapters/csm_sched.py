"""Fair per-model scheduling of CSM generation between sessions (and LoRA voices).

One CSM model object serves every session of its base voice and of every LoRA voice
over it. PEFT's active adapter (and whether adapters are enabled at all) is state of
the model, and sampling draws from torch's global RNG, so two sessions cannot compute
at once without leaking into each other. Each session therefore computes while holding
the model's :class:`FairLock` (FIFO: no session starves) and gives it up after every
generated frame (from the streamer's ``put()``, which runs on the generating thread
between steps). On taking it back, :class:`ModelScheduler` activates the session's own
adapter only if another one is active (a switch costs a few ms; none when one session
runs alone) and restores the session's own RNG state, so a seeded session produces the
same audio whatever it was interleaved with.

Every session has its own generation thread and KV cache (one ``generate`` call each);
only the compute steps are serialized. On a GPU that leaves batching across sessions
undone: sessions take turns frame by frame.

Adapters change under :meth:`ModelScheduler.exclusive` only, and every change either
completes or is undone (:meth:`ModelScheduler.add_adapter`): a LoRA voice that fails
to load leaves the model exactly as it was, with no half-loaded adapter nobody owns.
Adapters may wrap modules of the backbone and the depth decoder only: Mimi
(``codec_model``) decodes outside the lock, so an adapter there would change the audio
of other voices' sessions; such adapters are refused (train with :data:`LORA_TARGETS`).
When a switch fails partway, the tracked state is marked stale and the next turn
re-applies the whole activation instead of trusting it.

The RNG state saved and restored per turn is torch's global one, and the lock is per
model: two CSM base models in one worker each keep their own sessions reproducible,
but while both generate at once their draws interleave on that global generator, so a
seeded utterance is bit-exact only while no session of another CSM model is sampling.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

POLL_S = 0.05  # how often a waiter re-checks its cancel flag
# The modules a CSM LoRA may wrap (a PEFT target_modules regex): the attention and MLP
# projections of the backbone and the depth decoder, never Mimi's.
LORA_TARGETS = (
    r".*(backbone_model|depth_decoder).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
ADAPTER_ROOTS = ("backbone_model.", "depth_decoder.")


class Cancelled(Exception):
    """A session was stopped while generating or waiting for its turn."""


class FairLock:
    """A FIFO (ticket) lock whose waiters give up when their ``stop`` flag is set."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    def waiting(self) -> int:
        """Tickets handed out and not yet served (the holder included)."""
        with self._cond:
            return self._next_ticket - self._serving - len(self._abandoned)

    def acquire(self, stop: Callable[[], bool]) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                if stop():
                    # Leave the queue: whoever releases skips this ticket.
                    self._abandoned.add(ticket)
                    self._cond.notify_all()
                    raise Cancelled
                self._cond.wait(POLL_S)

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
            self._cond.notify_all()


@dataclass
class Turn:
    """One session's claim on the model: which adapter, and its RNG state."""

    adapter: str | None  # None: the base voice (adapters disabled)
    seed: int
    cpu_rng: torch.Tensor | None = None
    cuda_rng: torch.Tensor | None = None
    held: bool = False
    stop: Callable[[], bool] = field(default=lambda: False)


class ModelScheduler:
    """The lock, the adapter state and the switch timings of one CSM model."""

    def __init__(self, device: torch.device) -> None:
        self.lock = FairLock()
        self.device = device
        self.peft: Any = None  # the PeftModel once a LoRA voice loaded
        self.active: str | None = None  # adapter in effect; None: adapters disabled
        self.in_sync = True  # False: the model's state may differ from ``active``
        self.switch_ms: deque[float] = deque(maxlen=1000)

    # -- session turns ---------------------------------------------------------------
    def acquire(self, turn: Turn) -> None:
        self.lock.acquire(turn.stop)
        turn.held = True
        try:
            self._activate(turn.adapter)
            self._restore_rng(turn)
        except BaseException:
            self.release(turn)
            raise

    def release(self, turn: Turn) -> None:
        if not turn.held:
            return
        turn.held = False
        try:
            turn.cpu_rng = torch.get_rng_state()
            if self.device.type == "cuda":
                turn.cuda_rng = torch.cuda.get_rng_state(self.device)
        finally:
            self.lock.release()  # whatever happened: every other session waits on it

    def exclusive(self, stop: Callable[[], bool] = lambda: False) -> _Exclusive:
        """Hold the model for a change of its adapters (load, delete)."""
        return _Exclusive(self, stop)

    # -- internals ---------------------------------------------------------------------
    def _restore_rng(self, turn: Turn) -> None:
        if turn.cpu_rng is None:
            torch.manual_seed(turn.seed)  # seeds CUDA generators too
            return
        torch.set_rng_state(turn.cpu_rng)
        if turn.cuda_rng is not None:
            torch.cuda.set_rng_state(turn.cuda_rng, self.device)

    def _activate(self, adapter: str | None) -> None:
        if adapter == self.active and self.in_sync:
            return
        peft = self.peft
        if peft is None:
            if adapter is None:  # a plain model: nothing to switch
                self.active, self.in_sync = None, True
                return
            raise RuntimeError(f"adapter {adapter!r} asked for, but no adapter is loaded")
        started = time.perf_counter()
        full = not self.in_sync
        self.in_sync = False  # until every step below has happened
        if adapter is None:
            peft.base_model.disable_adapter_layers()
        else:
            if full or self.active is None:
                peft.base_model.enable_adapter_layers()
            if full or peft.active_adapter != adapter:
                peft.set_adapter(adapter)
        self.active, self.in_sync = adapter, True
        self.switch_ms.append((time.perf_counter() - started) * 1000.0)

    # -- adapters (call under exclusive()) ---------------------------------------------
    def add_adapter(self, model: Any, folder: Path, name: str) -> None:
        """Load the PEFT adapter in ``folder`` into ``model`` as ``name``.

        Any failure (unreadable or truncated weights, a rank or shape mismatch, missing
        LoRA weights, modules outside :data:`ADAPTER_ROOTS`) undoes the load completely
        and raises; the first adapter's failure leaves a plain model again.
        """
        from peft import PeftConfig, PeftModel

        first = self.peft is None
        peft: Any = self.peft
        self.in_sync = False  # PEFT may (de)activate layers while loading
        try:
            config = PeftConfig.from_pretrained(str(folder))
            config.inference_mode = True
            if first:
                peft = PeftModel(model, config, adapter_name=name)  # injects the layers
            result = peft.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            peft.eval()  # new dropout modules start in training mode
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
            if missing:
                raise ValueError(
                    f"adapter weights lack {len(missing)} LoRA tensors, e.g. {missing[0]}"
                )
            outside = adapter_modules_outside(model, name)
            if outside:
                shown = ", ".join(outside[:3]) + (", ..." if len(outside) > 3 else "")
                raise ValueError(
                    f"it wraps {len(outside)} module(s) outside the backbone and depth "
                    f"decoder ({shown}); Mimi decodes outside the model lock, so such an "
                    f"adapter would change other voices' audio: train it with "
                    f"target_modules=r\"{LORA_TARGETS}\""
                )
        except BaseException:
            self._undo_add(model, peft, name, first)
            raise
        self.peft = peft

    def remove_adapter(self, name: str) -> None:
        """Delete adapter ``name``; the last one leaves the base model plain again."""
        peft = self.peft
        if peft is None or name not in peft.peft_config:
            return
        self.in_sync = False
        if len(peft.peft_config) == 1:
            model = peft.base_model.model
            self.peft = None
            try:
                peft.unload()  # the base model's layers come back as they were
            finally:
                strip_adapters(model)
            self.active, self.in_sync = None, True
            return
        try:
            peft.delete_adapter(name)
        finally:
            _drop_layers_of(peft.base_model.model, name)

    def _undo_add(self, model: Any, peft: Any, name: str, first: bool) -> None:
        if first:
            self.peft = None
            strip_adapters(model)  # whatever PEFT injected before it failed
            self.active, self.in_sync = None, True
            return
        try:
            if peft is not None and name in peft.peft_config:
                peft.delete_adapter(name)
        finally:
            _drop_layers_of(model, name)  # layers injected before the config was kept


def _adapter_layers(model: Any) -> list[tuple[str, Any]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def _holds(layer: Any, name: str) -> bool:
    return any(name in getattr(layer, attr, {}) for attr in layer.adapter_layer_names)


def adapter_modules_outside(model: Any, name: str) -> list[str]:
    """Modules of ``model`` where adapter ``name`` lives outside :data:`ADAPTER_ROOTS`."""
    return [
        n for n, layer in _adapter_layers(model)
        if _holds(layer, name) and not n.startswith(ADAPTER_ROOTS)
    ]


def strip_adapters(model: Any, only_empty: bool = False) -> None:
    """Put every wrapped module of ``model`` back as its plain base layer (with
    ``only_empty``: those no adapter lives in any more)."""
    for module_name, layer in _adapter_layers(model):
        if only_empty and any(getattr(layer, a, None) for a in layer.adapter_layer_names):
            continue
        parent_name, _, child = module_name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            continue  # inside a wrapper already replaced
        base = layer.get_base_layer()
        if getattr(parent, child, None) is layer:
            setattr(parent, child, base)
    if not only_empty and hasattr(model, "peft_config"):
        del model.peft_config


def _drop_layers_of(model: Any, name: str) -> None:
    """Delete adapter ``name`` from every layer, and unwrap the layers left empty (those
    only it had wrapped)."""
    for _, layer in _adapter_layers(model):
        if _holds(layer, name):
            layer.delete_adapter(name)
    strip_adapters(model, only_empty=True)


class _Exclusive:
    def __init__(self, scheduler: ModelScheduler, stop: Callable[[], bool]) -> None:
        self._scheduler = scheduler
        self._stop = stop

    def __enter__(self) -> ModelScheduler:
        self._scheduler.lock.acquire(self._stop)
        return self._scheduler

    def __exit__(self, *exc: object) -> None:
        self._scheduler.lock.release()
