"""The whole per-utterance path: gain, limiter, resampler, PCM16, frames."""

from __future__ import annotations

import numpy as np
import pytest

from duplexvoice.audio import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE, TARGET_LUFS
from duplexvoice.audio.loudness import SessionLoudness, VoiceLoudness, integrated_lufs
from duplexvoice.audio.pipeline import GAIN_RAMP_MS, AudioPipeline, ChunkNormalizer

pytestmark = pytest.mark.unit

RATE = 22050


def _speechlike(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """Harmonics on a wandering pitch plus noise, in ~4 Hz syllables with word gaps."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 15 * np.sin(2 * np.pi * 0.7 * t) + 5 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(f0) / rate
    # Aligned harmonics make a glottal-pulse-like train: peaky, like real voices.
    voiced = sum(0.6**k * np.cos(k * phase) for k in range(1, 25))
    syllables = np.sin(2 * np.pi * 4.1 * t + 1.3 * np.sin(2 * np.pi * 0.9 * t)) ** 2
    stress = 10 ** (rng.normal(0.0, 2.0, size=int(seconds * 4) + 1) / 20)  # dB per syllable
    syllables *= np.interp(t, np.arange(stress.size) / 4.0, stress)
    words = np.convolve(
        (np.sin(2 * np.pi * 0.6 * t + 0.5) > -0.8).astype(float), np.ones(220) / 220, "same"
    )
    x: np.ndarray = (0.8 * voiced + 0.15 * rng.standard_normal(t.size)) * syllables * words
    peak_normalized: np.ndarray = (x / np.max(np.abs(x))).astype(np.float32)  # like Piper
    return peak_normalized


def _split(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    chunks, pos, i = [], 0, 0
    while pos < x.size:
        chunks.append(x[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return chunks


def _run(pipeline: AudioPipeline, chunks: list[np.ndarray]) -> tuple[list[bytes], np.ndarray]:
    frames: list[bytes] = []
    for chunk in chunks:
        frames += pipeline.push(chunk)
    frames += pipeline.finish()
    pcm = np.frombuffer(b"".join(frames), dtype="<i2")
    return frames, pcm.astype(np.float64) / 32768.0


def _voice(level: float = 0.3) -> VoiceLoudness:
    voice = VoiceLoudness()
    voice.calibrate(_speechlike(3.0, seed=99) * np.float32(level), RATE)
    return voice


def _calibrated(level: float = 0.3) -> SessionLoudness:
    """A new session of a voice calibrated on speech at ``level``."""
    return _voice(level).session()


def test_frames_are_exact_and_duration_is_kept() -> None:
    rng = np.random.default_rng(0)
    x = _speechlike(2.0, seed=1) * np.float32(0.3)
    sizes = [int(n) for n in rng.choice([0, 1, 50, 1323, 5000, 11025], size=40)]
    pipeline = AudioPipeline(RATE, _calibrated())
    frames, out = _run(pipeline, _split(x, [max(1, n) for n in sizes]))
    assert frames and all(len(f) == FRAME_BYTES for f in frames)
    expected = x.size * SAMPLE_RATE / RATE
    assert expected <= out.size < expected + FRAME_SAMPLES  # only the last frame is padded
    assert pipeline.audio_seconds == pytest.approx(2.0, abs=1 / RATE)


def test_a_sine_comes_out_whole_with_continuous_phase() -> None:
    """Lost or repeated samples at chunk edges would break the fitted sine."""
    freq, seconds = 440.0, 1.5
    t = np.arange(int(seconds * RATE)) / RATE
    x = (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    calibration = VoiceLoudness()
    calibration.calibrate(x, RATE)  # a steady level: the gain stays put
    voice = calibration.session()
    chunks = _split(x, [1, 700, 13, 2205, 441, 4000, 97])
    _, out = _run(AudioPipeline(RATE, voice), chunks)

    n_in = int(seconds * SAMPLE_RATE)
    inner = np.arange(480, n_in - 480)  # skip the resampler's edge transients
    w = 2 * np.pi * freq / SAMPLE_RATE
    basis = np.stack([np.cos(w * inner), np.sin(w * inner)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, out[inner], rcond=None)
    amplitude = float(np.hypot(*coef))
    residual = out[inner] - basis @ coef
    assert amplitude == pytest.approx(0.1 * 10 ** (voice.gain_db / 20), rel=0.02)
    # One sample lost at 440 Hz would leave a residual of ~6 % of the amplitude.
    assert float(np.max(np.abs(residual))) < 0.01 * amplitude
    spectrum = np.abs(np.fft.rfft(out[:n_in] * np.hanning(n_in)))
    assert np.argmax(spectrum) * SAMPLE_RATE / n_in == pytest.approx(freq, abs=1.0)


@pytest.mark.parametrize("offset_db", [-10.0, 0.0, 10.0])
@pytest.mark.parametrize("sizes", [[11025, 22050, 8820, 30000], [1323]], ids=["sentences", "60ms"])
def test_loudness_hits_target_even_off_calibration(offset_db: float, sizes: list[int]) -> None:
    voice = _calibrated(level=0.3)
    x = _speechlike(4.0, seed=7) * np.float32(0.3 * 10 ** (offset_db / 20))
    assert integrated_lufs(x, RATE) == pytest.approx(
        TARGET_LUFS - voice.gain_db + offset_db, abs=1.0
    )
    _, out = _run(AudioPipeline(RATE, voice), _split(x, sizes))
    # Within 0.5 LU, tighter than the +-1 LU goal: small chunks at +10 dB need the
    # partial measurement of the first 400 ms (the voice gain alone reads ~1 LU hot).
    assert integrated_lufs(out, SAMPLE_RATE) == pytest.approx(TARGET_LUFS, abs=0.5)


def test_peak_normalized_sentences_are_raised_without_clipping() -> None:
    """Piper-like: each sentence peaks at 1.0, so reaching -16 LUFS needs limiting."""
    voice = _calibrated(level=1.0)
    sentences = [_speechlike(s, seed=i) for i, s in enumerate([1.2, 2.5, 0.8, 3.0, 1.5])]
    raw = [integrated_lufs(s, RATE) for s in sentences]
    assert max(raw) < TARGET_LUFS - 0.5 and min(raw) < TARGET_LUFS - 3.0
    pipeline = AudioPipeline(RATE, voice)
    _, out = _run(pipeline, sentences)
    assert pipeline.limited_samples > 0
    assert float(np.max(np.abs(out))) < 0.99
    assert integrated_lufs(out, SAMPLE_RATE) == pytest.approx(TARGET_LUFS, abs=1.0)


def test_gain_changes_ramp_instead_of_stepping() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.05 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    voice = VoiceLoudness()
    voice.calibrate(tone, rate)
    normalizer = ChunkNormalizer(rate, voice.session())
    quiet, loud = tone[: rate // 2], tone[rate // 2 :] * np.float32(4.0)  # +12 dB at the edge
    out = np.concatenate([normalizer.process(quiet), normalizer.process(loud)])
    x = np.concatenate([quiet, loud])
    big = np.abs(x) > 0.5 * np.max(np.abs(x[: rate // 2]))
    gain = out[big] / x[big]
    edge = np.searchsorted(np.flatnonzero(big), rate // 2)
    assert gain[edge - 1] / gain[-1] > 2.0  # the loud half is turned down...
    ramp_samples = GAIN_RAMP_MS * rate / 1000
    steps = np.abs(np.diff(gain)) / gain[:-1]
    assert float(np.max(steps)) < 4.0 / ramp_samples  # ...over a ramp, not a step


def test_finish_reports_the_raw_loudness_to_the_session_only() -> None:
    voice = _voice(level=0.3)
    session = voice.session()
    before = session.gain_db
    x = _speechlike(3.0, seed=3) * np.float32(0.3 * 10 ** (-6 / 20))  # 6 dB quieter
    pipeline = AudioPipeline(RATE, session)
    _run(pipeline, _split(x, [4410]))
    raw = integrated_lufs(x, RATE)
    assert pipeline.raw_lufs == pytest.approx(raw, abs=0.1)
    assert before < session.gain_db < TARGET_LUFS - raw  # moved towards, not onto
    assert voice.gain_db == before  # the voice's calibration stays
    assert pipeline.finish() == []
    with pytest.raises(RuntimeError):
        pipeline.push(x[:100])


def test_finish_without_report_leaves_the_session_alone() -> None:
    voice = _calibrated(level=0.3)
    before = voice.gain_db
    pipeline = AudioPipeline(RATE, voice)
    pipeline.push(_speechlike(2.0, seed=4) * np.float32(0.05))
    frames = pipeline.finish(report=False)
    assert frames and all(len(f) == FRAME_BYTES for f in frames)
    assert voice.gain_db == before


def test_a_short_utterance_still_flushes_and_is_not_observed() -> None:
    voice = _calibrated()
    before = voice.gain_db
    pipeline = AudioPipeline(RATE, voice)
    assert pipeline.push(np.zeros(0, dtype=np.float32)) == []
    assert pipeline.push(_speechlike(0.01, seed=5)) == []  # under one 20 ms frame
    frames = pipeline.finish()
    assert len(frames) == 1 and len(frames[0]) == FRAME_BYTES
    assert voice.gain_db == before  # under 400 ms: nothing to learn


def test_nan_in_a_chunk_does_not_poison_the_utterance() -> None:
    voice = _calibrated()
    x = _speechlike(2.0, seed=6) * np.float32(0.3)
    bad = x[:2205].copy()
    bad[100:110] = np.nan
    _, out = _run(AudioPipeline(RATE, voice), [bad, *_split(x[2205:], [4410])])
    assert np.all(np.isfinite(out))
    assert integrated_lufs(out, SAMPLE_RATE) == pytest.approx(TARGET_LUFS, abs=1.0)


def test_native_48k_passes_through_the_resampler() -> None:
    x = _speechlike(1.0, seed=8, rate=SAMPLE_RATE) * np.float32(0.2)
    voice = VoiceLoudness()
    voice.calibrate(x, SAMPLE_RATE)
    frames, out = _run(
        AudioPipeline(SAMPLE_RATE, voice.session()), _split(x, [960, 480, 3000])
    )
    assert len(frames) == SAMPLE_RATE // FRAME_SAMPLES
    assert integrated_lufs(out, SAMPLE_RATE) == pytest.approx(TARGET_LUFS, abs=1.0)


def test_push_rejects_non_mono_audio() -> None:
    with pytest.raises(ValueError):
        AudioPipeline(RATE, VoiceLoudness().session()).push(np.zeros((100, 2), np.float32))


def test_a_fresh_session_renders_the_same_pcm_whatever_other_sessions_said() -> None:
    """The same utterance in two fresh sessions of one voice is bit-identical, though
    other sessions' utterances (much quieter or louder) finished in between."""
    voice = _voice(level=0.3)
    chunks = _split(_speechlike(2.0, seed=10) * np.float32(0.3), [2205])
    first, _ = _run(AudioPipeline(RATE, voice.session()), chunks)
    for level in (0.02, 1.0):  # other sessions: a whisper, then a shout
        other = voice.session()
        _run(AudioPipeline(RATE, other), [_speechlike(3.0, seed=11) * np.float32(level)])
        assert other.gain_db != voice.gain_db  # they did learn, for themselves
    again, _ = _run(AudioPipeline(RATE, voice.session()), chunks)
    assert b"".join(again) == b"".join(first)


def test_a_session_carries_its_own_gain_to_its_next_utterance() -> None:
    voice = _voice(level=0.3)
    session = voice.session()
    quiet = _speechlike(3.0, seed=12) * np.float32(0.3 * 10 ** (-10 / 20))
    _run(AudioPipeline(RATE, session), _split(quiet, [4410]))
    assert session.gain_db > voice.gain_db + 2.0  # learned: this session is quiet
    nxt = AudioPipeline(RATE, session)
    fresh = AudioPipeline(RATE, voice.session())
    start = quiet[:882]  # 40 ms: too little to measure, the starting gain decides
    nxt.push(start)
    fresh.push(start)
    assert nxt.gain_db > fresh.gain_db + 2.0
