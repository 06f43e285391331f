"""Conversation figures of one session, measured in the server from when the audio
arrived: end of speech to final transcript and to first reply frame (voice to
voice), speech onset to ``pause`` (barge-in); for a typed turn, the text's arrival to
the first reply frame (``text_to_voice_ms``: it has no voice to time from). Each is a
Prometheus histogram and a ``metrics`` message to the client (extension: ``turn`` and
the figures in ms)."""

from __future__ import annotations

import time

from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions.listener import Listener
from duplexvoice.wire.messages import Pause, ReplyText, Resume, Transcript, TurnMetrics

_KEEP = 4  # turns remembered: only the last one or two are ever still open


class TurnFigures:
    def __init__(self, metrics: OrchestratorMetrics) -> None:
        self._metrics = metrics
        self._reply_turns: dict[int, int] = {}  # utterance id -> the turn it answers
        self._ended_at: dict[int, float] = {}  # turn -> end of its speech (monotonic)
        self._typed_at: dict[int, float] = {}  # typed turn -> when its text came
        self._figures: dict[int, dict[str, float]] = {}  # turn -> its figures so far
        self._pending: list[TurnMetrics] = []  # sent after the event's messages

    def observe(self, message: Transcript | ReplyText | Pause | Resume, listener: Listener,
                turn: int, *, typed: bool = False) -> None:
        """``typed``: the message comes of a typed turn (``user_text``)."""
        now = time.monotonic()
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
        ms = (time.monotonic() - ended) * 1000
        figures = self._figures.pop(turn, {})
        if typed_at is not None:
            self._metrics.text_to_voice_ms.observe(ms)
            figures["text_to_voice_ms"] = round(ms, 1)
        else:
            self._metrics.voice_to_voice_ms.observe(ms)
            figures["voice_to_voice_ms"] = round(ms, 1)
        self._pending.append(TurnMetrics(turn, figures))

    def utterance_ended(self, utterance_id: int) -> None:
        self._reply_turns.pop(utterance_id, None)

    def take_messages(self) -> list[TurnMetrics]:
        pending, self._pending = self._pending, []
        return pending
