"""The unit folder's network guard (``tests/unit/conftest.py``) really guards."""

from __future__ import annotations

import socket

import pytest

from tests.unit.conftest import NetworkInUnitTest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_an_ip_socket_cannot_listen_or_connect_in_a_unit_test(family: int) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkInUnitTest):
            sock.bind((host, 0))
        with pytest.raises(NetworkInUnitTest):
            sock.connect((host, 9))


def test_a_unix_socket_pair_still_works() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"
