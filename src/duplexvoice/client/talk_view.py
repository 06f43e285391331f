"""What ``duplexvoice talk`` prints, as pure formatting plus one small writer.

Each line starts with the seconds since the session began. Partial transcripts
overwrite one line on a terminal (carriage return, erase line) and are plain lines
otherwise (a pipe, a log file); the final transcript replaces the partial line.
Lines:

    [  1.20] state LISTENING
    [  2.40] you … please book a          (partial; a terminal overwrites it)
    [  3.10] you: Please book a table.     (final, turn 1)
    [  3.12] bot: Please book a table.     (reply text, a clause at a time)
    [  3.30] latency turn 1: voice-to-voice 610 ms (server), transcript 290 ms (server)
    [  3.31] latency turn 1: voice-to-voice 655 ms (client: end of speech sent -> first reply frame)
    [  4.00] pause utterance 2             (the server heard speech over its own)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from duplexvoice.client.talk_state import Latency

_CLEAR = "\r\x1b[K"


def describe(message: dict[str, Any]) -> str | None:
    """The line for one server message, or None for those not shown."""
    kind = message.get("type")
    uid = message.get("utterance_id")
    if kind == "session_start":
        return f"connected (session {message.get('session_id')})"
    if kind == "state":
        return f"state {message.get('state')}"
    if kind == "transcript":
        text = str(message.get("text", "")).strip()
        if message.get("final"):
            return f"you: {text}"
        return f"you … {text}"
    if kind == "reply":
        return f"bot: {str(message.get('text', '')).strip()}"
    if kind in ("pause", "resume"):
        return f"{kind} utterance {uid}"
    if kind == "interrupt":
        return f"interrupt utterance {uid} ({message.get('reason')})"
    if kind == "utterance_end":
        return (f"end of utterance {uid}: {message.get('reason')}, "
                f"{message.get('frames')} frames")
    if kind == "metrics":
        if "turn" in message:
            parts = [f"{name.removesuffix('_ms').replace('_', '-')} "
                     f"{float(message[name]):.0f} ms (server)"
                     for name in ("voice_to_voice_ms", "text_to_voice_ms", "transcript_ms",
                                  "barge_in_ms")
                     if isinstance(message.get(name), int | float)]
            return f"latency turn {message['turn']}: " + ", ".join(parts) if parts else None
        if isinstance(message.get("first_audio_ms"), int | float):
            return f"latency utterance {uid}: first audio {message['first_audio_ms']:.0f} ms"
        return None
    if kind == "error":
        return f"error {message.get('code')}: {message.get('message')}"
    if kind == "session_end":
        return f"session end ({message.get('reason')})"
    return None


def describe_latency(latency: Latency) -> str:
    return (f"latency turn {latency.turn}: voice-to-voice {latency.ms:.0f} ms "
            "(client: end of speech sent -> first reply frame)")


class TalkView:
    """Writes the lines; ``write`` gets text without a newline added."""

    def __init__(self, write: Callable[[str], None], *, tty: bool, start: float) -> None:
        self._write = write
        self.tty = tty
        self.start = start
        self._partial_open = False  # a partial transcript is on the current line

    def message(self, message: dict[str, Any], now: float) -> None:
        line = describe(message)
        if line is None:
            return
        partial = message.get("type") == "transcript" and not message.get("final")
        if partial and self.tty:
            self._write(f"{_CLEAR}{self._stamp(now)} {line}")
            self._partial_open = True
            return
        self.line(line, now)

    def line(self, text: str, now: float) -> None:
        if self._partial_open:
            self._write(_CLEAR)
            self._partial_open = False
        self._write(f"{self._stamp(now)} {text}\n")

    def _stamp(self, now: float) -> str:
        return f"[{now - self.start:7.2f}]"


__all__ = ["TalkView", "describe", "describe_latency"]
