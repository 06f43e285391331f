"""A WebSocket test client for the orchestrator that records everything it receives."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from duplexvoice.wire.protocol import decode_binary_frame


class Client:
    """A WebSocket client that records everything the server sends."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []

    async def next(self, kind: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next message (of ``kind``), skipping others; binary frames as 'binary'."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if msg.type == aiohttp.WSMsgType.BINARY:
                frame = decode_binary_frame(msg.data)
                item: dict[str, Any] = {"type": "binary", "sequence": frame.sequence,
                                        "utterance_id": frame.utterance_id, "pcm": frame.pcm}
            elif msg.type == aiohttp.WSMsgType.TEXT:
                item = json.loads(msg.data)
            else:
                return {"type": "closed", "code": self.ws.close_code}
            self.messages.append(item)
            if kind is None or item["type"] == kind:
                return item

    async def until_end(self, utterance_id: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Everything up to and including that utterance's utterance_end."""
        start = len(self.messages)
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"no utterance_end {utterance_id} in {timeout} s")
            item = await self.next()
            if item["type"] == "utterance_end" and item["utterance_id"] == utterance_id:
                return self.messages[start:]
            if item["type"] == "closed":
                raise AssertionError(f"closed early: {self.messages[start:]}")

    async def send(self, **message: Any) -> None:
        await self.ws.send_json(message)
