"""Where the orchestrator learns which TTS workers exist: the I/O side of routing.

Two implementations of one small interface, ``WorkerRegistry``:

* ``RedisRegistry`` reads WIRE §3 records with ``list_workers`` (SCAN) every
  ``poll_interval_s``; a record older than ``ttl_s`` is ignored even before Redis
  expires it.
* ``EmbeddedRegistry`` (the default, no Redis) health-checks configured addresses
  with ``GetCapabilities`` and ``ListModels`` and builds the same record from the
  replies, every model the worker can load included (``available_models``), as a
  worker writes it to Redis. A worker that fails its check is checked again every
  ``DOWN_RECHECK_S`` until it answers.

Both parse records with ``WorkerInfo.from_record``; choosing among workers stays in
the pure router. ``workers()`` returns the last known list, never blocks and never
raises; ``refresh()`` polls once now and never raises for an unreachable Redis or
worker (an outage is logged once when it starts and once when it ends).

Errors: the constructors raise ``ValueError`` for bad settings (a config bug).
Redis, gRPC, socket and timeout errors are caught at this boundary and never reach
callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from duplexvoice.orchestrator.workers.link import WorkerError, WorkerPool, describe
from duplexvoice.orchestrator.workers.router import WorkerInfo
from duplexvoice.rpc import tts_pb2
from duplexvoice.wire.channels import grpc_target
from duplexvoice.wire.registry_record import (
    CAPABILITY_FIELDS,
    DEFAULT_PREFIX,
    build_record,
    list_workers,
)

log = logging.getLogger(__name__)

# First retry after a failed Redis poll; doubles up to ``poll_interval_s``.
FIRST_RETRY_S = 0.25
# ``refresh_soon`` polls at most this often.
REFRESH_MIN_AGE_S = 0.1
# The embedded registry checks a worker that failed its check this often.
DOWN_RECHECK_S = 0.25


class WorkerRegistry(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def refresh(self) -> None: ...
    async def refresh_soon(self) -> None: ...
    def workers(self) -> list[WorkerInfo]: ...


def retry_delay(failures: int, poll_interval_s: float) -> float:
    """Seconds to wait after ``failures`` failed polls in a row (0: a normal poll)."""
    if failures <= 0:
        return poll_interval_s
    return min(poll_interval_s, FIRST_RETRY_S * 2.0 ** min(failures - 1, 16))


def parse_address(entry: str) -> tuple[str, str]:
    """``[name=]host:port`` or ``[name=]grpc://host:port`` -> (name, ``grpc://host:port``).

    Without a name the worker is named by its ``host:port``.
    """
    name, sep, addr = entry.strip().partition("=")
    if not sep:
        name, addr = "", name
    target = grpc_target(addr.strip())
    if not target or ":" not in target:
        raise ValueError(f"worker address must look like host:port, got {entry!r}")
    return (name.strip() or target), f"grpc://{target}"


def record_from_capabilities(
    name: str, addr: str, reply: tts_pb2.GetCapabilitiesResponse, now: float,
    available_models: list[str] | None = None,
) -> dict[str, object]:
    """A WIRE §3 record (as ``build_record`` writes it) from a GetCapabilities reply.

    A reply without ``rtf`` or ``queue_depth`` gets ``rtf`` unmeasured (``null``) and
    ``queue_depth`` 0, so an older worker still counts as alive.
    """
    caps = reply.capabilities
    capabilities: dict[str, object] = {field: getattr(caps, field) for field in CAPABILITY_FIELDS}
    capabilities["languages"] = list(caps.languages)
    metrics: dict[str, float] = {"rtf": math.nan, "queue_depth": 0.0, **dict(reply.metrics)}
    extra = {"available_models": available_models} if available_models is not None else None
    return build_record(
        name=name, addr=addr, capabilities=capabilities,
        resident_models=list(reply.resident_models), metrics=metrics, now=now, extra=extra,
    )


class _Poller:
    """Shared lifecycle: ``start()`` polls once, then a task polls until ``stop()``."""

    def __init__(self, poll_interval_s: float, timeout_s: float) -> None:
        if poll_interval_s <= 0 or timeout_s <= 0:
            raise ValueError("poll_interval_s and timeout_s must be positive")
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self._workers: list[WorkerInfo] = []
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._failures = 0
        self._polled_at = -math.inf

    def workers(self) -> list[WorkerInfo]:
        """The last known healthy workers, sorted by name. Never blocks or raises."""
        return list(self._workers)

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait does not re-raise the task's CancelledError into our caller.
            await asyncio.wait([task], timeout=self.timeout_s)
        await self._close()

    async def refresh(self) -> None:
        """Poll once now. Never raises for an unreachable backend."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._polled_at = time.monotonic()
            ok = await self._poll()
        self._failures = 0 if ok else self._failures + 1

    async def refresh_soon(self) -> None:
        """Poll now unless a poll started less than ``REFRESH_MIN_AGE_S`` ago (then wait
        for it to finish): for sessions that found no worker, so that many of them at
        once cost one poll, and a worker that came back is found without waiting for
        the next regular poll."""
        if self._lock is not None and self._lock.locked():
            async with self._lock:
                return
        if time.monotonic() - self._polled_at >= REFRESH_MIN_AGE_S:
            await self.refresh()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._next_delay())
            await self.refresh()

    def _next_delay(self) -> float:
        return retry_delay(self._failures, self.poll_interval_s)

    async def _poll(self) -> bool:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError


