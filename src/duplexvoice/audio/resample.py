"""Streaming resampling from an adapter's native rate to the 48 kHz wire rate.

One :class:`StreamResampler` per utterance keeps soxr's filter state across chunks,
so chunk edges are seamless (resampling each chunk alone would click at every edge).
soxr holds back a little output (its filter delay plus internal blocking; with "HQ"
from 22.05 kHz about 5-40 ms) until more input or :meth:`StreamResampler.flush`.
"""

from __future__ import annotations

import numpy as np
import soxr

from duplexvoice.audio import SAMPLE_RATE
from duplexvoice.audio.framing import FloatAudio

QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
_EMPTY = np.zeros(0, dtype=np.float32)


class StreamResampler:
    """Stateful mono float32 resampler; a passthrough when the rates are equal.

    Not thread-safe: one per utterance. After :meth:`flush` it is finished.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=quality
            )
        self._finished = False

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    @property
    def finished(self) -> bool:
        return self._finished

    def process(self, x: FloatAudio) -> FloatAudio:
        """Resample one chunk; the output may lag the input by soxr's delay."""
        if self._finished:
            raise RuntimeError("StreamResampler already flushed")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono audio, got shape {x.shape}")
        if self._stream is None:
            return x.copy()
        if x.size == 0:
            return _EMPTY.copy()
        out: FloatAudio = self._stream.resample_chunk(x, last=False)
        return out

    def flush(self) -> FloatAudio:
        """Return the held-back tail; the resampler is finished afterwards."""
        if self._finished:
            raise RuntimeError("StreamResampler already flushed")
        self._finished = True
        if self._stream is None:
            return _EMPTY.copy()
        out: FloatAudio = self._stream.resample_chunk(_EMPTY, last=True)
        return out
