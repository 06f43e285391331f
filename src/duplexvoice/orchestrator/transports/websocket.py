"""The WebSocket transport (WIRE §1): one connection is one session.

The handler checks access (API key, Origin) and capacity before the upgrade, starts
the session's driver, and reads client frames: each is rate limited (binary frames,
microphone audio, on their own limit), parsed
(``protocol.parse_client_message``) and handed to the driver; malformed ones are
answered with an ``error`` here. A client may leave at any moment: that ends the
session (and its worker session) without a traceback.

Size limits: a message larger than ``max_message_bytes`` but at most twice that is
answered ``MESSAGE_TOO_LARGE`` and the session goes on; a larger one is cut off by
the WebSocket layer while it arrives (never buffered) and the connection is closed
with code 1009 (message too big), without an ``error`` message first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from duplexvoice.orchestrator.access import RateDecision, RateLimiter
from duplexvoice.orchestrator.sessions.driver import SessionDriver
from duplexvoice.orchestrator.sessions.settings import SessionSettings
from duplexvoice.orchestrator.transports import finish_session, refusal, start_session
from duplexvoice.orchestrator.transports.ws_output import WebSocketOutput
from duplexvoice.wire.messages import Error, ErrorCode
from duplexvoice.wire.protocol import ProtocolError, parse_client_message

if TYPE_CHECKING:
    from duplexvoice.orchestrator.server import Orchestrator

log = logging.getLogger(__name__)

# Strikes (rate-limited messages within 5 s) before a flooding client is closed.
_RATE_STRIKES = 20
# Microphone audio comes as binary frames of any size (10 ms frames are 100 a second):
# they have their own message limit here, and the listener limits their audio time.
_AUDIO_MESSAGES_PER_S = 500.0
_AUDIO_BURST = 1000
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


async def websocket(request: web.Request) -> web.StreamResponse:
    orch: Orchestrator = request.app["orch"]
    config = orch.config
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(text="duplexvoice orchestrator: connect a WebSocket to /ws\n")
    refused = refusal(request, orch, "a WebSocket")
    if refused is not None:
        return refused
    if not orch.accepting or len(orch.drivers) >= config.max_sessions:
        orch.metrics.rejected_connections_total.inc()
        return web.Response(status=503)

    # Twice the limit: a bit too large gets a MESSAGE_TOO_LARGE error from the parser
    # (the session goes on); far too large is cut off by aiohttp before it is buffered.
    ws = web.WebSocketResponse(max_msg_size=2 * config.max_message_bytes, heartbeat=30.0,
                               compress=False)
    try:
        await ws.prepare(request)
    except ConnectionError:
        return ws  # gone during the handshake
    session_id = uuid.uuid4().hex
    # The output reads the session's settings: audio as JSON or binary, as the client asked.
    settings = SessionSettings(voice=config.default_voice)
    output = WebSocketOutput(ws, request.transport, settings, timeout_s=config.send_timeout_s)
    driver = SessionDriver(session_id, config, orch.registry, orch.pool, orch.metrics,
                           output=output, settings=settings, services=orch.services)
    runner = start_session(orch, driver)
    limiters = (RateLimiter(config.rate_limit_per_s, config.rate_limit_burst,
                            strikes_to_close=_RATE_STRIKES),
                RateLimiter(_AUDIO_MESSAGES_PER_S, _AUDIO_BURST, strikes_to_close=_RATE_STRIKES))
    try:
        await _read_client(ws, output, driver, orch, limiters, runner)
    except ConnectionError as exc:  # the client left while we answered it
        log.debug("session %s: client gone: %s", session_id, exc)
    finally:
        await finish_session(orch, driver, runner)
        with contextlib.suppress(ConnectionError):
            await output.close(1000, "")
    return ws


async def _read_client(ws: web.WebSocketResponse, output: WebSocketOutput, driver: SessionDriver,
                       orch: Orchestrator, limiters: tuple[RateLimiter, RateLimiter],
                       runner: asyncio.Task[None]) -> None:
    limits = orch.limits
    reader = asyncio.ensure_future(ws.receive())
    try:
        while True:
            done, _ = await asyncio.wait({reader, runner}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                exc = runner.exception()
                if exc is not None:  # e.g. a client too slow to read its audio
                    log.info("session %s ended: %r", driver.session_id, exc)
                    await output.close(1008, "client too slow or gone")
                return
            msg = reader.result()
            if msg.type in _CLOSED:
                return
            reader = asyncio.ensure_future(ws.receive())
            limiter = limiters[1] if msg.type is WSMsgType.BINARY else limiters[0]
            verdict = limiter.allow(time.monotonic())
            if verdict is RateDecision.CLOSE:
                await driver.send_message(
                    Error(ErrorCode.RATE_LIMITED, "too many messages: closing"))
                await output.close(1008, "rate limited")
                return
            if verdict is RateDecision.LIMITED:
                await driver.send_message(
                    Error(ErrorCode.RATE_LIMITED, "too many messages: message dropped"))
                continue
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            parsed = parse_client_message(msg.data, limits, driver.input_sample_rate)
            if isinstance(parsed, ProtocolError):
                await driver.send_message(parsed.to_message())
            else:
                await driver.client_message(parsed)
    finally:
        reader.cancel()
