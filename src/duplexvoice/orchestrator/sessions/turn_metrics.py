"""Conversation figures of one session, measured in the server from when the audio
arrived: end of speech to final transcript and to first reply frame (voice to
voice), speech onset to ``pause`` (barge-in); for a typed turn, the text's arrival to
the first reply frame (``text_to_voice_ms``: it has no voice to time from). Each is a
Prometheus histogram and a ``metrics`` message to the client (extension: ``turn`` and
the figures in ms).

"End of speech" is the VAD's: where it put the end of the last speech, on the clock
of the audio's arrival. A spoken turn's figures split its voice to voice along the
path a reply takes, each counted from that same point (docs/protocol.md):
``offset_ms`` (the VAD confirmed the offset), ``asr_ms`` (the final transcript was
ready), ``transcript_ms`` (it was sent: the end of the turn was confirmed),
``reply_ms`` (the reply engine's first clause), ``voice_to_voice_ms`` (the first
reply frame went out). Speech that resumes within the turn starts them over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions.events import (
    Event,
    ReplyChunk,
    UserSpeechEnded,
    UserTranscript,
)
from duplexvoice.wire.messages import Pause, ReplyText, Resume, Transcript, TurnMetrics

_KEEP = 4  # turns remembered: only the last one or two are ever still open


class Heard(Protocol):
    """What the listener knows of the user's last speech (monotonic times)."""

    @property
    def speech_started_at(self) -> float | None: ...

    @property
    def speech_ended_at(self) -> float | None: ...


class TurnFigures:
    def __init__(self, metrics: OrchestratorMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._reply_turns: dict[int, int] = {}  # utterance id -> the turn it answers
        self._ended_at: dict[int, float] = {}  # turn -> end of its speech (monotonic)
        self._typed_at: dict[int, float] = {}  # typed turn -> when its text came
        self._figures: dict[int, dict[str, float]] = {}  # turn -> its figures so far
        self._pending: list[TurnMetrics] = []  # sent after the event's messages

    def event(self, event: Event, listener: Heard, turn: int) -> None:
        """An event reaches the session machine (before it handles it): the steps of
        a spoken turn's path that are not messages to the client."""
        if not isinstance(event, UserSpeechEnded | UserTranscript | ReplyChunk):
            return  # the common case (audio frames): kept cheap
        ended = listener.speech_ended_at
        if ended is None:
            return
        since_ms = round((self._clock() - ended) * 1000, 1)
        if isinstance(event, UserSpeechEnded):
            # Speech resumed and ended again: the turn's path starts over from here.
            self._figures[turn] = {"offset_ms": since_ms}
        elif isinstance(event, UserTranscript) and event.final:
            figures = self._figures.setdefault(event.turn, {})
            figures["asr_ms"] = since_ms
            figures.pop("reply_ms", None)  # a reply to an older transcript is gone
        elif isinstance(event, ReplyChunk) and event.text.strip():
            path = self._figures.get(event.turn)
            if path is not None and "asr_ms" in path:  # a spoken turn's
                path.setdefault("reply_ms", since_ms)
        self._trim()

    def observe(self, message: Transcript | ReplyText | Pause | Resume, listener: Heard,
                turn: int, *, typed: bool = False) -> None:
        """``typed``: the message comes of a typed turn (``user_text``)."""
        now = self._clock()
        if isinstance(message, Transcript) and message.final:
            self._metrics.turns_total.inc()
            ended = listener.speech_ended_at
            if typed:
                self._typed_at[message.turn] = now
            elif ended is not None:
                self._ended_at[message.turn] = ended
                asr_ms = (now - ended) * 1000
                self._metrics.asr_latency_ms.observe(asr_ms)
                self._figures.setdefault(message.turn, {})["transcript_ms"] = round(asr_ms, 1)
        elif isinstance(message, ReplyText):
            self._reply_turns.setdefault(message.utterance_id, message.turn)
        elif isinstance(message, Pause) and listener.speech_started_at is not None:
            pause_ms = (now - listener.speech_started_at) * 1000
            self._metrics.barge_in_ms.observe(pause_ms)
            self._pending.append(TurnMetrics(turn, {"barge_in_ms": round(pause_ms, 1)}))
        elif isinstance(message, Resume):
            self._metrics.false_interruptions_total.inc()
        self._trim()

    def _trim(self) -> None:
        for table in (self._ended_at, self._typed_at, self._figures, self._reply_turns):
            while len(table) > _KEEP:
                del table[min(table)]

    def first_frame(self, utterance_id: int) -> None:
        """The first frame of an utterance is being sent."""
        turn = self._reply_turns.get(utterance_id)
        if turn is None:
            return
        typed_at = self._typed_at.pop(turn, None)
        ended = self._ended_at.get(turn) if typed_at is None else typed_at
        if ended is None:
            return
        ms = (self._clock() - ended) * 1000
        figures = self._figures.pop(turn, {})
        if typed_at is not None:
            self._metrics.text_to_voice_ms.observe(ms)
            # A typed turn has no voice: none of a spoken turn's path applies.
            figures = {"text_to_voice_ms": round(ms, 1)}
        else:
            self._metrics.voice_to_voice_ms.observe(ms)
            figures["voice_to_voice_ms"] = round(ms, 1)
        self._pending.append(TurnMetrics(turn, figures))

    def utterance_ended(self, utterance_id: int) -> None:
        self._reply_turns.pop(utterance_id, None)

    def take_messages(self) -> list[TurnMetrics]:
        pending, self._pending = self._pending, []
        return pending
