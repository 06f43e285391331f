"""The worker router: records in, decisions out; no Redis, no event loop.

Records are produced by the worker's own ``build_record`` and a JSON round trip, so
these tests also pin the reader to the writer's format (WIRE §3).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from duplexvoice.orchestrator.workers.router import (
    RouteDecision,
    RouteRequest,
    RoutingMode,
    WorkerInfo,
    default_routing_modes,
    languages_match,
    model_matches,
    route,
    with_local_load,
)
from duplexvoice.worker.registry import CAPABILITY_FIELDS, CONTRACT_FIELDS, build_record

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
TTL = 30.0
PIPER = "piper-en-us-joe-medium"
PIPER_AMY = "piper-en-us-amy-low"
ESPEAK = "espeak-en-us-default"
MOCK = "mock-en-us-tone"
COSY = "cosy-en-us-base"
PLAIN = RoutingMode()  # no tags, no requirements, no fallbacks: isolates one rule


def rec(
    name: str = "w",
    *,
    resident: tuple[str, ...] = (PIPER,),
    available: tuple[str, ...] | None = None,
    languages: tuple[str, ...] = ("en", "en-US"),
    qd: int = 0,
    max_sessions: int = 4,
    rtf: float = 0.3,
    fal: float | None = None,
    tags: tuple[str, ...] | None = None,
    sr: int | None = None,
    ts: float = NOW,
    **caps: object,
) -> dict[str, Any]:
    """A record as a worker writes it and a reader gets it back from Redis."""
    capabilities: dict[str, object] = {
        "streaming": True, "zero_shot": False, "lora": False, "cpu_ok": True,
        "languages": list(languages), "emotive_zero_prompt": False,
        "max_concurrent_sessions": max_sessions,
    }
    capabilities.update(caps)
    metrics = {"rtf": rtf, "queue_depth": float(qd)}
    if fal is not None:
        metrics["first_audio_ms"] = fal
    extra: dict[str, object] = {"version": "9.9", "hardware": {"device": "cpu"}}
    if available is not None:
        extra["available_models"] = list(available)
    if tags is not None:
        extra["tags"] = list(tags)
    if sr is not None:
        extra["audio"] = {"sr": sr, "frame_ms": 20}
    record = build_record(
        name=name, addr=f"grpc://{name}:50051", capabilities=capabilities,
        resident_models=list(resident), metrics=metrics, now=ts, extra=extra,
    )
    parsed: dict[str, Any] = json.loads(json.dumps(record, allow_nan=False))
    return parsed


def w(name: str = "w", **kwargs: Any) -> WorkerInfo:
    info = WorkerInfo.from_record(rec(name, **kwargs), NOW, TTL)
    assert info is not None
    return info


def chosen(decision: RouteDecision) -> str | None:
    return None if decision.worker is None else decision.worker.name


# --- parsing records ------------------------------------------------------------


def test_from_record_reads_every_field() -> None:
    info = w("tts-0", resident=(PIPER,), available=(ESPEAK,), qd=2, max_sessions=8,
             rtf=0.25, fal=180.5, tags=("expressive",), sr=24000, lora=True)
    assert info.name == "tts-0" and info.addr == "grpc://tts-0:50051"
    assert info.languages == ("en", "en-US")
    assert (info.streaming, info.zero_shot, info.lora, info.cpu_ok) == (True, False, True, True)
    assert info.emotive_zero_prompt is False and info.max_concurrent_sessions == 8
    assert info.resident_models == {PIPER}
    assert info.available_models == {PIPER, ESPEAK}  # resident is always available
    assert (info.rtf, info.queue_depth, info.first_audio_ms) == (0.25, 2.0, 180.5)
    assert info.tags == {"expressive"} and info.sample_rate == 24000
    assert info.last_heartbeat_ts == NOW


def test_from_record_defaults_for_absent_extensions() -> None:
    info = w(resident=(PIPER, ESPEAK))
    assert info.available_models == {PIPER, ESPEAK}
    assert info.tags == frozenset() and info.sample_rate is None and info.first_audio_ms is None


def test_unknown_fields_are_ignored() -> None:
    record = rec()
    record["future_field"] = {"x": [1, 2]}
    record["capabilities"]["teleport"] = True
    record["metrics"]["gpu_temp"] = 71.0
    assert WorkerInfo.from_record(record, NOW, TTL) == w()


@pytest.mark.parametrize(
    ("age_s", "live"), [(0.0, True), (TTL, True), (TTL + 0.001, False), (-5.0, True)]
)
def test_staleness(age_s: float, live: bool) -> None:
    assert (WorkerInfo.from_record(rec(ts=NOW - age_s), NOW, TTL) is not None) is live


@pytest.mark.parametrize("field", CONTRACT_FIELDS)
def test_missing_contract_field_is_rejected(field: str) -> None:
    record = rec()
    del record[field]
    assert WorkerInfo.from_record(record, NOW, TTL) is None


@pytest.mark.parametrize("field", CAPABILITY_FIELDS)
def test_missing_capability_is_rejected(field: str) -> None:
    record = rec()
    del record["capabilities"][field]
    assert WorkerInfo.from_record(record, NOW, TTL) is None


@pytest.mark.parametrize("metric", ["rtf", "queue_depth"])
def test_missing_required_metric_is_rejected(metric: str) -> None:
    record = rec()
    del record["metrics"][metric]
    assert WorkerInfo.from_record(record, NOW, TTL) is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("name",), ""),
        (("name",), 7),
        (("addr",), "http://w:1"),
        (("addr",), None),
        (("capabilities",), ["streaming"]),
        (("capabilities", "lora"), "true"),
        (("capabilities", "cpu_ok"), 1),
        (("capabilities", "languages"), "en"),
        (("capabilities", "languages"), ["en", 3]),
        (("capabilities", "max_concurrent_sessions"), 2.5),
        (("capabilities", "max_concurrent_sessions"), True),
        (("resident_models",), PIPER),
        (("resident_models",), [PIPER, ""]),
        (("metrics",), None),
        (("metrics", "queue_depth"), None),
        (("metrics", "queue_depth"), -1),
        (("metrics", "queue_depth"), "0"),
        (("last_heartbeat_ts",), "now"),
        (("last_heartbeat_ts",), None),
    ],
)
def test_malformed_record_is_rejected(path: tuple[str, ...], value: object) -> None:
    record = rec()
    node = record
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert WorkerInfo.from_record(record, NOW, TTL) is None


@pytest.mark.parametrize("record", [{}, {"name": "w", "addr": "grpc://w:1"}])
def test_bare_records_are_rejected(record: dict[str, object]) -> None:
    assert WorkerInfo.from_record(record, NOW, TTL) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("available_models", "piper"), ("tags", 5), ("audio", "24k"), ("audio", {"sr": -1})],
)
def test_malformed_extension_is_treated_as_absent(field: str, value: object) -> None:
    record = rec()
    record[field] = value
    info = WorkerInfo.from_record(record, NOW, TTL)
    assert info is not None
    assert info.available_models == {PIPER} and info.tags == frozenset()
    assert info.sample_rate is None


@pytest.mark.parametrize("rtf", [float("nan"), 0.0])
def test_unmeasured_rtf_is_none(rtf: float) -> None:
    # build_record writes NaN as null; a fresh worker reports 0.0: neither is a measurement.
    assert w(rtf=rtf).rtf is None
    assert w(fal=0.0).first_audio_ms is None


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        WorkerInfo.from_record(rec(), NOW, 0)


# --- helpers and modes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "offered", "match"),
    [
        ("en", "en", True), ("en", "en-US", True), ("en-US", "en", True),
        ("en-us", "en-US", True), ("en_US", "en-US", True), ("en-US", "en-GB", False),
        ("en", "eng", False), ("de", "en-US", False), ("zh-Hant-TW", "zh-Hant", True),
        ("", "en", False), ("en", "", False),
    ],
)
def test_languages_match(wanted: str, offered: str, match: bool) -> None:
    assert languages_match(wanted, offered) is match


@pytest.mark.parametrize(
    ("pattern", "model", "match"),
    [
        ("piper", PIPER, True), (PIPER, PIPER, True), ("piper-en", PIPER, True),
        ("pip", PIPER, False), ("piper-en-us-joe", "piper-en-us-joey-low", False),
        ("espeak", PIPER, False),
    ],
)
def test_model_matches(pattern: str, model: str, match: bool) -> None:
    assert model_matches(pattern, model) is match


def test_default_modes() -> None:
    modes = default_routing_modes()
    assert set(modes) == {"default", "edge", "lora"}
    assert modes["default"].prefer_resident and modes["default"].require == ()
    assert modes["edge"].require == ("cpu_ok",)
    assert modes["edge"].fallbacks == ("piper", "espeak")
    assert modes["lora"].require == ("lora",)
    assert not any("mock" in m.fallbacks for m in modes.values())


@pytest.mark.parametrize(
    "raw",
    [{"require": ["gpu"]}, {"fallbacks": [""]}, {"prefer_tags": ["  "]}, {"surprise": 1},
     {"prefer_resident": "maybe"}],
)
def test_routing_mode_validation(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RoutingMode.model_validate(raw)


def test_routing_mode_from_yaml_lists_and_frozen() -> None:
    mode = RoutingMode.model_validate({"require": ["cpu_ok", "lora"], "fallbacks": ["piper"]})
    assert mode.require == ("cpu_ok", "lora") and mode.fallbacks == ("piper",)
    with pytest.raises(ValidationError):
        mode.prefer_resident = False  # type: ignore[misc]


# --- filters ------------------------------------------------------------------------

# Each row: the "bad" worker differs from "good" in one way and would otherwise win
# (name "a" < "b", lower queue depth). Alone, "bad" must be rejected.
FILTER_CASES = [
    ("model", {"resident": (ESPEAK,)}, RouteRequest(PIPER), PLAIN, (), "1 without it"),
    ("language", {"languages": ("de",)}, RouteRequest(PIPER, "en-GB"), PLAIN, (), "no language"),
    ("capacity", {"qd": 4, "max_sessions": 4}, RouteRequest(PIPER), PLAIN, (), "full"),
    ("excluded", {}, RouteRequest(PIPER), PLAIN, ("a",), "excluded"),
    ("cpu_ok", {"cpu_ok": False}, RouteRequest(PIPER), default_routing_modes()["edge"], (),
     "lacks cpu_ok"),
    ("lora", {"lora": False}, RouteRequest(PIPER), default_routing_modes()["lora"], (),
     "lacks lora"),
    ("sample rate", {"sr": 16000}, RouteRequest(PIPER, sample_rate=24000), PLAIN, (),
     "sample rate"),
]


@pytest.mark.parametrize(
    ("bad", "request_", "mode", "exclude", "reason"),
    [case[1:] for case in FILTER_CASES], ids=[case[0] for case in FILTER_CASES],
)
def test_each_filter(
    bad: dict[str, Any], request_: RouteRequest, mode: RoutingMode,
    exclude: tuple[str, ...], reason: str,
) -> None:
    good = w("b", qd=2, lora=True, sr=24000)
    worse = w("a", **{"qd": 0, "lora": True, **bad})
    assert chosen(route([worse, good], request_, mode, exclude=exclude)) == "b"
    alone = route([worse], request_, mode, exclude=exclude)
    assert alone.worker is None and alone.model_id is None and not alone.load_model
    assert reason in alone.reason and "1 registered" in alone.reason
    # Control: without the difference, "a" wins; the row really tests its filter.
    control = route([w("a", qd=0, lora=True, sr=24000), good], request_, mode)
    assert chosen(control) == "a"


def test_worker_without_sample_rate_is_accepted() -> None:
    assert chosen(route([w("a")], RouteRequest(PIPER, sample_rate=48000), PLAIN)) == "a"


def test_capacity_is_strictly_below_max() -> None:
    assert chosen(route([w("a", qd=3, max_sessions=4)], RouteRequest(PIPER), PLAIN)) == "a"
    assert route([w("a", qd=0, max_sessions=0)], RouteRequest(PIPER), PLAIN).worker is None


def test_empty_worker_list() -> None:
    decision = route([], RouteRequest(PIPER), default_routing_modes()["default"])
    assert decision == RouteDecision(None, None, False, None,
                                     "no TTS worker is registered or reachable")


def test_language_on_any_of_the_workers_languages() -> None:
    multi = w("a", languages=("de-DE", "fr"))
    assert chosen(route([multi], RouteRequest(PIPER, "fr-CA"), PLAIN)) == "a"
    assert chosen(route([multi], RouteRequest(PIPER, "de"), PLAIN)) == "a"
    assert chosen(route([multi], RouteRequest(PIPER, ""), PLAIN)) == "a"
    assert route([multi], RouteRequest(PIPER, "en"), PLAIN).worker is None


# --- preferences --------------------------------------------------------------------

TAGGED = RoutingMode(prefer_tags=("expressive", "low-jitter"))

# Each row: "x" beats "y" by one preference level although "y" is better on every
# level below it; the name tie-break favours "y" (a < x would favour "a", so "y" is "a").
PRECEDENCE = [
    ("resident over queue depth", {"qd": 3, "resident": (PIPER,)},
     {"qd": 0, "resident": (), "available": (PIPER,)}, PLAIN),
    ("queue depth over tags", {"qd": 0}, {"qd": 1, "tags": ("expressive",)}, TAGGED),
    ("more tags over rtf", {"tags": ("expressive", "low-jitter"), "rtf": 0.9},
     {"tags": ("expressive",), "rtf": 0.1}, TAGGED),
    ("rtf over first audio", {"rtf": 0.2, "fal": 900.0}, {"rtf": 0.3, "fal": 100.0}, PLAIN),
    ("measured rtf over unmeasured", {"rtf": 0.9, "fal": 900.0}, {"rtf": 0.0, "fal": 1.0},
     PLAIN),
    ("first audio over name", {"fal": 100.0}, {"fal": 200.0}, PLAIN),
    ("measured first audio over unmeasured", {"fal": 500.0}, {}, PLAIN),
    ("unknown tags do not count", {"tags": ("low-jitter",)}, {"tags": ("shiny", "new")},
     TAGGED),
]


@pytest.mark.parametrize(
    ("x", "y", "mode"), [case[1:] for case in PRECEDENCE], ids=[c[0] for c in PRECEDENCE]
)
def test_preference_precedence(x: dict[str, Any], y: dict[str, Any], mode: RoutingMode) -> None:
    winner, loser = w("x", **x), w("a", **y)
    for order in ([winner, loser], [loser, winner]):
        assert chosen(route(order, RouteRequest(PIPER), mode)) == "x"


def test_ties_break_by_name_whatever_the_order() -> None:
    workers = [w(name) for name in ("tts-2", "tts-0", "tts-1")]
    for seed in range(6):
        random.Random(seed).shuffle(workers)
        decision = route(workers, RouteRequest(PIPER), PLAIN)
        assert chosen(decision) == "tts-0" and decision.model_id == PIPER
        assert not decision.load_model and decision.fallback_from is None


def test_prefer_resident_off_picks_least_loaded_and_loads() -> None:
    mode = RoutingMode(prefer_resident=False)
    loaded = w("a", qd=3, resident=(PIPER,))
    idle = w("b", qd=0, resident=(), available=(PIPER,))
    decision = route([loaded, idle], RouteRequest(PIPER), mode)
    assert chosen(decision) == "b" and decision.load_model
    assert chosen(route([loaded, idle], RouteRequest(PIPER), PLAIN)) == "a"


# --- affinity -----------------------------------------------------------------------


def test_affinity_kept_while_eligible() -> None:
    current = w("z", qd=3, rtf=0.9)
    better = w("a", qd=0, rtf=0.1)
    decision = route([better, current], RouteRequest(PIPER), PLAIN, affinity="z")
    assert chosen(decision) == "z" and "affinity" in decision.reason
    assert chosen(route([better, current], RouteRequest(PIPER), PLAIN)) == "a"


def test_affinity_kept_even_if_it_must_load_the_model() -> None:
    current = w("z", resident=(ESPEAK,), available=(PIPER,))
    decision = route([w("a"), current], RouteRequest(PIPER), PLAIN, affinity="z")
    assert chosen(decision) == "z" and decision.load_model and decision.model_id == PIPER


@pytest.mark.parametrize(
    ("workers", "exclude", "request_"),
    [
        ([w("a")], (), RouteRequest(PIPER)),  # gone from the registry
        ([w("a"), w("z", qd=4)], (), RouteRequest(PIPER)),  # full
        ([w("a"), w("z")], ("z",), RouteRequest(PIPER)),  # just failed
        ([w("a"), w("z", resident=(ESPEAK,))], (), RouteRequest(PIPER)),  # lacks model
        ([w("a", languages=("de",)), w("z")], (), RouteRequest(PIPER, "de")),  # language
    ],
    ids=["gone", "full", "excluded", "no model", "no language"],
)
def test_affinity_dropped_when_not_eligible(
    workers: list[WorkerInfo], exclude: tuple[str, ...], request_: RouteRequest
) -> None:
    decision = route(workers, request_, PLAIN, affinity="z", exclude=exclude)
    assert chosen(decision) == "a" and "affinity" not in decision.reason


# --- load on demand -----------------------------------------------------------------


def test_load_on_least_loaded_capable_worker() -> None:
    workers = [
        w("a", resident=(ESPEAK,), available=(COSY,), qd=2),
        w("b", resident=(ESPEAK,), available=(COSY,), qd=1),
        w("c", resident=(ESPEAK,), available=(COSY,), qd=0, cpu_ok=False),  # not capable
        w("d", resident=(ESPEAK,), qd=0),  # cannot load it
        w("e", resident=(COSY,), qd=0, languages=("ja",)),  # resident but wrong language
    ]
    decision = route(workers, RouteRequest(COSY, "en"), default_routing_modes()["edge"])
    assert chosen(decision) == "b" and decision.model_id == COSY
    assert decision.load_model and decision.fallback_from is None
    assert "to be loaded" in decision.reason


# --- fallbacks ----------------------------------------------------------------------


def test_fallbacks_in_order_with_prefix_match() -> None:
    mode = RoutingMode(fallbacks=("xtts", "piper", "espeak"))
    workers = [w("a", resident=(ESPEAK,)), w("b", resident=(), available=(PIPER_AMY,), qd=3)]
    decision = route(workers, RouteRequest(COSY), mode)
    # piper comes before espeak in the list, even though espeak is resident and idle.
    assert chosen(decision) == "b" and decision.model_id == PIPER_AMY
    assert decision.load_model and decision.fallback_from == COSY
    assert COSY in decision.reason and "fallback 'piper'" in decision.reason


def test_fallback_by_exact_id_and_prefix_boundary() -> None:
    workers = [w("a", resident=(PIPER,)), w("b", resident=(ESPEAK,))]
    exact = route(workers, RouteRequest(COSY), RoutingMode(fallbacks=("pip", ESPEAK)))
    assert chosen(exact) == "b" and exact.model_id == ESPEAK


def test_fallback_prefers_resident_model_then_id_on_a_worker() -> None:
    mode = RoutingMode(fallbacks=("piper",))
    one = [w("a", resident=(PIPER_AMY,), available=(PIPER,))]
    # Sorted by id PIPER_AMY < PIPER anyway; make the resident one sort last.
    two = [w("a", resident=(PIPER,), available=(PIPER_AMY,))]
    assert route(one, RouteRequest(COSY), mode).model_id == PIPER_AMY
    picked = route(two, RouteRequest(COSY), mode)
    assert picked.model_id == PIPER and not picked.load_model
    none_resident = [w("a", resident=(), available=(PIPER, PIPER_AMY))]
    assert route(none_resident, RouteRequest(COSY), mode).model_id == PIPER_AMY


def test_fallback_when_model_only_on_ineligible_workers() -> None:
    mode = RoutingMode(fallbacks=("espeak",))
    workers = [w("a", resident=(COSY,), qd=4), w("b", resident=(ESPEAK,))]
    decision = route(workers, RouteRequest(COSY), mode)
    assert chosen(decision) == "b" and decision.fallback_from == COSY
    assert chosen(route(workers, RouteRequest(COSY), mode, exclude=["b"])) is None


def test_nothing_serves_reports_reason() -> None:
    mode = RoutingMode(fallbacks=("piper", "espeak"))
    workers = [w("a", resident=(MOCK,)), w("b", qd=4), w("c", languages=("de",))]
    decision = route(workers, RouteRequest(COSY, "en"), mode, exclude={"d"})
    assert decision.worker is None and decision.fallback_from is None
    assert decision.reason == (
        f"no worker can serve model {COSY} (3 registered: 1 full, 1 no language en, "
        "1 without it); fallbacks tried: piper, espeak"
    )


def test_requested_model_beats_fallbacks() -> None:
    mode = RoutingMode(fallbacks=("piper",))
    workers = [w("a", resident=(PIPER,)), w("b", resident=(), available=(COSY,), qd=3)]
    decision = route(workers, RouteRequest(COSY), mode)
    assert chosen(decision) == "b" and decision.load_model and decision.fallback_from is None


# --- any model ----------------------------------------------------------------------


def test_any_model_prefers_resident() -> None:
    workers = [w("a", resident=(), available=(PIPER,)), w("b", resident=(ESPEAK,), qd=2),
               w("c", resident=())]
    decision = route(workers, RouteRequest(""), PLAIN)
    assert chosen(decision) == "b" and decision.model_id == ESPEAK and not decision.load_model


def test_any_model_loads_when_nothing_resident() -> None:
    workers = [w("a", resident=(), available=(PIPER, ESPEAK))]
    decision = route(workers, RouteRequest(), PLAIN)
    assert decision.model_id == ESPEAK and decision.load_model


def test_any_model_with_no_models_anywhere() -> None:
    decision = route([w("a", resident=())], RouteRequest(), PLAIN)
    assert decision.worker is None and "any model" in decision.reason


# --- property -----------------------------------------------------------------------

MODELS = (PIPER, PIPER_AMY, ESPEAK, MOCK, COSY)
LANGS = ("en", "en-US", "en-GB", "de", "fr-FR")


def random_worker(rng: random.Random, name: str) -> WorkerInfo:
    available = tuple(m for m in MODELS if rng.random() < 0.5)
    return w(
        name,
        resident=tuple(m for m in available if rng.random() < 0.5),
        available=available,
        languages=tuple(rng.sample(LANGS, rng.randint(0, 3))),
        qd=rng.randint(0, 3),
        max_sessions=rng.randint(1, 4),
        rtf=rng.choice([0.0, 0.1, 0.3, 0.3]),
        fal=rng.choice([0.0, 150.0, 150.0, 300.0]),
        tags=tuple(t for t in ("expressive", "low-jitter") if rng.random() < 0.3),
        sr=rng.choice([None, None, 16000, 24000]),
        cpu_ok=rng.random() < 0.8,
        lora=rng.random() < 0.5,
    )


def eligible(
    worker: WorkerInfo, req: RouteRequest, mode: RoutingMode, exclude: set[str]
) -> bool:
    """The filters restated independently of the router's code."""
    return (
        worker.name not in exclude
        and worker.queue_depth < worker.max_concurrent_sessions
        and all(getattr(worker, cap) for cap in mode.require)
        and (not req.language or any(languages_match(req.language, lang)
                                     for lang in worker.languages))
        and (req.sample_rate is None or worker.sample_rate in (None, req.sample_rate))
    )


