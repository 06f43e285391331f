"""Where a voice ends in a clip, found acoustically: the end of the last 20 ms frame
above the clip's noise floor. Pure numpy, no model.

A latency "from the end of the voice" must count from what a listener hears as the
end, not from a VAD's offset (which lags it, by design, to bridge pauses). The clip is
one turn as a microphone gives it: speech and the room's noise around it, with the
silence after the turn. The rule:

- the level of each 20 ms frame (RMS, dBFS); the noise floor is a low percentile of
  those levels (the clip's quietest tenth: its pauses and the silence around it);
- a frame is voiced when it is ``margin_db`` above the floor (and within
  ``range_db`` of the loudest frame, so that the last whisper of a fade into digital
  silence does not count);
- voiced frames closer than ``bridge_ms`` are one stretch (a stop consonant's closure
  before its release belongs to the word); a stretch shorter than ``min_voice_ms``
  is a click, not a voice;
- the voice ends at the end of the last stretch that is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FRAME_MS = 20
_DIGITAL_SILENCE_DB = -120.0  # the level given to an all-zero frame


@dataclass(frozen=True)
class VoiceEnd:
    """``end``: the sample just after the last voiced frame (None: no voice in the
    clip); ``floor_db`` and ``threshold_db``: the levels the rule used (dBFS)."""

    end: int | None
    floor_db: float
    threshold_db: float


def frame_levels_db(audio: npt.ArrayLike, rate: int,
                    frame_ms: int = FRAME_MS) -> npt.NDArray[np.float64]:
    """RMS level of each whole ``frame_ms`` frame, in dBFS (full scale 1.0); a last
    partial frame is left out."""
    samples = np.asarray(audio, dtype=np.float64).ravel()
    size = rate * frame_ms // 1000
    if size <= 0:
        raise ValueError(f"a {frame_ms} ms frame at {rate} Hz has no sample")
    frames = samples[:len(samples) // size * size].reshape(-1, size)
    power = np.mean(frames * frames, axis=1)
    with np.errstate(divide="ignore"):
        levels = 10 * np.log10(power)
    return np.asarray(np.maximum(levels, _DIGITAL_SILENCE_DB), dtype=np.float64)


def find_voice_end(audio: npt.ArrayLike, rate: int, *, margin_db: float = 10.0,
                   range_db: float = 50.0, floor_percentile: float = 10.0,
                   bridge_ms: int = 120, min_voice_ms: int = 60,
                   frame_ms: int = FRAME_MS) -> VoiceEnd:
    """The end of the voice in ``audio`` (mono, float, full scale 1.0); see the
    module's docstring for the rule."""
    levels = frame_levels_db(audio, rate, frame_ms)
    if not len(levels):
        return VoiceEnd(None, _DIGITAL_SILENCE_DB, _DIGITAL_SILENCE_DB)
    floor = float(np.percentile(levels, floor_percentile))
    threshold = max(floor + margin_db, float(np.max(levels)) - range_db)
    voiced = np.flatnonzero(levels > threshold)
    if not len(voiced):
        return VoiceEnd(None, floor, threshold)
    bridge = max(1, bridge_ms // frame_ms)
    shortest = max(1, -(-min_voice_ms // frame_ms))
    # Stretches of voiced frames, gaps under ``bridge`` frames bridged: [first, last].
    breaks = np.flatnonzero(np.diff(voiced) > bridge)
    firsts = np.concatenate([voiced[:1], voiced[breaks + 1]])
    lasts = np.concatenate([voiced[breaks], voiced[-1:]])
    for first, last in zip(firsts[::-1], lasts[::-1], strict=True):
        if last - first + 1 >= shortest:
            size = rate * frame_ms // 1000
            return VoiceEnd(int(last + 1) * size, floor, threshold)
    return VoiceEnd(None, floor, threshold)
