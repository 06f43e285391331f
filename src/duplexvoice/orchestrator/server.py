"""The orchestrator process: HTTP and WebSocket on one port (aiohttp).

- ``/`` and ``/ws``: the WebSocket protocol (``docs/protocol.md``), one connection per
  session, checked (API key, Origin) before the upgrade; ``/`` without an upgrade is
  the browser client (``web.py``: the page, ``/static/``, ``/client-config``);
- ``POST /webrtc/offer``: the WebRTC transport's signalling (``transports/webrtc.py``),
  one peer connection per session;
- ``/health`` (alive), ``/ready`` (a worker is reachable and has a free session),
  ``/metrics`` (Prometheus),
  ``/models`` (voices across workers).

Each connection gets its own :class:`SessionDriver` (see ``transports/websocket.py``);
sessions share only the registry view and the worker pool (gRPC channels, health).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from aiohttp import web

from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions.driver import SessionDriver
from duplexvoice.orchestrator.sessions.shared import ConversationServices, make_services
from duplexvoice.orchestrator.transports.webrtc import WebRtcOptions, WebRtcTransport
from duplexvoice.orchestrator.transports.websocket import websocket
from duplexvoice.orchestrator.web import add_web_routes
from duplexvoice.orchestrator.workers.link import WorkerPool
from duplexvoice.orchestrator.workers.registry import (
    EmbeddedRegistry,
    RedisRegistry,
    WorkerRegistry,
)
from duplexvoice.wire.protocol import ProtocolLimits

log = logging.getLogger(__name__)


@dataclass
class Orchestrator:
    config: OrchestratorConfig
    registry: WorkerRegistry
    pool: WorkerPool = field(default_factory=WorkerPool)
    metrics: OrchestratorMetrics = field(default_factory=OrchestratorMetrics)
    drivers: set[SessionDriver] = field(default_factory=set)
    runs: set[asyncio.Task[None]] = field(default_factory=set)
    accepting: bool = True
    services: ConversationServices | None = None  # conversation mode's shared parts

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
    """Ready when some worker is reachable and has a free session."""
    orch: Orchestrator = request.app["orch"]
    workers = orch.registry.workers()
    down = orch.pool.excluded(workers)
    loaded = orch.pool.with_load(workers)
    free = {w.name: max(0, w.max_concurrent_sessions - int(w.queue_depth))
            for w in loaded if w.name not in down}
    ok = any(free.values())
    body = {"ready": ok, "workers": [w.name for w in workers if w.name not in down],
            "down": sorted(down), "free_sessions": free}
    return web.json_response(body, status=200 if ok else 503)


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


WEBRTC = web.AppKey("webrtc", WebRtcTransport)


def build_app(orch: Orchestrator, webrtc: WebRtcOptions | None = None) -> web.Application:
    app = web.Application(client_max_size=orch.config.max_message_bytes)
    app["orch"] = orch
    rtc = WebRtcTransport(orch, webrtc)
    app[WEBRTC] = rtc
    app.router.add_post("/webrtc/offer", rtc.offer)
    app.on_shutdown.append(rtc.on_shutdown)  # runner.cleanup(): every peer closed
    add_web_routes(app, websocket)  # "/": the page, or the WebSocket when upgraded
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
    orch = Orchestrator(config, make_registry(config),
                        WorkerPool(timeout_s=config.worker_timeout_s))
    orch.services = await make_services(config.conversation)
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
        await orch.pool.close()
        if orch.services is not None:
            await orch.services.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        print("duplexvoice orchestrator stopped", flush=True)
