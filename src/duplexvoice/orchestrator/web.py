"""The browser client's routes: the page at ``/``, its files at ``/static/``, and
``/client-config`` (what the page needs to know before it connects).

The files are plain static files inside the package (``duplexvoice/web/``): no build
step. ``/`` is shared with the WebSocket (old clients connect there): a request that
asks for an upgrade goes to the WebSocket handler, any other gets the page.
``/client-config`` says only whether a key is needed, that WebRTC is offered, and the
default voice: nothing about the keys, workers or settings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from duplexvoice.orchestrator.server import Orchestrator

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Served by name from this fixed set (no paths, so nothing outside the folder), with
# types set here: AudioWorklet modules must come as JavaScript, whatever the system's
# MIME table says.
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
         ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_web_routes(app: web.Application, websocket: Handler) -> None:
    async def root(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await websocket(request)
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", root)
    app.router.add_get("/client-config", client_config)
    app.router.add_get("/static/{name}", static)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = WEB_DIR / name
    kind = TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    # no-cache: revalidated each load (ETag), so an upgraded server's page is never stale
    return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})


async def client_config(request: web.Request) -> web.Response:
    orch: Orchestrator = request.app["orch"]
    return web.json_response({"auth_required": bool(orch.config.api_keys), "webrtc": True,
                              "default_voice": orch.config.default_voice})
