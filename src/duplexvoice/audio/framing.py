"""Float audio to PCM16, and PCM16 to exact 20 ms wire frames.

Every frame a worker emits is exactly :data:`FRAME_BYTES` of little-endian PCM16
(WIRE §1). Adapters yield chunks of any length, so :class:`Framer` carries the
remainder of each push into the next one and pads only the very last frame of an
utterance with silence.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from duplexvoice.audio import FRAME_SAMPLES

FloatAudio = npt.NDArray[np.float32]
Pcm16 = npt.NDArray[np.int16]

_PCM16_SCALE = 32767.0
# Explicit little-endian so the wire format does not depend on the host.
_WIRE_DTYPE = np.dtype("<i2")


def float_to_pcm16(x: FloatAudio) -> Pcm16:
    """Clip to [-1, 1], scale by 32767 and round to the nearest integer.

    NaN becomes 0 so one bad sample from a model cannot turn into an invalid cast.
    """
    y = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    y *= _PCM16_SCALE
    np.rint(y, out=y)
    if not np.isfinite(y).all():
        y = np.nan_to_num(y, nan=0.0)
    return y.astype(np.int16)


class Framer:
    """Cuts a stream of PCM16 samples into exact frames, carrying remainders.

    Not thread-safe: one per utterance.
    """

    def __init__(self, frame_samples: int = FRAME_SAMPLES) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        self._frame_samples = frame_samples
        self._pending: Pcm16 = np.zeros(0, dtype=np.int16)

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    @property
    def pending_samples(self) -> int:
        """Samples held back until the next push completes a frame (< one frame)."""
        return int(self._pending.size)

    def push(self, samples: Pcm16) -> list[bytes]:
        """Add samples; return every frame now complete (possibly none)."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {samples.shape}")
        if samples.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {samples.dtype}")
        if samples.size == 0:
            return []
        buf = np.concatenate((self._pending, samples)) if self._pending.size else samples
        n_frames = buf.size // self._frame_samples
        cut = n_frames * self._frame_samples
        # Copy the remainder so we never keep a view into the caller's array.
        self._pending = buf[cut:].copy()
        if n_frames == 0:
            return []
        wire = buf[:cut].astype(_WIRE_DTYPE, copy=False).tobytes()
        step = self._frame_samples * _WIRE_DTYPE.itemsize
        return [wire[i : i + step] for i in range(0, len(wire), step)]

    def flush(self) -> list[bytes]:
        """Return the remainder zero-padded to one frame, or [] if nothing is pending."""
        if self._pending.size == 0:
            return []
        frame = np.zeros(self._frame_samples, dtype=_WIRE_DTYPE)
        frame[: self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        return [frame.tobytes()]
