"""The Prometheus text-format registry and the orchestrator's metric set."""

from __future__ import annotations

import math
import re

import pytest

from duplexvoice.orchestrator.metrics import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    Histogram,
    OrchestratorMetrics,
    Registry,
    format_value,
    validate_metric_name,
)

pytestmark = pytest.mark.unit


def test_render_small_registry_exactly() -> None:
    reg = Registry()
    c = reg.counter("app_requests_total", "Requests served.")
    g = reg.gauge("app_open", "Open things.\nSecond line with a \\ backslash.")
    h = reg.histogram("app_latency_ms", "Latency.", [1, 2.5, 10])
    c.inc()
    c.inc(2)
    g.set(7)
    g.dec(2.5)
    for v in (0.5, 1, 2, 3, 50):
        h.observe(v)

    assert reg.render() == (
        "# HELP app_requests_total Requests served.\n"
        "# TYPE app_requests_total counter\n"
        "app_requests_total 3\n"
        "# HELP app_open Open things.\\nSecond line with a \\\\ backslash.\n"
        "# TYPE app_open gauge\n"
        "app_open 4.5\n"
        "# HELP app_latency_ms Latency.\n"
        "# TYPE app_latency_ms histogram\n"
        'app_latency_ms_bucket{le="1"} 2\n'
        'app_latency_ms_bucket{le="2.5"} 3\n'
        'app_latency_ms_bucket{le="10"} 4\n'
        'app_latency_ms_bucket{le="+Inf"} 5\n'
        "app_latency_ms_sum 56.5\n"
        "app_latency_ms_count 5\n"
    )


def test_empty_registry_renders_nothing() -> None:
    assert Registry().render() == ""


def test_histogram_buckets_are_cumulative_and_end_at_count() -> None:
    h = Histogram("h", "h", [10, 20, 30])
    values = [5, 10, 10.0001, 15, 25, 25, 31, 1000]
    for v in values:
        h.observe(v)
    cum = h.cumulative_counts()
    assert [b for b, _ in cum] == [10, 20, 30, math.inf]
    assert [n for _, n in cum] == [2, 4, 6, 8]
    counts = [n for _, n in cum]
    assert counts == sorted(counts)
    assert cum[-1][1] == h.count == len(values)
    assert h.sum == pytest.approx(sum(values))
    # Every bucket equals the number of observations <= its bound.
    for bound, n in cum:
        assert n == sum(1 for v in values if v <= bound)


def test_empty_histogram_renders_zero_buckets() -> None:
    reg = Registry()
    reg.histogram("h_ms", "x", [1])
    assert reg.render().splitlines()[2:] == [
        'h_ms_bucket{le="1"} 0',
        'h_ms_bucket{le="+Inf"} 0',
        "h_ms_sum 0",
        "h_ms_count 0",
    ]


@pytest.mark.parametrize("buckets", [[], [2, 1], [1, 1], [1, math.inf], [math.nan]])
def test_histogram_rejects_bad_buckets(buckets: list[float]) -> None:
    with pytest.raises(ValueError):
        Histogram("h", "h", buckets)


def test_histogram_rejects_nan_observation() -> None:
    h = Histogram("h", "h", [1])
    with pytest.raises(ValueError):
        h.observe(math.nan)
    assert h.count == 0


@pytest.mark.parametrize("name", ["a", "_x", "ns:sub_name_total", "A9_:z"])
def test_valid_names(name: str) -> None:
    assert validate_metric_name(name) == name


@pytest.mark.parametrize("name", ["", "9abc", "a-b", "a b", "a.b", "é", "x\n"])
def test_invalid_names_rejected_everywhere(name: str) -> None:
    with pytest.raises(ValueError):
        validate_metric_name(name)
    reg = Registry()
    with pytest.raises(ValueError):
        reg.counter(name, "h")
    with pytest.raises(ValueError):
        reg.gauge(name, "h")
    with pytest.raises(ValueError):
        reg.histogram(name, "h", [1])


