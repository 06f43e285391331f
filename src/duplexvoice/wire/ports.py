"""TCP ports: is one free to listen on, and a free one to use.

The services check their port before the slow part of starting (loading voices), so
a port in use is reported at once, in one line, naming the port.
"""

from __future__ import annotations

import errno
import socket


def _listen_addresses(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    return [(family, sockaddr) for family, _type, _proto, _name, sockaddr in infos]


def bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on now, or None if it can.

    SO_REUSEADDR as aiohttp and gRPC set it: a port left in TIME_WAIT by a process
    that just ended counts as free (they can bind it), one with a listener does not.
    """
    try:
        addresses = _listen_addresses(host, port)
    except OSError as exc:  # socket.gaierror: an unknown host
        return exc
    for family, sockaddr in addresses:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                sock.listen(1)
            except OSError as exc:
                return exc
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host``."""
    bind = "127.0.0.1" if host in ("", "0.0.0.0") else host
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((bind, 0))
        port: int = sock.getsockname()[1]
        return port


def in_use_message(host: str, port: int, exc: OSError) -> str:
    """``127.0.0.1:7001 is in use`` (or the OS's reason when it is another one)."""
    if exc.errno == errno.EADDRINUSE:
        return f"{host}:{port} is in use (another process listens there)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
