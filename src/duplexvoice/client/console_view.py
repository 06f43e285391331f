"""What the console of ``say -i`` shows and does for the server's messages, as pure
code: messages in; lines to print, audio to play and WAVs to write out. Also what it
sends: which typed controls go, and what the end of input still has to send.
:mod:`.interactive` carries it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from duplexvoice.client.messages import (
    PROBE,
    TEXT_REFUSED_CODES,
    SequenceCheck,
    describe_end,
    describe_error,
    parse_audio,
    probe_verdict,
)
from duplexvoice.wire.protocol import OUTPUT_SAMPLE_RATE

_PLAYING: Final = ("SPEAKING", "PAUSED")


@dataclass(frozen=True)
class Print:
    text: str


@dataclass(frozen=True)
class Play:
    pcm: bytes


@dataclass(frozen=True)
class WriteWav:
    path: Path
    pcm: bytes


Output = Print | Play | WriteWav


class ConsoleView:
    """What the console shows and does for the server's messages.

    ``out_dir`` None: audio is played (``Play``) as it arrives; else each utterance is
    written to ``out_dir/utterance-<id>.wav`` at its end.

    The end of input waits until everything sent has been answered. Texts are:
    ``utterance_end`` or a refusal (``outstanding`` counts them). A PAUSE or RESUME is
    answered by a state change, or ``INVALID_STATE`` when nothing is playing, but a
    no-op one (PAUSE while paused, RESUME while speaking) by nothing at all. So the
    view sends only controls the server will answer, one at a time (``control_due``:
    the input waits for its answer), and says the no-ops itself; with none on its way
    the state seen here is the server's. A ``config`` is answered only when refused;
    when one is the last thing sent, the end of input first sends the probe of
    :mod:`.messages` (``sync``), whose answer comes after any refusal. The config
    check of ``--voice`` at the start is the same probe."""

    def __init__(self, out_dir: Path | None, *, probing: bool = False) -> None:
        self.out_dir = out_dir
        self.probing = probing  # the voice's config check is pending
        self.refused = False  # the server refused the voice
        self.state = "INITIALIZING"
        self.session_end: dict[str, Any] | None = None  # session_end, or the close
        self.failed_utterances = 0
        self.outstanding = 0
        self.sequence = SequenceCheck()
        # The PAUSE/RESUME on its way: the user's (its answer shown) or our probe's.
        self.control_due: Literal["user", "sync"] | None = "sync" if probing else None
        self._config_last = False  # a config sent and nothing answerable since
        self._leaving = False
        self._ended: set[int] = set()
        self._audio: dict[int | None, list[bytes]] = {}
        # An utterance's line waits for its metrics message (sent right after it).
        self._held: tuple[int | None, list[str]] | None = None

    @property
    def ready(self) -> bool:
        """The server can speak: worker session up and the voice (if any) accepted."""
        return not self.probing and not self.refused and self.state != "INITIALIZING"

    @property
    def over(self) -> bool:
        return self.session_end is not None

    @property
    def paused(self) -> bool:
        return self.state == "PAUSED"

    @property
    def drained(self) -> bool:
        """Every text sent has been spoken (or refused) and nothing is playing."""
        return self.outstanding <= 0 and self.state not in _PLAYING

    @property
    def finished(self) -> bool:
        """Nothing more to come for what was sent (after the end of input)."""
        return self.drained and self.control_due is None and not self._config_last

    # -- what we sent ----------------------------------------------------------------

    def command(self, message: Mapping[str, Any]) -> tuple[bool, list[Output]]:
        """A typed message about to go (never while ``control_due``): whether to send
        it, and what to show."""
        kind = message.get("type")
        if kind == "text":
            self.outstanding += 1
            self._config_last = False
        elif kind == "config":
            self._config_last = True
            return True, [Print(f"[voice {message.get('voice')} from the next line on, "
                                "unless the server refuses it]")]
        elif kind == "control" and message.get("command") in ("PAUSE", "RESUME"):
            if (note := self._no_op(message["command"])) is not None:
                return False, [Print(note)]
            self.control_due = "user"
            self._config_last = False
        return True, []

    def _no_op(self, command: str) -> str | None:
        if command == "PAUSE" and self.state == "PAUSED":
            return "[already paused]"
        # A text on its way (not yet SPEAKING here) will be speaking when RESUME comes.
        speaking_soon = self.outstanding > 0 and self.state != "PAUSED"
        if command == "RESUME" and (self.state == "SPEAKING" or speaking_soon):
            return "[not paused]"
        return None

    def at_end_of_input(self) -> tuple[dict[str, Any] | None, list[Output]]:
        """After the end of input: a control to send now, if any (a pause is resumed:
        nothing else could; the last config is checked), and what to show."""
        if self.control_due is not None or self.over:
            return None, []
        if self.paused:
            self.control_due = "user"
            return ({"type": "control", "command": "RESUME"},
                    [Print("[end of input: resuming, to speak what is left]")])
        if self.drained and self._config_last:
            self.control_due = "sync"
            self._config_last = False
            return dict(PROBE), []
        return None, []

    def no_answer(self) -> list[Output]:
        """The control on its way was not answered in time: stop waiting for it."""
        self.control_due = None
        return [Print("[no answer from the server to that command: going on]")]

    def leave(self) -> None:
        """We close the connection ourselves: its close is no news."""
        self._leaving = True

    # -- what the server sent --------------------------------------------------------

    def on_binary(self, data: bytes) -> list[Output]:
        out = self._release()
        try:
            frame = parse_audio(data)
        except ValueError as exc:
            return [*out, Print(f"[bad audio frame: {exc}]")]
        return out + self._frame(frame.utterance_id, frame.sequence, frame.pcm)

    def on_message(self, message: Mapping[str, Any]) -> list[Output]:
        kind = message.get("type")
        out = [] if kind == "metrics" else self._release()
        if kind == "audio":
            try:
                frame = parse_audio(message)
            except ValueError as exc:
                return [*out, Print(f"[bad audio message: {exc}]")]
            return out + self._frame(frame.utterance_id, frame.sequence, frame.pcm)
        if kind == "session_start":
            out.append(Print(f"[session {message.get('session_id')}]"))
        elif kind == "state":
            out += self._state(str(message.get("state")))
        elif kind == "error":
            out += self._error(message)
        elif kind == "utterance_end":
            out += self._utterance_end(message)
        elif kind == "metrics":
            out += self._metrics(message)
        elif kind == "interrupt":
            out.append(Print(f"[utterance {message.get('utterance_id')} "
                             f"{message.get('reason')}]"))
        elif kind == "session_end":
            self.session_end = dict(message)
            out.append(Print(f"[{describe_end(message)}]"))
        elif kind == "client_bad_json":
            out.append(Print(f"[unreadable message from the server: {message.get('data')!r}]"))
        return out  # other types (transcript, reply, ...) are not for text mode

    def on_closed(self, close_code: int | None) -> list[Output]:
        out = self._release()
        if self.session_end is None:
            self.session_end = {"type": "closed", "close_code": close_code}
            if not self._leaving:
                out.append(Print(f"[{describe_end(self.session_end)}]"))
        return out

    def flush(self) -> list[Output]:
        return self._release()

    # -- internals -------------------------------------------------------------------

    def _frame(self, uid: int | None, sequence: int, pcm: bytes) -> list[Output]:
        self.sequence.add(sequence)
        if uid is not None and uid in self._ended:
            return []  # stale: that utterance is over
        if self.out_dir is None:
            return [Play(pcm)]
        self._audio.setdefault(uid, []).append(pcm)
        return []

    def _state(self, state: str) -> list[Output]:
        old, self.state = self.state, state
        if state == "PAUSED" and old != "PAUSED":
            self._answered()
            return [Print("[paused]")]
        if old == "PAUSED" and state == "SPEAKING":
            self._answered()
            return [Print("[resumed]")]
        return []

    def _answered(self) -> None:
        if self.control_due == "user":  # a state change never answers the probe
            self.control_due = None

    def _error(self, message: Mapping[str, Any]) -> list[Output]:
        verdict = probe_verdict(message)
        code = message.get("code")
        if verdict == "accepted" and self.control_due is not None:  # INVALID_STATE
            due, self.control_due = self.control_due, None
            if due == "sync":
                self.probing = False
                return []  # the probe's own answer: nothing to show
        elif verdict == "refused" and self.probing:
            self.probing = False  # the probe's answer still comes, and is still hidden
            self.refused = True
        elif code == "RATE_LIMITED":
            # One message was dropped, which one is not said: take it for the control
            # on its way, else for a text (at worst the end of input waits less).
            if self.control_due == "user":
                self.control_due = None
            else:
                self.outstanding -= 1
        elif code in TEXT_REFUSED_CODES:
            self.outstanding -= 1
        return [Print(f"[{describe_error(message)}]")]

    def _utterance_end(self, message: Mapping[str, Any]) -> list[Output]:
        uid = message.get("utterance_id")
        key = uid if isinstance(uid, int) and not isinstance(uid, bool) else None
        if key is not None:
            self._ended.add(key)
        self.outstanding -= 1
        if message.get("reason") == "error":
            self.failed_utterances += 1
        parts = [f"utterance {uid} {message.get('reason')}: {message.get('frames')} frames"]
        out: list[Output] = []
        pcm = b"".join(self._audio.pop(key, []))
        if self.out_dir is not None and pcm:
            path = self.out_dir / f"utterance-{uid}.wav"
            out.append(WriteWav(path, pcm))
            parts.append(f"wrote {path} ({len(pcm) / 2 / OUTPUT_SAMPLE_RATE:.2f} s)")
        self._held = (key, parts)
        return out

    def _metrics(self, message: Mapping[str, Any]) -> list[Output]:
        held = self._held
        first = message.get("first_audio_ms")
        if held is not None and held[0] == message.get("utterance_id") and isinstance(
                first, int | float):
            held[1].insert(1, f"first audio after {first:.0f} ms")
        return self._release()

    def _release(self) -> list[Output]:
        held, self._held = self._held, None
        return [] if held is None else [Print(f"[{', '.join(held[1])}]")]


__all__ = ["ConsoleView", "Output", "Play", "Print", "WriteWav"]