def test_names_are_unique_including_histogram_series() -> None:
    reg = Registry()
    reg.counter("x", "h")
    with pytest.raises(ValueError):
        reg.gauge("x", "h")
    reg.histogram("lat", "h", [1])
    with pytest.raises(ValueError):
        reg.counter("lat_count", "h")
    with pytest.raises(ValueError):
        reg.counter("lat_bucket", "h")
    reg.counter("sz_sum", "h")
    with pytest.raises(ValueError):
        reg.histogram("sz", "h", [1])
    # A failed registration leaves nothing behind.
    assert "sz_bucket" not in reg.render()


def test_counter_cannot_decrease() -> None:
    c = Counter("c", "h")
    with pytest.raises(ValueError):
        c.inc(-1)
    c.inc(0.5)
    assert c.value == 0.5


def test_gauge_set_inc_dec() -> None:
    g = Gauge("g", "h")
    g.inc()
    g.inc(4)
    g.dec()
    assert g.value == 4
    g.set(-1.25)
    assert g.value == -1.25


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (3.0, "3"), (-2, "-2"), (0.1, "0.1"), (math.inf, "+Inf"),
     (-math.inf, "-Inf"), (math.nan, "NaN")],
)  # fmt: skip
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


ORCHESTRATOR_METRICS = {
    "duplexvoice_sessions_active": "gauge",
    "duplexvoice_sessions_total": "counter",
    "duplexvoice_webrtc_peers_active": "gauge",
    "duplexvoice_utterances_total": "counter",
    "duplexvoice_utterances_failed_total": "counter",
    "duplexvoice_first_audio_ms": "histogram",
    "duplexvoice_stop_latency_ms": "histogram",
    "duplexvoice_worker_errors_total": "counter",
    "duplexvoice_frames_sent_total": "counter",
    "duplexvoice_client_errors_total": "counter",
    "duplexvoice_rejected_connections_total": "counter",
    "duplexvoice_voice_to_voice_ms": "histogram",
    "duplexvoice_text_to_voice_ms": "histogram",
    "duplexvoice_asr_latency_ms": "histogram",
    "duplexvoice_barge_in_ms": "histogram",
    "duplexvoice_turns_total": "counter",
    "duplexvoice_interruptions_total": "counter",
    "duplexvoice_false_interruptions_total": "counter",
}


def test_orchestrator_metrics_are_all_exposed_with_their_types() -> None:
    m = OrchestratorMetrics()
    text = m.render()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    assert types == ORCHESTRATOR_METRICS
    helps = re.findall(r"^# HELP (\S+) \S", text, flags=re.M)
    assert set(helps) == set(ORCHESTRATOR_METRICS)
    assert 'duplexvoice_first_audio_ms_bucket{le="5000"} 0' in text
    assert 'duplexvoice_stop_latency_ms_bucket{le="200"} 0' in text
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_orchestrator_metrics_update_and_share_registry() -> None:
    reg = Registry()
    m = OrchestratorMetrics(reg)
    m.sessions_active.inc()
    m.sessions_total.inc()
    m.first_audio_ms.observe(120)
    m.stop_latency_ms.observe(3)
    m.frames_sent_total.inc(50)
    text = reg.render()
    assert "duplexvoice_sessions_active 1\n" in text
    assert "duplexvoice_frames_sent_total 50\n" in text
    assert 'duplexvoice_first_audio_ms_bucket{le="100"} 0\n' in text
    assert 'duplexvoice_first_audio_ms_bucket{le="150"} 1\n' in text
    assert 'duplexvoice_stop_latency_ms_bucket{le="2"} 0\n' in text
    assert 'duplexvoice_stop_latency_ms_bucket{le="5"} 1\n' in text
    # A second set on the same registry collides.
    with pytest.raises(ValueError):
        OrchestratorMetrics(reg)
