"""Which workers to route around: pure bookkeeping, no I/O, no clock of its own.

A worker that failed at the connection level is *down* from that moment (wall-clock
time, the clock of registry heartbeats) for every session of this orchestrator. It is
up again when it answers a probe (``mark_up``), or as soon as its registry record
carries a heartbeat newer than the failure: a worker restarted under the same name
re-registers, and the embedded registry stamps each successful health check. A
worker the registry no longer lists is forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence

from duplexvoice.orchestrator.workers.router import WorkerInfo


class WorkerHealth:
    def __init__(self) -> None:
        self._down_since: dict[str, float] = {}

    def mark_down(self, name: str, now: float) -> bool:
        """Record a failure at ``now``; True if the worker was up until now."""
        was_up = name not in self._down_since
        self._down_since[name] = now
        return was_up

    def mark_up(self, name: str) -> bool:
        """True if the worker was down."""
        return self._down_since.pop(name, None) is not None

    def is_down(self, name: str) -> bool:
        return name in self._down_since

    def excluded(self, workers: Sequence[WorkerInfo]) -> set[str]:
        """Names among ``workers`` still down; clears those with a newer heartbeat."""
        if not self._down_since:
            return set()
        listed = {w.name for w in workers}
        for name in [n for n in self._down_since if n not in listed]:
            del self._down_since[name]
        out: set[str] = set()
        for worker in workers:
            since = self._down_since.get(worker.name)
            if since is None:
                continue
            if worker.last_heartbeat_ts > since:
                del self._down_since[worker.name]
            else:
                out.add(worker.name)
        return out
