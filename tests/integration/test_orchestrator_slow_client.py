"""A WebSocket client that never reads its audio, against a real orchestrator process.

The orchestrator paces audio at real time and writes it straight to the socket
transport (``orchestrator/outbound.py``): once more than its high-water mark is
buffered for a client that reads nothing, it waits ``send_timeout_s`` and then gives
the session up with a close frame (1008, a reason). Meanwhile other sessions on the
same orchestrator must go on undisturbed.

Loopback TCP absorbs a lot before the orchestrator's own buffer grows: the kernel's
send buffer autotunes to a few MB on a 64 KiB-MSS loopback connection (about 20 s of
JSON audio). The non-reading client here is a raw socket that keeps that small from
its own side, before connecting: a tiny receive buffer (SO_RCVBUF) and a small MSS
(TCP_MAXSEG, which caps the server's send-buffer autotuning, sized per segment), so
the server's buffer fills in about a second.

The client here reads, at last, once the server has given up, to check the close
frame. A client that never reads at all must not hold its session either: the second
test (the close itself is bounded by send_timeout_s, then the connection is dropped).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

SEND_TIMEOUT_S = 1.0
SLOW_REASON = b"client too slow or gone"
# Under the mock worker's 400 characters per utterance; ~60 ms of audio per letter, so
# each is ~20 s of audio (~2.6 MB of JSON messages), far more than any buffer here.
LONG_TEXT = ("The quick brown fox jumps over the lazy dog near the quiet river bank. " * 6)[:390]
SHORT_TEXT = "The weather is nice today."
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def orchestrator(mock_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    proc = OrchestratorProcess("--workers", mock_worker.addr, "--registry-poll-s", "0.5",
                               "--send-timeout-s", str(SEND_TIMEOUT_S)).start()
    yield proc
    proc.terminate()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class RawClient:
    """A WebSocket client on a bare non-blocking socket: it reads only when told to."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self.pending = pending  # bytes after the handshake, not yet parsed
        self.small_mss = False

    @classmethod
    async def connect(cls, addr: str) -> RawClient:
        host, port = addr.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        # Both before connect: the window and the MSS are announced in the SYN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        small_mss = False
        if hasattr(socket, "TCP_MAXSEG"):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
                small_mss = True
            except OSError:
                pass
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            assert chunk, f"closed during the handshake: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        headers = dict(line.split(": ", 1) for line in lines[1:])
        assert {k.lower(): v for k, v in headers.items()}["sec-websocket-accept"] == accept
        client = cls(sock, rest)
        client.small_mss = small_mss
        return client

    async def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    async def send_json(self, **message: Any) -> None:
        await self.send_frame(json.dumps(message).encode())

    async def read_all(self, timeout: float) -> tuple[bytes, bool]:
        """Everything the server sends until EOF (True) or ``timeout`` (False); once a
        close frame has arrived it is answered, as a client should."""
        loop = asyncio.get_running_loop()
        data, answered = self.pending, False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not answered and any(op == 0x8 for op, _ in parse_frames(data)[0]):
                await self.send_frame(struct.pack("!H", 1000), opcode=0x8)
                answered = True
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), left)
            except TimeoutError:
                break
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
        return data, False

    def close(self) -> None:
        self.sock.close()


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Unmasked server frames (opcode, payload) in ``data``, and bytes left over."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80 and not b1 & 0x80, "fragmented or masked server frame"
        n, head = b1 & 0x7F, 2
        if n == 126:
            if len(data) - pos < 4:
                break
            (n,), head = struct.unpack_from("!H", data, pos + 2), 4
        elif n == 127:
            if len(data) - pos < 10:
                break
            (n,), head = struct.unpack_from("!Q", data, pos + 2), 10
        if len(data) - pos < head + n:
            break
        frames.append((b0 & 0x0F, data[pos + head:pos + head + n]))
        pos += head + n
    return frames, len(data) - pos


