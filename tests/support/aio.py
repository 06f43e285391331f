"""Stepping the event loop in unit tests of pure asyncio code; waiting for a message."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, TypeVar

R = TypeVar("R")


async def settle(rounds: int = 20) -> None:
    """Let every runnable task take its next steps (``rounds`` loop iterations).

    Deterministic only for code that waits on nothing but other tasks: no threads,
    no I/O, no timers. Then a task still pending after ``settle`` is blocked, not
    merely unscheduled; assert what it waits for, then release it and see it finish.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)


async def first_match(log: Sequence[R], changed: asyncio.Event, predicate: Any,
                      timeout: float) -> R:
    """The first record of ``log`` (each with a ``message`` dict), from the start, whose
    message satisfies ``predicate``; ``changed`` is set whenever the log grows. Fails
    after ``timeout`` seconds naming the message types seen."""
    deadline = time.monotonic() + timeout
    checked = 0
    while True:
        for item in log[checked:]:
            if predicate(item.message):  # type: ignore[attr-defined]
                return item
        checked = len(log)
        left = deadline - time.monotonic()
        if left <= 0:
            kinds = [m.get("type") for m in (r.message for r in log)  # type: ignore[attr-defined]
                     if m.get("type") != "binary"]
            raise AssertionError(f"not seen within {timeout} s; got {kinds}")
        changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), left)
