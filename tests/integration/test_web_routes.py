"""The browser client's routes on a real socket: the page at ``/`` (the WebSocket
still there for clients that upgrade), its files under ``/static/`` with the types
AudioWorklets need, and ``/client-config`` revealing nothing but what the page needs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.orchestrator.server import Orchestrator, build_app
from duplexvoice.orchestrator.workers.registry import EmbeddedRegistry

pytestmark = [pytest.mark.integration,
              # server.py keys its app with a plain string (aiohttp warns; not ours here)
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]


async def _server(**config: object) -> TestServer:
    orch = Orchestrator(OrchestratorConfig(**config), EmbeddedRegistry([]))  # type: ignore[arg-type]
    server = TestServer(build_app(orch), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def base() -> AsyncIterator[str]:
    server = await _server()
    yield str(server.make_url("/"))
    await server.close()


async def test_the_page_and_its_files_are_served(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as page:
            assert page.status == 200 and page.content_type == "text/html"
            assert page.headers["Cache-Control"] == "no-cache"
            assert '<script type="module" src="/static/app.js">' in await page.text()
        for name, kind in [("app.js", "text/javascript"), ("capture-worklet.js", "text/javascript"),
                           ("playback-worklet.js", "text/javascript"), ("app.css", "text/css")]:
            async with http.get(base + "static/" + name) as file:
                assert file.status == 200 and file.content_type == kind, name
                assert len(await file.read()) > 100
        for missing in ("static/nothing.js", "static/..%2Forchestrator%2Fserver.py",
                        "static/../orchestrator/server.py", "static/"):
            async with http.get(base + missing) as gone:
                assert gone.status == 404, missing


async def test_client_config_says_only_what_the_page_needs(base: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(base + "client-config") as r:
        assert await r.json() == {"auth_required": False, "webrtc": True, "default_voice": ""}
    server = await _server(api_keys=["sekrit"], default_voice="espeak-en-us-default")
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(server.make_url("/client-config")) as r:
            body = await r.text()
        assert "sekrit" not in body
        assert r.status == 200
        assert await r.json() == {"auth_required": True, "webrtc": True,
                                  "default_voice": "espeak-en-us-default"}
    finally:
        await server.close()


@pytest.mark.parametrize("path", ["", "ws"])
async def test_a_websocket_on_the_root_and_on_ws_still_works(base: str, path: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(base + path) as ws:
        start = await ws.receive_json(timeout=10)
        assert start["type"] == "session_start" and start["session_id"]
        assert (await ws.receive_json(timeout=10)) == {"type": "state", "state": "LISTENING"}
