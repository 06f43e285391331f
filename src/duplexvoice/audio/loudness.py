"""Loudness measurement (ITU-R BS.1770) and the parts of per-utterance normalization.

Goal: every utterance within +-1 LU of -16 LUFS, with no added latency. BS.1770
measures 400 ms blocks, and holding audio back to measure it would add latency. But
adapters yield chunks that are complete when yielded (a Piper sentence, 60 ms of
eSpeak), and measuring a chunk already in hand costs nothing. So
:class:`duplexvoice.audio.pipeline.ChunkNormalizer`, per chunk:

- measures the raw (pre-gain) loudness of the utterance so far, this chunk
  included, with :class:`StreamingLoudness`, and applies ``target - that``. The
  chunk counts in full and earlier audio with a weight halving every 2 s, which
  levels Piper's sentences (it peak-normalizes each one, so their loudness jumps by
  up to 10 dB) and still moves slowly for small chunks.
- Before 400 ms are measured it starts from the session's gain
  (:class:`SessionLoudness`: the voice's calibration on the warm-up, refined after
  each of that session's utterances) and moves away from it only by how much the
  partial measurement exceeds its noise (one loud syllable reads 4-5 dB hot); it
  trusts "louder than expected" sooner than "quieter", because loud audio dominates
  integrated loudness and a quiet onset is no level to boost the next syllable to.
  Every gain stays within the session gain +- ``max_adjust_db``.
- Ramps from the previous gain over 10 ms, so a gain change never clicks.
- Limits peaks with :class:`PeakLimiter` (Piper's peaks sit at 1.0, so any positive
  gain would clip). It looks ahead inside the chunk (free: we hold it) and lowers
  the gain smoothly around peaks; a soft knee catches what a chunk's first
  millisecond can overshoot. Limiting costs 1-3 LU on peak-normalized speech raised
  by 3-7 dB, so a make-up gain, solved per chunk (:func:`solve_makeup`) from the
  energy the limiter removed over the utterance so far, restores it (capped at
  6 dB: speech whose peaks sit more than ~15 dB over its loudness ends up short).

Measured on Piper (joe-medium) and eSpeak: 21 utterances, 1-6 chunks or 60 ms
chunks, all within 0.9 LU (mean +0.01 / -0.14 LU), peaks <= 0.94, ~1-2 ms of CPU
per second of audio.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyloudnorm
from scipy import ndimage, signal

from duplexvoice.audio import TARGET_LUFS
from duplexvoice.audio.framing import FloatAudio

_F64 = npt.NDArray[np.float64]
Gains = npt.NDArray[np.float32]  # per-sample linear gains
_T = TypeVar("_T")

ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
BLOCK_S = 0.4
_HOPS_PER_BLOCK = 4  # 400 ms blocks, 100 ms hop (75 % overlap)
_HOPS_PER_SECOND = 10
# A warm-up that measures near silence must not set a huge gain.
MAX_VOICE_GAIN_DB = 30.0
MAX_MAKEUP_DB = 6.0
# The soft knee's asymptote: below 1.0 so the resampler's ringing does not clip.
SOFT_KNEE_LIMIT = 0.97
# Moving averages of exact 1.0 gains round to just below it.
_UNITY = 1.0 - 1e-6


def integrated_lufs(x: FloatAudio, rate: int) -> float:
    """Gated integrated loudness of a whole signal (pyloudnorm); -inf if < 400 ms or silent."""
    data = np.asarray(x, dtype=np.float64).reshape(-1)
    if data.size < BLOCK_S * rate:
        return float("-inf")
    value = float(pyloudnorm.Meter(rate).integrated_loudness(data))
    return value if math.isfinite(value) else float("-inf")


def _k_weighting(rate: int) -> tuple[_F64, _F64]:
    """pyloudnorm's K-weighting biquads, merged into one 4th-order filter (one call per chunk)."""
    shelf = pyloudnorm.IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, rate, "high_shelf")
    highpass = pyloudnorm.IIRfilter(0.0, 0.5, 38.0, rate, "high_pass")
    return np.convolve(shelf.b, highpass.b), np.convolve(shelf.a, highpass.a)


def _to_lufs(mean_square: float) -> float:
    return -0.691 + 10.0 * math.log10(mean_square) if mean_square > 0.0 else float("-inf")


