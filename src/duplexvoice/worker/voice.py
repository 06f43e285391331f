"""A loaded voice: one adapter plus what every family shares.

The adapter only turns text into PCM at its native rate. This layer adds warm-up
(which also calibrates the voice's loudness gain, fixed from then on: each session
refines its own copy), the 48 kHz / 20 ms pipeline, and real-time-factor metrics.
It is synchronous on purpose: the worker calls :meth:`UtteranceRenderer.step` on a
synthesis thread, one chunk at a time, so the event loop only ever moves finished
frames.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from duplexvoice.audio.loudness import SessionLoudness, VoiceLoudness
from duplexvoice.audio.pipeline import AudioPipeline
from duplexvoice.worker.adapters import ADAPTERS, adapter_for
from duplexvoice.worker.adapters.base import FloatAudio, SynthesisOptions, TTSAdapter
from duplexvoice.worker.voicepacks import VoicePack

# Weight of the newest utterance in the voice's running real-time factor.
_RTF_ALPHA = 0.2


@dataclass
class RtfMeter:
    """Running real-time factor (synthesis seconds per audio second), thread-safe."""

    value: float = 0.0
    samples: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, busy_s: float, audio_s: float) -> None:
        if audio_s <= 0:
            return
        rtf = busy_s / audio_s
        with self._lock:
            self.value = rtf if self.samples == 0 else self.value + _RTF_ALPHA * (rtf - self.value)
            self.samples += 1


class LoadedVoice:
    """A resident model, shared by every session that uses it."""

    def __init__(self, pack: VoicePack, adapter: TTSAdapter) -> None:
        self.pack = pack
        self.adapter = adapter
        self.loudness = VoiceLoudness()
        self.rtf = RtfMeter()
        self.warmup_ms = 0.0

    @classmethod
    def load(
        cls,
        pack: VoicePack,
        device: str,
        warmup_text: str | None,
        adapters: Mapping[str, type[TTSAdapter]] = ADAPTERS,
    ) -> LoadedVoice:
        """Load the model with its family's adapter from ``adapters`` and, if asked,
        warm it up (slow: call on a thread)."""
        return cls.warmed(pack, adapter_for(pack.family, adapters).load(pack, device), warmup_text)

    @classmethod
    def load_lora(cls, pack: VoicePack, base: LoadedVoice) -> LoadedVoice:
        """Load the LoRA voice ``pack`` over the resident, warm ``base`` (on a thread).

        No warm-up: an adapter loads in tens of milliseconds and the base is warm, while
        a warm-up utterance would cost a whole synthesis (and take turns from the
        base's sessions). Its loudness calibration is the base's.
        """
        voice = cls(pack, base.adapter.load_lora(pack))
        voice.loudness = voice.loudness.seeded_from(base.loudness)
        return voice

    @classmethod
    def warmed(cls, pack: VoicePack, adapter: TTSAdapter, warmup_text: str | None) -> LoadedVoice:
        """A voice around a loaded adapter, warmed up (and its loudness calibrated) if asked."""
        voice = cls(pack, adapter)
        if warmup_text:
            start = time.perf_counter()
            options = voice.adapter.warmup_options()
            try:
                chunks = list(voice.adapter.stream(warmup_text, options, threading.Event()))
            except BaseException:
                adapter.close()  # the load fails: nobody else would free the model
                raise
            voice.warmup_ms = (time.perf_counter() - start) * 1000
            if chunks:
                voice.loudness.calibrate(np.concatenate(chunks), voice.adapter.sample_rate)
        return voice

    @property
    def model_id(self) -> str:
        return self.pack.model_id

    def close(self) -> None:
        self.adapter.close()

    def renderer(
        self, options: SynthesisOptions, cancel: threading.Event, loudness: SessionLoudness
    ) -> UtteranceRenderer:
        """One utterance of a session whose loudness state is ``loudness``."""
        return UtteranceRenderer(self, options, cancel, loudness)


class UtteranceRenderer:
    """Renders one utterance, text segment by segment, into 20 ms frames.

    Not thread-safe: one caller at a time (the worker awaits each step before the
    next), though successive steps may run on different threads.
    """

    def __init__(
        self, voice: LoadedVoice, options: SynthesisOptions, cancel: threading.Event,
        loudness: SessionLoudness,
    ) -> None:
        self._voice = voice
        self._options = options
        self._cancel = cancel
        self._pipeline = AudioPipeline(voice.adapter.sample_rate, loudness)
        self._chunks: Iterator[FloatAudio] | None = None
        # Held while the segment's generator runs (step) or is closed: a stopped
        # utterance's close may be handed to another thread while a step is in flight.
        self._generator_lock = threading.Lock()
        self.busy_s = 0.0
        self.inline = False  # the current segment may be stepped on the event loop

    def begin(self, text: str) -> None:
        """Start the next text segment; call :meth:`step` until it returns None."""
        self._chunks = self._voice.adapter.stream(text, self._options, self._cancel)
        self.inline = self._voice.adapter.runs_inline(text)

    @property
    def open(self) -> bool:
        """A segment's generator is still open (stopped or failed before its end)."""
        return self._chunks is not None

    def step(self) -> list[bytes] | None:
        """Synthesize the next chunk of the current segment: frames, or None at its end."""
        start = time.perf_counter()
        try:
            with self._generator_lock:
                if self._chunks is None:
                    return None
                chunk = next(self._chunks, None)
                if chunk is None or self._cancel.is_set():
                    self._close_locked()
                    return None
            return self._pipeline.push(chunk)
        finally:
            self.busy_s += time.perf_counter() - start

    def close(self) -> None:
        """Close the current segment's generator, so the adapter stops its engine and
        cleans up (joins a generation thread, frees a request's state). Model adapters
        may block here for up to one model step: call it on a synthesis thread."""
        with self._generator_lock:
            self._close_locked()

    def _close_locked(self) -> None:
        chunks, self._chunks = self._chunks, None
        close = getattr(chunks, "close", None)
        if close is not None:
            close()

    def finish(self) -> list[bytes]:
        """The utterance's last frames (the final one padded); records its RTF."""
        frames = self._pipeline.finish()
        self._voice.rtf.add(self.busy_s, self._pipeline.audio_seconds)
        return frames
