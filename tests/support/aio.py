"""Stepping the event loop in unit tests of pure asyncio code."""

from __future__ import annotations

import asyncio


async def settle(rounds: int = 20) -> None:
    """Let every runnable task take its next steps (``rounds`` loop iterations).

    Deterministic only for code that waits on nothing but other tasks: no threads,
    no I/O, no timers. Then a task still pending after ``settle`` is blocked, not
    merely unscheduled; assert what it waits for, then release it and see it finish.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)
