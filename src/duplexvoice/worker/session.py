"""Worker sessions: one per orchestrator session, each with its own pause state.

Nothing here is shared between sessions: PAUSE on one never touches another, even
when both use the same model (the model object is shared, its per-utterance state
is not), and each session refines its own loudness gain from the voice's calibration,
so one session's audio never depends on what another said.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from duplexvoice.audio.loudness import SessionLoudness
from duplexvoice.worker.adapters.base import SynthesisOptions

if TYPE_CHECKING:
    from duplexvoice.worker.synthesis import UtteranceStream
    from duplexvoice.worker.voice import LoadedVoice

MAX_SESSION_ID_CHARS = 128
_SPEED_RANGE = (0.25, 4.0)


class SessionOptionError(ValueError):
    """A StartSession option has a value we cannot use."""


def parse_options(raw: dict[str, str]) -> SynthesisOptions:
    """Validate StartSession options. Unknown keys are kept in ``extra`` and ignored."""
    speed = 1.0
    if "speed" in raw:
        try:
            speed = float(raw["speed"])
        except ValueError:
            raise SessionOptionError(f"option speed={raw['speed']!r} is not a number") from None
        low, high = _SPEED_RANGE
        if not low <= speed <= high:
            raise SessionOptionError(f"option speed={speed} is outside [{low}, {high}]")
    extra = {k: v for k, v in raw.items() if k != "speed"}
    return SynthesisOptions(speed=speed, extra=extra)


@dataclass
class SynthesisSession:
    session_id: str
    voice: LoadedVoice
    options: SynthesisOptions
    last_active: float = field(default_factory=time.monotonic)
    utterance: UtteranceStream | None = None
    utterances: int = 0
    loudness: SessionLoudness = field(init=False)
    # Set while not paused: the sender waits on it before each frame.
    _playing: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.loudness = self.voice.loudness.session()
        self._playing.set()

    @property
    def model_id(self) -> str:
        return self.voice.model_id

    @property
    def paused(self) -> bool:
        return not self._playing.is_set()

    def pause(self) -> None:
        self._playing.clear()

    def resume(self) -> None:
        self._playing.set()

    async def wait_playing(self) -> None:
        if not self._playing.is_set():
            await self._playing.wait()

    def stop(self) -> bool:
        """End the current utterance, dropping what is queued. False if none was active."""
        self.resume()  # a stopped session is not paused: the next utterance plays
        utterance = self.utterance
        if utterance is None:
            return False
        utterance.stop()
        return True

    def touch(self) -> None:
        self.last_active = time.monotonic()
