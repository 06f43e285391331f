"""VAD hysteresis: per-frame speech probabilities in, speech onsets and offsets out.

Pure code: no numpy, no clock, no I/O. Time is the audio time at the end of each
frame, passed in by the caller (the :class:`~duplexvoice.speech.audio_in.Framer`'s
stamp), so the gate is tested with scripted probabilities and gives the same answer
whatever the machine's load.

Each frame is one of three kinds, as in Silero's own segmenter (faster-whisper
``get_speech_timestamps``):

- voiced: ``p >= threshold`` (``speaking_threshold`` for an onset while the system
  itself is speaking, ``strict=True``: its own voice leaking back into the microphone
  should not start a barge-in);
- unvoiced: ``p < neg_threshold``;
- in between: keeps whatever is under way.

Onset. A voiced frame opens a candidate run starting at that frame's start. Voiced
frames add their length to it; in-between frames neither add nor break it; an
unvoiced frame drops it (and so does an in-between stretch as long as the hangover,
so an old candidate cannot confirm much later). When the run holds ``min_speech_ms``
of voiced audio, :class:`SpeechOnset` reports the run's start (the speech began then)
and the confirming frame's end (when we knew).

Offset. While speaking, voiced frames, and in-between frames before any silence,
extend the speech; the first unvoiced frame starts the hangover, which only a voiced
frame cancels (in-between frames do not). When ``min_silence_ms`` has passed since
the end of the last voiced frame, :class:`SpeechOffset` reports that end.

Defaults, from ``bench/vad.py`` (42 clips of 7 speakers and speeds, clean, in white
and pink noise, clipped; 10 non-speech bursts; stationary noise at 3 levels):

- ``threshold`` 0.5 / ``neg_threshold`` 0.35: Silero's standard. 0.6/0.45 and
  0.4/0.25 changed the onset p95 by under 5 ms and no false onset went away.
- ``min_speech_ms`` 32: one Silero frame (two WebRTC frames of 20 ms). Barge-in must
  pause playback within 80 ms (p95) of speech onset, and Silero's first voiced frame
  already comes about 30 ms into the speech: with one frame the onset is confirmed
  62/98 ms (p50/p95, audio time) after the true start, with two 94/130 ms, and the
  second frame removed no false onset (none on silence or stationary noise up to
  -20 dBFS, one on mains hum either way). A false onset costs a pause and a resume,
  which the turn-taking core decides on top of this.
- ``speaking_threshold`` 0.7: while the system speaks it removed that one false onset
  (hum) at +12 ms onset p95; 0.9 made onsets miss for seconds (p95 522 ms). No
  threshold rejects the system's own voice leaking back: Silero gives it p > 0.99
  even at -40 dB under the user's level; that is the echo canceller's job.
- ``min_silence_ms`` 160: the offset is confirmed 200/368 ms (p50/p95) after the true
  end. It only bridges the gaps inside and between words (100 ms: 27 splits of one
  utterance in 42 clips; 160: 26; 240: 14, + 96 ms on the offset p95); pauses between
  phrases are the end-of-turn logic's business, on top of this.

Errors: bad settings, a probability outside 0..1 (or NaN), a non-positive frame
length, or time running backwards are ``ValueError``; the gate's state is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Accumulated frame lengths are sums of floats (3 x 0.02 s != 0.06 s exactly).
_EPS_MS = 1e-6


@dataclass(frozen=True)
class GateConfig:
    """Hysteresis settings; the defaults are measured (see the module docstring)."""

    threshold: float = 0.5  # a frame is speech if p >= this (Silero's standard)
    neg_threshold: float = 0.35  # silence if p < this; between: keep state (threshold - 0.15)
    speaking_threshold: float = 0.7  # onset threshold while the system speaks (strict)
    min_speech_ms: float = 32.0  # voiced audio that confirms an onset (one Silero frame)
    min_silence_ms: float = 160.0  # audio since the last voiced frame that confirms an offset

    def __post_init__(self) -> None:
        for name in ("threshold", "neg_threshold", "speaking_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in 0..1, got {value!r}")
        if self.neg_threshold > self.threshold:
            raise ValueError(
                f"neg_threshold ({self.neg_threshold}) must not exceed threshold "
                f"({self.threshold})"
            )
        if self.speaking_threshold < self.threshold:
            raise ValueError(
                f"speaking_threshold ({self.speaking_threshold}) must be at least "
                f"threshold ({self.threshold}): it is the stricter one"
            )
        for name in ("min_speech_ms", "min_silence_ms"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class SpeechOnset:
    start_s: float  # audio time the speech began: start of the run's first voiced frame
    confirmed_s: float  # end of the frame that confirmed it


@dataclass(frozen=True)
class SpeechOffset:
    end_s: float  # audio time the speech ended: end of the last voiced frame
    confirmed_s: float  # end of the frame that confirmed it


GateEvent = SpeechOnset | SpeechOffset


class VadGate:
    """Hysteresis over one stream's frames. One per session; not thread-safe."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new stream); no event is emitted."""
        self._speaking = False
        self._speech_start: float | None = None
        self._last_voiced: float | None = None
        self._in_hangover = False
        self._candidate_start: float | None = None
        self._candidate_voiced_ms = 0.0
        self._candidate_last_voiced = 0.0
        self._last_end: float | None = None

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def speech_start_s(self) -> float | None:
        """Start of the current speech (None when not speaking)."""
        return self._speech_start if self._speaking else None

    @property
    def last_voiced_s(self) -> float | None:
        """End of the last frame counted as speech (kept after an offset)."""
        return self._last_voiced

    @property
    def candidate_start_s(self) -> float | None:
        """Start of an onset not yet confirmed (None when there is none)."""
        return self._candidate_start

    def push(
        self, probability: float, frame_end_s: float, frame_s: float, strict: bool = False
    ) -> list[GateEvent]:
        """One frame: its speech probability, the audio time at its end and its length.

        ``strict``: the system is speaking now; an onset needs ``speaking_threshold``.
        """
        if not (isinstance(probability, int | float) and 0.0 <= probability <= 1.0):
            raise ValueError(f"probability must be a number in 0..1, got {probability!r}")
        if not (isinstance(frame_s, int | float) and math.isfinite(frame_s) and frame_s > 0):
            raise ValueError(f"frame_s must be a positive number, got {frame_s!r}")
        if not (isinstance(frame_end_s, int | float) and math.isfinite(frame_end_s)):
            raise ValueError(f"frame_end_s must be a finite number, got {frame_end_s!r}")
        if self._last_end is not None and frame_end_s <= self._last_end:
            raise ValueError(
                f"frames must move forward in time: {frame_end_s} after {self._last_end}"
            )
        self._last_end = frame_end_s
        if self._speaking:
            return self._while_speaking(probability, frame_end_s)
        return self._while_silent(probability, frame_end_s, frame_s, strict)

    def _while_silent(
        self, p: float, end: float, frame_s: float, strict: bool
    ) -> list[GateEvent]:
        cfg = self.config
        onset_threshold = cfg.speaking_threshold if strict else cfg.threshold
        if p >= onset_threshold:
            if self._candidate_start is None:
                self._candidate_start = end - frame_s
                self._candidate_voiced_ms = 0.0
            self._candidate_voiced_ms += frame_s * 1000.0
            self._candidate_last_voiced = end
            if self._candidate_voiced_ms + _EPS_MS >= cfg.min_speech_ms:
                start = self._candidate_start
                self._candidate_start = None
                self._speaking = True
                self._speech_start = start
                self._last_voiced = end
                self._in_hangover = False
                return [SpeechOnset(start_s=start, confirmed_s=end)]
        elif p < cfg.neg_threshold:
            self._candidate_start = None
        elif self._candidate_start is not None and (
            (end - self._candidate_last_voiced) * 1000.0 + _EPS_MS
            >= cfg.min_silence_ms
        ):
            self._candidate_start = None  # a candidate stalled as long as a hangover
        return []

    def _while_speaking(self, p: float, end: float) -> list[GateEvent]:
        cfg = self.config
        if p >= cfg.threshold:
            self._last_voiced = end
            self._in_hangover = False
        elif p >= cfg.neg_threshold:
            if not self._in_hangover:
                self._last_voiced = end
        else:
            self._in_hangover = True
        if self._in_hangover:
            assert self._last_voiced is not None
            if (end - self._last_voiced) * 1000.0 + _EPS_MS >= cfg.min_silence_ms:
                voiced_end = self._last_voiced
                self._speaking = False
                self._speech_start = None
                self._in_hangover = False
                return [SpeechOffset(end_s=voiced_end, confirmed_s=end)]
        return []
