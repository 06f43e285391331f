"""``duplexvoice talk``: a spoken conversation with the orchestrator from the terminal.

One WebSocket session in conversation mode (``docs/protocol.md``, "Conversation
mode"). Every 20 ms, at the microphone's pace, one tick:

1. read 20 ms of the microphone (sound card; or ``--input`` file in real time, then
   silence: the microphone keeps streaming while the system speaks, that is how a
   barge-in is heard, and how the server sees the end of a turn);
2. take the next 20 ms to play from the jitter buffer (:mod:`.talk_playback`:
   pause, resume, interrupt, fencing by utterance id) and hand it to the speaker
   (sound card, ``--out`` WAV with the real timing, or nowhere);
3. give both to the echo canceller (:mod:`.echo_cancel`): what was just played is
   the far end, the microphone the near end; send the cleaned microphone as one
   binary PCM16 frame at 16 kHz;
4. send the playback reports due (what the user has heard).

A reader task takes the server's messages as they come: audio frames into the
jitter buffer, ``pause``/``resume``/``interrupt``/``utterance_end`` to it, and
everything to the console (:mod:`.talk_view`) and the tracker (:mod:`.talk_state`:
latencies, when the conversation has settled).

**Echo** (the talk client must not interrupt itself when its output leaks into its
microphone): WebRTC's echo canceller (AEC3) runs on every tick where there is an
acoustic path (sound card speaker and microphone, or the simulated room), fed with
exactly what was played; and the server, which knows when it speaks, uses a stricter
VAD onset threshold meanwhile. ``--no-aec`` turns the canceller off (headphones; or to
see what it prevents). A file input has no acoustic path: nothing to cancel.

**How it ends**: with ``--input``, once the file has played and the conversation has
settled (``talk_state``: nothing pending, quiet), or ``--linger`` seconds after the
file's end: exit 0. A sound card microphone runs until Ctrl-C (exit 130). Exit 1 on
errors (one line on stderr): the server cannot be reached, refuses the config
(``--voice``, ``--reply``), or closes the session; the input file is missing or not
a WAV; the server reported an error for the session (any ``error`` message, e.g.
``REPLY_FAILED``), an utterance failed (``utterance_end error``), or a turn got no
final transcript or no reply and no error said why (``talk_state``).

:class:`TalkClient` is the whole session over any microphone and speaker (tests build
it with a :class:`~.audio_io.LoopbackDevice`); the command is :mod:`.talk_command`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from duplexvoice.client.audio_io import MIC_RATE, Decimator, Microphone, Speaker
from duplexvoice.client.echo_cancel import EchoCanceller, to_pcm16
from duplexvoice.client.messages import PROBE, describe_error, probe_verdict
from duplexvoice.client.talk_playback import PlaybackBuffer, PlaybackStats
from duplexvoice.client.talk_state import ConversationTracker, Latency, SpeechEnd
from duplexvoice.client.talk_view import TalkView, describe_latency
from duplexvoice.client.ws_client import DEFAULT_URL, connect
from duplexvoice.wire.protocol import decode_binary_frame

if TYPE_CHECKING:
    import aiohttp

ANSWER_TIMEOUT_S: Final = 10.0  # for session_start and the config check


class TalkError(Exception):
    """The session cannot go on; one line for a person."""


@dataclass(frozen=True)
class TalkOptions:
    url: str = DEFAULT_URL
    api_key: str = ""
    voice: str = ""  # model id; empty: the server's default
    reply: str = ""  # reply engine; empty: the server's default
    say: str = ""  # text the system speaks first
    linger_s: float = 30.0  # after the input's end, at most this long
    quiet_s: float = 1.5  # settled: this quiet with nothing pending


@dataclass(frozen=True)
class Recorded:
    at: float  # the client's clock when it arrived
    message: dict[str, Any]  # binary frames as {"type": "binary", utterance_id, sequence}


@dataclass
class TalkResult:
    code: int = 0  # the exit code
    problem: str | None = None  # why it is 1
    log: list[Recorded] = field(default_factory=list)  # only with record=True
    latencies: list[Latency] = field(default_factory=list)
    playback: PlaybackStats = field(default_factory=PlaybackStats)
    sent_frames: int = 0
    echo_canceller: str = "off"
    ended_by: str = ""  # settled | linger | closed | connection lost

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [r.message for r in self.log if r.message.get("type") == kind]

    def summary(self) -> str:
        def p50(kind: str, source: str) -> str:
            values = [x.ms for x in self.latencies if x.kind == kind and x.source == source]
            return f"{statistics.median(values):.0f} ms" if values else "-"

        return (f"voice-to-voice p50 {p50('voice_to_voice', 'server')} (server), "
                f"{p50('voice_to_voice', 'client')} (client); "
                f"{self.playback.played_frames * 20 / 1000:.1f} s played, "
                f"{self.playback.underruns} underruns; echo canceller {self.echo_canceller}")


class TalkClient:
    """One conversation session over ``microphone`` and ``speaker``."""

    def __init__(self, options: TalkOptions, microphone: Microphone, speaker: Speaker,
                 echo: EchoCanceller, *, write: Callable[[str], None] | None = None,
                 tty: bool = False, record: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.microphone = microphone
        self.speaker = speaker
        self.echo = echo
        self._clock = clock
        self._record = record
        self.view = TalkView(write or (lambda _: None), tty=tty, start=clock())
        self.playback = PlaybackBuffer()
        self.tracker = ConversationTracker(quiet_s=options.quiet_s)
        self.speech = SpeechEnd()
        self._far = Decimator()  # made here: its first use imports scipy (~1 s)
        self.result = TalkResult(playback=self.playback.stats, echo_canceller=echo.name,
                                 latencies=self.tracker.latencies)
        self._closed = asyncio.Event()
        self._probing = False  # the probe's expected error is not shown
        self._stopping = False

    async def run(self) -> TalkResult:
        """Connect, talk until the end (module docstring). ``ConnectFailed`` when the
        server cannot be reached; anything after that is in the result."""
        import aiohttp

        async with aiohttp.ClientSession() as http:
            ws = await connect(http, self.options.url, self.options.api_key)
            async with ws:
                try:
                    await self._session(ws)
                except TalkError as exc:
                    self.result.code, self.result.problem = 1, str(exc)
        problems = self.tracker.problems(self.speech)
        if self.result.code == 0 and problems:
            self.result.code = 1
            self.result.problem = "; ".join(problems)
        return self.result

    def stop(self) -> None:
        """End the session at the next tick (exit 0, ``ended_by`` "stopped")."""
        self._stopping = True

    # -- the session ---------------------------------------------------------------

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        first = await self._next(ws, "session_start")
        if first.get("type") != "session_start":
            raise TalkError(f"unexpected first message from the server: {first.get('type')}")
        config: dict[str, Any] = {"type": "config", "mode": "conversation",
                                  "input_sample_rate": MIC_RATE, "output_format": "binary"}
        if self.options.voice:
            config["voice"] = self.options.voice
        if self.options.reply:
            config["reply"] = self.options.reply
        await self._send_json(ws, config)
        await self._send_json(ws, PROBE)  # the config check (client/messages.py)
        self._probing = True
        while True:
            message = await self._next(ws, "the answer to the config")
            verdict = probe_verdict(message) if message.get("type") == "error" else None
            if verdict == "refused":
                raise TalkError(f"the server refused the config: {describe_error(message)}")
            if verdict == "accepted":
                self._probing = False
                break
        if self.options.say:
            await self._send_json(ws, {"type": "text", "text": self.options.say})
        reader = asyncio.create_task(self._read(ws))
        try:
            await self._ticks(ws)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self.view.line(f"summary: {self.result.summary()}", self._clock())

    async def _next(self, ws: aiohttp.ClientWebSocketResponse, waiting_for: str
                    ) -> dict[str, Any]:
        """The next text message (handled as any), before the ticks start."""
        import aiohttp

        deadline = self._clock() + ANSWER_TIMEOUT_S
        while True:
            left = deadline - self._clock()
            if left <= 0:
                raise TalkError(f"no answer from the server within {ANSWER_TIMEOUT_S:g} s "
                                f"(waiting for {waiting_for})")
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.TEXT:
                message = self._on_text(msg.data)
                if message is not None:
                    return message
            elif msg.type != aiohttp.WSMsgType.BINARY:
                raise TalkError(self._closed_reason(ws))

    async def _ticks(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The microphone's clock: play, cancel the echo, send (module docstring)."""
        far = self._far
        input_done_at: float | None = None
        while not self._closed.is_set():
            captured = await self.microphone.read()
            now = self._clock()
            played = self.playback.read(now)
            self.speaker.write(played.pcm)
            cleaned = self.echo.process(far.process(played.pcm), captured.mic)
            if not await self._send_bytes(ws, to_pcm16(cleaned)):
                break
            sent = self._clock()
            self.result.sent_frames += 1
            self.speech.observe(captured.user if captured.user is not None else cleaned, sent)
            for report in self.playback.take_reports():
                await self._send_json(ws, report.message())
            if self._stopping:
                self.result.ended_by = "stopped"
                return
            if not self.microphone.exhausted:
                continue
            if input_done_at is None:
                input_done_at = sent
            if self.tracker.settled(sent, input_done_at=input_done_at,
                                    playback_idle=self.playback.idle, speech=self.speech):
                self.result.ended_by = "settled"
                return
            if sent - input_done_at >= self.options.linger_s:
                self.result.ended_by = "linger"
                self.view.line(f"--linger {self.options.linger_s:g} s reached", sent)
                return
        if self.tracker.closed_reason is not None:
            self.result.ended_by = "closed"
            if self.tracker.closed_reason != "completed":
                self.result.code = 1
                self.result.problem = f"the server ended the session ({self.tracker.closed_reason})"
        else:
            self.result.ended_by = "connection lost"
            raise TalkError(self._closed_reason(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        import aiohttp

        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._on_binary(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
        finally:
            self._closed.set()

    def _on_binary(self, data: bytes) -> None:
        now = self._clock()
        try:
            frame = decode_binary_frame(data)
        except ValueError:
            return  # not one of ours (protocol.md: reject it)
        if self._record:
            self.result.log.append(Recorded(now, {"type": "binary", "sequence": frame.sequence,
                                                  "utterance_id": frame.utterance_id}))
        self.playback.push(frame.utterance_id, frame.pcm, now)
        latency = self.tracker.on_frame(frame.utterance_id, now, self.speech)
        if latency is not None:
            self.view.line(describe_latency(latency), now)

    def _on_text(self, data: str) -> dict[str, Any] | None:
        now = self._clock()
        try:
            message = json.loads(data)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        if self._record:
            self.result.log.append(Recorded(now, message))
        kind, uid = message.get("type"), message.get("utterance_id")
        if isinstance(uid, int):
            if kind == "pause":
                self.playback.pause(uid)
            elif kind == "resume":
                self.playback.resume(uid)
            elif kind == "interrupt":
                self.playback.interrupt(uid)
            elif kind == "utterance_end":
                self.playback.end(uid, str(message.get("reason")))
        if self._probing and probe_verdict(message) is not None:
            return message  # the config check's answer: the caller says what it means
        self.tracker.on_message(message, now)
        self.view.message(message, now)
        return message

    async def _send_bytes(self, ws: aiohttp.ClientWebSocketResponse, data: bytes) -> bool:
        import aiohttp

        try:
            await ws.send_bytes(data)
        except (ConnectionError, aiohttp.ClientError):
            return False  # the server went away: the reader says how
        return True

    async def _send_json(self, ws: aiohttp.ClientWebSocketResponse,
                         message: dict[str, Any]) -> None:
        import aiohttp

        try:
            await ws.send_str(json.dumps(message))
        except (ConnectionError, aiohttp.ClientError):
            raise TalkError(self._closed_reason(ws)) from None

    def _closed_reason(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        if self.tracker.closed_reason is not None:
            return f"the server ended the session ({self.tracker.closed_reason})"
        return f"the connection to {self.options.url} was lost (close code {ws.close_code})"


__all__ = ["ANSWER_TIMEOUT_S", "Recorded", "TalkClient", "TalkError", "TalkOptions",
           "TalkResult"]
