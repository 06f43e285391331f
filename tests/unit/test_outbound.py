"""WebSocket framing of the batched sender (RFC 6455 §5.2, server side: unmasked)."""

from __future__ import annotations

import struct

import pytest

from duplexvoice.orchestrator.transports.ws_output import encode_frame, encode_frames

pytestmark = pytest.mark.unit


def parse(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each frame in ``data``; every frame must be final, unmasked."""
    out = []
    while data:
        b0, b1 = data[0], data[1]
        assert b0 & 0x80 and not b0 & 0x70  # FIN, no RSV bits
        assert not b1 & 0x80  # servers never mask
        n, pos = b1 & 0x7F, 2
        if n == 126:
            (n,), pos = struct.unpack("!H", data[2:4]), 4
        elif n == 127:
            (n,), pos = struct.unpack("!Q", data[2:10]), 10
        out.append((b0 & 0x0F, data[pos:pos + n]))
        data = data[pos + n:]
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1932, 65535, 65536, 200_000])
def test_lengths_round_trip_at_every_header_size(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert parse(encode_frame(payload, 0x2)) == [(0x2, payload)]


def test_a_batch_keeps_order_and_kinds() -> None:
    batch: list[str | bytes] = ['{"type":"state"}', b"\x00" * 1932, "é", b""]
    assert parse(encode_frames(batch)) == [
        (0x1, b'{"type":"state"}'), (0x2, b"\x00" * 1932), (0x1, "é".encode()), (0x2, b"")]
