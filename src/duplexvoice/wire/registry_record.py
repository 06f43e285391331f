"""The worker registry record (WIRE §3): its schema, how a worker builds it, and how
readers list the records in Redis. Shared by the worker (which writes it) and the
orchestrator (which reads it); it depends on neither.

Errors: ``build_record`` raises ``ValueError`` for a record that would break the
contract (a caller bug). ``list_workers`` lets Redis errors through to its caller.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

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
