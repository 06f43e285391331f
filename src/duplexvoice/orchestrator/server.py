"""The orchestrator process: HTTP and WebSocket on one port (aiohttp).

- ``/`` and ``/ws``: the WebSocket protocol (``docs/protocol.md``), one connection per
  session, checked (API key, Origin) before the upgrade;
- ``/health`` (alive), ``/ready`` (a worker is reachable), ``/metrics`` (Prometheus),
  ``/models`` (voices across workers).

Each connection gets its own :class:`SessionDriver` (and worker session): sessions
share only the registry view and the gRPC channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from duplexvoice.orchestrator.access import RateDecision, RateLimiter, check_access
from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.orchestrator.driver import ClientPool, SessionDriver
from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.outbound import ClientOutput
from duplexvoice.orchestrator.protocol import (
    ProtocolError,
    ProtocolLimits,
    parse_client_message,
)
from duplexvoice.orchestrator.registry import EmbeddedRegistry, RedisRegistry, WorkerRegistry

log = logging.getLogger(__name__)

# Strikes (rate-limited messages within 5 s) before a flooding client is closed.
_RATE_STRIKES = 20


@dataclass
class Orchestrator:
    config: OrchestratorConfig
    registry: WorkerRegistry
    clients: ClientPool = field(default_factory=ClientPool)
    metrics: OrchestratorMetrics = field(default_factory=OrchestratorMetrics)
    drivers: set[SessionDriver] = field(default_factory=set)
    runs: set[asyncio.Task[None]] = field(default_factory=set)
    accepting: bool = True

    @property
    def limits(self) -> ProtocolLimits:
        return ProtocolLimits(max_message_bytes=self.config.max_message_bytes,
                              max_text_chars=self.config.max_text_chars)


def make_registry(config: OrchestratorConfig) -> WorkerRegistry:
    if config.redis_url:
        return RedisRegistry(config.redis_url, key_prefix=config.registry_key_prefix,
                             ttl_s=config.registry_ttl_s, poll_interval_s=config.registry_poll_s)
    return EmbeddedRegistry(config.workers, poll_interval_s=config.registry_poll_s)


# -- HTTP ---------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    orch: Orchestrator = request.app["orch"]
    workers = orch.registry.workers()
    body = {"ready": bool(workers), "workers": [w.name for w in workers]}
    return web.json_response(body, status=200 if workers else 503)


async def metrics(request: web.Request) -> web.Response:
    orch: Orchestrator = request.app["orch"]
    return web.Response(text=orch.metrics.render(), content_type="text/plain",
                        charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"})


async def models(request: web.Request) -> web.Response:
    orch: Orchestrator = request.app["orch"]
    voices: dict[str, dict[str, object]] = {}
    for worker in orch.registry.workers():
        for model in sorted(worker.available_models):
            entry = voices.setdefault(model, {"model_id": model, "workers": [], "resident_on": []})
            entry["workers"].append(worker.name)  # type: ignore[attr-defined]
            if model in worker.resident_models:
                entry["resident_on"].append(worker.name)  # type: ignore[attr-defined]
    return web.json_response({"models": list(voices.values())})


# -- WebSocket ------------------------------------------------------------------------


async def websocket(request: web.Request) -> web.StreamResponse:
    orch: Orchestrator = request.app["orch"]
    config = orch.config
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(text="duplexvoice orchestrator: connect a WebSocket to /ws\n")
    decision = check_access(request.headers, request.query, api_keys=config.api_keys,
                            allowed_origins=config.allowed_origins)
    if not decision.allowed:
        orch.metrics.rejected_connections_total.inc()
        log.info("refused %s: %s", request.remote, decision.reason)
        return web.Response(status=decision.status)  # nothing else revealed
    if not orch.accepting or len(orch.drivers) >= config.max_sessions:
        orch.metrics.rejected_connections_total.inc()
        return web.Response(status=503)

    # Twice the limit: a bit too large gets a MESSAGE_TOO_LARGE error from the parser
    # (the session goes on); far too large is cut off by aiohttp before it is buffered.
    ws = web.WebSocketResponse(max_msg_size=2 * config.max_message_bytes, heartbeat=30.0,
                               compress=False)
    await ws.prepare(request)
    session_id = uuid.uuid4().hex
    output = ClientOutput(ws, request.transport, timeout_s=config.send_timeout_s)
    driver = SessionDriver(session_id, config, orch.registry, orch.clients, orch.metrics,
                           send=output.send, close=output.close)
    orch.drivers.add(driver)
    orch.metrics.sessions_total.inc()
    orch.metrics.sessions_active.inc()
    runner = asyncio.create_task(driver.run(), name=f"session-{session_id}")
    orch.runs.add(runner)
    runner.add_done_callback(orch.runs.discard)
    limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst,
                          strikes_to_close=_RATE_STRIKES)
    try:
        await _read_client(ws, output, driver, orch, limiter, runner)
    finally:
        driver.client_gone()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(runner), 5.0)
        if not runner.done():
            runner.cancel()
        orch.drivers.discard(driver)
        orch.metrics.sessions_active.dec()
        await output.close(1000, "")
    return ws


async def _read_client(ws: web.WebSocketResponse, output: ClientOutput, driver: SessionDriver,
                       orch: Orchestrator, limiter: RateLimiter,
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
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                return
            reader = asyncio.ensure_future(ws.receive())
            verdict = limiter.allow(time.monotonic())
            if verdict is RateDecision.CLOSE:
                await driver.send_error("RATE_LIMITED", "too many messages: closing")
                await output.close(1008, "rate limited")
                return
            if verdict is RateDecision.LIMITED:
                await driver.send_error("RATE_LIMITED", "too many messages: message dropped")
                continue
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            parsed = parse_client_message(msg.data, limits, driver.input_sample_rate)
            if isinstance(parsed, ProtocolError):
                await driver.send_error(parsed.code, parsed.message)
            else:
                await driver.client_message(parsed)
    finally:
        reader.cancel()


def build_app(orch: Orchestrator) -> web.Application:
    app = web.Application(client_max_size=orch.config.max_message_bytes)
    app["orch"] = orch
    app.router.add_get("/", websocket)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/models", models)
    return app


async def serve(config: OrchestratorConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orch = Orchestrator(config, make_registry(config))
    await orch.registry.start()
    runner = web.AppRunner(build_app(orch), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else config.port
    print(f"duplexvoice orchestrator ready on http://{config.host}:{port} "
          f"(WebSocket ws://{config.host}:{port}/ws; "
          f"workers: {', '.join(w.name for w in orch.registry.workers()) or 'none yet'})",
          flush=True)
    try:
        await stop.wait()
    finally:
        orch.accepting = False
        for driver in list(orch.drivers):
            driver.shutdown()  # session_end server_shutdown, worker sessions ended
        if orch.runs:
            await asyncio.wait(set(orch.runs), timeout=config.shutdown_grace_s)
        await runner.cleanup()
        await orch.registry.stop()
        await orch.clients.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        print("duplexvoice orchestrator stopped", flush=True)
