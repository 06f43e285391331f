"""Turn-taking: what to do with the system's speech when the user speaks over it.
Pure code: events in (VAD edges, transcripts), decisions out; a fake clock in tests.

The two-step barge-in of WIRE §1.2: the moment speech starts while the system is
speaking, ``HOLD`` (the session pauses playback, keeps the buffered audio and tells
the client ``pause``). Then one of:

- ``INTERRUPT``: the speech lasted ``interrupt_after_ms``, or a transcript with words
  arrived: a real barge-in; the utterance is dropped (client: ``interrupt``).
- ``RESUME``: the speech ended before that and no words were heard (a cough, a click):
  playback continues where it stopped, nothing lost (client: ``resume``).

While the system is silent, speech is simply the user's turn: no decision. This core
decides only; the session machine carries decisions out (its ``BARGED_IN`` state is
the time between ``HOLD`` and the outcome). Microphone audio, the VAD and ASR that
produce these events come with conversation mode.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from duplexvoice.orchestrator.session import speakable


class Decision(enum.Enum):
    HOLD = "hold"
    INTERRUPT = "interrupt"
    RESUME = "resume"


@dataclass(frozen=True)
class SpeechStarted:
    """The VAD's speech onset (after its own minimum duration)."""


@dataclass(frozen=True)
class SpeechEnded:
    """The VAD's speech offset (after its own hangover)."""


@dataclass(frozen=True)
class TranscriptSeen:
    text: str
    final: bool = False


TurnEvent = SpeechStarted | SpeechEnded | TranscriptSeen


@dataclass(frozen=True)
class TurnConfig:
    # Speech this long while the system speaks is a real barge-in, not a noise.
    interrupt_after_ms: int = 400

    def __post_init__(self) -> None:
        if self.interrupt_after_ms < 0:
            raise ValueError("interrupt_after_ms must be >= 0")


class TurnTaker:
    def __init__(self, config: TurnConfig | None = None) -> None:
        self.config = config or TurnConfig()
        self._system_speaking = False
        self._held_since: float | None = None  # a HOLD waiting for its outcome

    @property
    def holding(self) -> bool:
        return self._held_since is not None

    @property
    def next_deadline(self) -> float | None:
        """When ``tick`` must be called to turn a long hold into an interrupt."""
        if self._held_since is None:
            return None
        return self._held_since + self.config.interrupt_after_ms / 1000

    def system_speaking(self, speaking: bool) -> None:
        """The session says whether it is playing an utterance; when it stops (the
        utterance ended), a pending hold has nothing left to decide about."""
        self._system_speaking = speaking
        if not speaking:
            self._held_since = None

    def handle(self, event: TurnEvent, now: float) -> list[Decision]:
        if isinstance(event, SpeechStarted):
            if self._system_speaking and self._held_since is None:
                self._held_since = now
                return [Decision.HOLD, *self.tick(now)]
            return []
        if isinstance(event, SpeechEnded):
            if self._held_since is None:
                return []
            if now - self._held_since >= self.config.interrupt_after_ms / 1000:
                return self._interrupt()
            self._held_since = None
            return [Decision.RESUME]
        if self._held_since is not None and speakable(event.text):
            return self._interrupt()  # words: whatever their length, a real turn
        return []

    def tick(self, now: float) -> list[Decision]:
        deadline = self.next_deadline
        if deadline is not None and now >= deadline:
            return self._interrupt()
        return []

    def _interrupt(self) -> list[Decision]:
        self._held_since = None
        self._system_speaking = False
        return [Decision.INTERRUPT]