class StreamingLoudness:
    """Incremental BS.1770 integrated loudness of mono audio pushed in chunks of any size.

    Keeps the K-weighting filter state across chunks and one mean square per complete
    400 ms block (one completes every 100 ms). Not thread-safe.
    """

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self._b, self._a = _k_weighting(rate)
        self._zi: _F64 = np.zeros(self._a.size - 1, dtype=np.float64)
        self._samples = 0
        self._hop = 0  # index of the 100 ms hop being filled
        self._hop_energy = 0.0
        self._recent: list[tuple[float, int]] = []  # (energy, samples) of the last hops
        self._blocks: list[float] = []  # mean square of each complete block
        self._block_lufs: list[float] = []

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def seconds(self) -> float:
        return self._samples / self.rate

    @property
    def blocks(self) -> int:
        """Complete 400 ms blocks so far (0 until 400 ms have been pushed)."""
        return len(self._blocks)

    def _hop_start(self, hop: int) -> int:
        return (hop * self.rate) // _HOPS_PER_SECOND

    def push(self, x: FloatAudio) -> None:
        data = np.asarray(x, dtype=np.float64).reshape(-1)
        if data.size == 0:
            return
        filtered, self._zi = signal.lfilter(self._b, self._a, data, zi=self._zi)
        squares = np.square(filtered)
        pos = 0
        while pos < squares.size:
            take = min(squares.size - pos, self._hop_start(self._hop + 1) - self._samples)
            self._hop_energy += float(squares[pos : pos + take].sum())
            pos += take
            self._samples += take
            if self._samples == self._hop_start(self._hop + 1):
                self._close_hop()

    def _close_hop(self) -> None:
        self._recent.append((self._hop_energy, self._samples - self._hop_start(self._hop)))
        del self._recent[:-_HOPS_PER_BLOCK]
        if len(self._recent) == _HOPS_PER_BLOCK:
            mean_square = sum(e for e, _ in self._recent) / sum(n for _, n in self._recent)
            self._blocks.append(mean_square)
            self._block_lufs.append(_to_lufs(mean_square))
        self._hop += 1
        self._hop_energy = 0.0

    def provisional_lufs(self) -> float:
        """Before the first block completes, the loudness of everything so far.

        Only a first guess (shorter than BS.1770 allows, ungated but for the absolute
        gate); once a block is complete, this is :meth:`lufs`.
        """
        if self._blocks:
            return self.lufs()
        if self._samples == 0:
            return float("-inf")
        energy = sum(e for e, _ in self._recent) + self._hop_energy
        value = _to_lufs(energy / self._samples)
        return value if value >= ABSOLUTE_GATE_LUFS else float("-inf")

    def lufs(self, half_life_s: float | None = None, hold_s: float = 0.0) -> float:
        """Gated integrated loudness so far; -inf before 400 ms or when all is gated out.

        With ``half_life_s``, a block's weight halves for every that many seconds it
        ended before the last ``hold_s`` seconds (the chunk in hand, which counts in
        full); both gates and the mean are weighted. For gain control that follows
        the recent audio.
        """
        if not self._blocks:
            return float("-inf")
        z = np.asarray(self._blocks)
        loud = np.asarray(self._block_lufs)
        keep = loud >= ABSOLUTE_GATE_LUFS
        if not keep.any():
            return float("-inf")
        weights = np.ones_like(z)
        if half_life_s is not None:
            pending_s = (self._samples - self._hop_start(self._hop)) / self.rate
            ended_s = np.arange(z.size - 1, -1, -1, dtype=np.float64) / _HOPS_PER_SECOND
            weights = np.exp2(-np.maximum(0.0, ended_s + pending_s - hold_s) / half_life_s)
        relative = _to_lufs(_weighted_mean(z, weights, keep)) + RELATIVE_GATE_LU
        keep &= loud > relative
        return _to_lufs(_weighted_mean(z, weights, keep)) if keep.any() else float("-inf")


def _weighted_mean(z: _F64, weights: _F64, mask: npt.NDArray[np.bool_]) -> float:
    return float(np.dot(z[mask], weights[mask]) / weights[mask].sum())


class _Gain:
    """A loudness target and the gain (and limiter make-up) that reaches it, read under
    a lock: a voice's calibration, or one session's copy of it."""

    _lock: threading.Lock
    _target: float
    _gain_db: float
    _makeup_db: float

    @property
    def target_lufs(self) -> float:
        return self._target

    @property
    def gain_db(self) -> float:
        with self._lock:
            return self._gain_db

    @property
    def makeup_db(self) -> float:
        with self._lock:
            return self._makeup_db


