"""What ``duplexvoice talk`` knows about the conversation, as pure code (time is a
parameter): when the user last spoke, which utterances are replies, the latencies,
and whether the conversation has settled (the input ended and nothing more is
coming), which is when a ``--input`` session ends.

**End of the user's speech, client side** (:class:`SpeechEnd`): an energy check on
what the user said, 20 ms at a time (on the file itself for ``--input``, before any
echo is added; on the cleaned microphone for a sound card). A frame is speech when
its level is above ``floor_db`` and within ``below_peak_db`` of the loudest frame so
far. It is approximate (a soft word ending or a breath moves it by a frame or two);
the server's ``metrics`` are the exact figures, from its own VAD.

**Voice to voice, client side**: the last speech sample sent -> the first frame of
the reply received, for each utterance announced by a ``reply`` message.

**Settled**: the input has ended, the server is ``LISTENING``, playback is idle, and
the conversation has been quiet (no message, no audio, no user speech) for
``quiet_s``; or for ``pending_quiet_s`` while something is still expected: a turn
with a partial transcript and no final yet, a final with words and no reply yet, or
user speech after the last final (the server may be about to finish that turn). The
second, longer wait covers what may get no answer at all (noise that produced no
turn), so a session always ends; it is long because on a loaded server a final
transcript may wait behind other sessions' (seconds).

**Failed** (:meth:`ConversationTracker.problems`, the exit code 1 of ``talk``): the
server reported an error (any ``error`` message: ``REPLY_FAILED``, ``ASR_BUSY``, ...),
an utterance ended in error, or a turn was left owed at the end: a partial transcript
and no final, a final with words and no reply, or speech after the last final and
nothing at all, and no error said why (a turn must never vanish silently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatAudio = npt.NDArray[np.float32]


class SpeechEnd:
    """Tracks when the last frame with speech energy was sent."""

    def __init__(self, floor_db: float = -50.0, below_peak_db: float = 30.0) -> None:
        self.floor_db = floor_db
        self.below_peak_db = below_peak_db
        self.peak_db = -120.0
        self.last_speech_at: float | None = None  # when its frame had been sent
        self.speaking = False  # the latest frame was speech

    def observe(self, audio: FloatAudio, sent_at: float) -> bool:
        """One frame, sent at ``sent_at``; True when it is speech."""
        power = float(np.mean(np.square(audio, dtype=np.float64))) if len(audio) else 0.0
        db = 10.0 * math.log10(power) if power > 1e-12 else -120.0
        self.peak_db = max(self.peak_db, db)
        self.speaking = db > max(self.floor_db, self.peak_db - self.below_peak_db)
        if self.speaking:
            self.last_speech_at = sent_at
        return self.speaking


@dataclass(frozen=True)
class Latency:
    """One figure to show: ``kind`` is ``voice_to_voice`` (client side), or a field of
    the server's ``metrics``."""

    turn: int | None
    kind: str
    ms: float
    source: str  # "client" | "server"


