"""One utterance's path from adapter chunks to wire frames.

gain (loudness normalization, see :mod:`duplexvoice.audio.loudness`) -> peak
limiter -> resample to 48 kHz -> PCM16 -> exact 20 ms frames. Every stage works on
the chunk in hand and nothing waits for future audio, so the only hold-back is
what framing and the resampler's filter inherently need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from duplexvoice.audio import SAMPLE_RATE
from duplexvoice.audio.framing import FloatAudio, Framer, float_to_pcm16
from duplexvoice.audio.loudness import (
    Gains,
    PeakLimiter,
    SessionLoudness,
    StreamingLoudness,
    solve_makeup,
)
from duplexvoice.audio.resample import StreamResampler

# Gain changes between chunks ramp over this long so they never step (click).
GAIN_RAMP_MS = 10.0
# Loudness memory for gain control: the chunk in hand counts in full, earlier audio
# with a weight halving every this many seconds (None: the whole utterance).
LOUDNESS_HALF_LIFE_S: float | None = 2.0
# Under 400 ms: use a partial measurement from this long on, trusting it beyond
# noise_db * sqrt(0.1 s / measured) away from the session gain (louder: down; quieter: up).
PROVISIONAL_MIN_S = 0.05
PROVISIONAL_NOISE_DOWN_DB = 2.0
PROVISIONAL_NOISE_UP_DB = 8.0
# Make-up solver: rounds per chunk, and the residual (dB) that is close enough.
MAKEUP_ROUNDS = 4
MAKEUP_TOLERANCE_DB = 0.1


class ChunkNormalizer:
    """Per-utterance loudness control: picks each chunk's gain and limits its peaks.

    Not thread-safe: one per utterance.
    """

    def __init__(self, rate: int, loudness: SessionLoudness) -> None:
        self.rate = rate
        self._loudness = loudness
        self.meter = StreamingLoudness(rate)
        self.limiter = PeakLimiter(rate)
        self._ramp_samples = max(1, round(GAIN_RAMP_MS * rate / 1000))
        self._gain: float | None = None  # linear gain applied to the last sample
        self.gain_db = loudness.gain_db  # the latest chunk's gain, make-up included
        self.makeup_db = loudness.makeup_db
        # Energy of the utterance so far before and after the limiter (decayed like
        # the loudness memory): what make-up has to restore.
        self._energy_in = 0.0
        self._energy_out = 0.0

    def process(self, x: FloatAudio) -> FloatAudio:
        """Gain and limit one chunk; the chunk itself is measured first (no latency)."""
        self.meter.push(x)
        base_db = self._base_gain_db(x.size / self.rate)

        def evaluate(makeup: float) -> tuple[float, _Trial]:
            curve = self._gain_curve(x.size, base_db + makeup)
            gained = x * curve
            limits = self.limiter.gains(gained)
            e_in, e_out = _energies(gained, limits)
            loss = _ratio_db(self._energy_in + e_in, self._energy_out + e_out)
            return loss, _Trial(curve, gained, limits, e_in, e_out)

        if self.meter.blocks > 0:
            self.makeup_db, trial = solve_makeup(
                evaluate, self.makeup_db, MAKEUP_ROUNDS, MAKEUP_TOLERANCE_DB
            )
        else:  # too little audio to tell: what limiting usually costs this session
            self.makeup_db = self._loudness.makeup_db
            trial = evaluate(self.makeup_db)[1]
        self.gain_db = base_db + self.makeup_db
        self._gain = float(trial.curve[-1])
        decay = self._decay(x.size / self.rate)
        self._energy_in = (self._energy_in + trial.energy_in) * decay
        self._energy_out = (self._energy_out + trial.energy_out) * decay
        return self.limiter.apply(trial.gained, trial.limits)

    def _base_gain_db(self, chunk_s: float) -> float:
        session_gain = self._loudness.gain_db
        target = self._loudness.target_lufs
        if self.meter.blocks > 0:
            raw = self.meter.lufs(LOUDNESS_HALF_LIFE_S, hold_s=chunk_s)
            return self._loudness.clamp(target - raw) if math.isfinite(raw) else session_gain
        raw = self.meter.provisional_lufs()
        if self.meter.seconds < PROVISIONAL_MIN_S or not math.isfinite(raw):
            return session_gain
        # A first guess, noisy (one loud syllable reads 4-5 dB hot): move away from
        # the session gain only by what exceeds that noise.
        delta = self._loudness.clamp(target - raw) - session_gain
        noise_db = PROVISIONAL_NOISE_UP_DB if delta > 0 else PROVISIONAL_NOISE_DOWN_DB
        noise_db *= math.sqrt(0.1 / self.meter.seconds)
        return session_gain + math.copysign(max(0.0, abs(delta) - noise_db), delta)

    def _gain_curve(self, n: int, gain_db: float) -> FloatAudio:
        """Per-sample linear gain: a ramp from the last gain to this chunk's gain."""
        target = 10.0 ** (gain_db / 20.0)
        start = target if self._gain is None else self._gain
        curve = np.full(n, target, dtype=np.float32)
        if start != target:
            k = min(n, self._ramp_samples)
            steps = np.arange(1, k + 1, dtype=np.float32) / np.float32(self._ramp_samples)
            curve[:k] = start + (target - start) * steps
        return curve

    @staticmethod
    def _decay(seconds: float) -> float:
        return 1.0 if LOUDNESS_HALF_LIFE_S is None else 2.0 ** (-seconds / LOUDNESS_HALF_LIFE_S)


