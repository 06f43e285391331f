"""The worker's record in the Redis registry (WIRE §3) and the heartbeat that keeps it.

A worker writes ``<prefix><name>`` = JSON record with an expiry, and rewrites it every
``interval_s`` (and promptly after ``poke()``, e.g. when a model is loaded), so the
record carries current ``resident_models`` and ``metrics``. A worker that dies stops
refreshing and its key expires: expiry is the only liveness signal readers need.

Redis is advisory for a worker: an outage must never raise into the worker or slow
synthesis. The publisher logs once when Redis goes away and once when it is back,
retries with a back-off capped at the interval, and re-registers as soon as it can.
Every Redis call is bounded by short socket timeouts, so a hung Redis cannot block
start-up or shutdown.

Errors: ``build_record`` raises ``ValueError`` for a record that would break the
contract (a caller bug). Nothing else here raises Redis errors to callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from duplexvoice.wire.registry_record import (  # re-exported: the worker's side of WIRE §3
    CAPABILITY_FIELDS,
    CONTRACT_FIELDS,
    DEFAULT_PREFIX,
    REQUIRED_METRICS,
    build_record,
    list_workers,
    worker_key,
)

__all__ = [
    "CAPABILITY_FIELDS",
    "CONTRACT_FIELDS",
    "DEFAULT_PREFIX",
    "REQUIRED_METRICS",
    "RegistryPublisher",
    "build_record",
    "list_workers",
    "worker_key",
]

log = logging.getLogger(__name__)

# First retry delay after a failed write; doubles up to the heartbeat interval.
_FIRST_RETRY_S = 0.25


def _redacted(url: str) -> str:
    # Logs must not carry a password from redis://user:pass@host.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


class RegistryPublisher:
    """Keeps this worker's record in Redis fresh until ``stop()``.

    ``snapshot()`` returns the current record (see ``build_record``) and is called on
    every write. ``timeout_s`` bounds each Redis operation (connect, write, delete).
    """

    def __init__(
        self,
        redis_url: str,
        name: str,
        snapshot: Callable[[], dict[str, object]],
        *,
        key_prefix: str = DEFAULT_PREFIX,
        ttl_s: float = 30.0,
        interval_s: float = 10.0,
        timeout_s: float = 1.0,
    ) -> None:
        if interval_s <= 0 or ttl_s <= 0 or timeout_s <= 0:
            raise ValueError("ttl_s, interval_s and timeout_s must be positive")
        if ttl_s <= interval_s:
            # The record would expire between two heartbeats and the worker flicker.
            raise ValueError(f"ttl_s ({ttl_s}) must exceed interval_s ({interval_s})")
        self.key = worker_key(key_prefix, name)
        self._url = redis_url
        self._snapshot = snapshot
        # WIRE §3 says SET ... EX; whole seconds use EX, fractional TTLs (tests) PX.
        ttl_ms = max(1, round(ttl_s * 1000))
        self._ex = ttl_ms // 1000 if ttl_ms % 1000 == 0 else None
        self._px = None if self._ex is not None else ttl_ms
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._registered = False
        self._outage = False

    @property
    def registered(self) -> bool:
        """True when the last write reached Redis."""
        return self._registered

    async def start(self) -> None:
        """Write once now (bounded; never raises), then keep refreshing in a task."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            # Our loop is the retry policy; the client's own retries would multiply
            # the time one attempt can take.
            retry=Retry(NoBackoff(), 0),
        )
        ok = await self._write()
        self._task = asyncio.create_task(self._run(ok), name=f"registry {self.key}")

    def poke(self) -> None:
        """Refresh the record soon (e.g. after a model load). Coalesced; thread-safe."""
        loop = self._loop
        if loop is None:  # not started, or stopped
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # called from another thread (e.g. a model-loading thread)
            on_loop = False
        if on_loop:
            self._wake.set()
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nothing left to refresh
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop refreshing and delete the key (best effort, bounded by ``timeout_s``)."""
        task, self._task = self._task, None
        client, self._client = self._client, None
        self._loop = None
        if task is not None:
            task.cancel()
            # asyncio.wait does not re-raise the task's CancelledError, so a caller
            # that is itself being cancelled still sees its own cancellation.
            await asyncio.wait([task], timeout=self._timeout_s)
        if client is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await client.delete(self.key)
            log.info("registry: %s removed", self.key)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("registry: could not delete %s (%s); it expires by itself", self.key, exc)
        finally:
            self._registered = False
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await client.aclose()

    async def _run(self, last_ok: bool) -> None:
        retry_s = _FIRST_RETRY_S
        ok = last_ok
        while True:
            if ok:
                delay, retry_s = self._interval_s, _FIRST_RETRY_S
            else:
                delay, retry_s = min(retry_s, self._interval_s), retry_s * 2
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            ok = await self._write()

    async def _write(self) -> bool:
        """One SET with expiry. Returns success; logs only on state changes."""
        self._wake.clear()  # a poke during this write asks for one more write
        client = self._client
        if client is None:
            return False
        try:
            payload = json.dumps(self._snapshot(), separators=(",", ":"), allow_nan=False)
        except Exception:
            # A bug in the snapshot, not a Redis outage: the old record stays until TTL.
            log.exception("registry: building the record for %s failed", self.key)
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                await client.set(self.key, payload, ex=self._ex, px=self._px)
        except (RedisError, OSError, TimeoutError) as exc:
            self._registered = False
            if not self._outage:
                self._outage = True
                log.warning(
                    "registry: Redis at %s unreachable (%s); %s will re-register when it "
                    "is back, synthesis continues",
                    _redacted(self._url), str(exc) or type(exc).__name__, self.key,
                )
            return False
        if self._outage:
            log.info("registry: Redis at %s is back; %s re-registered",
                     _redacted(self._url), self.key)
        elif not self._registered:
            log.info("registry: %s registered at %s", self.key, _redacted(self._url))
        self._outage = False
        self._registered = True
        return True
