"""Microphone audio in: PCM16 bytes at the client's rate -> 16 kHz float32 frames.

Two small pieces, both per session and cheap enough for the event loop:

- :class:`MicResampler` turns raw PCM16LE mono bytes of any length, at any rate from
  8 to 48 kHz, into float32 at 16 kHz (what VAD and Whisper use). It keeps one soxr
  ``ResampleStream`` for the whole session, so chunk edges are seamless (resampling
  each chunk alone clicks at every edge). Odd byte counts are an error (WIRE §1.3),
  never silently carried over: a half sample means the client's framing is broken.
- :class:`Framer` cuts that float stream into fixed frames (the VAD's frame size),
  carrying the remainder, and stamps each frame with the audio time at its end,
  counted in samples since the session's first sample, so it is exact and never
  drifts with wall-clock jitter.

Time base: soxr compensates its filter delay, so output sample ``k`` is audio time
``k / 16000`` exactly; it only *arrives* late (it holds some output back until more
input comes). That hold-back is latency for barge-in, so the default quality is
``"LQ"``: measured from 48 kHz with 20 ms chunks, LQ holds back 11 ms on average
(20 ms at most) against HQ's 21 ms (37 ms), and from 8 kHz 33 ms (61 ms) against 63 ms
(115 ms). LQ's passband (-3 dB at 6.5 kHz, anti-aliasing > 100 dB) is plenty for
voice activity and speech recognition. ``"QQ"`` holds nothing back but has no
anti-alias filter: a 10 kHz tone in a 48 kHz input comes out at full level.

A rate change mid-session (the client sends a new ``input_sample_rate``) is
:meth:`MicResampler.with_rate`: the old stream is flushed and its tail comes out
first from the new resampler, so no audio is lost and the Framer's clock, which only
counts 16 kHz samples, runs on untouched.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import soxr

from duplexvoice.speech import SPEECH_RATE

FloatAudio = npt.NDArray[np.float32]

MIN_INPUT_RATE = 8000
MAX_INPUT_RATE = 48000
QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
DEFAULT_QUALITY = "LQ"

_EMPTY = np.zeros(0, dtype=np.float32)
_INT16_SCALE = np.float32(1.0 / 32768.0)


def check_input_rate(rate: object) -> int:
    """``rate`` as an int if it is a microphone rate we accept, else ``ValueError``."""
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ValueError(f"input sample rate must be an integer, got {rate!r}")
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise ValueError(
            f"input sample rate must be {MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz, got {rate}"
        )
    return rate


def pcm16_to_float(pcm: bytes | bytearray | memoryview) -> FloatAudio:
    """PCM16LE mono bytes -> float32 in [-1, 1); an odd byte count is a ``ValueError``."""
    n = len(pcm) if not isinstance(pcm, memoryview) else pcm.nbytes
    if n % 2:
        raise ValueError(
            f"PCM16 audio must have an even number of bytes (2 per sample), got {n}"
        )
    samples = np.frombuffer(pcm, dtype="<i2")
    out: FloatAudio = samples.astype(np.float32) * _INT16_SCALE
    return out


class MicResampler:
    """Streaming PCM16 bytes (``input_rate``) -> float32 (``output_rate``), one per session.

    ``push`` returns whatever output is ready (possibly nothing: soxr holds a little
    back); ``flush`` returns the rest and finishes the resampler. Not thread-safe.
    """

    def __init__(
        self,
        input_rate: int,
        output_rate: int = SPEECH_RATE,
        quality: str = DEFAULT_QUALITY,
    ) -> None:
        self.input_rate = check_input_rate(input_rate)
        if isinstance(output_rate, bool) or not isinstance(output_rate, int) or output_rate <= 0:
            raise ValueError(f"output rate must be a positive integer, got {output_rate!r}")
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
        self.output_rate = output_rate
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        if input_rate != output_rate:
            self._stream = soxr.ResampleStream(
                input_rate, output_rate, 1, dtype="float32", quality=quality
            )
        self._pending = _EMPTY  # a previous resampler's tail, handed over by with_rate
        self._samples_in = 0
        self._samples_out = 0
        self._finished = False

    @property
    def samples_in(self) -> int:
        """Input samples taken by this resampler (at ``input_rate``)."""
        return self._samples_in

    @property
    def samples_out(self) -> int:
        """Output samples returned so far, including those of the resamplers this one
        replaced through :meth:`with_rate`: the session's audio clock in samples."""
        return self._samples_out

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, pcm: bytes | bytearray | memoryview) -> FloatAudio:
        """Resample one chunk of any length; raises ``ValueError`` on an odd byte count
        (and changes nothing)."""
        if self._finished:
            raise RuntimeError("MicResampler already flushed")
        x = pcm16_to_float(pcm)
        self._samples_in += x.size
        if self._stream is None:
            out = x
        elif x.size:
            out = self._stream.resample_chunk(x, last=False)
        else:
            out = _EMPTY
        return self._emit(out)

    def flush(self) -> FloatAudio:
        """The held-back tail; the resampler is finished afterwards."""
        if self._finished:
            raise RuntimeError("MicResampler already flushed")
        self._finished = True
        out = _EMPTY if self._stream is None else self._stream.resample_chunk(_EMPTY, last=True)
        return self._emit(out)

    def with_rate(self, input_rate: int) -> MicResampler:
        """A resampler for a new input rate that carries on this one's stream.

        This one is flushed and finished; its tail comes out first from the new
        one's next ``push`` (or ``flush``), and ``samples_out`` carries over, so the
        audio clock runs on. The rate is validated before anything changes; the same
        rate again returns this resampler, untouched.
        """
        if self._finished:
            raise RuntimeError("MicResampler already flushed")
        if input_rate == self.input_rate and type(input_rate) is int:
            return self
        successor = MicResampler(input_rate, self.output_rate, self.quality)
        tail = self.flush()
        successor._pending = tail
        successor._samples_out = self._samples_out - tail.size  # counted when it comes out
        return successor

    def _emit(self, out: FloatAudio) -> FloatAudio:
        if self._pending.size:
            out = np.concatenate([self._pending, out])
            self._pending = _EMPTY
        self._samples_out += out.size
        return out


