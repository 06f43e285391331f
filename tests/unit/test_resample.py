"""Streaming resampling matches one-shot resampling, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from duplexvoice.audio import SAMPLE_RATE
from duplexvoice.audio.resample import StreamResampler

pytestmark = pytest.mark.unit


def _stream(resampler: StreamResampler, x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, pos = [], 0
    while pos < x.size:
        n = int(rng.choice([0, 1, 2, 13, 441, 1024, 4000]))
        out.append(resampler.process(x[pos : pos + n]))
        pos += n
    out.append(resampler.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 44100])
def test_random_chunks_match_one_shot_resampling(rate: int) -> None:
    rng = np.random.default_rng(rate)
    t = np.arange(rate) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(rate)).astype(np.float32)

    y = _stream(StreamResampler(rate), x, seed=rate)
    ref = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")

    assert y.dtype == np.float32
    assert abs(y.size - ref.size) <= 2
    assert abs(y.size - x.size * SAMPLE_RATE / rate) <= 2
    n = min(y.size, ref.size)
    assert float(np.max(np.abs(y[:n] - ref[:n]))) < 1e-4


def test_no_click_at_chunk_edges() -> None:
    """A sine resampled in tiny chunks stays a clean sine (no step at any edge)."""
    rate = 22050
    t = np.arange(rate // 2) / rate
    x = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    y = _stream(StreamResampler(rate), x, seed=7)
    n = np.arange(y.size)
    expected = 0.5 * np.sin(2 * np.pi * 300 * n / SAMPLE_RATE)
    inner = slice(200, y.size - 200)  # skip the filter's start and end transients
    assert float(np.max(np.abs(y[inner] - expected[inner]))) < 1e-3


def test_equal_rates_pass_through_unchanged() -> None:
    resampler = StreamResampler(SAMPLE_RATE)
    assert resampler.passthrough
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    y = resampler.process(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    assert resampler.flush().size == 0


def test_flush_returns_the_held_back_tail_then_finishes() -> None:
    resampler = StreamResampler(22050)
    head = resampler.process(np.ones(2205, dtype=np.float32) * 0.1)
    tail = resampler.flush()
    assert tail.size > 0
    assert head.size + tail.size == 4800
    assert resampler.finished
    with pytest.raises(RuntimeError):
        resampler.process(np.zeros(10, dtype=np.float32))
    with pytest.raises(RuntimeError):
        resampler.flush()


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0)
    with pytest.raises(ValueError):
        StreamResampler(22050, quality="best")
    with pytest.raises(ValueError):
        StreamResampler(22050).process(np.zeros((10, 2), dtype=np.float32))