class Client:
    """A normal aiohttp WebSocket client that reads everything."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.sequences: list[int] = []

    async def next(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            assert msg.type == aiohttp.WSMsgType.TEXT, f"unexpected {msg.type}: {msg.data!r}"
            item: dict[str, Any] = json.loads(msg.data)
            if item["type"] == "audio":
                self.sequences.append(item["sequence"])
            if item["type"] == kind:
                return item

    async def say(self, text: str, utterance_id: int) -> dict[str, Any]:
        before = len(self.sequences)
        await self.ws.send_json({"type": "text", "text": text})
        while True:
            end = await self.next("utterance_end")
            if end["utterance_id"] == utterance_id:
                break
        assert end["reason"] == "completed", end
        assert len(self.sequences) > before, "no audio for the utterance"
        # One connection-wide sequence: nothing lost, nothing repeated.
        assert self.sequences == list(range(1, len(self.sequences) + 1))
        return end


async def metric(http: aiohttp.ClientSession, orch: OrchestratorProcess, name: str) -> float:
    async with http.get(f"http://{orch.addr}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def until_active(http: aiohttp.ClientSession, orch: OrchestratorProcess, n: int,
                       within_s: float = 15.0) -> None:
    """Wait (bounded) until the orchestrator counts ``n`` open sessions."""
    async def active() -> bool:
        return await metric(http, orch, "duplexvoice_sessions_active") == n

    await eventually(active, timeout=within_s, interval=0.1, what=f"{n} sessions open")


def given_up(orch: OrchestratorProcess) -> int:
    """How many sessions the orchestrator logged as ended on a failure (``server.py``)."""
    return len(re.findall(r"session \w+ ended", orch.text()))


async def start_long_speech(raw: RawClient) -> None:
    for _ in range(3):  # one utterance and two queued behind it
        await raw.send_json(type="text", text=LONG_TEXT)


async def test_a_client_that_never_reads_is_closed_and_others_go_on(
        orchestrator: OrchestratorProcess, http: aiohttp.ClientSession) -> None:
    ended_before = given_up(orchestrator)
    normal = Client(await http.ws_connect(orchestrator.ws_url))
    await normal.next("session_start")
    # The normal session speaks, utterance after utterance, the whole time.
    spoken: list[tuple[float, float]] = []  # (sent, ended) per utterance
    stop = asyncio.Event()

    async def keep_talking() -> None:
        while not stop.is_set():
            began = time.monotonic()
            await normal.say(SHORT_TEXT, len(spoken) + 1)
            spoken.append((began, time.monotonic()))

    talker = asyncio.create_task(keep_talking())
    raw = await RawClient.connect(orchestrator.addr)
    try:
        await start_long_speech(raw)
        sent_at = time.monotonic()
        while given_up(orchestrator) == ended_before:
            # ~3 s with the small MSS; ~25 s without it (the kernel's buffers fill first)
            assert time.monotonic() - sent_at < 60, "the non-reading session was not given up"
            if talker.done():
                await talker  # its failure, if any
                raise AssertionError("the normal session stopped talking")
            await asyncio.sleep(0.05)
        gave_up_at = time.monotonic()

        # Only now read what the server sent it: its audio, then the close frame, with
        # nothing after it. Had the server not given up, reading would let audio flow on.
        data, eof = await raw.read_all(timeout=20)
        assert eof, "the server did not close the connection once the client read"
        frames, leftover = parse_frames(data)
        assert leftover == 0, "the stream ends inside a frame"
        opcode, payload = frames[-1]
        assert opcode == 0x8, f"last frame is not a close frame: {opcode:#x}"
        assert struct.unpack("!H", payload[:2])[0] == 1008
        assert payload[2:] == SLOW_REASON
        assert all(op == 0x1 for op, _ in frames[:-1])
        messages = [json.loads(p) for _, p in frames[:-1]]
        assert messages[0]["type"] == "session_start"
        seq = [m["sequence"] for m in messages if m["type"] == "audio"]
        assert seq == list(range(1, len(seq) + 1))
        # Bounded: what reached the client is what the buffers held when the server gave
        # up, not the audio of all it was asked to say.
        assert seq, "no audio at all"
        ended = [m["utterance_id"] for m in messages if m["type"] == "utterance_end"]
        assert 3 not in ended, "the server went on sending after its timeout"
        if raw.small_mss:  # kernel buffers kept small: 64 KiB + a batch + ~100 KB
            assert not ended and len(data) < 1024 * 1024
    finally:
        raw.close()
        stop.set()
    await asyncio.wait_for(talker, 30)  # finishes the utterance it is in, completed

    # Undisturbed: every utterance completed with no sequence gap (checked in say),
    # including one spoken while the other session was stuck.
    assert any(began < gave_up_at and done > sent_at for began, done in spoken)
    # The session is gone; the other one goes on; the process is healthy.
    await until_active(http, orchestrator, 1)
    await normal.say(SHORT_TEXT, len(spoken) + 1)
    await normal.ws.close()
    await until_active(http, orchestrator, 0)
    assert orchestrator.proc is not None and orchestrator.proc.poll() is None
    async with http.get(f"http://{orchestrator.addr}/health") as r:
        assert r.status == 200
    assert await metric(http, orchestrator, "duplexvoice_sessions_total") >= 2


class StillOpen(AssertionError):
    pass


async def test_a_client_that_never_reads_is_released_without_reading(
        orchestrator: OrchestratorProcess, http: aiohttp.ClientSession) -> None:
    await until_active(http, orchestrator, 0)
    raw = await RawClient.connect(orchestrator.addr)
    try:
        await until_active(http, orchestrator, 1)
        await start_long_speech(raw)
        sent_at = time.monotonic()
        # Given up after the buffers fill plus send_timeout_s; then released (handler
        # done, socket closed) even though the client still reads nothing.
        while await metric(http, orchestrator, "duplexvoice_sessions_active") > 0:
            if time.monotonic() - sent_at > 20:
                raise StillOpen("the non-reading session is still open after 20 s")
            await asyncio.sleep(0.2)
    finally:
        raw.close()
