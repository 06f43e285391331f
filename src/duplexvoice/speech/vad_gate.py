"""VAD hysteresis: per-frame speech probabilities (and onset cues) in, speech onsets
and offsets out.

Pure code: no numpy, no clock, no I/O. Time is the audio time at the end of each
frame, passed in by the caller (the :class:`~duplexvoice.speech.audio_in.Framer`'s
stamp), so the gate is tested with scripted inputs and gives the same answer
whatever the machine's load.

Frames. Each probability describes ``frame_s`` of audio ending at its time; frames may
overlap (Silero at a 256 hop: a 32 ms window every 16 ms). Voiced time is the union
of the voiced windows (an overlapping one adds only its new part), a speech starts
where its first voiced window starts and ends where the first window with no speech
starts (if that is before the end of the last voiced one). With frames that do not
overlap these are the plain sums and edges.

Each frame is one of three kinds, as in Silero's own segmenter (faster-whisper
``get_speech_timestamps``):

- voiced: ``p >= threshold`` (``speaking_threshold`` for an onset while the system
  itself is speaking, ``strict=True``);
- unvoiced: ``p < neg_threshold``;
- in between: keeps whatever is under way.

Onset. A voiced frame opens a candidate run. Voiced frames add to it; in-between
frames neither add nor break it; an unvoiced frame drops it (and so does an in-between
stretch as long as the hangover, so an old candidate cannot confirm much later). When
the run holds ``min_speech_ms`` of voiced audio (``speaking_min_speech_ms`` when
strict), :class:`SpeechOnset` reports the run's start (the speech began then) and the
confirming frame's end (when we knew).

Fast onset (strict only, when the caller passes an :class:`OnsetCue` per frame). The
barge-in target (``pause`` at the client within 80 ms of the speech onset, p95)
leaves the VAD about 50 ms, and the model needs the voiced part of a syllable: a
breathy or fricative start ("Hello", "Sorry", "Five") is 40-100 ms of audio it calls
silence. So while the system speaks, a frame that WebRTC VAD calls speech and whose
level is ``fast_rise_db`` over the tracked noise floor (and at least
``fast_min_level_db``) confirms an onset at once, ``fast=True``. Whether the speech
goes on is the model's alone: the gate is then speaking, and only voiced or
in-between probabilities keep it so, except that a fast onset's speech lasts at least
``fast_confirm_ms`` (a fricative start, "Stop", can take the model 200 ms to call
speech: ended sooner, one word would make two onsets). A noise (a cough, a knock,
typing) makes a fast onset too, and its offset follows ``fast_confirm_ms`` later, so
the reply pauses for about 300 ms, then goes on. A fast onset that no voiced frame
followed turns the fast onset off for ``fast_backoff_ms``, doubled for each such one
in a row up to ``fast_backoff_max_ms``; a voiced speech ends the back-off. So a quiet
room pays one short pause for an isolated noise, a noisy one a few, ever fewer.

Noise floor: the frame levels followed quickly downwards (time constant
``floor_fall_ms``) and slowly upwards (``floor_rise_db_per_s``), like a running
minimum: stationary noise at any level is the floor, never a rise; a step up of
20 dB (a fan switched on) costs at most two fast onsets before the floor gets there.

Offset. While speaking, voiced frames, and in-between frames before any silence,
extend the speech; the first unvoiced frame starts the hangover, which only a voiced
frame cancels (in-between frames do not). When ``min_silence_ms`` has passed since
the speech's end, :class:`SpeechOffset` reports that end.

Defaults (``bench/vad.py``: 42 clips of 7 speakers and 6 first sounds over a -60 dBFS
floor, 42 in white/pink noise at -40/-30/-20 dBFS, 7 clipped; 68 non-speech sounds
over the same beds, series of sounds, stationary noise; Silero at a 256 hop):

- ``threshold`` 0.5 / ``neg_threshold`` 0.35: Silero's standard.
- ``min_speech_ms`` 48 (two overlapping windows): the user's turn while the system is
  silent; against the old one window at a 512 hop (states renewed alike), the onset
  is confirmed 12 ms later (p50; it still starts where the speech did), false onsets
  on non-speech fall from 13 to 3, and the offset is no later: ``end_s`` 34/156 ms
  after the true end (p50/p95, from 40/184), confirmed 194/316 ms after it (from
  200/344); 119 extra onsets in 133 clips (phrase pauses) against 114.
- ``speaking_threshold`` 0.5 (was 0.7) and ``speaking_min_speech_ms`` 32 (one
  window): the barge-in's model path (with the fast onset off or backed off), 42/98 ms
  (p50/p95 over a quiet floor) with 3-5 false onsets per 17 sounds and bed, against
  65/113 ms at 0.7 and 62/114 ms with two windows.
  0.7 was there to resist the system's own voice leaking back; it does not (Silero
  gives the leak p > 0.99 down to -40 dB under the user; 4 of 6 echo clips make an
  onset at 0.5 and 0.7 alike): that is the echo canceller's job.
- ``fast_rise_db`` 12: 9 dB gave the same onsets in a quiet room and more fast
  onsets over a -20 dBFS bed (9 against 5 of 17 sounds); 6 dB fired on stationary
  noise; 15 dB was slower in a -40 dBFS bed (p95 94 ms against 87). WebRTC at
  aggressiveness 1: at 3 the quiet-room p95 was 81 ms (soft fricatives).
- ``fast_backoff_ms`` 2000, doubling to 60 s: three series of noises (8 coughs in
  14 s, 10 s of typing, 6 knocks) made 13 holds, 40 without it; ``bench/conversation``'s
  set in one stream, twice: 10 holds on its 20 bursts (20 without), every
  interruption still confirmed within 26 ms.
- ``min_silence_ms`` 160: bridges the gaps inside and between words; pauses between
  phrases are the end-of-turn logic's business, on top of this.

Errors: bad settings, a probability outside 0..1 (or NaN), a non-positive frame
length, time running backwards, or a bad cue are ``ValueError``; the gate's state is
unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Accumulated frame lengths are sums of floats (3 x 0.02 s != 0.06 s exactly).
_EPS_MS = 1e-6
SILENT_DB = -120.0  # the level of digital silence (cues clamp to it)


@dataclass(frozen=True)
class GateConfig:
    """Hysteresis settings; the defaults are measured (see the module docstring)."""

    threshold: float = 0.5  # a frame is speech if p >= this (Silero's standard)
    neg_threshold: float = 0.35  # silence if p < this; between: keep state (threshold - 0.15)
    speaking_threshold: float = 0.5  # onset threshold while the system speaks (strict)
    min_speech_ms: float = 48.0  # voiced audio that confirms an onset (two Silero windows)
    min_silence_ms: float = 160.0  # audio since the last voiced frame that confirms an offset
    speaking_min_speech_ms: float = 32.0  # the same, strict (one Silero window)
    fast_onset: bool = True  # strict: a sudden speech-like rise confirms at once (cues)
    fast_rise_db: float = 12.0  # ... that far above the noise floor
    fast_min_level_db: float = -42.0  # ... and at least this loud (dBFS): over an echo residual
    fast_min_ms: float = 0.0  # ... for this long (0: one frame)
    fast_confirm_ms: float = 300.0  # a fast onset's speech lasts this long, unless voiced
    floor_rise_db_per_s: float = 3.0  # the floor follows louder audio this slowly
    floor_fall_ms: float = 50.0  # ... and quieter audio with this time constant
    fast_backoff_ms: float = 2000.0  # no fast onset this long after an unconfirmed one
    fast_backoff_max_ms: float = 60_000.0  # the pause doubles per unconfirmed one, to this

    def __post_init__(self) -> None:
        for name in ("threshold", "neg_threshold", "speaking_threshold"):
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value <= 1.0):
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
        for name in ("min_speech_ms", "min_silence_ms", "speaking_min_speech_ms",
                     "fast_rise_db", "fast_min_ms", "fast_confirm_ms", "fast_backoff_ms",
                     "fast_backoff_max_ms"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("floor_rise_db_per_s", "floor_fall_ms"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (_is_number(self.fast_min_level_db) and SILENT_DB <= self.fast_min_level_db <= 0):
            raise ValueError(
                f"fast_min_level_db must be a number in {SILENT_DB:g}..0 dBFS, "
                f"got {self.fast_min_level_db!r}"
            )
        if self.fast_backoff_max_ms < self.fast_backoff_ms:
            raise ValueError(
                f"fast_backoff_max_ms ({self.fast_backoff_max_ms}) must be at least "
                f"fast_backoff_ms ({self.fast_backoff_ms})"
            )
        if not isinstance(self.fast_onset, bool):
            raise ValueError(f"fast_onset must be true or false, got {self.fast_onset!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class OnsetCue:
    """What the fast onset looks at in one frame, besides the probability: the frame's
    level in dBFS (clamped to -120 for digital silence) and whether a cheap detector
    (WebRTC VAD) calls some of it speech."""

    level_db: float
    speechlike: bool


@dataclass(frozen=True)
class SpeechOnset:
    start_s: float  # audio time the speech began: start of the run's first voiced frame
    confirmed_s: float  # end of the frame that confirmed it
    fast: bool = False  # confirmed by the fast onset (a rise), not yet by the probability


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
        self._floor_db: float | None = None
        self._confirmed = False  # the current speech had a voiced frame (not only a rise)
        self._fast_at = -math.inf  # when the current speech's fast onset was confirmed
        self._unconfirmed_fast = 0  # fast onsets in a row that no voiced frame followed
        self._fast_blocked_until = -math.inf
        self._rise_ms = 0.0  # how long the cues have shown a rise, frame after frame

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

    @property
    def noise_floor_db(self) -> float | None:
        """The tracked noise floor (dBFS), None before the first cue."""
        return self._floor_db

    @property
    def fast_blocked_until_s(self) -> float:
        """No fast onset before this audio time (-inf: none blocked)."""
        return self._fast_blocked_until

    def push(
        self, probability: float, frame_end_s: float, frame_s: float, strict: bool = False,
        cue: OnsetCue | None = None,
    ) -> list[GateEvent]:
        """One frame: its speech probability, the audio time at its end and its length
        (the audio the probability describes; frames may overlap, when their ends
        advance by less than that).

        ``strict``: the system is speaking now; an onset needs ``speaking_threshold``,
        or, with a ``cue``, a fast onset may confirm it at once.
        """
        if not (_is_number(probability) and 0.0 <= probability <= 1.0):
            raise ValueError(f"probability must be a number in 0..1, got {probability!r}")
        if not (_is_number(frame_s) and math.isfinite(frame_s) and frame_s > 0):
            raise ValueError(f"frame_s must be a positive number, got {frame_s!r}")
        if not (_is_number(frame_end_s) and math.isfinite(frame_end_s)):
            raise ValueError(f"frame_end_s must be a finite number, got {frame_end_s!r}")
        if self._last_end is not None and frame_end_s <= self._last_end:
            raise ValueError(
                f"frames must move forward in time: {frame_end_s} after {self._last_end}"
            )
        if cue is not None and not (
            isinstance(cue, OnsetCue) and _is_number(cue.level_db)
            and math.isfinite(cue.level_db) and isinstance(cue.speechlike, bool)
        ):
            raise ValueError(f"cue must be an OnsetCue with a finite level, got {cue!r}")
        # New audio since the last frame (the hop); a gap counts as one frame.
        hop = frame_s if self._last_end is None else min(frame_s, frame_end_s - self._last_end)
        self._last_end = frame_end_s
        fast = False
        if cue is not None:
            rising = self._rises(cue)
            self._rise_ms = self._rise_ms + hop * 1000.0 if rising else 0.0
            fast = (
                rising and strict and not self._speaking and self.config.fast_onset
                and frame_end_s - hop >= self._fast_blocked_until
                and self._rise_ms + _EPS_MS >= self.config.fast_min_ms
            )
            self._track_floor(max(cue.level_db, SILENT_DB), hop)
        if self._speaking:
            return self._while_speaking(probability, frame_end_s, frame_s)
        return self._while_silent(probability, frame_end_s, frame_s, strict, fast)

    # -- fast onset ------------------------------------------------------------------

    def _rises(self, cue: OnsetCue) -> bool:
        """Speech-like and loud enough over the floor (before this frame updates it)."""
        cfg = self.config
        if self._floor_db is None or not cue.speechlike:
            return False
        need = max(cfg.fast_min_level_db, self._floor_db + cfg.fast_rise_db)
        return cue.level_db >= need

    def _track_floor(self, level: float, frame_s: float) -> None:
        cfg = self.config
        if self._floor_db is None:
            self._floor_db = level
        elif level < self._floor_db:
            keep = math.exp(-frame_s * 1000.0 / cfg.floor_fall_ms)
            self._floor_db = level + (self._floor_db - level) * keep
        else:
            self._floor_db = min(level, self._floor_db + cfg.floor_rise_db_per_s * frame_s)

    def _speech_ended(self, end: float) -> None:
        """Bookkeeping of the fast onset's back-off when a speech ends at ``end``."""
        cfg = self.config
        if self._confirmed:
            self._unconfirmed_fast = 0
            self._fast_blocked_until = -math.inf
            return
        self._unconfirmed_fast += 1
        pause_ms = min(cfg.fast_backoff_max_ms,
                       cfg.fast_backoff_ms * 2.0 ** min(self._unconfirmed_fast - 1, 60))
        self._fast_blocked_until = end + pause_ms / 1000.0

    # -- hysteresis ------------------------------------------------------------------

    def _while_silent(
        self, p: float, end: float, frame_s: float, strict: bool, fast: bool
    ) -> list[GateEvent]:
        cfg = self.config
        onset_threshold = cfg.speaking_threshold if strict else cfg.threshold
        min_speech = cfg.speaking_min_speech_ms if strict else cfg.min_speech_ms
        voiced = p >= onset_threshold
        if voiced or fast:
            if self._candidate_start is None:
                self._candidate_start = end - frame_s
                self._candidate_voiced_ms = 0.0
            if voiced:
                # The union of the run's voiced frames: overlapping ones add their new part.
                new = frame_s if self._candidate_voiced_ms == 0.0 else min(
                    frame_s, end - self._candidate_last_voiced)
                self._candidate_voiced_ms += new * 1000.0
                self._candidate_last_voiced = end
            by_probability = voiced and self._candidate_voiced_ms + _EPS_MS >= min_speech
            if by_probability or fast:
                start = self._candidate_start
                self._confirmed = p >= cfg.threshold or self._candidate_voiced_ms > 0
                self._candidate_start = None
                self._speaking = True
                self._speech_start = start
                self._last_voiced = end
                self._in_hangover = False
                self._fast_at = end if not by_probability else -math.inf
                return [SpeechOnset(start_s=start, confirmed_s=end, fast=not by_probability)]
        elif p < cfg.neg_threshold:
            self._candidate_start = None
        elif self._candidate_start is not None and (
            (end - self._candidate_last_voiced) * 1000.0 + _EPS_MS
            >= cfg.min_silence_ms
        ):
            self._candidate_start = None  # a candidate stalled as long as a hangover
        return []

    def _while_speaking(self, p: float, end: float, frame_s: float) -> list[GateEvent]:
        cfg = self.config
        if p >= cfg.threshold:
            self._last_voiced = end
            self._in_hangover = False
            self._confirmed = True
        elif p >= cfg.neg_threshold:
            if not self._in_hangover:
                self._last_voiced = end
        elif not self._in_hangover:
            self._in_hangover = True
            # This frame has no speech: with overlapping frames the speech ended before
            # it began, not at the end of the last voiced one.
            assert self._last_voiced is not None
            self._last_voiced = max(self._speech_start or -math.inf,
                                    min(self._last_voiced, end - frame_s))
        # A fast onset's speech waits for the model a little longer than a hangover: a
        # fricative start ("Stop") can take it 200 ms to call speech.
        waiting = not self._confirmed and (
            (end - self._fast_at) * 1000.0 + _EPS_MS < cfg.fast_confirm_ms)
        if self._in_hangover and not waiting:
            assert self._last_voiced is not None
            if (end - self._last_voiced) * 1000.0 + _EPS_MS >= cfg.min_silence_ms:
                voiced_end = self._last_voiced
                self._speaking = False
                self._speech_start = None
                self._in_hangover = False
                self._speech_ended(voiced_end)
                return [SpeechOffset(end_s=voiced_end, confirmed_s=end)]
        return []
