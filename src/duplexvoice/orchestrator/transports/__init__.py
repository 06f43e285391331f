"""How clients reach a session: one module per transport (``websocket``, ``webrtc``).

A transport decides nothing about the session; it

1. accepts a connection and admits it (:func:`refusal`: API key, Origin; then the
   capacity), and starts the session (:func:`start_session`);
2. reads and parses what the client sends (``protocol.parse_client_message``, rate
   limited) and hands it to the driver (``client_message``; its own errors with
   ``send_message``);
3. implements the session's output
   (:class:`~duplexvoice.orchestrator.sessions.output.SessionOutput`: ``send`` a batch
   of typed items, ``close``), encoding them for its own wire;
4. ends the session when the client goes (:func:`finish_session`).

Adding a transport is adding a module here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from duplexvoice.orchestrator.access import check_access

if TYPE_CHECKING:
    from duplexvoice.orchestrator.server import Orchestrator
    from duplexvoice.orchestrator.sessions.driver import SessionDriver

log = logging.getLogger(__name__)


def refusal(request: web.Request, orch: Orchestrator, what: str) -> web.Response | None:
    """The bare 401/403 for a request that fails the API key or Origin check (counted,
    and logged with its reason, which the client never learns); ``None``: admitted."""
    config = orch.config
    decision = check_access(request.headers, request.query, api_keys=config.api_keys,
                            allowed_origins=config.allowed_origins)
    if decision.allowed:
        return None
    orch.metrics.rejected_connections_total.inc()
    log.info("refused %s from %s: %s", what, request.remote, decision.reason)
    return web.Response(status=decision.status)  # nothing else revealed


def start_session(orch: Orchestrator, driver: SessionDriver) -> asyncio.Task[None]:
    """Count the session in and run its driver; the task is the session's life."""
    orch.drivers.add(driver)
    orch.metrics.sessions_total.inc()
    orch.metrics.sessions_active.inc()
    runner = asyncio.create_task(driver.run(), name=f"session-{driver.session_id}")
    orch.runs.add(runner)
    runner.add_done_callback(orch.runs.discard)
    return runner


async def finish_session(orch: Orchestrator, driver: SessionDriver,
                         runner: asyncio.Task[None]) -> None:
    """The client is gone: the driver gives its worker session back on every exit;
    wait for that (bounded by the worker call deadline) so the capacity is free when
    this returns, then count the session out."""
    driver.client_gone()
    await asyncio.wait((runner,), timeout=orch.config.worker_timeout_s + 1)
    if not runner.done():
        runner.cancel()
    orch.drivers.discard(driver)
    orch.metrics.sessions_active.dec()
