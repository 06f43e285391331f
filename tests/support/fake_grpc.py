"""The part of ``grpc.aio.ServicerContext`` the worker's servicer uses, for unit tests
that call servicer methods directly (no server, no socket).

``write`` records messages (and never blocks: no flow control), ``abort`` raises
:class:`Aborted` with the status code, as grpc's own ``abort`` raises to end the call.
"""

from __future__ import annotations

import asyncio

import grpc


class Aborted(Exception):
    """The servicer ended the call with a status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    def __init__(self) -> None:
        self.written: list[object] = []
        self.wrote = asyncio.Event()  # set on every write; waiters clear it

    async def write(self, message: object) -> None:
        self.written.append(message)
        self.wrote.set()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)
