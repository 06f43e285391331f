"""A small, real OpenAI-compatible chat-completions server for tests.

A real aiohttp server on a loopback port the test binds (port 0: the OS picks a
free one), speaking the streaming format (server-sent events, ``data: {chunk}``,
``data: [DONE]``). Each request takes the next :class:`Script` (or the default
reply): text sent token by token, optionally paced, optionally held after some
tokens until the test releases it, or a misbehaviour on demand. Every request is
recorded as a :class:`Received` with events the test awaits instead of sleeping:
``held`` (waiting for ``release``), ``finished`` (all sent) and ``disconnected``
(the client went away first; the server runs with handler cancellation on, so a
client closing the connection cancels the handler at once).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

Failure = Literal[
    "none",  # a normal streamed reply
    "http500",  # HTTP 500 with an OpenAI-style JSON error
    "http401",  # HTTP 401 whose message echoes the key it got (as real servers do)
    "malformed",  # after ``fail_after`` tokens, an event that is not JSON
    "close",  # after ``fail_after`` tokens, the connection is dropped
    "no_done",  # after ``fail_after`` tokens, the body ends cleanly without [DONE]
    "hang",  # never answers (until the client goes away)
    "error_event",  # after ``fail_after`` tokens, ``data: {"error": ...}``
    "json",  # ignores ``stream`` and answers one JSON completion
]


def split_tokens(text: str) -> list[str]:
    """``text`` cut like a model's tokens: words with their leading space, and
    punctuation on its own ("Sure", ",", " I", " can", ...). Joined, it is ``text``."""
    return re.findall(r"\s*[^\s,.;:!?]+|\s*[,.;:!?]", text) or [text]


@dataclass
class Script:
    """What the server does for one request."""

    text: str = "Hello there."
    tokens: list[str] | None = None  # explicit tokens; default: split_tokens(text)
    delay_s: float = 0.0  # pause before each token (pacing, not synchronization)
    hold_after: int | None = None  # send this many tokens, then wait for release
    fail: Failure = "none"
    fail_after: int = 0  # tokens sent before a mid-stream failure

    def token_list(self) -> list[str]:
        return list(self.tokens) if self.tokens is not None else split_tokens(self.text)


@dataclass
class Received:
    """One request as the server saw it, and how far its answer got."""

    body: dict[str, Any]
    headers: dict[str, str]
    script: Script
    sent: int = 0  # content tokens written
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages", []))


class FakeLLM:
    """``async with FakeLLM() as llm:`` then point an engine at ``llm.base_url``."""

    def __init__(self, model: str = "fake-model") -> None:
        self.model = model
        self.requests: list[Received] = []
        self._scripts: deque[Script] = deque()
        self._arrivals: asyncio.Queue[Received] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *scripts: Script) -> None:
        """Queue what the next requests get, in order."""
        self._scripts.extend(scripts)

    async def next_request(self, timeout: float = 5.0) -> Received:
        """The next request to arrive (or one that already did and was not taken)."""
        return await asyncio.wait_for(self._arrivals.get(), timeout)

    async def __aenter__(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for received in self.requests:
            received.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "bad JSON"}}, status=400)
        script = self._scripts.popleft() if self._scripts else Script()
        received = Received(body=body, headers=dict(request.headers), script=script)
        self.requests.append(received)
        self._arrivals.put_nowait(received)
        try:
            return await self._answer(request, received)
        except asyncio.CancelledError:
            received.disconnected.set()
            raise
        except ConnectionResetError:  # noticed on a write rather than by cancellation
            received.disconnected.set()
            return web.Response(status=499)

    async def _answer(self, request: web.Request, rec: Received) -> web.StreamResponse:
        script = rec.script
        if script.fail == "hang":
            await asyncio.Event().wait()  # until the client disconnects (cancelled)
        if script.fail == "http500":
            error = {"message": "The model is overloaded", "type": "server_error"}
            return web.json_response({"error": error}, status=500)
        if script.fail == "http401":
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            error = {"message": f"Incorrect API key provided: {key}.", "type": "auth"}
            return web.json_response({"error": error}, status=401)
        if script.fail == "json":
            message = {"role": "assistant", "content": script.text}
            rec.finished.set()
            return web.json_response(self._chunk(message=message, reason="stop"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await self._event(response, self._chunk(delta={"role": "assistant", "content": ""}))
        mid_failure = script.fail in ("malformed", "close", "no_done", "error_event")
        for i, token in enumerate(script.token_list()):
            if mid_failure and i == script.fail_after:
                break
            if i == script.hold_after:
                rec.held.set()
                await rec.release.wait()
            if script.delay_s:
                await asyncio.sleep(script.delay_s)
            await self._event(response, self._chunk(delta={"content": token}))
            rec.sent += 1
        if script.fail == "malformed":
            await response.write(b'data: {"choices": [{"delta": {"content": "oops"\n\n')
        elif script.fail == "error_event":
            await self._event(response, {"error": {"message": "generation crashed"}})
        elif script.fail == "close":
            assert request.transport is not None
            request.transport.abort()  # no finish, no [DONE], no chunked-body end
            rec.finished.set()
            return response
        elif script.fail == "no_done":
            pass
        else:
            await self._event(response, self._chunk(delta={}, reason="stop"))
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        rec.finished.set()
        return response

    def _chunk(self, *, delta: dict[str, Any] | None = None,
               message: dict[str, Any] | None = None,
               reason: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        if delta is not None:
            choice["delta"] = delta
        if message is not None:
            choice["message"] = message
        return {
            "id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": self.model, "choices": [choice],
        }

    @staticmethod
    async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
