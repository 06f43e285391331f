"""The listener's audio ring (the audio budget is the listening core's: test_listening)."""

from __future__ import annotations

import numpy as np
import pytest

from duplexvoice.orchestrator.sessions.listener import AudioRing

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


def test_the_ring_returns_a_span_of_what_it_kept() -> None:
    ring = AudioRing(10)
    data = np.arange(25, dtype=np.float32)
    ring.push(data[:13])
    ring.push(data[13:])
    assert np.array_equal(ring.since(17, 22), data[17:22])
    assert np.array_equal(ring.since(12, 30), data[15:])  # an end past the newest: to it
    assert np.array_equal(ring.since(0, 18), data[15:18])  # older audio is gone
    assert ring.since(20, 20).size == 0 and ring.since(22, 20).size == 0
