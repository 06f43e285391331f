"""How clients reach a session: one module per transport (``websocket``, ``webrtc``).

A transport accepts a connection, reads and parses what the client sends, hands it
to the session's driver, and writes what the driver sends back. It decides nothing
about the session. Both admit a client the same way (:func:`refusal`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from duplexvoice.orchestrator.access import check_access

if TYPE_CHECKING:
    from duplexvoice.orchestrator.server import Orchestrator

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
