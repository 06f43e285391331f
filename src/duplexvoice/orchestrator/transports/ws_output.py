"""Sending to one WebSocket client: the session's output (:mod:`..sessions.output`),
encoded here, a batch in one socket write.

Encoding (:func:`wire_messages`): messages as JSON text; audio as a JSON ``audio``
message or a binary frame, as the client asked in its ``config`` (``output_format``,
which applies from the next utterance: ``SessionSettings.format_for``).

Paced audio leaves in small groups (the session's send quantum), and at a few
hundred sessions the write per message is a large share of the orchestrator's
time, so a batch is framed here (RFC 6455 §5.2: server frames are unmasked) and
handed to the transport at once. aiohttp's own writer also writes whole frames
straight to the same transport (pings, the close frame), so frames never
interleave. The server answers WebSocket requests with ``compress=False``: audio
gains little from deflate and would pay for it on every frame.

Flow control: the transport buffers what the kernel does not take. Past
``high_water`` bytes the sender waits for the client to read, up to
``timeout_s``; a client that reads nothing for that long gets ``TimeoutError``
(the session then closes with a reason). What one client can pin in memory is
bounded by ``high_water`` plus one batch.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from aiohttp import web

from duplexvoice.orchestrator.sessions.output import OutputItem, SendAudio
from duplexvoice.orchestrator.sessions.settings import SessionSettings
from duplexvoice.wire.protocol import audio_message, encode_binary_frame, encode_json

_TEXT, _BINARY = 0x1, 0x2
_FIN = 0x80
_DRAIN_POLL_S = 0.01  # only a client over the high-water mark is polled
HIGH_WATER = 64 * 1024


def encode_frame(payload: bytes, opcode: int) -> bytes:
    """One unmasked, unfragmented WebSocket frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _FIN | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", _FIN | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, n)
    return header + payload


def encode_frames(messages: Sequence[str | bytes]) -> bytes:
    """Text messages (str) and binary messages (bytes), framed and joined."""
    return b"".join(
        encode_frame(m.encode(), _TEXT) if isinstance(m, str) else encode_frame(m, _BINARY)
        for m in messages
    )


def wire_messages(items: Sequence[OutputItem], settings: SessionSettings) -> list[str | bytes]:
    """The client's messages for ``items``, in order (str: text, bytes: binary)."""
    out: list[str | bytes] = []
    for item in items:
        if isinstance(item, SendAudio):
            uid = item.utterance_id
            if settings.format_for(uid) == "binary":
                out.append(encode_binary_frame(item.pcm, item.sequence, uid))
            else:
                out.append(encode_json(audio_message(item.pcm, item.sequence, uid)))
        else:
            out.append(encode_json(item.to_wire()))
    return out


class WebSocketOutput:
    """The sending side of one server WebSocket (after ``prepare``): a
    :class:`~duplexvoice.orchestrator.sessions.output.SessionOutput`. ``settings`` are
    the session's (shared with its driver): they say the client's output format."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None,
                 settings: SessionSettings, *, timeout_s: float,
                 high_water: int = HIGH_WATER) -> None:
        self._ws = ws
        self._transport = transport if isinstance(transport, asyncio.WriteTransport) else None
        self._settings = settings
        self._timeout_s = timeout_s
        self._high_water = high_water

    async def send(self, items: Sequence[OutputItem]) -> None:
        """Write ``items`` in order, in one write. Raises ``ConnectionResetError``
        once the connection is closing, ``TimeoutError`` for a client not reading."""
        messages = wire_messages(items, self._settings)
        transport = self._transport
        if transport is None:  # not a plain socket transport: aiohttp frames each one
            async with asyncio.timeout(self._timeout_s):
                for m in messages:
                    await (self._ws.send_str(m) if isinstance(m, str) else self._ws.send_bytes(m))
            return
        if self._ws.closed or transport.is_closing():
            raise ConnectionResetError("client connection is closing")
        transport.write(encode_frames(messages))
        if transport.get_write_buffer_size() > self._high_water:
            async with asyncio.timeout(self._timeout_s):
                while transport.get_write_buffer_size() > self._high_water:
                    if transport.is_closing():
                        raise ConnectionResetError("client connection closed")
                    await asyncio.sleep(_DRAIN_POLL_S)

    async def close(self, code: int, reason: str) -> None:
        """Close with a code and reason. aiohttp's close waits for what is buffered to
        go out first, so a client that reads nothing would hold its session (and its
        buffers) forever: after ``timeout_s`` the connection is dropped instead."""
        if self._ws.closed:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ws.close(code=code, message=reason.encode()[:120])
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()  # close() would wait for the buffer to drain