@pytest.mark.parametrize("seed", range(400))
def test_route_properties(seed: int) -> None:
    rng = random.Random(seed)
    workers = [random_worker(rng, f"tts-{i}") for i in range(rng.randint(0, 9))]
    req = RouteRequest(
        rng.choice(("", *MODELS, "xtts-en-us-v2")),
        rng.choice(("", "", "en", *LANGS)),
        rng.choice([None, 24000]),
    )
    mode = rng.choice([*default_routing_modes().values(), TAGGED,
                       RoutingMode(fallbacks=("mock", "cosy"))])
    exclude = {wk.name for wk in workers if rng.random() < 0.15}
    decision = route(workers, req, mode, exclude=exclude)

    ok = [wk for wk in workers if eligible(wk, req, mode, exclude)]
    wanted = [req.model_id] if req.model_id else list(MODELS)
    serving = [wk for wk in ok if any(m in wk.available_models for m in wanted)]
    if serving:
        worker = decision.worker
        assert worker is not None and worker in serving
        assert decision.model_id in worker.available_models and decision.fallback_from is None
        assert decision.load_model == (decision.model_id not in worker.resident_models)
        resident = [wk for wk in serving if wk.resident_models & set(wanted)]
        if resident:
            assert not decision.load_model
            assert min(wk.queue_depth for wk in resident) == worker.queue_depth
    elif decision.worker is not None:
        assert req.model_id and decision.fallback_from == req.model_id
        assert decision.worker in ok and decision.model_id is not None
        assert any(model_matches(f, decision.model_id) for f in mode.fallbacks)
    else:  # nothing serves the model; no fallback may be servable either
        assert decision.model_id is None and decision.reason
        assert not any(
            model_matches(f, m) for f in mode.fallbacks for wk in ok for m in wk.available_models
        )
    # Deterministic whatever order the registry listed the workers in.
    rng.shuffle(workers)
    assert route(workers, req, mode, exclude=exclude) == decision


