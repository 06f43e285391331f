"""A minimal WebSocket client for the concurrency benchmark.

Hundreds of sessions' clients share the machine's cores with the orchestrator and
the worker, so the client's own cost per frame takes CPU from the system under
test. aiohttp's client spends ~35 us per received frame here; this one parses
frames straight from ``data_received`` (RFC 6455 §5.2, no extensions) and records
what the figure needs: arrival time and ``sequence`` of every audio message (the
binary header is checked, JSON audio is parsed in full), ``utterance_end`` and
``error`` messages. Client frames are masked as the RFC requires.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import struct
import time
from urllib.parse import urlsplit

from duplexvoice.wire.protocol import BINARY_FRAME_BYTES, BINARY_MAGIC

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_HEADER = struct.Struct("<2sBBII")  # the orchestrator's binary audio header


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little")


def client_frame(payload: bytes, opcode: int) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class LeanWS(asyncio.Protocol):
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._buf = bytearray()
        self._open = False
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.times: list[float] = []
        self.seqs: list[int] = []
        self.messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        self.errors: list[dict[str, object]] = []
        self.bad: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.messages.put_nowait({"type": "closed"})  # wakes a waiter: no answer will come
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the handshake: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()
        buf = self._buf
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[:end + 4]
            accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
            if not head.startswith("HTTP/1.1 101") or accept not in head:
                self.opened.set_exception(ConnectionError(head.split("\r\n", 1)[0]))
                return
            self._open = True
            self.opened.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, hdr = b1 & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, hdr = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, hdr = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if size - pos < hdr + n:
                break
            start = pos + hdr
            self._frame(b0 & 0x0F, buf, start, n, t)
            pos = start + n
        if pos:
            del buf[:pos]

    def _frame(self, opcode: int, buf: bytearray, start: int, n: int, t: float) -> None:
        if opcode == _OP_BINARY:
            magic, _, _, _, seq = _HEADER.unpack_from(buf, start)
            if magic != BINARY_MAGIC or n != BINARY_FRAME_BYTES:
                self.bad.append(f"binary frame of {n} bytes, magic {magic!r}")
                return
            self.times.append(t)
            self.seqs.append(seq)
        elif opcode == _OP_TEXT:
            data = json.loads(bytes(buf[start:start + n]))
            if data["type"] == "audio":
                if len(base64.b64decode(data["pcm"])) != 1920:
                    self.bad.append("JSON audio frame of the wrong size")
                self.times.append(t)
                self.seqs.append(data["sequence"])
            elif data["type"] == "error":
                self.errors.append(data)
            else:
                self.messages.put_nowait(data)
        elif opcode == _OP_CLOSE and self.transport is not None:
            self.transport.close()
        elif opcode == _OP_PING and self.transport is not None:
            # The server's heartbeat: a session that never answers is closed as dead.
            self.transport.write(client_frame(bytes(buf[start:start + n]), _OP_PONG))

    def send_json(self, message: dict[str, object]) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(json.dumps(message).encode(), _OP_TEXT))

    async def next_message(self, kind: str, within_s: float) -> dict[str, object]:
        async with asyncio.timeout(within_s):
            while True:
                message = await self.messages.get()
                if message["type"] == kind:
                    return message
                if message["type"] == "closed":
                    raise ConnectionError(f"closed while waiting for {kind}")

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", 1000), _OP_CLOSE))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.shield(self.closed)
            self.transport.close()


async def connect(url: str) -> LeanWS:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: LeanWS(key), host, port)
    assert proto.transport is not None
    proto.transport.write(
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await asyncio.wait_for(proto.opened, 30)
    return proto
