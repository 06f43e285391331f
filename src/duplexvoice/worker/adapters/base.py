"""The one small surface a TTS family implements.

An adapter turns text into float32 PCM chunks at its own native sample rate, as
early as the engine allows, and declares what it can do. Everything else (resampling
to 48 kHz, 20 ms framing, loudness, pause/stop, metrics) belongs to the shared
pipeline in :mod:`duplexvoice.worker.voice`, so adding a family is adding one file
here and one line in :mod:`duplexvoice.worker.adapters`.

Adapters are synchronous: the worker runs :meth:`TTSAdapter.stream` on a thread so a
slow model never blocks the event loop.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

FloatAudio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Capabilities:
    """The Capabilities message of WIRE §2, as declared by a voice."""

    streaming: bool = True
    zero_shot: bool = False
    lora: bool = False
    cpu_ok: bool = True
    languages: tuple[str, ...] = ("en",)
    emotive_zero_prompt: bool = False


@dataclass(frozen=True)
class SynthesisOptions:
    """Per-session options (StartSession ``options``), already validated.

    ``speed`` > 1 speaks faster. Family-specific keys (a CSM ``speaker``, its
    ``context``) are in ``extra``; a family ignores the keys it does not know.

    ``memory`` is the session's own scratch space, one dict per session and never
    shared: a family that carries state from one utterance to the next (CSM keeps the
    session's last turns as context) keeps it there, not in the shared adapter.
    """

    speed: float = 1.0
    extra: Mapping[str, str] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict, compare=False)


class AdapterError(Exception):
    """A model failed to load or to synthesize. Reported to the one session it hit."""


class TTSAdapter(ABC):
    """A loaded voice of one family. One instance may serve many sessions at once."""

    family: ClassVar[str]

    def __init__(self, sample_rate: int, capabilities: Capabilities) -> None:
        self.sample_rate = sample_rate
        self.capabilities = capabilities

    @classmethod
    @abstractmethod
    def load(cls, pack: VoicePack, device: str) -> TTSAdapter:
        """Load the model a voice pack describes (slow: runs on a thread)."""

    @abstractmethod
    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        """Yield mono float32 chunks in [-1, 1] at ``self.sample_rate`` for ``text``.

        Yield each chunk as soon as the engine has it. Check ``cancel`` between
        chunks (and inside long loops) and return early once it is set. Must be safe
        to call from several threads at once (serialize internally if the engine is
        not). Raise :class:`AdapterError` on failure.
        """

    def load_lora(self, pack: VoicePack) -> TTSAdapter:
        """Load the LoRA voice ``pack`` (its ``base_model`` is this voice) over this
        resident model and return the adapter that speaks with it.

        The returned adapter shares this model's weights; its :meth:`close` unloads
        the LoRA weights only. The model manager keeps this base resident while the
        LoRA voice is. Families without LoRA voices raise :class:`AdapterError`.
        """
        raise AdapterError(
            f"voice pack {pack.model_id}: family {self.family!r} has no LoRA voices"
        )

    def check_options(self, options: SynthesisOptions) -> None:  # noqa: B027 - optional hook
        """Validate a session's family-specific options at StartSession, so a bad one
        is refused there (INVALID_ARGUMENT) rather than failing its first utterance.
        Raise :class:`AdapterError` with the reason; cheap, runs on the event loop."""

    def warmup_options(self) -> SynthesisOptions:
        """The options of the warm-up utterance, which also calibrates the voice's
        loudness gain. A family that samples and can be seeded seeds it here, so every
        load of a checkpoint calibrates the same gain (and seeded sessions repeat across
        loads and workers)."""
        return SynthesisOptions()

    def runs_inline(self, text: str) -> bool:
        """Whether synthesizing ``text`` is cheap enough to run on the event loop.

        A thread hop per chunk costs more than a few tens of microseconds of work;
        model inference is never that cheap, so the default is False.
        """
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model. Called once, after the last stream has ended."""
