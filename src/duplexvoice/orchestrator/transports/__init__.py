"""How clients reach a session: one module per transport (``websocket``, ``webrtc``).

A transport accepts a connection, reads and parses what the client sends, hands it
to the session's driver, and writes what the driver sends back. It decides nothing
about the session. Both admit a client the same way (:func:`refusal`), and start
and finish its session the same way (:func:`start_session`, :func:`finish_session`).
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
