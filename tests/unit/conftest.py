"""Unit tests use no network: any IP socket bound or connected from one fails it.

Tests that need a real server on a loopback port are integration tests and live in
``tests/integration``. Unix sockets stay allowed (asyncio's loop wakes itself through
a socket pair).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkInUnitTest(AssertionError):
    pass


def _guarded(name: str) -> Any:
    original = getattr(socket.socket, name)

    def method(self: socket.socket, address: Any, *args: Any) -> Any:
        if self.family in _INET:
            raise NetworkInUnitTest(
                f"a unit test called socket.{name}({address!r}): move it to tests/integration")
        return original(self, address, *args)

    return method


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, _guarded(name))
    yield
