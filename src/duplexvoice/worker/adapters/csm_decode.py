"""Incremental Mimi decoding with a bounded left context.

transformers' ``MimiModel.decode`` keeps no state between calls (its causal convolutions
and its decoder transformer start from scratch each time), so decoding each new frame
alone does not match a one-shot decode of the whole utterance. Re-decoding the new
frames together with the last ``context_frames`` frames before them, and keeping only
the samples of the new frames, matches a one-shot decode to float rounding while the
window covers the convolutions' receptive field, and stays close beyond it (only the
decoder transformer's far attention is cut off). The window is bounded, so the cost per
frame is flat however long the utterance gets; a full re-decode grows linearly.

The decoder is plain code over a ``decode`` callable (codes ``[num_codebooks, T]`` ->
``T * samples_per_frame`` float samples), so it is tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Codes = npt.NDArray[np.int64]
Samples = npt.NDArray[np.float32]
DecodeFn = Callable[[Codes], Samples]

MIMI_SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 Hz: the processor hard-codes Mimi's strides


class IncrementalMimiDecoder:
    """Turn codec frames into audio as they arrive, with a bounded re-decode window."""

    def __init__(
        self,
        decode: DecodeFn,
        num_codebooks: int,
        context_frames: int = 12,
        samples_per_frame: int = MIMI_SAMPLES_PER_FRAME,
    ) -> None:
        if context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {context_frames}")
        if num_codebooks < 1 or samples_per_frame < 1:
            raise ValueError("num_codebooks and samples_per_frame must be >= 1")
        self._decode = decode
        self._num_codebooks = num_codebooks
        self._context_frames = context_frames
        self._samples_per_frame = samples_per_frame
        # Only the last context_frames frames are kept: memory is bounded too.
        self._history = np.zeros((num_codebooks, 0), dtype=np.int64)
        self.frames_decoded = 0

    def push(self, frames: Codes) -> Samples:
        """Decode ``frames`` (``[num_codebooks, n]``, n >= 1) and return their samples
        (``n * samples_per_frame``)."""
        frames = np.asarray(frames, dtype=np.int64)
        if frames.ndim != 2 or frames.shape[0] != self._num_codebooks or frames.shape[1] < 1:
            raise ValueError(
                f"expected codes of shape [{self._num_codebooks}, n>=1], got {frames.shape}"
            )
        window = np.concatenate([self._history, frames], axis=1)
        audio = np.asarray(self._decode(window), dtype=np.float32).reshape(-1)
        wanted = frames.shape[1] * self._samples_per_frame
        if audio.size < wanted:
            raise ValueError(
                f"decoder returned {audio.size} samples for {window.shape[1]} frames; "
                f"expected at least {wanted}"
            )
        start = max(0, window.shape[1] - self._context_frames)
        self._history = window[:, start:]
        self.frames_decoded += frames.shape[1]
        return audio[audio.size - wanted :]