class VoiceLoudness(_Gain):
    """What one loaded voice needs to reach the target: its calibration, shared by its
    sessions and fixed once calibrated.

    ``gain_db``: from the warm-up utterance (0 dB without one). ``makeup_db``: what the
    peak limiter usually takes off at that gain, used before an utterance has 400 ms
    of its own to measure. Utterances never move it: each session refines its own copy
    (:meth:`session`), so what one session hears never depends on what another session
    (or an earlier one) said. Thread-safe.
    """

    def __init__(
        self,
        target_lufs: float = TARGET_LUFS,
        max_adjust_db: float = 12.0,
        *,
        smoothing: float = 0.3,
    ) -> None:
        if max_adjust_db < 0:
            raise ValueError(f"max_adjust_db must be >= 0, got {max_adjust_db}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self._lock = threading.Lock()
        self._target = float(target_lufs)
        self._max_adjust = float(max_adjust_db)
        self._smoothing = smoothing
        self._gain_db = 0.0
        self._makeup_db = 0.0
        self._calibrated = False

    @property
    def max_adjust_db(self) -> float:
        return self._max_adjust

    @property
    def calibrated(self) -> bool:
        with self._lock:
            return self._calibrated

    def seeded_from(self, other: VoiceLoudness) -> VoiceLoudness:
        """A new voice's loudness with ``other``'s calibration (a LoRA voice takes its
        base model's: it has no warm-up of its own)."""
        seeded = VoiceLoudness(self._target, self._max_adjust, smoothing=self._smoothing)
        with other._lock:
            seeded._gain_db, seeded._makeup_db = other._gain_db, other._makeup_db
            seeded._calibrated = other._calibrated
        return seeded

    def calibrate(self, x: FloatAudio, rate: int) -> None:
        """Set the voice gain (and make-up) from a warm-up utterance; no-op if unmeasurable."""
        raw = integrated_lufs(x, rate)
        if not math.isfinite(raw):
            return
        gain = _gain_for(self._target, raw)
        makeup = limiter_makeup_db(x, rate, gain)
        with self._lock:
            self._gain_db, self._makeup_db = gain, makeup
            self._calibrated = True

    def session(self) -> SessionLoudness:
        """A new session's own loudness state, starting from this calibration."""
        return SessionLoudness(self)


class SessionLoudness(_Gain):
    """The gain one session applies: its voice's calibration, then an exponential
    moving average over that session's own finished utterances.

    One per session and never shared, so a session's gains depend only on the voice's
    calibration and on its own earlier utterances: a seeded family's session repeats
    bit for bit. Without a calibration (no warm-up) the session's first measured
    utterance sets the gain. Thread-safe (a stopped utterance's last step may still
    read it on a synthesis thread while the next utterance of the session finishes).
    """

    def __init__(self, voice: VoiceLoudness) -> None:
        self._lock = threading.Lock()
        self._target = voice.target_lufs
        self._max_adjust = voice.max_adjust_db
        self._smoothing = voice._smoothing
        with voice._lock:
            self._gain_db, self._makeup_db = voice._gain_db, voice._makeup_db
            self._calibrated = voice._calibrated

    def observe(self, utterance_raw_lufs: float, makeup_db: float | None = None) -> None:
        """Fold a finished utterance's raw loudness (-inf: ignored) and make-up in."""
        if not math.isfinite(utterance_raw_lufs) or utterance_raw_lufs < ABSOLUTE_GATE_LUFS:
            return
        gain = _gain_for(self._target, utterance_raw_lufs)
        with self._lock:
            if not self._calibrated:
                self._gain_db, self._calibrated = gain, True
                self._makeup_db = self._makeup_db if makeup_db is None else makeup_db
                return
            self._gain_db += self._smoothing * (gain - self._gain_db)
            if makeup_db is not None:
                self._makeup_db += self._smoothing * (makeup_db - self._makeup_db)

    def clamp(self, gain_db: float) -> float:
        """Limit a chunk gain to the session gain +- max_adjust_db."""
        center = self.gain_db
        return min(center + self._max_adjust, max(center - self._max_adjust, gain_db))


def _gain_for(target_lufs: float, raw_lufs: float) -> float:
    return min(MAX_VOICE_GAIN_DB, max(-MAX_VOICE_GAIN_DB, target_lufs - raw_lufs))


class PeakLimiter:
    """Look-ahead peak limiter within each chunk, continuous across chunks.

    Around every sample above ``ceiling`` the gain dips smoothly: a running minimum
    of the needed gain over +-``window_ms``, then a moving average over at most that
    radius, which keeps it at or below the needed gain everywhere. Across chunk
    edges the gain moves by a fast attack and a slower release ramp; what the
    attack lets through is caught by :func:`soft_knee`. Not thread-safe.
    """

    def __init__(
        self,
        rate: int,
        ceiling: float = 0.9,
        window_ms: float = 10.0,
        attack_ms: float = 1.0,
        release_ms: float = 40.0,
    ) -> None:
        if not 0.0 < ceiling < SOFT_KNEE_LIMIT:
            raise ValueError(f"ceiling must be in (0, {SOFT_KNEE_LIMIT}), got {ceiling}")
        self.ceiling = ceiling
        self._radius = max(1, round(window_ms * rate / 1000))
        self._attack_step = 1.0 / max(1.0, attack_ms * rate / 1000)
        self._release_step = 1.0 / max(1.0, release_ms * rate / 1000)
        self._gain = 1.0  # limiter gain at the end of the previous chunk
        self.limited_samples = 0  # samples whose gain was lowered, for metrics

    def gains(self, x: FloatAudio) -> Gains | None:
        """The per-sample gain ``x`` needs (None: none); changes no state."""
        if x.size == 0:
            return None
        mag = np.abs(x)
        if float(mag.max()) <= self.ceiling and self._gain >= _UNITY:
            return None
        needed = np.minimum(np.float32(1.0), np.float32(self.ceiling) / np.maximum(mag, 1e-12))
        held = ndimage.minimum_filter1d(needed, size=2 * self._radius + 1, mode="nearest")
        gain: Gains = ndimage.uniform_filter1d(held, size=self._radius | 1, mode="nearest")
        steps = np.arange(1, x.size + 1, dtype=np.float32)
        np.minimum(gain, np.float32(self._gain) + steps * np.float32(self._release_step), out=gain)
        np.maximum(gain, np.float32(self._gain) - steps * np.float32(self._attack_step), out=gain)
        np.minimum(gain, np.float32(1.0), out=gain)
        return gain

    def apply(self, x: FloatAudio, gains: Gains | None) -> FloatAudio:
        """Apply :meth:`gains` of this same chunk, and carry the limiter state on."""
        y = np.asarray(x, dtype=np.float32)
        if gains is None:
            return y.copy()
        self._gain = 1.0 if gains[-1] >= _UNITY else float(gains[-1])
        self.limited_samples += int(np.count_nonzero(gains < _UNITY))
        return soft_knee(y * gains, self.ceiling)

    def process(self, x: FloatAudio) -> FloatAudio:
        x = np.asarray(x, dtype=np.float32)
        return self.apply(x, self.gains(x))

    @staticmethod
    def loss_db(x: FloatAudio, gains: Gains | None) -> float:
        """The energy (dB) that applying ``gains`` takes off ``x``."""
        if gains is None:
            return 0.0
        limited = x * gains
        before, after = float(np.dot(x, x)), float(np.dot(limited, limited))
        return 10.0 * math.log10(before / after) if after > 0.0 else 0.0


def soft_knee(x: FloatAudio, threshold: float, limit: float = SOFT_KNEE_LIMIT) -> FloatAudio:
    """Identity up to ``threshold``; above, a tanh curve towards ``limit`` (smooth at the knee)."""
    y = np.asarray(x, dtype=np.float32).copy()
    mag = np.abs(y)
    over = mag > threshold
    if over.any():
        span = limit - threshold
        y[over] = np.sign(y[over]) * (threshold + span * np.tanh((mag[over] - threshold) / span))
    return y


def solve_makeup(
    evaluate: Callable[[float], tuple[float, _T]],
    start: float = 0.0,
    rounds: int = 4,
    tolerance_db: float = 0.1,
) -> tuple[float, _T]:
    """The make-up gain m (dB) at which the limiter's loss ``evaluate(m)[0]`` equals m.

    More make-up, more limiting: loss(m) grows almost as fast as m, so fixed-point
    steps crawl; this takes secant steps on loss(m) - m from ``start`` (the last
    chunk's answer: a steady stream needs one round). Returns m in
    [0, MAX_MAKEUP_DB] with the payload of its evaluation.
    """
    makeup = min(MAX_MAKEUP_DB, max(0.0, start))
    prev: tuple[float, float] | None = None
    for i in range(rounds):
        loss, payload = evaluate(makeup)
        residual = loss - makeup
        if abs(residual) < tolerance_db or i == rounds - 1:
            break
        slope = -1.0
        if prev is not None and makeup != prev[0]:
            slope = (residual - prev[1]) / (makeup - prev[0])
        prev = (makeup, residual)
        nxt = min(MAX_MAKEUP_DB, max(0.0, makeup - residual / min(slope, -0.05)))
        if nxt == makeup:
            break
        makeup = nxt
    return makeup, payload


def limiter_makeup_db(x: FloatAudio, rate: int, gain_db: float) -> float:
    """The make-up that offsets :class:`PeakLimiter` on the whole of ``x`` at ``gain_db``."""
    data = np.asarray(x, dtype=np.float32).reshape(-1)

    def evaluate(makeup: float) -> tuple[float, None]:
        gained = data * np.float32(10.0 ** ((gain_db + makeup) / 20.0))
        return PeakLimiter.loss_db(gained, PeakLimiter(rate).gains(gained)), None

    return solve_makeup(evaluate)[0]
