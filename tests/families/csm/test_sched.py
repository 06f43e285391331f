"""Failure paths of the CSM scheduler and the bound on per-session memory, with a fake
PEFT model (no checkpoint)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="CSM family not installed: run `make worker-env FAMILY=csm`")

import torch

from duplexvoice.worker.adapters.csm_options import (
    MAX_CONTEXT_SECONDS,
    MEMORY_KEY,
    SAMPLE_RATE,
    ContextTurn,
    bounded,
    remember,
)
from duplexvoice.worker.adapters.csm_sched import ModelScheduler, Turn

pytestmark = pytest.mark.unit


class FakeTuner:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.fail_enable = False
        self.fail_disable = False

    def enable_adapter_layers(self) -> None:
        if self.fail_enable:
            raise RuntimeError("enable failed")
        self.log.append("enable")

    def disable_adapter_layers(self) -> None:
        if self.fail_disable:
            raise RuntimeError("disable failed")
        self.log.append("disable")


class FakePeft:
    """What ModelScheduler._activate touches of a PeftModel."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.base_model = FakeTuner(self.log)
        self.active_adapter = "a"
        self.fail_set = False

    def set_adapter(self, name: str) -> None:
        if self.fail_set:
            raise RuntimeError("set_adapter failed")
        self.active_adapter = name
        self.log.append(f"set {name}")


def scheduler(peft: Any = None) -> ModelScheduler:
    sched = ModelScheduler(torch.device("cpu"))
    sched.peft = peft
    return sched


def lock_is_free(sched: ModelScheduler) -> bool:
    done = threading.Event()

    def take() -> None:
        with sched.exclusive():
            done.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    return done.wait(timeout=5)


def test_release_frees_the_lock_even_when_saving_the_rng_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sched = scheduler()
    turn = Turn(adapter=None, seed=1)
    sched.acquire(turn)

    def broken() -> Any:
        raise RuntimeError("rng state unavailable")

    monkeypatch.setattr(torch, "get_rng_state", broken)
    with pytest.raises(RuntimeError, match="rng state"):
        sched.release(turn)
    assert not turn.held
    assert lock_is_free(sched)  # other sessions do not hang


def test_a_switch_that_fails_partway_is_redone_whole() -> None:
    peft = FakePeft()
    sched = scheduler(peft)
    sched.active = None  # a base session ran: adapters disabled
    peft.base_model.fail_enable = True
    with pytest.raises(RuntimeError, match="enable"):
        sched._activate("b")
    assert not sched.in_sync
    peft.base_model.fail_enable = False
    peft.fail_set = True
    with pytest.raises(RuntimeError, match="set_adapter"):
        sched._activate("b")  # layers enabled, but "a" still the active adapter
    peft.fail_set = False
    peft.log.clear()
    sched._activate("a")  # tracked state said None: without a re-sync "a" was assumed set
    assert peft.log == ["enable", "set a"] and sched.active == "a" and sched.in_sync
    peft.log.clear()
    sched._activate("a")
    assert peft.log == []  # in sync again: no redundant switch


def test_a_failed_switch_to_the_base_is_redone() -> None:
    peft = FakePeft()
    sched = scheduler(peft)
    sched.active = "a"
    peft.log.clear()
    peft.base_model.fail_disable = True
    with pytest.raises(RuntimeError, match="disable"):
        sched._activate(None)
    assert not sched.in_sync
    peft.base_model.fail_disable = False
    sched._activate("a")  # same name as tracked, but not trusted: re-applied
    assert peft.log == ["enable", "set a"]


def turn(seconds: float) -> ContextTurn:
    return ContextTurn(0, "x", np.zeros(int(seconds * SAMPLE_RATE), np.float32))


def stored_seconds(memory: dict[str, Any]) -> float:
    return sum(t.audio.size for t in memory[MEMORY_KEY]) / SAMPLE_RATE


def test_remembered_audio_stays_within_what_a_prompt_uses() -> None:
    memory: dict[str, Any] = {}
    for _ in range(8):
        remember(memory, turn(12.0), keep=8)
        assert stored_seconds(memory) <= MAX_CONTEXT_SECONDS
    assert len(memory[MEMORY_KEY]) == 2  # the two latest 12 s turns fit in 30 s
    assert bounded(memory[MEMORY_KEY]) == memory[MEMORY_KEY]  # nothing stored unused
    remember(memory, turn(40.0), keep=8)  # a turn longer than the bound is never used
    assert memory[MEMORY_KEY] == []
    remember(memory, turn(1.0), keep=8)
    remember(memory, turn(1.0), keep=8)
    remember(memory, turn(1.0), keep=2)
    assert len(memory[MEMORY_KEY]) == 2 and stored_seconds(memory) == 2.0
    remember(memory, turn(1.0), keep=0)
    assert memory[MEMORY_KEY] == []
