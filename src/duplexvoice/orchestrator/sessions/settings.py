"""A session's settings (WIRE §1.2 ``config``), as pure code.

``SessionSettings.apply`` checks a parsed ``config`` message against what the system
offers and either changes nothing and returns the ``INVALID_CONFIG`` error, or applies
every given setting. Settings apply from the next utterance: the voice when its
synthesis starts, the output format at the first frame of an utterance that starts
after the change (``format_for``), so one utterance never mixes formats.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from duplexvoice.wire.messages import Error, ErrorCode
from duplexvoice.wire.protocol import DEFAULT_INPUT_SAMPLE_RATE, ConfigMessage


@dataclass
class SessionSettings:
    voice: str = ""  # model id; empty: the worker's default
    mode: str = "tts"  # "conversation": microphone audio in, replies out
    reply: str = ""  # reply engine; empty: the orchestrator's default
    input_sample_rate: int = DEFAULT_INPUT_SAMPLE_RATE
    output_format: str = "json"  # of the utterance being sent
    # Format changes not reached yet: (first utterance id, format), in id order. Each
    # applies from its own utterance on (two configs can both be ahead of the playout).
    _format_changes: list[tuple[int, str]] = field(default_factory=list)

    @staticmethod
    def check(message: ConfigMessage, offered_voices: Collection[str],
              offered_replies: Collection[str]) -> Error | None:
        """Why ``message`` cannot be applied, if it cannot."""
        if message.mode == "conversation" and not offered_replies:
            return Error(ErrorCode.INVALID_CONFIG,
                         "conversation mode is not enabled on this server")
        if message.voice is not None and message.voice not in offered_voices:
            available = ", ".join(sorted(offered_voices)) or "none"
            return Error(ErrorCode.INVALID_CONFIG,
                         f"voice {message.voice!r} is not available (available: {available})")
        if message.reply is not None and message.reply not in offered_replies:
            available = ", ".join(sorted(offered_replies)) or "none"
            return Error(ErrorCode.INVALID_CONFIG,
                         f"reply engine {message.reply!r} is not available "
                         f"(available: {available})")
        return None

    def apply(self, message: ConfigMessage, offered_voices: Collection[str],
              next_utterance: int, offered_replies: Collection[str] = ()) -> Error | None:
        """Apply ``message``, or return why not (and change nothing)."""
        error = self.check(message, offered_voices, offered_replies)
        if error is not None:
            return error
        if message.mode is not None:
            self.mode = message.mode
        if message.reply is not None:
            self.reply = message.reply
        if message.voice is not None:
            self.voice = message.voice
        if message.output_format is not None:
            self._format_changes = [c for c in self._format_changes if c[0] < next_utterance]
            self._format_changes.append((next_utterance, message.output_format))
        if message.input_sample_rate is not None:
            self.input_sample_rate = message.input_sample_rate
        return None

    def format_for(self, utterance_id: int) -> str:
        """The output format of ``utterance_id``'s frames (asked at its first frame)."""
        while self._format_changes and self._format_changes[0][0] <= utterance_id:
            self.output_format = self._format_changes.pop(0)[1]
        return self.output_format