@dataclass
class ConversationTracker:
    quiet_s: float = 1.5
    pending_quiet_s: float = 10.0
    state: str = "LISTENING"
    last_activity: float = 0.0
    reply_turn: dict[int, int] = field(default_factory=dict)  # utterance_id -> turn
    first_frame_at: dict[int, float] = field(default_factory=dict)
    partial_turns: set[int] = field(default_factory=set)  # partial, no final yet
    unanswered_turns: set[int] = field(default_factory=set)  # final with words, no reply
    last_final_at: float | None = None
    latencies: list[Latency] = field(default_factory=list)
    failed_utterances: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # server error code -> how many
    closed_reason: str | None = None  # session_end's reason

    def on_message(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        if kind != "metrics":
            self.last_activity = now
        turn = message.get("turn")
        if kind == "state" and isinstance(message.get("state"), str):
            self.state = message["state"]
        elif kind == "transcript" and isinstance(turn, int):
            if message.get("final"):
                self.partial_turns.discard(turn)
                self.last_final_at = now
                if str(message.get("text", "")).strip():
                    self.unanswered_turns.add(turn)
            else:
                self.partial_turns.add(turn)
        elif kind == "reply" and isinstance(turn, int):
            self.unanswered_turns.discard(turn)
            self.partial_turns.discard(turn)
            uid = message.get("utterance_id")
            if isinstance(uid, int) and uid not in self.reply_turn:
                self.reply_turn[uid] = turn
                while len(self.reply_turn) > 64:
                    del self.reply_turn[min(self.reply_turn)]
        elif kind == "error":
            code = str(message.get("code"))
            if code in self.errors or len(self.errors) < 32:
                self.errors[code] = self.errors.get(code, 0) + 1
            if code in ("REPLY_FAILED", "ASR_FAILED", "ASR_BUSY"):
                self.unanswered_turns.clear()  # that turn gets no reply
        elif kind == "utterance_end" and message.get("reason") == "error":
            self.failed_utterances += 1
        elif kind == "metrics" and isinstance(turn, int):
            for name in ("transcript_ms", "voice_to_voice_ms", "text_to_voice_ms",
                         "barge_in_ms"):
                value = message.get(name)
                if isinstance(value, int | float):
                    self.latencies.append(Latency(turn, name.removesuffix("_ms"),
                                                  float(value), "server"))
        elif kind == "session_end":
            self.closed_reason = str(message.get("reason"))

    def on_frame(self, utterance_id: int, now: float, speech: SpeechEnd) -> Latency | None:
        """A binary frame arrived; the client's voice-to-voice when it is the first
        frame of a reply and the user's speech ended before it."""
        self.last_activity = now
        if utterance_id in self.first_frame_at:
            return None
        self.first_frame_at[utterance_id] = now
        while len(self.first_frame_at) > 64:
            del self.first_frame_at[min(self.first_frame_at)]
        turn = self.reply_turn.get(utterance_id)
        if turn is None or speech.last_speech_at is None or speech.speaking:
            return None
        latency = Latency(turn, "voice_to_voice", (now - speech.last_speech_at) * 1000.0,
                          "client")
        self.latencies.append(latency)
        return latency

    def pending(self, speech: SpeechEnd) -> bool:
        """Something more is expected from the server."""
        return bool(self.partial_turns or self.unanswered_turns
                    or self._spoke_since_final(speech))

    def problems(self, speech: SpeechEnd | None = None) -> list[str]:
        """What went wrong in the session, one phrase each (none: it went well).
        ``speech``: the user's, to tell speech the server never answered."""
        out: list[str] = []
        if self.errors:
            total = sum(self.errors.values())
            codes = ", ".join(f"{code} x{n}" if n > 1 else code
                              for code, n in sorted(self.errors.items()))
            out.append(f"the server reported {total} error(s) ({codes})")
        if self.failed_utterances:
            out.append(f"{self.failed_utterances} utterance(s) failed")
        for turn in sorted(self.partial_turns):
            out.append(f"turn {turn}: a partial transcript, then no final transcript, "
                       "reply or error")
        for turn in sorted(self.unanswered_turns):
            out.append(f"turn {turn}: a final transcript, then no reply or error")
        if speech is not None and not self.partial_turns and self._spoke_since_final(speech):
            out.append("speech after the last final transcript got no transcript, reply or "
                       "error")
        return out

    def _spoke_since_final(self, speech: SpeechEnd) -> bool:
        return speech.last_speech_at is not None and (
            self.last_final_at is None or speech.last_speech_at > self.last_final_at)

    def settled(self, now: float, *, input_done_at: float | None, playback_idle: bool,
                speech: SpeechEnd) -> bool:
        if input_done_at is None or not playback_idle or self.state != "LISTENING":
            return False
        quiet_since = max(self.last_activity, input_done_at, speech.last_speech_at or 0.0)
        wait = self.pending_quiet_s if self.pending(speech) else self.quiet_s
        return now - quiet_since >= wait


__all__ = ["ConversationTracker", "Latency", "SpeechEnd"]
