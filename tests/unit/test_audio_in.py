"""Microphone audio in: PCM16 bytes of any length and rate -> 16 kHz float32 frames."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from duplexvoice.speech.audio_in import (
    Framer,
    MicResampler,
    check_input_rate,
    pcm16_to_float,
)

pytestmark = pytest.mark.unit


def _signal(rate: int, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)
    return (x + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()


def _push_in_chunks(mic: MicResampler, pcm: bytes, seed: int, flush: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, pos = [], 0
    while pos < len(pcm):
        n = 2 * int(rng.choice([0, 1, 7, 160, 441, 960, 3001]))  # samples of any count
        out.append(mic.push(pcm[pos : pos + n]))
        pos += n
    if flush:
        out.append(mic.flush())
    return np.concatenate(out)


def test_pcm16_scaling() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    x = pcm16_to_float(pcm)
    assert x.dtype == np.float32
    assert x.tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    assert pcm16_to_float(b"").size == 0
    assert pcm16_to_float(bytearray(pcm)).tolist() == x.tolist()
    assert pcm16_to_float(memoryview(pcm)).tolist() == x.tolist()


@pytest.mark.parametrize("n", [1, 3, 1921])
def test_odd_byte_count_is_a_clear_error(n: int) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_float(b"\x00" * n)
    mic = MicResampler(48000)
    mic.push(b"\x00" * 960)
    with pytest.raises(ValueError, match=f"got {n}"):
        mic.push(b"\x00" * n)
    assert mic.samples_in == 480  # the bad chunk changed nothing
    mic.push(b"\x00" * 960)
    assert mic.samples_in == 960


@pytest.mark.parametrize("rate", [7999, 48001, 0, -16000, 16000.0, True, "16000", None])
def test_input_rates_outside_8_to_48_khz_are_refused(rate: object) -> None:
    with pytest.raises(ValueError, match="input sample rate"):
        MicResampler(rate)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000])
def test_accepted_rates(rate: int) -> None:
    assert check_input_rate(rate) == rate


def test_bad_output_rate_and_quality() -> None:
    with pytest.raises(ValueError, match="output rate"):
        MicResampler(48000, 0)
    with pytest.raises(ValueError, match="quality"):
        MicResampler(48000, quality="best")


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("quality", ["LQ", "HQ"])
def test_chunked_output_matches_one_shot(rate: int, quality: str) -> None:
    x = _signal(rate, seed=rate)
    pcm = _pcm(x)
    y = _push_in_chunks(MicResampler(rate, quality=quality), pcm, seed=rate)
    ref = soxr.resample(pcm16_to_float(pcm), rate, 16000, quality=quality)
    assert y.dtype == np.float32
    assert abs(y.size - x.size * 16000 / rate) <= 1
    n = min(y.size, ref.size)
    assert abs(y.size - ref.size) <= 1
    assert float(np.max(np.abs(y[:n] - ref[:n]))) < 1e-4


def test_resampling_each_chunk_alone_would_not_match() -> None:
    """The check above has teeth: stateless per-chunk resampling breaks at edges."""
    x = _signal(48000)
    ref = soxr.resample(x, 48000, 16000, quality="LQ")
    alone = np.concatenate(
        [soxr.resample(x[i : i + 960], 48000, 16000, quality="LQ") for i in range(0, x.size, 960)]
    )
    n = min(alone.size, ref.size)
    assert float(np.max(np.abs(alone[:n] - ref[:n]))) > 0.05


def test_16k_input_passes_through_exactly() -> None:
    x = _signal(16000)
    pcm = _pcm(x)
    mic = MicResampler(16000)
    y = _push_in_chunks(mic, pcm, seed=1)
    assert np.array_equal(y, pcm16_to_float(pcm))
    assert mic.samples_out == mic.samples_in == x.size


def test_tone_keeps_its_frequency() -> None:
    rate = 44100
    t = np.arange(rate) / rate
    pcm = _pcm((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    y = _push_in_chunks(MicResampler(rate), pcm, seed=2)
    spectrum = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(y.size - 4000)))
    peak_hz = np.argmax(spectrum) * 16000 / (y.size - 4000)
    assert abs(peak_hz - 1000) < 5


def test_flush_finishes() -> None:
    mic = MicResampler(48000)
    mic.push(_pcm(_signal(48000, 0.1)))
    mic.flush()
    assert mic.finished
    with pytest.raises(RuntimeError, match="flushed"):
        mic.push(b"\x00\x00")
    with pytest.raises(RuntimeError, match="flushed"):
        mic.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        mic.with_rate(16000)


def test_rate_change_keeps_every_sample_and_the_clock() -> None:
    a, b = _signal(48000, 0.5, seed=3), _signal(8000, 0.7, seed=4)
    mic = MicResampler(48000)
    out = [_push_in_chunks(mic, _pcm(a), seed=5, flush=False)]
    before = mic.samples_out
    assert before == sum(o.size for o in out)
    mic = mic.with_rate(8000)
    assert mic.input_rate == 8000 and mic.samples_out == before  # the tail is not out yet
    first = mic.push(_pcm(b[:160]))
    out.append(first)
    assert first.size > 0  # the 48 kHz tail came out first (the 8 kHz stream holds back)
    out.append(_push_in_chunks(mic, _pcm(b[160:]), seed=6))
    y = np.concatenate(out)
    assert mic.samples_out == y.size
    assert abs(y.size - (0.5 + 0.7) * 16000) <= 2
    # The first part is the 48 kHz audio, whole: it matches its one-shot resampling.
    ref = soxr.resample(pcm16_to_float(_pcm(a)), 48000, 16000, quality="LQ")
    assert float(np.max(np.abs(y[: ref.size] - ref))) < 1e-4


def test_rate_change_to_a_bad_rate_changes_nothing() -> None:
    mic = MicResampler(48000)
    mic.push(_pcm(_signal(48000, 0.1)))
    with pytest.raises(ValueError, match="input sample rate"):
        mic.with_rate(96000)
    assert not mic.finished
    mic.push(b"\x00\x00")


def test_the_same_rate_again_changes_nothing() -> None:
    mic = MicResampler(44100)
    mic.push(_pcm(_signal(44100, 0.1)))
    assert mic.with_rate(44100) is mic and not mic.finished


def test_rate_change_then_flush_returns_the_tail() -> None:
    mic = MicResampler(48000)
    got = mic.push(_pcm(_signal(48000, 0.2))).size
    mic = mic.with_rate(16000)
    got += mic.flush().size
    assert got == mic.samples_out == 3200


def test_framer_cuts_fixed_frames_with_exact_times() -> None:
    framer = Framer(512)
    x = np.arange(5000, dtype=np.float32)
    frames = []
    for a, b in [(0, 1), (1, 101), (101, 612), (612, 1612), (1612, 1612), (1612, 5000)]:
        frames.extend(framer.push(x[a:b]))
    assert [f.samples.size for f in frames] == [512] * 9
    assert np.array_equal(np.concatenate([f.samples for f in frames]), x[: 9 * 512])
    assert [f.end_sample for f in frames] == [512 * (i + 1) for i in range(9)]
    assert [f.end_s for f in frames] == [512 * (i + 1) / 16000 for i in range(9)]
    assert framer.pending == 5000 - 9 * 512
    assert framer.samples_framed == 9 * 512 and framer.time_s == 9 * 512 / 16000
    assert framer.frame_s == 0.032


def test_framer_clock_is_sample_exact_over_an_hour() -> None:
    framer = Framer(320, start_sample=16000 * 3600)
    (frame,) = framer.push(np.zeros(320, np.float32))
    assert frame.end_sample == 16000 * 3600 + 320
    assert frame.end_s == 3600.02


def test_framer_keeps_no_reference_to_the_callers_buffer() -> None:
    framer = Framer(4)
    buf = np.ones(6, np.float32)
    framer.push(buf)
    buf[:] = 7
    (frame,) = framer.push(np.zeros(2, np.float32))
    assert frame.samples.tolist() == [1, 1, 0, 0]


def test_framer_reset_drops_the_remainder_not_the_clock() -> None:
    framer = Framer(4)
    framer.push(np.ones(6, np.float32))
    framer.reset()
    assert framer.pending == 0
    (frame,) = framer.push(np.zeros(4, np.float32))
    assert frame.end_sample == 8


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_framer_bad_frame_size(bad: object) -> None:
    with pytest.raises(ValueError, match="frame_samples"):
        Framer(bad)  # type: ignore[arg-type]


def test_framer_refuses_non_mono() -> None:
    with pytest.raises(ValueError, match="mono"):
        Framer(4).push(np.zeros((2, 4), np.float32))


def test_mic_to_framer_clock_across_a_rate_change() -> None:
    """The session's clock counts 16 kHz samples: a rate change does not disturb it."""
    mic, framer = MicResampler(48000), Framer(320)
    frames = framer.push(mic.push(_pcm(_signal(48000, 0.5))))
    mic = mic.with_rate(22050)
    frames += framer.push(mic.push(_pcm(_signal(22050, 0.5))))
    frames += framer.push(mic.flush())
    assert [f.end_sample for f in frames] == [320 * (i + 1) for i in range(len(frames))]
    assert len(frames) == 50  # 1.0 s of 20 ms frames