@dataclass(frozen=True)
class _Trial:
    """One candidate gain for a chunk: the gained audio and what the limiter would do."""

    curve: FloatAudio
    gained: FloatAudio
    limits: Gains | None
    energy_in: float
    energy_out: float


def _energies(x: FloatAudio, gains: Gains | None) -> tuple[float, float]:
    energy = float(np.dot(x, x))
    if gains is None:
        return energy, energy
    limited = x * gains
    return energy, float(np.dot(limited, limited))


def _ratio_db(num: float, den: float) -> float:
    return 10.0 * math.log10(num / den) if num > 0.0 and den > 0.0 else 0.0


class AudioPipeline:
    """Turns one utterance's native-rate float chunks into 1920-byte frames.

    Not thread-safe: one per utterance. After :meth:`finish` it accepts no more audio.
    """

    def __init__(
        self,
        native_rate: int,
        loudness: SessionLoudness,
        *,
        resample_quality: str = "HQ",
    ) -> None:
        self.native_rate = native_rate
        self._loudness = loudness
        self._normalizer = ChunkNormalizer(native_rate, loudness)
        self._resampler = StreamResampler(native_rate, SAMPLE_RATE, resample_quality)
        self._framer = Framer()
        self._native_samples = 0
        self._finished = False

    @property
    def audio_seconds(self) -> float:
        """Native audio pushed so far, in seconds (for the real-time factor)."""
        return self._native_samples / self.native_rate

    @property
    def gain_db(self) -> float:
        """The gain chosen for the latest chunk (make-up for the limiter included)."""
        return self._normalizer.gain_db

    @property
    def raw_lufs(self) -> float:
        """Raw (pre-gain) integrated loudness of the utterance so far; -inf before 400 ms."""
        return self._normalizer.meter.lufs()

    @property
    def limited_samples(self) -> int:
        """Native samples whose level the peak limiter reduced."""
        return self._normalizer.limiter.limited_samples

    def push(self, chunk: FloatAudio) -> list[bytes]:
        """Process one adapter chunk; return the frames it completes (possibly none)."""
        if self._finished:
            raise RuntimeError("AudioPipeline already finished")
        x = np.asarray(chunk, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono audio, got shape {x.shape}")
        if x.size == 0:
            return []
        if not np.isfinite(x).all():
            # A NaN would poison the meter's filter state for the rest of the utterance.
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        self._native_samples += x.size
        return self._emit(self._resampler.process(self._normalizer.process(x)))

    def finish(self, *, report: bool = True) -> list[bytes]:
        """Flush the resampler and framer (the last frame padded with silence).

        With ``report`` (the default) the utterance's raw loudness refines the
        session's gain; pass False for an utterance cut short, whose loudness says little.
        Calling it again returns [].
        """
        if self._finished:
            return []
        self._finished = True
        frames = self._emit(self._resampler.flush())
        frames.extend(self._framer.flush())
        if report:
            self._loudness.observe(self.raw_lufs, self._normalizer.makeup_db)
        return frames

    def _emit(self, resampled: FloatAudio) -> list[bytes]:
        if resampled.size == 0:
            return []
        return self._framer.push(float_to_pcm16(resampled))
