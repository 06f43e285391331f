"""BS.1770 measurement, the voice's and each session's gain, the peak limiter and its make-up."""

from __future__ import annotations

import math
import threading

import numpy as np
import pyloudnorm
import pytest

from duplexvoice.audio import TARGET_LUFS
from duplexvoice.audio.loudness import (
    MAX_MAKEUP_DB,
    SOFT_KNEE_LIMIT,
    PeakLimiter,
    StreamingLoudness,
    VoiceLoudness,
    integrated_lufs,
    limiter_makeup_db,
    soft_knee,
    solve_makeup,
)

pytestmark = pytest.mark.unit


def _bursts(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Noise bursts of varying level with silent gaps: exercises both gates."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = rng.standard_normal(n) * 0.1
    segment = rate // 4
    for start in range(0, n, segment):
        x[start : start + segment] *= rng.choice([0.0, 0.01, 0.3, 1.0, 2.0])
    return x.astype(np.float32)


def _sine(freq: float, amplitude: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_integrated_lufs_of_a_sine_matches_the_standard() -> None:
    # BS.1770: a full-scale 997 Hz sine reads -3.01 LUFS.
    assert integrated_lufs(_sine(997, 1.0, 2.0, 48000), 48000) == pytest.approx(-3.01, abs=0.05)
    value = integrated_lufs(_sine(997, 0.1, 2.0, 22050), 22050)
    assert value == pytest.approx(-23.01, abs=0.1)


def test_integrated_lufs_is_minus_inf_when_short_or_silent() -> None:
    assert integrated_lufs(_sine(440, 0.5, 0.39, 16000), 16000) == float("-inf")
    assert integrated_lufs(np.zeros(48000, dtype=np.float32), 48000) == float("-inf")


@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_streaming_loudness_agrees_with_pyloudnorm(rate: int) -> None:
    x = _bursts(6.0, rate, seed=rate)
    expected = pyloudnorm.Meter(rate).integrated_loudness(x.astype(np.float64))
    meter = StreamingLoudness(rate)
    rng = np.random.default_rng(3)
    pos = 0
    while pos < x.size:
        n = int(rng.choice([0, 1, 100, 1323, 7000, 30000]))
        meter.push(x[pos : pos + n])
        pos += n
    assert meter.lufs() == pytest.approx(expected, abs=0.1)
    assert meter.blocks == int((6.0 - 0.4) / 0.1 + 1e-9) + 1  # one number per 100 ms


def test_streaming_loudness_keeps_filter_state_across_tiny_chunks() -> None:
    """Low frequencies ride the 38 Hz high-pass: a state reset per chunk would show."""
    rate = 16000
    x = _sine(45, 0.5, 3.0, rate) + _sine(1000, 0.05, 3.0, rate)
    expected = pyloudnorm.Meter(rate).integrated_loudness(x.astype(np.float64))
    meter = StreamingLoudness(rate)
    for start in range(0, x.size, 64):
        meter.push(x[start : start + 64])
    assert meter.lufs() == pytest.approx(expected, abs=0.05)


def test_streaming_loudness_before_one_block() -> None:
    meter = StreamingLoudness(22050)
    assert meter.lufs() == float("-inf")
    assert meter.provisional_lufs() == float("-inf")
    meter.push(_sine(997, 0.1, 0.2, 22050))
    assert meter.blocks == 0
    assert meter.lufs() == float("-inf")
    assert meter.provisional_lufs() == pytest.approx(-23.0, abs=0.5)
    meter.push(_sine(997, 0.1, 0.2, 22050))
    assert meter.blocks == 1
    assert meter.lufs() == pytest.approx(-23.0, abs=0.2)


def test_streaming_loudness_of_silence_is_minus_inf() -> None:
    meter = StreamingLoudness(16000)
    meter.push(np.zeros(16000, dtype=np.float32))
    assert meter.blocks > 0
    assert meter.lufs() == float("-inf")


def test_half_life_follows_recent_audio_and_holds_the_current_chunk() -> None:
    rate = 16000
    loud, quiet = _sine(997, 0.5, 3.0, rate), _sine(997, 0.05, 3.0, rate)
    meter = StreamingLoudness(rate)
    meter.push(loud)
    meter.push(quiet)
    whole = meter.lufs()
    recent = meter.lufs(half_life_s=0.5)
    held = meter.lufs(half_life_s=0.5, hold_s=6.0)  # everything counts in full
    assert whole == pytest.approx(-9.0, abs=0.5)  # the quiet half is gated out
    assert recent < whole - 10.0
    assert held == pytest.approx(whole, abs=1e-6)


def test_voice_calibrate_sets_the_gain_to_reach_the_target() -> None:
    voice = VoiceLoudness()
    assert not voice.calibrated
    warm = _sine(997, 0.1, 2.0, 22050)  # -23 LUFS, peak 0.1: no limiting
    voice.calibrate(warm, 22050)
    assert voice.calibrated
    assert voice.gain_db == pytest.approx(TARGET_LUFS + 23.01, abs=0.1)
    assert voice.makeup_db == 0.0


def test_voice_calibrate_ignores_what_it_cannot_measure() -> None:
    voice = VoiceLoudness()
    voice.calibrate(np.zeros(22050, dtype=np.float32), 22050)
    voice.calibrate(_sine(997, 0.1, 0.1, 22050), 22050)
    assert not voice.calibrated
    assert voice.gain_db == 0.0


def test_session_observe_moves_its_gain_smoothly_and_ignores_minus_inf() -> None:
    session = VoiceLoudness(target_lufs=-16.0, smoothing=0.5).session()
    session.observe(-26.0, makeup_db=2.0)  # uncalibrated: the first observation as is
    assert session.gain_db == pytest.approx(10.0)
    assert session.makeup_db == pytest.approx(2.0)
    session.observe(-22.0, makeup_db=0.0)
    assert session.gain_db == pytest.approx(8.0)
    assert session.makeup_db == pytest.approx(1.0)
    session.observe(float("-inf"))
    session.observe(float("nan"))
    session.observe(-90.0)  # below the absolute gate: silence, not a level
    assert session.gain_db == pytest.approx(8.0)


def test_a_session_starts_from_the_calibration_and_never_moves_the_voice() -> None:
    voice = VoiceLoudness(smoothing=0.5)
    voice.calibrate(_sine(997, 0.1, 2.0, 22050), 22050)  # -23 LUFS: gain +7 dB
    calibrated = voice.gain_db
    first = voice.session()
    assert first.gain_db == calibrated and first.makeup_db == voice.makeup_db
    first.observe(-30.0)  # a quiet utterance: this session turns up
    assert first.gain_db == pytest.approx(calibrated + 3.5, abs=0.05)
    assert voice.gain_db == calibrated
    assert voice.session().gain_db == calibrated  # the next session starts afresh


def test_session_clamp_keeps_chunk_gains_near_the_session_gain() -> None:
    session = VoiceLoudness(max_adjust_db=6.0).session()
    session.observe(-20.0)  # gain 4 dB
    assert session.clamp(30.0) == pytest.approx(10.0)
    assert session.clamp(-30.0) == pytest.approx(-2.0)
    assert session.clamp(5.0) == pytest.approx(5.0)


def test_session_is_safe_to_share_between_threads() -> None:
    session = VoiceLoudness(smoothing=0.1).session()
    session.observe(-20.0)

    def work() -> None:
        for _ in range(500):
            session.observe(-20.0, makeup_db=1.0)
            assert math.isfinite(session.clamp(session.gain_db))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert session.gain_db == pytest.approx(4.0)
    assert session.makeup_db == pytest.approx(1.0, abs=1e-6)


def test_soft_knee_is_identity_below_and_bounded_above() -> None:
    x = np.linspace(-5, 5, 10001, dtype=np.float32)
    y = soft_knee(x, 0.9)
    below = np.abs(x) <= 0.9
    np.testing.assert_array_equal(y[below], x[below])
    assert float(np.max(np.abs(y))) < SOFT_KNEE_LIMIT
    assert np.all(np.diff(y) >= 0)  # monotonic: no fold-over distortion
    assert float(np.max(np.abs(np.diff(y)))) <= float(np.max(np.diff(x))) + 1e-6  # slope <= 1


def test_limiter_leaves_quiet_audio_untouched() -> None:
    limiter = PeakLimiter(22050)
    x = _sine(200, 0.85, 0.5, 22050)
    np.testing.assert_array_equal(limiter.process(x), x)
    assert limiter.limited_samples == 0


def test_limiter_keeps_peaks_under_the_ceiling_smoothly() -> None:
    rate = 22050
    limiter = PeakLimiter(rate, ceiling=0.9)
    x = _sine(150, 0.5, 1.0, rate)
    burst = slice(rate // 3, rate // 3 + 2000)
    x[burst] *= (1.0 + 3.0 * np.hanning(2000)).astype(np.float32)  # would clip at 2.0
    chunks = np.array_split(x, 7)
    y = np.concatenate([limiter.process(c) for c in chunks])
    assert float(np.max(np.abs(y))) <= 0.9 + 1e-6
    assert limiter.limited_samples > 1000
    # Away from the burst, the signal is unchanged.
    np.testing.assert_allclose(y[: rate // 3], x[: rate // 3], atol=1e-6)
    np.testing.assert_allclose(y[-rate // 3 :], x[-rate // 3 :], atol=1e-6)
    # The gain moves smoothly: no sample steps further than the sine itself can.
    assert float(np.max(np.abs(np.diff(y)))) < 2 * np.pi * 150 / rate * 0.9 * 1.2


def test_limiter_gain_is_continuous_across_chunks() -> None:
    rate = 22050
    limiter = PeakLimiter(rate, ceiling=0.9, release_ms=40.0)
    first = np.full(1000, 1.8, dtype=np.float32)  # ends limited to half gain
    second = np.full(2000, 0.5, dtype=np.float32)  # needs no limiting
    limiter.process(first)
    y = limiter.process(second)
    gain = y / second
    assert gain[0] < 0.55  # starts where the last chunk ended, not at 1.0
    assert float(np.max(np.diff(gain))) <= 1.0 / (0.040 * rate) + 1e-6  # release ramp
    assert gain[-1] == pytest.approx(1.0)


def test_solve_makeup_finds_the_fixed_point() -> None:
    calls: list[float] = []

    def steep(m: float) -> tuple[float, str]:
        calls.append(m)
        return 1.0 + 0.8 * m, f"at {m}"  # fixed point at 5 dB; fixed-point steps crawl

    makeup, payload = solve_makeup(steep, rounds=6, tolerance_db=0.01)
    assert makeup == pytest.approx(5.0, abs=0.01)
    assert payload == f"at {calls[-1]}"
    assert len(calls) <= 3  # secant steps: exact on a linear loss


def test_solve_makeup_is_capped_and_never_negative() -> None:
    assert solve_makeup(lambda m: (m + 3.0, None))[0] == MAX_MAKEUP_DB
    assert solve_makeup(lambda m: (0.0, None), start=4.0)[0] == 0.0


def test_limiter_makeup_restores_the_loudness_limiting_took() -> None:
    rate = 22050
    rng = np.random.default_rng(5)
    t = np.arange(3 * rate) / rate
    syllables = rng.choice([0.3, 0.6, 1.0], size=30).repeat(rate // 10)[: t.size]
    envelope = np.abs(np.sin(2 * np.pi * 3.0 * t)) ** 10 * syllables  # peaky, like speech
    voiced = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t + 1.0)
    x = (voiced + 0.2 * rng.standard_normal(t.size)) * envelope
    x = (x / np.max(np.abs(x))).astype(np.float32)  # peak-normalized, like Piper
    gain_db = TARGET_LUFS - integrated_lufs(x, rate)
    assert gain_db > 3.0  # so the peaks would clip without a limiter

    makeup = limiter_makeup_db(x, rate, gain_db)
    plain = PeakLimiter(rate).process(x * np.float32(10 ** (gain_db / 20)))
    made_up = PeakLimiter(rate).process(x * np.float32(10 ** ((gain_db + makeup) / 20)))
    assert integrated_lufs(plain, rate) < TARGET_LUFS - 1.0  # what limiting costs
    # Make-up restores energy, a close stand-in for gated loudness.
    assert integrated_lufs(made_up, rate) == pytest.approx(TARGET_LUFS, abs=0.75)
    assert float(np.max(np.abs(made_up))) < SOFT_KNEE_LIMIT
