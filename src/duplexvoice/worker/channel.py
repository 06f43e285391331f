"""A bounded single-producer, single-consumer channel with a hard abort.

``asyncio.Queue`` cannot be emptied and closed in one step while both ends are
blocked; a STOP needs exactly that: drop everything queued and wake both sides now.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ChannelAborted(Exception):
    """The channel was aborted; the producer should stop."""


class Channel(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._maxsize = maxsize
        self._items: deque[T] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._wake_below = maxsize  # get() wakes the producer below this many items
        self._finished = False
        self._aborted = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def aborted(self) -> bool:
        return self._aborted

    async def put(self, item: T) -> None:
        """Wait for room, then append. Raises :class:`ChannelAborted` once aborted."""
        while len(self._items) >= self._maxsize and not self._aborted:
            self._writable.clear()
            await self._writable.wait()
        if self._aborted:
            raise ChannelAborted
        if self._finished:
            raise RuntimeError("put() after finish()")
        self._items.append(item)
        self._readable.set()

    async def wait_below(self, n: int) -> None:
        """Wait until fewer than ``n`` items are queued. Raises :class:`ChannelAborted`
        once aborted. The reader wakes the producer once, not on every item."""
        self._wake_below = min(n, self._maxsize)
        try:
            while len(self._items) >= n and not self._aborted:
                self._writable.clear()
                await self._writable.wait()
        finally:
            self._wake_below = self._maxsize
        if self._aborted:
            raise ChannelAborted

    def finish(self) -> None:
        """No more items will come; the reader drains what is queued, then gets None."""
        self._finished = True
        self._readable.set()

    def abort(self) -> None:
        """Drop everything queued and wake both ends."""
        self._aborted = True
        self._items.clear()
        self._readable.set()
        self._writable.set()

    async def get(self) -> T | None:
        """The next item, or None once finished and drained, or aborted."""
        while not self._items:
            if self._finished or self._aborted:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        if len(self._items) < self._wake_below:
            self._writable.set()
        return item
