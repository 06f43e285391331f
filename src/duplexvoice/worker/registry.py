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
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "worker:"

CAPABILITY_FIELDS = (
    "streaming",
    "zero_shot",
    "lora",
    "cpu_ok",
    "languages",
    "emotive_zero_prompt",
    "max_concurrent_sessions",
)
REQUIRED_METRICS = ("rtf", "queue_depth")
CONTRACT_FIELDS = (
    "name", "addr", "capabilities", "resident_models", "metrics", "last_heartbeat_ts",
)

# First retry delay after a failed write; doubles up to the heartbeat interval.
_FIRST_RETRY_S = 0.25


def worker_key(prefix: str, name: str) -> str:
    """The registry key of one worker: ``<prefix><name>``, e.g. ``worker:tts-worker-0``."""
    return f"{prefix}{name}"


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN/Infinity; strict readers (browsers, Go) reject them.
    number = float(value)
    return number if math.isfinite(number) else None


def build_record(
    *,
    name: str,
    addr: str,
    capabilities: Mapping[str, object],
    resident_models: Sequence[str],
    metrics: Mapping[str, float],
    now: float,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """One WIRE §3 record. ``extra`` fields are added but never override contract fields.

    Non-finite metric values are written as ``null`` so the record stays strict JSON.
    """
    if not name:
        raise ValueError("worker name must not be empty")
    if not addr.startswith("grpc://"):
        raise ValueError(f"addr must look like grpc://host:port, got {addr!r}")
    missing_caps = [f for f in CAPABILITY_FIELDS if f not in capabilities]
    if missing_caps:
        raise ValueError(f"capabilities lack {', '.join(missing_caps)}")
    missing_metrics = [m for m in REQUIRED_METRICS if m not in metrics]
    if missing_metrics:
        raise ValueError(f"metrics lack {', '.join(missing_metrics)}")
    if isinstance(resident_models, str):
        raise ValueError("resident_models must be a sequence of model ids, not a string")

    record: dict[str, object] = {
        key: value for key, value in (extra or {}).items() if key not in CONTRACT_FIELDS
    }
    caps = dict(capabilities)
    caps["languages"] = [str(lang) for lang in _as_list(caps["languages"])]
    record.update(
        name=name,
        addr=addr,
        capabilities=caps,
        resident_models=[str(m) for m in resident_models],
        metrics={key: _finite_or_none(value) for key, value in metrics.items()},
        last_heartbeat_ts=float(now),
    )
    return record


def _as_list(value: object) -> list[object]:
    if not isinstance(value, list | tuple | set | frozenset):
        raise ValueError(f"capabilities.languages must be a list, got {value!r}")
    return list(value)


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


async def list_workers(
    client: aioredis.Redis, prefix: str = DEFAULT_PREFIX, *, batch: int = 100
) -> list[dict[str, Any]]:
    """Every live record under ``prefix``, sorted by name. Uses SCAN, never KEYS.

    Values that are not JSON objects with a string ``name`` and ``addr`` are skipped;
    unknown fields are kept as they are (readers ignore what they do not know).
    """
    pattern = _glob_escape(prefix) + "*"
    keys: list[bytes | str] = [key async for key in client.scan_iter(match=pattern, count=batch)]
    workers: list[dict[str, Any]] = []
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        # MGET answers nil for keys that expired since SCAN or hold a non-string type.
        for key, raw in zip(chunk, await client.mget(chunk), strict=True):
            record = _parse_record(raw)
            if record is None:
                log.debug("registry: skipping %r: not a worker record", key)
                continue
            workers.append(record)
    workers.sort(key=lambda r: str(r["name"]))
    return workers


def _parse_record(raw: object) -> dict[str, Any] | None:
    if not isinstance(raw, bytes | str):
        return None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    if not isinstance(value.get("name"), str) or not isinstance(value.get("addr"), str):
        return None
    return value


def _glob_escape(text: str) -> str:
    # SCAN MATCH is a glob: a prefix with * ? [ ] \ must match only itself.
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)
