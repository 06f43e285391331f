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
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

POLL_S = 0.05  # how often a waiter re-checks its cancel flag


class Cancelled(Exception):
    """A session was stopped while generating or waiting for its turn."""


class FairLock:
    """A FIFO (ticket) lock whose waiters give up when their ``stop`` flag is set."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

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
        turn.cpu_rng = torch.get_rng_state()
        if self.device.type == "cuda":
            turn.cuda_rng = torch.cuda.get_rng_state(self.device)
        turn.held = False
        self.lock.release()

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
        if adapter == self.active:
            return
        peft = self.peft
        if peft is None:
            raise RuntimeError(f"adapter {adapter!r} asked for, but no adapter is loaded")
        started = time.perf_counter()
        if adapter is None:
            peft.base_model.disable_adapter_layers()
        else:
            if self.active is None:
                peft.base_model.enable_adapter_layers()
            if peft.active_adapter != adapter:
                peft.set_adapter(adapter)
        self.active = adapter
        self.switch_ms.append((time.perf_counter() - started) * 1000.0)


class _Exclusive:
    def __init__(self, scheduler: ModelScheduler, stop: Callable[[], bool]) -> None:
        self._scheduler = scheduler
        self._stop = stop

    def __enter__(self) -> ModelScheduler:
        self._scheduler.lock.acquire(self._stop)
        return self._scheduler

    def __exit__(self, *exc: object) -> None:
        self._scheduler.lock.release()
