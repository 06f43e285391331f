"""Choosing a TTS worker for a session: a pure function over registry records.

``WorkerInfo.from_record`` turns one WIRE §3 record into a typed view (or ``None`` for
a record the router must not trust); ``route`` picks a worker and a model for a
request under a ``RoutingMode`` (MODELS_AND_ROUTING.md, "Routing"). No I/O, no clock,
no event loop: the caller lists the registry, passes ``now``, and carries out the
decision (dial the worker, ``LoadModel`` first when ``load_model`` is set).

Order of preference among eligible workers: the session's current worker (affinity);
then model resident, or for a LoRA voice its base model resident (the adapter loads
in milliseconds over a resident base; extension ``model_bases``); then lowest
``queue_depth``; then most ``prefer_tags``; then lowest ``rtf``, then lowest
``first_audio_ms``; then name. Unmeasured latencies (absent, ``null`` or 0, which a
fresh worker reports) sort after measured ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, field_validator

# Boolean capabilities a routing mode may require (WIRE §3 ``capabilities``).
BOOL_CAPABILITIES = ("streaming", "zero_shot", "lora", "cpu_ok", "emotive_zero_prompt")


class RoutingMode(BaseModel):
    """One named routing mode from config. Validated; immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefer_tags: tuple[str, ...] = ()
    prefer_resident: bool = True
    require: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()

    @field_validator("prefer_tags", "fallbacks")
    @classmethod
    def _non_empty(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(v.strip() for v in values)
        if any(not v for v in cleaned):
            raise ValueError("entries must be non-empty strings")
        return cleaned

    @field_validator("require")
    @classmethod
    def _known_capabilities(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in values if v not in BOOL_CAPABILITIES]
        if unknown:
            raise ValueError(
                f"unknown capabilities {unknown}; known: {', '.join(BOOL_CAPABILITIES)}"
            )
        return values


def default_routing_modes() -> dict[str, RoutingMode]:
    """The built-in modes. ``mock`` is never a fallback: it is a tone generator, not a
    voice; a dev config that wants it can list it."""
    return {
        "default": RoutingMode(
            prefer_tags=("expressive", "low-jitter"), fallbacks=("piper", "espeak")
        ),
        "edge": RoutingMode(require=("cpu_ok",), fallbacks=("piper", "espeak")),
        "lora": RoutingMode(require=("lora",)),
    }


@dataclass(frozen=True)
class WorkerInfo:
    """What the router needs from one worker record."""

    name: str
    addr: str
    languages: tuple[str, ...]
    streaming: bool
    zero_shot: bool
    lora: bool
    cpu_ok: bool
    emotive_zero_prompt: bool
    max_concurrent_sessions: int
    resident_models: frozenset[str]
    available_models: frozenset[str]  # always includes resident_models
    rtf: float | None  # None: not measured yet
    queue_depth: float
    first_audio_ms: float | None = None
    tags: frozenset[str] = frozenset()
    sample_rate: int | None = None  # extension ``audio.sr``; None: not advertised
    last_heartbeat_ts: float = 0.0
    # Extension ``model_bases``: LoRA voice -> the base model its adapter goes over.
    model_bases: Mapping[str, str] = field(default_factory=dict, hash=False)

    def residency(self, model_id: str) -> int:
        """0: the model is resident here; 1: it is a LoRA voice whose base is; 2: neither."""
        if model_id in self.resident_models:
            return 0
        base = self.model_bases.get(model_id)
        return 1 if base is not None and base in self.resident_models else 2

    def capability(self, name: str) -> bool:
        """A boolean capability by its WIRE name (one of ``BOOL_CAPABILITIES``)."""
        value = getattr(self, name) if name in BOOL_CAPABILITIES else False
        return value is True

    @property
    def has_capacity(self) -> bool:
        return self.queue_depth < self.max_concurrent_sessions

    @classmethod
    def from_record(
        cls, record: Mapping[str, object], now: float, ttl_s: float
    ) -> WorkerInfo | None:
        """Parse a registry record; ``None`` when malformed, incomplete or stale.

        Unknown fields are ignored. A malformed *extension* (``available_models``,
        ``tags``, ``audio``) is treated as absent rather than hiding a live worker.
        """
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        name, addr = record.get("name"), record.get("addr")
        if not isinstance(name, str) or not name:
            return None
        if not isinstance(addr, str) or not addr.startswith("grpc://"):
            return None
        ts = _number(record.get("last_heartbeat_ts"))
        if ts is None or now - ts > ttl_s:
            return None
        caps, metrics = record.get("capabilities"), record.get("metrics")
        if not isinstance(caps, Mapping) or not isinstance(metrics, Mapping):
            return None
        flags = {key: caps.get(key) for key in BOOL_CAPABILITIES}
        if not all(isinstance(value, bool) for value in flags.values()):
            return None
        languages = _strings(caps.get("languages"))
        resident = _strings(record.get("resident_models"))
        max_sessions = _number(caps.get("max_concurrent_sessions"))
        queue_depth = _number(metrics.get("queue_depth"))
        if languages is None or resident is None or max_sessions is None:
            return None
        if queue_depth is None or queue_depth < 0 or max_sessions != int(max_sessions):
            return None
        if "rtf" not in metrics:
            return None  # required by the contract; ``null`` (non-finite) is allowed
        available = _strings(record.get("available_models"))
        audio = record.get("audio")
        sr = _number(audio.get("sr")) if isinstance(audio, Mapping) else None
        return cls(
            name=name,
            addr=addr,
            languages=languages,
            streaming=flags["streaming"] is True,
            zero_shot=flags["zero_shot"] is True,
            lora=flags["lora"] is True,
            cpu_ok=flags["cpu_ok"] is True,
            emotive_zero_prompt=flags["emotive_zero_prompt"] is True,
            max_concurrent_sessions=int(max_sessions),
            resident_models=frozenset(resident),
            available_models=frozenset(resident) | frozenset(available or ()),
            rtf=_measured(metrics.get("rtf")),
            queue_depth=queue_depth,
            first_audio_ms=_measured(metrics.get("first_audio_ms")),
            tags=frozenset(_strings(record.get("tags")) or ()),
            sample_rate=int(sr) if sr is not None and sr > 0 and sr == int(sr) else None,
            last_heartbeat_ts=ts,
            model_bases=_string_map(record.get("model_bases")),
        )


def _number(value: object) -> float | None:
    # bool is an int in Python but never a number in a JSON record.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _measured(value: object) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _string_map(value: object) -> dict[str, str]:
    """A ``{str: str}`` extension; anything malformed reads as absent."""
    if not isinstance(value, Mapping):
        return {}
    if not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        return {}
    return dict(value)


def _strings(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list | tuple):
        return None
    if not all(isinstance(item, str) and item for item in value):
        return None
    return tuple(value)


@dataclass(frozen=True)
class RouteRequest:
    """What a session asks for. Empty ``model_id``: any model; empty ``language``: any."""

    model_id: str = ""
    language: str = ""
    sample_rate: int | None = None  # None: the caller resamples whatever comes


@dataclass(frozen=True)
class RouteDecision:
    """The router's answer. ``worker is None`` means nothing can serve the request;
    ``reason`` then says why (the caller reports WORKER_UNAVAILABLE with it)."""

    worker: WorkerInfo | None
    model_id: str | None
    load_model: bool
    fallback_from: str | None
    reason: str


def languages_match(wanted: str, offered: str) -> bool:
    """BCP-47-ish prefix match on whole subtags, either way: ``en`` ~ ``en-US``."""
    a, b = _lang_tags(wanted), _lang_tags(offered)
    if not a or not b:
        return False
    short = min(len(a), len(b))
    return a[:short] == b[:short]


def _lang_tags(language: str) -> list[str]:
    return [tag for tag in language.strip().lower().replace("_", "-").split("-") if tag]


def model_matches(pattern: str, model_id: str) -> bool:
    """A fallback names a model exactly or a prefix on ``-`` boundaries: ``piper``
    matches ``piper-en-us-joe-medium`` but ``pip`` does not."""
    return model_id == pattern or model_id.startswith(pattern + "-")


def _rejection(
    worker: WorkerInfo, request: RouteRequest, mode: RoutingMode, exclude: Collection[str]
) -> str | None:
    """Why ``worker`` cannot take any session for ``request`` (model aside), or None."""
    if worker.name in exclude:
        return "excluded"
    missing = [cap for cap in mode.require if not worker.capability(cap)]
    if missing:
        return f"lacks {'+'.join(missing)}"
    if request.language and not any(
        languages_match(request.language, lang) for lang in worker.languages
    ):
        return f"no language {request.language}"
    if (
        request.sample_rate is not None
        and worker.sample_rate is not None
        and worker.sample_rate != request.sample_rate
    ):
        return f"sample rate {worker.sample_rate}"
    if not worker.has_capacity:
        return "full"
    return None


def _unmeasured_last(value: float | None) -> tuple[bool, float]:
    return (value is None, value or 0.0)


def _rank(
    worker: WorkerInfo, residency: int, mode: RoutingMode
) -> tuple[object, ...]:
    return (
        residency if mode.prefer_resident else 0,
        worker.queue_depth,
        -sum(1 for tag in mode.prefer_tags if tag in worker.tags),
        _unmeasured_last(worker.rtf),
        _unmeasured_last(worker.first_audio_ms),
        worker.name,
        worker.addr,
    )


def _pick(
    eligible: Sequence[WorkerInfo],
    models_on: Callable[[WorkerInfo], Collection[str]],
    mode: RoutingMode,
    affinity: str | None,
) -> tuple[WorkerInfo, str, bool] | None:
    """Best (worker, model, model resident?) among ``eligible`` offering a model."""
    options: list[tuple[tuple[object, ...], WorkerInfo, str, bool]] = []
    for worker in eligible:
        models = models_on(worker)
        if not models:
            continue
        # On one worker a resident model beats one it would have to load.
        model = min(models, key=lambda m: (worker.residency(m), m))
        resident = model in worker.resident_models
        options.append((_rank(worker, worker.residency(model), mode), worker, model, resident))
    if not options:
        return None
    for _, worker, model, resident in options:
        if worker.name == affinity:
            return worker, model, resident
    _, worker, model, resident = min(options, key=lambda option: option[0])
    return worker, model, resident


def with_local_load(
    workers: Sequence[WorkerInfo], busy_here: Mapping[str, int],
    leaving_here: Mapping[str, int] | None = None,
) -> list[WorkerInfo]:
    """Workers with ``queue_depth`` as this orchestrator knows it (by worker name): at
    least the busy sessions it holds there (``busy_here``), and the reported depth less
    the sessions it is giving back or would give back on demand (``leaving_here``).
    Records lag up to a heartbeat; without this, a burst of new sessions would all go
    to the worker that looked idlest at the last report."""
    leaving_here = leaving_here or {}
    out: list[WorkerInfo] = []
    for w in workers:
        depth = max(w.queue_depth - leaving_here.get(w.name, 0), busy_here.get(w.name, 0), 0.0)
        out.append(w if depth == w.queue_depth else replace(w, queue_depth=depth))
    return out


def route(
    workers: Sequence[WorkerInfo],
    request: RouteRequest,
    mode: RoutingMode,
    *,
    affinity: str | None = None,
    exclude: Collection[str] = (),
) -> RouteDecision:
    """Choose a worker and a model for ``request``; never raises for "no worker"."""
    if not workers:
        return RouteDecision(None, None, False, None, "no TTS worker is registered or reachable")
    rejected: dict[str, int] = {}
    eligible: list[WorkerInfo] = []
    for worker in workers:
        why = _rejection(worker, request, mode, exclude)
        if why is None:
            eligible.append(worker)
        else:
            rejected[why] = rejected.get(why, 0) + 1

    wanted = request.model_id
    if not wanted:
        picked = _pick(eligible, lambda w: w.available_models, mode, affinity)
        if picked is not None:
            return _decision(picked, None, affinity, "any model")
        return _unavailable("any model", workers, eligible, rejected, ())

    picked = _pick(
        eligible, lambda w: (wanted,) if wanted in w.available_models else (), mode, affinity
    )
    if picked is not None:
        return _decision(picked, None, affinity, f"model {wanted}")
    for fallback in mode.fallbacks:
        picked = _pick(eligible, _models_matching(fallback), mode, affinity)
        if picked is not None:
            return _decision(picked, wanted, affinity, f"fallback {fallback!r}")
    return _unavailable(f"model {wanted}", workers, eligible, rejected, mode.fallbacks)


def _models_matching(pattern: str) -> Callable[[WorkerInfo], list[str]]:
    return lambda worker: [m for m in worker.available_models if model_matches(pattern, m)]


def _decision(
    picked: tuple[WorkerInfo, str, bool],
    fallback_from: str | None,
    affinity: str | None,
    what: str,
) -> RouteDecision:
    worker, model, resident = picked
    how = "kept (affinity)" if worker.name == affinity else "chosen"
    state = "resident" if resident else "to be loaded"
    reason = f"{what}: {worker.name} {how}, {model} {state}"
    if fallback_from is not None:
        reason = f"{fallback_from} available on no eligible worker; {reason}"
    return RouteDecision(worker, model, not resident, fallback_from, reason)


def _unavailable(
    what: str,
    workers: Sequence[WorkerInfo],
    eligible: Sequence[WorkerInfo],
    rejected: Mapping[str, int],
    fallbacks: Sequence[str],
) -> RouteDecision:
    parts = [f"{count} {why}" for why, count in sorted(rejected.items())]
    if eligible:
        parts.append(f"{len(eligible)} without it")
    reason = f"no worker can serve {what} ({len(workers)} registered: {', '.join(parts)})"
    if fallbacks:
        reason += f"; fallbacks tried: {', '.join(fallbacks)}"
    return RouteDecision(None, None, False, None, reason)