class Frame(NamedTuple):
    samples: FloatAudio
    end_sample: int  # samples since the session's first sample, at the framer's rate
    end_s: float  # the same as audio time in seconds


class Framer:
    """Cuts a float32 stream into frames of ``frame_samples``, carrying the remainder.

    Each frame is stamped with the audio time at its end, counted in samples since
    ``start_sample`` (0: the session's first sample), so times are sample-exact.
    """

    def __init__(self, frame_samples: int, rate: int = SPEECH_RATE, start_sample: int = 0) -> None:
        if isinstance(frame_samples, bool) or not isinstance(frame_samples, int):
            raise ValueError(f"frame_samples must be an integer, got {frame_samples!r}")
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        self.frame_samples = frame_samples
        self.rate = rate
        self.frame_s = frame_samples / rate
        self._framed = start_sample  # end of the last frame handed out
        self._rest = _EMPTY

    @property
    def samples_framed(self) -> int:
        """End of the last frame handed out, in samples (the clock)."""
        return self._framed

    @property
    def time_s(self) -> float:
        return self._framed / self.rate

    @property
    def pending(self) -> int:
        """Samples waiting for the next frame (always fewer than ``frame_samples``)."""
        return int(self._rest.size)

    def push(self, audio: FloatAudio) -> list[Frame]:
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono audio, got shape {x.shape}")
        if self._rest.size:
            x = np.concatenate([self._rest, x])
        n = x.size // self.frame_samples
        frames: list[Frame] = []
        for i in range(n):
            self._framed += self.frame_samples
            chunk = x[i * self.frame_samples : (i + 1) * self.frame_samples]
            frames.append(Frame(chunk, self._framed, self._framed / self.rate))
        # Copy the remainder so a caller's buffer is never kept alive or aliased.
        self._rest = x[n * self.frame_samples :].copy()
        return frames

    def reset(self) -> None:
        """Drop the remainder; the clock keeps counting from the last frame."""
        self._rest = _EMPTY
