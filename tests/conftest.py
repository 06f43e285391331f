"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh real Redis-compatible server on a free loopback port, stopped afterwards."""
    with RedisServer() as server:
        yield server
