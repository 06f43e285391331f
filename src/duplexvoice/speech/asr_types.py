"""The speech recognizer's data: its configuration, its result, its counters, its
errors, and the one method an engine implements (so the queue is testable without
a model).

Errors::

    AsrError               base class of everything raised by duplexvoice.speech.asr
     +-- AsrBusy           too many finals are waiting; retryable (the queue drains)
     +-- AsrClosed         the transcriber was closed; not retryable
     +-- AsrInputError     the audio cannot be transcribed (not 1-D, not finite, too
     |                     long for a final); also a ValueError; not retryable
     +-- AsrModelError     the model cannot be loaded or run (path, device, compute
                           type); the library's own exception is its __cause__
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

FloatAudio = npt.NDArray[np.float32]


class AsrConfig(BaseModel):
    """How speech is recognized. One instance per orchestrator (the model is shared):
    ``conversation.asr`` of its config (flags ``--asr-<option>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(
        None, description="faster-whisper (CTranslate2) model directory (none or empty: "
        "the packaged tiny.en)"
    )
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where the model runs")
    compute_type: str = Field(
        "int8", min_length=1, description="CTranslate2 compute type (int8, float16, ...)"
    )
    cpu_threads: int = Field(
        0, ge=0, le=256, description="CPU threads of the model (0: the cores, at most 4)"
    )
    language: str = Field(
        "en", min_length=2, description="spoken language (English-only models: en)"
    )
    beam_size: int = Field(
        1, ge=1, le=10, description="beam width of finals (1: greedy, about twice as fast "
        "as 5 with tiny.en, and as accurate on the reference set); partials are greedy"
    )
    window_margin_s: float = Field(
        3.0, ge=0.5, le=20.0,
        description="encoder padding after the audio; less is faster but loops more often",
    )
    speech_gate: bool = Field(
        True, description="decode only audio where Silero VAD hears speech (no words from noise)"
    )
    nice: int = Field(
        5, ge=0, le=19,
        description="how much lower the recognizer's threads run than the rest of the process "
        "(Linux; 0: the same): under load the event loop, which paces audio, goes first",
    )
    max_queue: int = Field(
        16, ge=1, le=1000,
        description="finals waiting for the model before new ones are refused (ASR_BUSY)"
    )
    max_final_s: float = Field(
        120.0, gt=0, le=3600, description="longest audio accepted for a final transcript"
    )

    @field_validator("model_path")
    @classmethod
    def _empty_is_packaged(cls, value: str | None) -> str | None:
        return value or None

    @property
    def threads(self) -> int:
        """The model's CPU threads: the library's default of 4 is more than a small
        machine has."""
        return self.cpu_threads or min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Recognition:
    """What was heard. ``compute_ms`` is the model time of this result (0 when it was
    reused); ``queued_ms`` the wait before the model took it; ``window_s`` the encoder
    window (the largest one, for audio cut into pieces; 0 when the model did not run)."""

    text: str
    final: bool
    audio_s: float
    compute_ms: float
    window_s: float
    fell_back: bool = False
    reused: bool = False
    queued_ms: float = 0.0


@dataclass(frozen=True)
class AsrStats:
    """Counters for metrics: waiting jobs now, and totals since start."""

    finals_waiting: int
    partials_waiting: int
    running: bool
    finals_done: int
    partials_done: int
    partials_dropped: int
    finals_refused: int
    finals_reused: int
    fallbacks: int
    early_done: int = 0  # early finals decoded (asked at a pause; see asr_queue)
    early_dropped: int = 0  # early finals dropped or withdrawn before they started
    early_waiting: int = 0

    @property
    def queue_depth(self) -> int:
        return self.finals_waiting + self.partials_waiting + self.early_waiting


class Engine(Protocol):
    """The model side: a blocking call, run on the transcriber's own thread."""

    def run(self, audio: FloatAudio, final: bool) -> Recognition:
        """The windowed transcript of 16 kHz mono float32 ``audio``."""
        ...

    def plain(self, audio: FloatAudio) -> str:
        """The baseline: the library's own 30 s window transcription."""
        ...


class AsrError(Exception):
    """Base class of the speech recognizer's errors."""

    retryable = False


class AsrBusy(AsrError):
    """Too many finals are waiting for the model; try again once the queue drains."""

    retryable = True


class AsrClosed(AsrError):
    """The transcriber was closed."""


class AsrInputError(AsrError, ValueError):
    """The audio cannot be transcribed; the message says why."""


class AsrModelError(AsrError):
    """The model could not be loaded or failed while running."""