def test_sessions_opened_here_count_before_the_next_report() -> None:
    # Both workers reported idle; this orchestrator has since opened 3 sessions on a:
    # new sessions go to b until b has as many, and a full worker takes none.
    workers = [w("a", qd=0, max_sessions=4), w("b", qd=0, max_sessions=4)]
    assert chosen(route(with_local_load(workers, {"a": 3}), RouteRequest(), PLAIN)) == "b"
    assert chosen(route(with_local_load(workers, {"a": 3, "b": 3}), RouteRequest(),
                        PLAIN)) == "a"  # a tie: the name decides
    assert chosen(route(with_local_load(workers, {"a": 4, "b": 4}), RouteRequest(),
                        PLAIN)) is None
    # A report above the local count stands (other orchestrators' sessions).
    busy = [w("a", qd=3), w("b", qd=0)]
    assert [x.queue_depth for x in with_local_load(busy, {"a": 1, "b": 2})] == [3, 2]


# --- LoRA voices: a worker with the base resident -------------------------------

CSM = "csm-en-tiny"
LORA = "csm-en-tiny-warm"


def lora_worker(name: str, resident: tuple[str, ...], qd: int = 0,
                bases: object = None) -> WorkerInfo:
    record = rec(name, resident=resident, available=(CSM, LORA), qd=qd, lora=True)
    record["model_bases"] = {LORA: CSM} if bases is None else bases
    info = WorkerInfo.from_record(record, NOW, TTL)
    assert info is not None
    return info