class RedisRegistry(_Poller):
    """Workers from the Redis registry (WIRE §3). During an outage the last known list
    is kept as it was (the orchestrator keeps serving); it is replaced on recovery."""

    def __init__(
        self,
        redis_url: str,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        ttl_s: float = 30.0,
        poll_interval_s: float = 2.0,
        timeout_s: float = 1.0,
    ) -> None:
        super().__init__(poll_interval_s, timeout_s)
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self._url = redis_url
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self._client: aioredis.Redis | None = None
        self._outage = False

    async def _poll(self) -> bool:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),  # our loop is the retry policy
            )
        try:
            # Each call is bounded by the socket timeouts; this bounds a long SCAN too.
            async with asyncio.timeout(4 * self.timeout_s):
                records = await list_workers(self._client, self.key_prefix)
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._outage:
                self._outage = True
                log.warning(
                    "registry: Redis unreachable (%s); keeping %d known workers, retrying",
                    type(exc).__name__, len(self._workers),
                )
            return False
        now = time.time()
        parsed = (WorkerInfo.from_record(r, now=now, ttl_s=self.ttl_s) for r in records)
        self._workers = sorted((w for w in parsed if w is not None), key=lambda w: w.name)
        if self._outage:
            self._outage = False
            log.info("registry: Redis reachable again; %d workers", len(self._workers))
        return True

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await client.aclose()


class EmbeddedRegistry(_Poller):
    """Workers from configured addresses (``[name=]host:port``), health-checked with
    ``GetCapabilities``; one that fails its check is left out until it answers."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        poll_interval_s: float = 2.0,
        timeout_s: float = 1.0,
    ) -> None:
        super().__init__(poll_interval_s, timeout_s)
        self._targets = [parse_address(a) for a in addresses]
        names = [name for name, _ in self._targets]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must be unique, got {names}")
        # Record TTL: a record is built fresh on each successful check.
        self._ttl_s = poll_interval_s + 2 * timeout_s
        self._pool = WorkerPool(timeout_s=timeout_s)
        self._down: set[str] = set()

    async def _poll(self) -> bool:
        infos = await asyncio.gather(*(self._check(n, a) for n, a in self._targets))
        self._workers = sorted((i for i in infos if i is not None), key=lambda w: w.name)
        return True  # a dead worker is not a registry outage: keep the normal interval

    async def _check(self, name: str, addr: str) -> WorkerInfo | None:
        try:
            async with asyncio.timeout(2 * self.timeout_s):
                reply, models = await describe(self._pool, addr, self.timeout_s)
            now = time.time()
            record = record_from_capabilities(name, addr, reply, now, models)
            info = WorkerInfo.from_record(record, now=now, ttl_s=self._ttl_s)
            if info is None:
                raise ValueError("reply does not make a valid worker record")
        except (WorkerError, TimeoutError, OSError, ValueError) as exc:
            self._pool.reset(addr)  # the next check connects afresh, without back-off
            if name not in self._down:
                self._down.add(name)
                log.warning("registry: worker %s (%s) failed its check: %s",
                            name, addr, _why(exc))
            return None
        if name in self._down:
            self._down.discard(name)
            log.warning("registry: worker %s (%s) answers again", name, addr)
        return info

    def _next_delay(self) -> float:
        # A worker that failed its check is checked again soon: taken back as soon as
        # it answers (a refused connection costs next to nothing).
        if self._down:
            return min(self.poll_interval_s, DOWN_RECHECK_S)
        return self.poll_interval_s

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout_s):
                await self._pool.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, WorkerError):
        return exc.message
    return type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
