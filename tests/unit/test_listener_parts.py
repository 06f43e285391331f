"""The listener's small pure parts: the audio ring and the audio-time budget."""

from __future__ import annotations

import numpy as np
import pytest

from duplexvoice.orchestrator.sessions.listener import AudioBudget, AudioRing

pytestmark = pytest.mark.unit


def test_the_ring_returns_audio_by_absolute_index_across_wraps() -> None:
    ring = AudioRing(10)
    data = np.arange(37, dtype=np.float32)
    for chunk in np.array_split(data, 9):
        ring.push(chunk)
    assert ring.end == 37
    assert np.array_equal(ring.since(30), data[30:])
    assert np.array_equal(ring.since(27), data[27:])
    assert np.array_equal(ring.since(0), data[27:])  # older audio is gone: what is kept
    assert ring.since(37).size == 0


def test_the_ring_takes_a_push_larger_than_itself() -> None:
    ring = AudioRing(8)
    ring.push(np.arange(5, dtype=np.float32))
    ring.push(np.arange(100, 120, dtype=np.float32))
    assert ring.end == 25
    assert np.array_equal(ring.since(17), np.arange(112, 120, dtype=np.float32))


def test_the_budget_allows_real_time_and_a_burst_but_not_a_flood() -> None:
    budget = AudioBudget(rate=2.0, burst_s=5.0, now=0.0)
    assert budget.take(5.0, 0.0)  # the burst
    assert not budget.take(0.02, 0.0)
    # Real time afterwards is fine forever: 20 ms every 20 ms.
    t = 0.0
    for _ in range(500):
        t += 0.02
        assert budget.take(0.02, t)
    assert not budget.take(30.0, t + 1.0)  # a minute at once is not
    assert budget.take(1.0, t + 1.0)  # and did not cost anything
