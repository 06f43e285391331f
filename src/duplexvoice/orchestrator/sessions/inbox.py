"""A session's events in two bounded lanes: inputs before output.

Inputs (client messages, timer ticks, the end of a stream, disconnects) are taken
before worker frames, so a control message or a barge-in decision never waits behind
a backlog of audio. Both lanes are bounded: a producer waits while its lane is full
(the WebSocket reader, the worker stream reader), except ``post``, which never waits
and is for the few events that must not be lost (a tick, the end of a stream, the
end of the session); each session posts at most a handful of those at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, *, max_inputs: int = 256, max_frames: int = 64) -> None:
        if max_inputs < 1 or max_frames < 1:
            raise ValueError("lanes must hold at least one event")
        self._inputs: deque[T] = deque()
        self._frames: deque[T] = deque()
        self._max_inputs = max_inputs
        self._max_frames = max_frames
        self._ready = asyncio.Event()
        self._input_room = asyncio.Event()
        self._frame_room = asyncio.Event()
        self._input_room.set()
        self._frame_room.set()

    def __len__(self) -> int:
        return len(self._inputs) + len(self._frames)

    def post(self, event: T) -> None:
        """An input that must not wait or be lost."""
        self._inputs.append(event)
        self._ready.set()

    async def put_input(self, event: T) -> None:
        while len(self._inputs) >= self._max_inputs:
            self._input_room.clear()
            await self._input_room.wait()
        self.post(event)

    async def put_frame(self, event: T) -> None:
        while len(self._frames) >= self._max_frames:
            self._frame_room.clear()
            await self._frame_room.wait()
        self._frames.append(event)
        self._ready.set()

    def get_nowait(self) -> T | None:
        """The next event, inputs first; None when both lanes are empty."""
        if self._inputs:
            event = self._inputs.popleft()
            if len(self._inputs) < self._max_inputs:
                self._input_room.set()
            return event
        if self._frames:
            event = self._frames.popleft()
            if len(self._frames) < self._max_frames:
                self._frame_room.set()
            return event
        return None

    async def get(self) -> T:
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            self._ready.clear()
            await self._ready.wait()
