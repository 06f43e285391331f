"""Where an utterance is spoken: route over the registry's workers and open a worker
session there, trying the next best worker when one cannot be reached or is full.

I/O over :mod:`.link` and the registry; the choice itself is the pure router's
(:func:`~.router.route`).
"""

from __future__ import annotations

from duplexvoice.orchestrator.workers.link import (
    WorkerBusy,
    WorkerError,
    WorkerPool,
    WorkerSession,
    WorkerUnavailable,
)
from duplexvoice.orchestrator.workers.registry import WorkerRegistry
from duplexvoice.orchestrator.workers.router import RouteRequest, RoutingMode, route

ATTEMPTS = 3  # workers tried for one utterance


async def open_worker_session(
    pool: WorkerPool, registry: WorkerRegistry, mode: RoutingMode, *, session_id: str,
    voice: str, affinity: str | None,
) -> WorkerSession:
    """A new worker session for ``voice`` (empty: the worker's default).

    A worker that cannot be reached or is full is skipped for the next best one
    (``ATTEMPTS`` in all). When no worker is left, the registry is read again and the
    workers marked down are asked once more whether they are back, so a restarted
    worker speaks the very next utterance. Raises the last ``WorkerError``."""
    tried: set[str] = set()
    refreshed = False
    last: WorkerError | None = None
    while True:
        workers = registry.workers()
        decision = route(pool.with_load(workers), RouteRequest(model_id=voice), mode,
                         affinity=affinity, exclude=pool.excluded(workers) | tried)
        if decision.worker is None:
            if not refreshed:
                refreshed = True
                await registry.refresh_soon()
                await pool.recheck(registry.workers())
                continue
            raise last or WorkerUnavailable("-", decision.reason)
        try:
            return await pool.open(decision.worker, session_id, decision.model_id or voice)
        except (WorkerUnavailable, WorkerBusy) as exc:
            last = exc
            tried.add(decision.worker.name)
            if len(tried) >= ATTEMPTS:
                raise
