"""WebSocket client of the orchestrator (``docs/protocol.md``): ``say`` speaks one
text and collects its audio. ``converse`` runs one ``say`` over any send/receive pair
(tested with a scripted one); the rest is the aiohttp side: opening the connection,
the send/receive pair over it, the ``/models`` list. The messages themselves are
handled by the pure code of :mod:`.messages`; the console session is
:mod:`.interactive`, playback :mod:`.console`.

Exceptions: ``ConnectFailed`` (the WebSocket could not be opened: refused, no answer,
an HTTP status instead of the upgrade). aiohttp's exceptions are translated into it
here. Once connected nothing is raised: what the server said (``error``,
``session_end``) and what went wrong on our side (``CLIENT_*`` codes) are in the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from duplexvoice.client.messages import (
    PROBE,
    AudioCollector,
    AudioFrame,
    SayResult,
    auth_headers,
    config_message,
    load_message,
)
from duplexvoice.wire.protocol import encode_json

if TYPE_CHECKING:
    import aiohttp

DEFAULT_URL: Final = "ws://127.0.0.1:8080/ws"
CONNECT_TIMEOUT_S: Final = 10.0


class ConnectFailed(Exception):
    """The WebSocket could not be opened; the message says why, for a person."""


# -- one conversation over any transport ------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """One thing read from the connection: a text or binary message, or its end."""

    kind: Literal["text", "binary", "closed"]
    data: str | bytes = ""
    close_code: int | None = None


# Send one text message; False when the connection is closing (nothing more can go).
Send = Callable[[str], Awaitable[bool]]
# Read the next message, waiting at most that many seconds; None when none came.
Receive = Callable[[float], Awaitable[Incoming | None]]


async def converse(send: Send, receive: Receive, text: str, *, voice: str = "",
                   binary: bool = True, timeout_s: float = 30,
                   on_audio: Callable[[bytes], None] | None = None,
                   clock: Callable[[], float] = time.perf_counter) -> SayResult:
    """``say`` on an open connection: wait for ``session_start``, send the config (and,
    with a voice, check it: :mod:`.messages`), send the text, collect its audio until
    its ``utterance_end``, its refusal, the session's end (or the close), or
    ``timeout_s`` without a message from the server. A send that fails (the server
    already closed) stops sending; what the server said before it closed is still read
    and reported."""
    collector = AudioCollector()

    async def step(waiting_for: str) -> bool:
        """Handle one message; False when the wait is over (timeout or closed)."""
        msg = await receive(timeout_s)
        now = clock()
        if msg is None:
            collector.give_up(now, f"no answer from the server for {timeout_s:g} s "
                              f"(waiting for {waiting_for})")
            return False
        frame: AudioFrame | None = None
        if msg.kind == "closed":
            collector.on_closed(msg.close_code, now, waiting_for)
            return False
        if isinstance(msg.data, bytes):
            frame = collector.on_binary(msg.data, now)
        else:
            frame = collector.on_json(load_message(msg.data), now)
        if frame is not None and on_audio is not None:
            on_audio(frame.pcm)
        return True

    async def until(condition: Callable[[], bool], waiting_for: str) -> None:
        while not collector.done and not condition():
            if not await step(waiting_for):
                return

    await until(lambda: collector.session_id is not None, "session_start")
    if collector.done:
        return collector.result()
    config = config_message(voice, binary)
    if config is not None:
        probe = "voice" in config
        if not await send(encode_json(config)) or (probe and not await send(encode_json(PROBE))):
            await until(lambda: False, "the answer to the config")  # read why it closed
            return collector.result()
        collector.probing = probe
        await until(lambda: not collector.probing, "the answer to the config")
        if collector.done:
            return collector.result()
    if not await send(encode_json({"type": "text", "text": text})):
        await until(lambda: False, "the text was sent")
        return collector.result()
    collector.sent_at = clock()
    await until(lambda: False, "utterance_end")
    return collector.result()


# -- aiohttp ------------------------------------------------------------------------


_REFUSALS: Final = {
    401: "a wrong or missing API key (--api-key)",
    403: "not allowed (API key or Origin)",
    404: "no WebSocket there (the path is /ws)",
    503: "the server is full or shutting down",
}


async def connect(http: aiohttp.ClientSession, url: str, api_key: str = "",
                  timeout_s: float = CONNECT_TIMEOUT_S) -> aiohttp.ClientWebSocketResponse:
    """Open the WebSocket; ``ConnectFailed`` with a reason a person can act on."""
    import aiohttp

    try:
        async with asyncio.timeout(timeout_s):
            return await http.ws_connect(
                url, headers=auth_headers(api_key), max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
    except aiohttp.WSServerHandshakeError as exc:
        why = _REFUSALS.get(exc.status, exc.message)
        raise ConnectFailed(f"{url} refused the connection: HTTP {exc.status} ({why})") from None
    except TimeoutError:
        raise ConnectFailed(f"no answer from {url} within {timeout_s:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise ConnectFailed(f"cannot connect to {url}: {exc}") from None


def sender(ws: aiohttp.ClientWebSocketResponse) -> Send:
    import aiohttp

    async def send(text: str) -> bool:
        try:
            await ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError):
            return False  # e.g. "Cannot write to closing transport": the server closed
        return True

    return send


def receiver(ws: aiohttp.ClientWebSocketResponse) -> Receive:
    import aiohttp

    async def receive(timeout_s: float) -> Incoming | None:
        if timeout_s <= 0:
            return None  # aiohttp reads a zero timeout as "wait forever"
        try:
            msg = await ws.receive(timeout=timeout_s)
        except TimeoutError:
            return None
        if msg.type == aiohttp.WSMsgType.TEXT:
            return Incoming("text", msg.data)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return Incoming("binary", msg.data)
        return Incoming("closed", close_code=ws.close_code)

    return receive


async def say(url: str, text: str, *, voice: str = "", api_key: str = "",
              binary: bool = True, timeout_s: float = 30,
              on_audio: Callable[[bytes], None] | None = None) -> SayResult:
    """Speak ``text`` on a new session (``converse``). ``ConnectFailed`` when the
    connection cannot be opened; everything after that is in the result."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        ws = await connect(http, url, api_key)
        async with ws:
            return await converse(sender(ws), receiver(ws), text, voice=voice, binary=binary,
                                  timeout_s=timeout_s, on_audio=on_audio)


def models_url(ws_url: str) -> str:
    """The orchestrator's ``/models`` endpoint on the host of its WebSocket URL."""
    from yarl import URL

    url = URL(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(url.scheme, url.scheme)
    return str(url.with_scheme(scheme).with_path("/models").with_query(None))


async def list_voices(http: aiohttp.ClientSession, ws_url: str, api_key: str = "",
                      timeout_s: float = 5.0) -> list[str]:
    """Model ids the orchestrator offers (``/models``); ``ConnectFailed`` if it can't say."""
    import aiohttp

    url = models_url(ws_url)
    try:
        async with asyncio.timeout(timeout_s), http.get(
            url, headers=auth_headers(api_key)
        ) as response:
            response.raise_for_status()
            body = await response.json()
    except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
        raise ConnectFailed(f"cannot list the voices at {url}: "
                            f"{str(exc) or type(exc).__name__}") from None
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise ConnectFailed(f"unexpected answer from {url}")
    return [m["model_id"] for m in models
            if isinstance(m, dict) and isinstance(m.get("model_id"), str)]


__all__ = [
    "DEFAULT_URL", "ConnectFailed", "Incoming", "Receive", "Send", "connect", "converse",
    "list_voices", "models_url", "receiver", "say", "sender",
]
