"""Waiting in tests: on a condition, with a deadline, never on a bare sleep.

``eventually`` re-checks a condition until it holds or the deadline passes, then
fails with what it last saw. Use it for state that changes in another process
(a Redis key, a worker's session count) where no event can be awaited; where an
event exists (a message, a future, a process exit), await that with a timeout.
The deadline is generous (a loaded 2-core machine) and only bounds a failure: a
passing test returns as soon as the condition holds.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 20.0


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Call ``check`` (sync or async) until it returns something truthy; return that.

    Raises ``AssertionError`` after ``timeout`` seconds, naming ``what`` and the last
    value (or exception) seen. Exceptions from ``check`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except Exception as exc:  # not yet: e.g. a connection refused while starting
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not true within {timeout:.0f} s: {what or getattr(check, '__name__', check)}"
                f" (last: {last!r})"
            )
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """``eventually`` for plain (non-async) tests."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not true within {timeout:.0f} s: {what or getattr(check, '__name__', check)}"
                f" (last: {last!r})"
            )
        time.sleep(interval)
