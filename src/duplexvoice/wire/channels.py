"""How a client reaches a worker over gRPC: the target a registry address names, and
the channel options every client of the worker protocol uses (the orchestrator's
link, ``duplexvoice synth``, the benchmarks).
"""

from __future__ import annotations

# The orchestrator pauses and stops audio in its own buffer, so the HTTP/2 window per
# worker stream need not be tiny; at 64 KiB (about 33 frames) the window updates are
# 4x rarer than a 16 KiB window, which costs both processes less CPU.
STREAM_WINDOW_BYTES = 64 * 1024
# gRPC's default reconnect back-off grows to 120 s: a worker restarted on the same
# address would be unreachable for minutes. Cap it near the probe interval.
_RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Channels to one address otherwise share a global subchannel, back-off included:
    # a fresh channel (``WorkerPool.reset``) must really connect afresh.
    ("grpc.use_local_subchannel_pool", 1),
)


def grpc_target(addr: str) -> str:
    """``grpc://host:port`` (the registry's form) or ``host:port`` -> ``host:port``."""
    return addr.removeprefix("grpc://")


def channel_options(window_bytes: int = STREAM_WINDOW_BYTES) -> tuple[tuple[str, int], ...]:
    """A fixed HTTP/2 window per stream (no BDP probing) and a short reconnect back-off."""
    return (("grpc.http2.lookahead_bytes", window_bytes), ("grpc.http2.bdp_probe", 0),
            *_RECONNECT_OPTIONS)
