"""Prometheus metrics for the orchestrator, in the text exposition format 0.0.4.

A deliberately tiny registry with no external dependency: counters, gauges and
histograms without labels, rendered in registration order so that ``/metrics`` is
stable from one scrape to the next. Not thread-safe: the orchestrator updates its
metrics from one event loop.

``OrchestratorMetrics`` creates the orchestrator's own metrics on a ``Registry``;
the HTTP layer serves ``registry.render()`` with ``CONTENT_TYPE``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

FIRST_AUDIO_MS_BUCKETS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000,
)  # fmt: skip
STOP_LATENCY_MS_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200)
VOICE_MS_BUCKETS: tuple[float, ...] = (
    50, 100, 200, 300, 400, 500, 650, 800, 1000, 1500, 2000, 3000, 5000)
BARGE_IN_MS_BUCKETS: tuple[float, ...] = (10, 20, 40, 60, 80, 100, 150, 200, 300, 500)


def validate_metric_name(name: str) -> str:
    """Return ``name`` if it is a valid Prometheus metric name, else raise ValueError."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid Prometheus metric name: {name!r}")
    return name


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: ``+Inf``, ``-Inf``, ``NaN``, integers
    without a fractional part, other floats by ``repr`` (shortest round trip)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Metric:
    type_name = ""

    def __init__(self, name: str, help: str) -> None:
        self.name = validate_metric_name(name)
        self.help = help

    def series_names(self) -> tuple[str, ...]:
        """Every sample name this metric writes (for collision checks)."""
        return (self.name,)

    def _samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = [
            f"# HELP {self.name} {_escape_help(self.help)}",
            f"# TYPE {self.name} {self.type_name}",
        ]
        return "\n".join(head + self._samples()) + "\n"


class Counter(_Metric):
    """A monotonically increasing count."""

    type_name = "counter"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self._value = 0.0

    @property
    def value(self) -> float:
        return self._value

    def inc(self, n: float = 1) -> None:
        if n < 0 or math.isnan(n):
            raise ValueError("a counter can only increase")
        self._value += n

    def _samples(self) -> list[str]:
        return [f"{self.name} {format_value(self._value)}"]


class Gauge(_Metric):
    """A value that goes up and down."""

    type_name = "gauge"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self._value = 0.0

    @property
    def value(self) -> float:
        return self._value

    def set(self, value: float) -> None:
        self._value = float(value)

    def inc(self, n: float = 1) -> None:
        self._value += n

    def dec(self, n: float = 1) -> None:
        self._value -= n

    def _samples(self) -> list[str]:
        return [f"{self.name} {format_value(self._value)}"]


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, plus ``_sum`` and ``_count``.

    ``buckets`` are finite upper bounds in strictly increasing order; ``+Inf`` is
    always added. An observation equal to a bound counts in that bound's bucket.
    """

    type_name = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help)
        bounds = [float(b) for b in buckets]
        if not bounds:
            raise ValueError("a histogram needs at least one bucket")
        if any(not math.isfinite(b) for b in bounds):
            raise ValueError("bucket bounds must be finite (+Inf is implicit)")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError("bucket bounds must be strictly increasing")
        self.buckets: tuple[float, ...] = tuple(bounds)
        # Non-cumulative counts; the last slot is the +Inf overflow.
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    def observe(self, value: float) -> None:
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self._counts[i] += 1
                break
        else:
            self._counts[-1] += 1
        self._sum += value
        self._count += 1

    def cumulative_counts(self) -> list[tuple[float, int]]:
        """``(upper bound, cumulative count)`` per bucket, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def series_names(self) -> tuple[str, ...]:
        return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")

    def _samples(self) -> list[str]:
        lines = [
            f'{self.name}_bucket{{le="{format_value(bound)}"}} {n}'
            for bound, n in self.cumulative_counts()
        ]
        lines.append(f"{self.name}_sum {format_value(self._sum)}")
        lines.append(f"{self.name}_count {self._count}")
        return lines


