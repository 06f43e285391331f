"""Float to PCM16 conversion and exact 20 ms framing."""

from __future__ import annotations

import numpy as np
import pytest

from duplexvoice.audio import FRAME_BYTES, FRAME_SAMPLES
from duplexvoice.audio.framing import Framer, float_to_pcm16

pytestmark = pytest.mark.unit


def _ramp(n: int, start: int = 0) -> np.ndarray:
    """Distinct, recognisable int16 samples (wrapping), so reordering shows up."""
    return ((np.arange(start, start + n) % 65536) - 32768).astype(np.int16)


def test_float_to_pcm16_scales_rounds_and_clips() -> None:
    x = np.array([0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -3.0, 1e-5, 0.49 / 32767], dtype=np.float32)
    y = float_to_pcm16(x)
    assert y.dtype == np.int16
    assert y.tolist() == [0, 32767, -32767, 16384, -16384, 32767, -32767, 0, 0]


def test_float_to_pcm16_maps_nan_to_zero_and_inf_to_full_scale() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 0.25], dtype=np.float32)
    assert float_to_pcm16(x).tolist() == [0, 32767, -32767, 8192]


def test_frames_are_exact_and_remainder_is_carried() -> None:
    framer = Framer()
    frames = framer.push(_ramp(FRAME_SAMPLES - 1))
    assert frames == []
    assert framer.pending_samples == FRAME_SAMPLES - 1

    frames = framer.push(_ramp(2 * FRAME_SAMPLES + 5, start=FRAME_SAMPLES - 1))
    assert len(frames) == 3
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert framer.pending_samples == 4

    joined = np.frombuffer(b"".join(frames), dtype="<i2")
    np.testing.assert_array_equal(joined, _ramp(3 * FRAME_SAMPLES))


def test_random_pushes_round_trip_and_only_the_last_frame_is_padded() -> None:
    rng = np.random.default_rng(1)
    total = 0
    framer = Framer()
    frames: list[bytes] = []
    while total < 10 * FRAME_SAMPLES + 123:
        n = int(rng.choice([0, 1, 17, 959, 960, 961, 3000]))
        frames += framer.push(_ramp(n, start=total))
        total += n
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert len(frames) == total // FRAME_SAMPLES
    tail = framer.flush()
    assert len(tail) == 1 and len(tail[0]) == FRAME_BYTES

    out = np.frombuffer(b"".join(frames + tail), dtype="<i2")
    np.testing.assert_array_equal(out[:total], _ramp(total))
    assert not out[total:].any()  # zero padding, in the last frame only
    assert out.size - total < FRAME_SAMPLES
    assert framer.pending_samples == 0
    assert framer.flush() == []


def test_flush_with_nothing_pending_is_empty() -> None:
    framer = Framer()
    assert framer.flush() == []
    framer.push(_ramp(FRAME_SAMPLES))
    assert framer.flush() == []


def test_byte_order_is_little_endian() -> None:
    framer = Framer()
    samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    samples[0], samples[1] = 0x0102, -2
    (frame,) = framer.push(samples)
    assert frame[:4] == b"\x02\x01\xfe\xff"


def test_push_does_not_keep_a_view_of_the_callers_array() -> None:
    framer = Framer()
    samples = _ramp(FRAME_SAMPLES + 10)
    framer.push(samples)
    samples[:] = 0
    (frame,) = framer.push(np.zeros(FRAME_SAMPLES - 10, dtype=np.int16))
    head = np.frombuffer(frame, dtype="<i2")[:10]
    np.testing.assert_array_equal(head, _ramp(10, start=FRAME_SAMPLES))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 2), dtype=np.int16), np.zeros(4, dtype=np.float32)],
)
def test_push_rejects_non_mono_or_non_int16(bad: np.ndarray) -> None:
    with pytest.raises((ValueError, TypeError)):
        Framer().push(bad)
