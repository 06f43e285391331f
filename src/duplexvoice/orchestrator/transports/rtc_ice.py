"""ICE for the WebRTC transport: which host candidates the server offers.

Loopback. aioice leaves 127.0.0.1 out of its host candidates, so on a machine whose
only network is loopback no connection could form: :func:`add_loopback_candidate`
(called before every negotiation) wraps ``aioice.ice.get_host_addresses`` to add it.
That is harmless elsewhere (a remote peer's checks to it simply fail). No STUN or
TURN server is used (aiortc's default would ask Google's STUN server).
``HOST_ADDRESSES`` restricts the host candidates gathered in one asyncio context
(tests, tools).
"""

from __future__ import annotations

import contextvars

import aioice.ice
from aiortc import RTCConfiguration

LOOPBACK = "127.0.0.1"

# Restricts the host candidates gathered in this context (``None``: all, plus
# loopback). Tests use it to prove a loopback-only peer connects.
HOST_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "duplexvoice_host_addresses", default=None)


def add_loopback_candidate() -> None:
    """Make aioice gather a 127.0.0.1 host candidate (idempotent, process-wide)."""
    current = aioice.ice.get_host_addresses
    if getattr(current, "duplexvoice_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        only = HOST_ADDRESSES.get()
        if only is not None:
            return list(only)
        addresses: list[str] = current(use_ipv4, use_ipv6)
        if use_ipv4 and LOOPBACK not in addresses:
            addresses.append(LOOPBACK)
        return addresses

    with_loopback.duplexvoice_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = with_loopback


def rtc_configuration() -> RTCConfiguration:
    """No STUN/TURN: host candidates only (aiortc's default asks a public STUN server)."""
    return RTCConfiguration(iceServers=[])