class Registry:
    """Owns metrics; names (and the sample names they write) are unique."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._taken: set[str] = set()

    def _add(self, metric: _Metric) -> None:
        names = {metric.name, *metric.series_names()}
        clash = names & self._taken
        if clash:
            raise ValueError(f"metric name already registered: {sorted(clash)[0]}")
        self._taken |= names
        self._metrics.append(metric)

    def counter(self, name: str, help: str) -> Counter:
        metric = Counter(name, help)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str) -> Gauge:
        metric = Gauge(name, help)
        self._add(metric)
        return metric

    def histogram(self, name: str, help: str, buckets: Sequence[float]) -> Histogram:
        metric = Histogram(name, help, buckets)
        self._add(metric)
        return metric

    def render(self) -> str:
        """The whole registry in text format 0.0.4, metrics in registration order."""
        return "".join(m.render() for m in self._metrics)


class OrchestratorMetrics:
    """The orchestrator's metrics, created on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.sessions_active = r.gauge(
            "duplexvoice_sessions_active", "Client sessions currently open."
        )
        self.sessions_total = r.counter(
            "duplexvoice_sessions_total", "Client sessions opened since start."
        )
        self.webrtc_peers_active = r.gauge(
            "duplexvoice_webrtc_peers_active",
            "WebRTC peer connections not yet closed (from the offer to their close).")
        self.utterances_total = r.counter(
            "duplexvoice_utterances_total",
            "Utterances ended, whatever the reason (not those of a client that left).")
        self.utterances_failed_total = r.counter(
            "duplexvoice_utterances_failed_total", "Utterances that ended in an error."
        )
        self.first_audio_ms = r.histogram(
            "duplexvoice_first_audio_ms",
            "Milliseconds from utterance start to its first audio frame sent.",
            FIRST_AUDIO_MS_BUCKETS,
        )
        self.stop_latency_ms = r.histogram(
            "duplexvoice_stop_latency_ms",
            "Milliseconds from a stop or barge-in to the last audio frame sent.",
            STOP_LATENCY_MS_BUCKETS,
        )
        self.worker_errors_total = r.counter(
            "duplexvoice_worker_errors_total", "Errors from TTS workers."
        )
        self.frames_sent_total = r.counter(
            "duplexvoice_frames_sent_total", "Audio frames sent to clients."
        )
        self.client_errors_total = r.counter(
            "duplexvoice_client_errors_total", "Error messages sent to clients."
        )
        self.rejected_connections_total = r.counter(
            "duplexvoice_rejected_connections_total",
            "Connections refused by authentication, origin or limits.",
        )

        # Conversation mode (server-side figures: from the moment the audio arrived).
        self.voice_to_voice_ms = r.histogram(
            "duplexvoice_voice_to_voice_ms",
            "Milliseconds from the end of the user's speech to the first reply frame sent.",
            VOICE_MS_BUCKETS,
        )
        self.text_to_voice_ms = r.histogram(
            "duplexvoice_text_to_voice_ms",
            "Milliseconds from a typed turn's text (user_text) to the first reply frame "
            "sent (a typed turn has no voice to voice).",
            VOICE_MS_BUCKETS,
        )
        self.asr_latency_ms = r.histogram(
            "duplexvoice_asr_latency_ms",
            "Milliseconds from the end of the user's speech to the final transcript.",
            VOICE_MS_BUCKETS,
        )
        self.barge_in_ms = r.histogram(
            "duplexvoice_barge_in_ms",
            "Milliseconds from the onset of speech over the system to the pause sent.",
            BARGE_IN_MS_BUCKETS,
        )
        self.turns_total = r.counter(
            "duplexvoice_turns_total", "User turns ended (conversation mode).")
        self.interruptions_total = r.counter(
            "duplexvoice_interruptions_total", "Real barge-ins: system speech interrupted.")
        self.false_interruptions_total = r.counter(
            "duplexvoice_false_interruptions_total",
            "Holds that resumed: the speech over the system was a noise.")

    def render(self) -> str:
        return self.registry.render()