def test_lora_mode_prefers_the_worker_with_the_base_resident() -> None:
    cold = lora_worker("cold", resident=(PIPER,))
    warm = lora_worker("warm", resident=(CSM,), qd=2)  # busier, but its base is resident
    lora = default_routing_modes()["lora"]
    decision = route([cold, warm], RouteRequest(model_id=LORA), lora)
    assert chosen(decision) == "warm" and decision.load_model
    assert warm.residency(LORA) == 1 and cold.residency(LORA) == 2 and warm.residency(CSM) == 0
    # The adapter itself resident still beats a resident base.
    hot = lora_worker("hot", resident=(CSM, LORA), qd=3)
    decision = route([cold, warm, hot], RouteRequest(model_id=LORA), lora)
    assert chosen(decision) == "hot" and not decision.load_model


def test_lora_mode_requires_the_lora_capability() -> None:
    plain = w("plain", resident=(CSM,), available=(CSM, LORA))
    decision = route([plain], RouteRequest(model_id=LORA), default_routing_modes()["lora"])
    assert decision.worker is None


@pytest.mark.parametrize("bases", [["x"], {LORA: 3}, {"": CSM}, "csm"])
def test_malformed_model_bases_read_as_absent(bases: object) -> None:
    worker = lora_worker("w", resident=(CSM,), bases=bases)
    assert dict(worker.model_bases) == {} and worker.residency(LORA) == 2
