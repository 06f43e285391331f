"""A minimal conversation-mode client of the orchestrator (WIRE §1.2), for benchmarks.

Connect to ``ws://host:port/ws``, wait for ``session_start``, send
``{"type": "config", "mode": "conversation", "input_sample_rate": 16000,
"output_format": "binary"}``, then stream the microphone: binary PCM16LE frames of
20 ms, in real time, for as long as the session lives (silence when there is nothing
to say, as a real microphone keeps sending). Every message received is logged with
the time it arrived (``time.perf_counter``, a monotonic clock): JSON messages as they
are, binary audio frames by their header (``decode_binary_frame``: ``utterance_id``,
``sequence``, ``flags``).

**Pacing.** Frame ``k`` (0-based, counted from the stream's start ``t0``) is sent when
it is complete, at ``t0 + (k + 1) x 20 ms`` on the clock: each deadline comes from the
stream's start, never from the previous send, so late wake-ups do not add up. A stall
(the event loop was busy) is caught up at once, frames back to back, as a microphone's
buffer would deliver them. The time each frame actually went out is kept: the wall
time of a sample of the input timeline is the send time of the frame that holds it,
the first moment the server could know it.

**Scenarios** (one item of ``conversation_set`` each, measured at this client):
:func:`run_utterance` (say it; voice-to-voice from the end of its speech and from the
end of its voice, found acoustically, with the server's ``metrics`` for the turn;
was the speaker cut off?),
:func:`run_interruption` (ask for a long reply with a ``text`` message, talk over it;
``pause`` / ``interrupt`` latency, old audio after the onset) and :func:`run_burst`
(the same with a noise: ``resume`` or ``interrupt``?). Each sends STOP once it has what
it measures (unless told not to), so replies need not play out, then waits until the
session is quiet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from duplexvoice.audio.voice_end import find_voice_end
from duplexvoice.wire.protocol import decode_binary_frame

FRAME_S = 0.02
RATE = 16000  # the microphone's rate (the items' audio)
Clock = Callable[[], float]


@dataclass(frozen=True)
class Received:
    """One message from the server: ``type`` is the JSON ``type``, ``audio`` for a binary
    frame (``data``: ``utterance_id``, ``sequence``, ``flags``), ``bad_frame`` for one that
    does not decode; ``t`` is its arrival on the client's clock."""

    t: float
    type: str
    data: dict[str, Any]

    @property
    def uid(self) -> int | None:
        value = self.data.get("utterance_id")
        return value if isinstance(value, int) else None


# -- the microphone ---------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """Audio queued on the microphone: frames ``first`` .. ``first + frames - 1``."""

    first: int
    frames: int
    samples_per_frame: int

    def frame_of(self, sample: int) -> int:
        """The stream's frame index that holds this sample of the track."""
        if not 0 <= sample < self.frames * self.samples_per_frame:
            raise ValueError(f"sample {sample} is outside the track")
        return self.first + sample // self.samples_per_frame


class MicStream:
    """Real-time PCM16 frames to ``send``; silence whenever nothing is queued.

    ``clock`` and ``sleep`` are parameters so that pacing can be checked with a fake
    clock. ``sent_at[k]`` is when frame ``k`` went out.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]], rate: int = 16000,
                 clock: Clock = time.perf_counter,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if rate % 50:
            raise ValueError(f"input rate {rate} Hz has no whole 20 ms frame")
        self.samples_per_frame = rate // 50
        self.frame_bytes = 2 * self.samples_per_frame
        self._send, self._clock, self._sleep = send, clock, sleep
        self._queue: collections.deque[bytes] = collections.deque()  # next frames, in order
        self._silence = bytes(self.frame_bytes)
        self.sent_at: list[float] = []
        self.t0 = 0.0
        self.error: BaseException | None = None
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.t0 = self._clock()
        self._task = asyncio.create_task(self.run())

    def due(self, k: int) -> float:
        """When frame ``k`` is complete and goes out."""
        return self.t0 + (k + 1) * FRAME_S

    async def run(self, frames: int | None = None) -> None:
        """Send frames until stopped (or ``frames`` of them: for tests)."""
        try:
            while frames is None or len(self.sent_at) < frames:
                k = len(self.sent_at)
                delay = self.due(k) - self._clock()
                if delay > 0:
                    await self._sleep(delay)
                frame = self._queue.popleft() if self._queue else self._silence
                await self._send(frame)
                self.sent_at.append(self._clock())
                self._progress.set()
        except (ConnectionError, aiohttp.ClientError) as exc:
            self.error = exc
        finally:
            self._progress.set()

    def play(self, pcm: bytes) -> Track:
        """Queue PCM16 audio (zero-padded to whole frames) after what is queued."""
        if len(pcm) % 2:
            raise ValueError("PCM16 audio has an even number of bytes")
        pad = -len(pcm) % self.frame_bytes
        pcm += bytes(pad)
        frames = [pcm[i:i + self.frame_bytes] for i in range(0, len(pcm), self.frame_bytes)]
        track = Track(len(self.sent_at) + len(self._queue), len(frames), self.samples_per_frame)
        self._queue.extend(frames)
        return track

    async def sent(self, frame: int, within_s: float = 60.0) -> float:
        """Wait until frame ``frame`` went out; its send time."""
        async with asyncio.timeout(within_s):
            while len(self.sent_at) <= frame:
                if self.error is not None or (self._task is not None and self._task.done()):
                    raise ConnectionError(f"microphone stopped: {self.error!r}")
                self._progress.clear()
                await self._progress.wait()
        return self.sent_at[frame]

    async def wall_time(self, track: Track, sample: int) -> float:
        """When the frame holding ``sample`` of ``track`` was sent."""
        return await self.sent(track.frame_of(sample))

    def lateness_ms(self) -> list[float]:
        """How late each frame went out against its due time (pacing check)."""
        return [(t - self.due(k)) * 1000 for k, t in enumerate(self.sent_at)]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the connection ---------------------------------------------------------------------


class ConfigRefused(RuntimeError):
    """The server answered ``config`` with an error (no conversation mode?)."""


@dataclass
class ConversationClient:
    ws: aiohttp.ClientWebSocketResponse
    session_id: str
    url: str = ""
    mic: MicStream = field(init=False)
    log: list[Received] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self.mic = MicStream(self.ws.send_bytes)
        self._changed = asyncio.Event()
        self._sending: set[asyncio.Future[None]] = set()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, *, voice: str = "",
                      within_s: float = 30.0, check_s: float = 0.5,
                      extra: dict[str, Any] | None = None) -> ConversationClient:
        """Open a session in conversation mode and start the microphone. An ``error``
        within ``check_s`` of the config raises :class:`ConfigRefused`."""
        ws = await http.ws_connect(url, heartbeat=None, max_msg_size=0)
        first = await ws.receive_json(timeout=within_s)
        if first.get("type") != "session_start":
            await ws.close()
            raise ConnectionError(f"expected session_start, got {first}")
        client = cls(ws, str(first.get("session_id", "")), url)
        config: dict[str, Any] = {"type": "config", "mode": "conversation",
                                  "input_sample_rate": 16000, "output_format": "binary"}
        if voice:
            config["voice"] = voice
        config.update(extra or {})
        client.send_json(config)
        refused = await client.wait_for(lambda e: e.type == "error", 0, check_s)
        if refused is not None:
            await client.close()
            raise ConfigRefused(f"config {config} refused: {client.log[refused].data}")
        client.mic.start()
        return client

    async def _read(self) -> None:
        clock = time.perf_counter
        try:
            async for msg in self.ws:
                t = clock()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    try:
                        f = decode_binary_frame(msg.data)
                        entry = Received(t, "audio", {"utterance_id": f.utterance_id,
                                                      "sequence": f.sequence, "flags": f.flags})
                    except ValueError as exc:
                        entry = Received(t, "bad_frame", {"why": str(exc)})
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        entry = Received(t, str(data.get("type")), data)
                    except (ValueError, AttributeError) as exc:
                        entry = Received(t, "bad_frame", {"why": f"not a JSON object: {exc}"})
                    if entry.type == "audio":  # JSON audio: keep the header fields only
                        entry = Received(t, "audio", {k: data.get(k) for k in
                                                      ("utterance_id", "sequence")})
                else:
                    break
                self.log.append(entry)
                self._changed.set()
        finally:
            self.closed = True
            self._changed.set()

    def send_json(self, message: dict[str, Any]) -> float:
        """Queue a JSON message; the time it was handed to the socket."""
        task = asyncio.ensure_future(self.ws.send_str(json.dumps(message)))
        self._sending.add(task)  # a reference, until it is done
        task.add_done_callback(self._sent)
        return time.perf_counter()

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.append(Received(time.perf_counter(), "send_failed",
                                     {"why": repr(task.exception())}))

    def text(self, text: str) -> float:
        return self.send_json({"type": "text", "text": text})

    def control(self, command: str) -> float:
        return self.send_json({"type": "control", "command": command})

    async def wait_for(self, pred: Callable[[Received], bool], since: int,
                       within_s: float) -> int | None:
        """Index of the first logged message from ``since`` on that ``pred`` accepts,
        waiting at most ``within_s``; ``None`` if none came (or the socket closed)."""
        deadline = time.perf_counter() + within_s
        i = since
        while True:
            self._changed.clear()
            while i < len(self.log):
                if pred(self.log[i]):
                    return i
                i += 1
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self.closed:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def audio_ids(self, since: int = 0) -> set[int]:
        return {e.uid for e in self.log[since:] if e.type == "audio" and e.uid is not None}

    async def settle(self, since: int, quiet_s: float = 0.6, within_s: float = 30.0) -> bool:
        """Wait until every utterance heard from ``since`` on has its ``utterance_end``
        and no audio came for ``quiet_s``. False if that did not happen in time."""
        deadline = time.perf_counter() + within_s
        while time.perf_counter() < deadline and not self.closed:
            entries = self.log[since:]
            open_ids = self.audio_ids(since) - {e.uid for e in entries
                                                if e.type == "utterance_end"}
            last = max((e.t for e in entries if e.type == "audio"), default=0.0)
            wait = last + quiet_s - time.perf_counter()
            if not open_ids and wait <= 0:
                return True
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(),
                                       max(0.01, min(quiet_s if open_ids else wait,
                                                     deadline - time.perf_counter())))
        return False

    async def close(self) -> None:
        await self.mic.stop()
        await self.ws.close()
        await self._reader


# -- scenarios --------------------------------------------------------------------------


def _finals(entries: list[Received]) -> list[Received]:
    return [e for e in entries if e.type == "transcript" and e.data.get("final")]


def _ms(t: float | None, since: float) -> float | None:
    return None if t is None else (t - since) * 1000


def _first_t(entries: list[Received], pred: Callable[[Received], bool]) -> float | None:
    return next((e.t for e in entries if pred(e)), None)


async def _finish(c: ConversationClient, since: int, stop: bool) -> bool:
    if stop:
        c.control("STOP")
    return await c.settle(since)


def _common(c: ConversationClient, since: int, item: Any) -> dict[str, Any]:
    entries = c.log[since:]
    return {
        "id": item.id, "kind": item.kind,
        "finals": [str(e.data.get("text", "")) for e in _finals(entries)],
        "partials": sum(1 for e in entries if e.type == "transcript"
                        and not e.data.get("final")),
        "replies": [str(e.data.get("text", "")) for e in entries if e.type == "reply"],
        "metrics": [e.data for e in entries if e.type == "metrics"],
        "errors": [e.data for e in entries if e.type in ("error", "bad_frame")],
        "states": [str(e.data.get("state")) for e in entries if e.type == "state"],
    }


def _turn_metrics(entries: list[Received], uid: int | None) -> tuple[int | None,
                                                                     dict[str, Any]]:
    """The turn the reply ``uid`` answers, and the server's ``metrics`` for it: the
    turn's figures and the utterance's ``first_audio_ms``."""
    turn = next((e.data.get("turn") for e in entries
                 if e.type == "reply" and e.uid == uid and uid is not None), None)
    out: dict[str, Any] = {}
    for e in entries:
        if e.type != "metrics":
            continue
        if turn is not None and e.data.get("turn") == turn and "voice_to_voice_ms" in e.data:
            out |= {k: v for k, v in e.data.items() if k not in ("type", "turn")}
        elif uid is not None and e.uid == uid and "first_audio_ms" in e.data:
            out["first_audio_ms"] = e.data["first_audio_ms"]
    return (turn if isinstance(turn, int) else None), out


async def run_utterance(c: ConversationClient, item: Any, *, stop: bool = True,
                        reply_within_s: float = 10.0,
                        late_within_s: float = 30.0) -> dict[str, Any]:
    """Say ``item`` (an ``utterance``, ``cutoff`` or ``human`` turn). Voice-to-voice:
    the send time of its last speech sample (``v2v_ms``: the end of its speech piece)
    or of the end of its voice, found in its audio (``v2v_voice_ms``) -> the first
    frame of a reply that began after it. ``server``: the server's ``metrics`` for the
    turn the reply answers (from the VAD's end of speech). Was the speaker cut off?
    No reply within ``reply_within_s`` (a machine too busy): its final transcript is
    waited for up to ``late_within_s`` more (``late``), so that it does not land in the
    next item's row."""
    since = len(c.log)
    track = c.mic.play(item.pcm)
    voice = find_voice_end(item.audio, RATE).end or item.sample(item.end_s)
    voice = min(voice, item.sample(item.end_s))  # never past the speech piece's end
    voice_t = await c.mic.wall_time(track, voice - 1)
    end = await c.mic.wall_time(track, item.sample(item.end_s) - 1)
    cont = None
    if item.continuation_s is not None:
        cont = await c.mic.wall_time(track, item.sample(item.continuation_s))
    early = c.audio_ids(since)  # replies that began before the speech ended
    found = await c.wait_for(lambda e: e.type == "audio" and e.uid not in early, since,
                             reply_within_s)
    reply_t = c.log[found].t if found is not None else None
    uid = c.log[found].uid if found is not None else None
    late = found is None and await c.wait_for(
        lambda e: e.type == "audio" or (e.type == "transcript" and bool(e.data.get("final"))),
        since, late_within_s) is not None
    settled = await _finish(c, since, stop)
    entries = c.log[since:]
    turn, server = _turn_metrics(entries, uid)
    first_final = _first_t(entries, lambda e: e.type == "transcript"
                           and bool(e.data.get("final")))
    out = _common(c, since, item) | {
        "v2v_ms": _ms(reply_t, end), "v2v_voice_ms": _ms(reply_t, voice_t),
        "voice_end_before_speech_end_ms": (item.sample(item.end_s) - voice) * 1000 / RATE,
        "final_after_voice_ms": _ms(first_final, voice_t), "turn": turn, "server": server,
        "early_reply": bool(early), "late": late, "settled": settled}
    if cont is not None:
        first_audio = _first_t(entries, lambda e: e.type == "audio")
        rules = {"final_before_continuation": first_final is not None and first_final < cont,
                 "reply_before_continuation": first_audio is not None and first_audio < cont,
                 "several_finals": len(out["finals"]) >= 2}
        out |= {"cut_off": any(rules.values()), "cut_rules": rules,
                "first_final_after_continuation_ms": _ms(first_final, cont)}
    elif item.kind == "human":
        # A whole turn of a real person: a final or a reply before its voice ended, or
        # two finals, is a turn ended in one of its own pauses.
        rules = {"final_before_voice_end": first_final is not None and first_final < voice_t,
                 "reply_before_voice_end": bool(early),
                 "several_finals": len(out["finals"]) >= 2}
        out |= {"cut_off": any(rules.values()), "cut_rules": rules}
    return out


async def _long_reply(c: ConversationClient, reply_text: str,
                      within_s: float) -> tuple[int, int, float]:
    """Ask for ``reply_text`` to be spoken; (log index, its utterance_id, first frame t)."""
    since = len(c.log)
    known = c.audio_ids()
    c.text(reply_text)
    found = await c.wait_for(lambda e: e.type == "audio" and e.uid not in known, since,
                             within_s)
    if found is None:
        why = "the server closed the socket" if c.closed else f"none within {within_s} s"
        raise TimeoutError(f"no reply audio to a text message ({why}): {c.log[since:][-5:]}")
    uid = c.log[found].uid
    assert uid is not None
    return since, uid, c.log[found].t


def _old_audio(entries: list[Received], old: int, after: float,
               before: float = float("inf")) -> list[Received]:
    return [e for e in entries if e.type == "audio" and e.uid == old and after < e.t < before]


async def run_interruption(c: ConversationClient, item: Any, reply_text: str, *,
                           stop: bool = True, decide_within_s: float = 3.0,
                           reply_within_s: float = 10.0) -> dict[str, Any]:
    """Talk over a long reply: speech onset -> ``pause`` / ``interrupt`` of the old
    utterance; its frames received after the onset (and after the ``interrupt``)."""
    since, old, first = await _long_reply(c, reply_text, 15.0)
    track = c.mic.play(item.pcm)
    onset = await c.mic.wall_time(track, item.sample(item.onset_s))
    end = await c.mic.wall_time(track, item.sample(item.end_s) - 1)
    await c.wait_for(lambda e: e.type == "interrupt" and e.uid == old, since,
                     max(0.0, end + decide_within_s - time.perf_counter()))
    known = c.audio_ids(since)
    found = await c.wait_for(lambda e: e.type == "audio" and e.uid not in known, since,
                             max(0.0, end + reply_within_s - time.perf_counter()))
    settled = await _finish(c, since, stop)
    entries = c.log[since:]
    of_old = [e for e in entries if e.uid == old]
    pause_t = _first_t(of_old, lambda e: e.type == "pause")
    interrupt_t = _first_t(of_old, lambda e: e.type == "interrupt")
    ended = next((e.data for e in of_old if e.type == "utterance_end"), {})
    reply_t = None
    if found is not None:
        new = c.log[found].uid
        reply_t = _first_t(entries, lambda e: e.type == "audio" and e.uid == new)
    return _common(c, since, item) | {
        "old_utterance": old, "reply_started_s_before_onset": onset - first,
        "pause_ms": _ms(pause_t, onset), "interrupt_ms": _ms(interrupt_t, onset),
        "missed": interrupt_t is None,
        "old_audio_after_onset_ms": 20 * len(_old_audio(entries, old, onset)),
        "old_frames_after_interrupt": len(_old_audio(entries, old, interrupt_t))
        if interrupt_t is not None else None,
        "old_end_reason": ended.get("reason"),
        "reply_after_speech_ms": _ms(reply_t, end), "settled": settled}


async def run_burst(c: ConversationClient, item: Any, reply_text: str, *,
                    stop: bool = True, pause_within_s: float = 1.0,
                    decide_within_s: float = 3.0) -> dict[str, Any]:
    """A noise over a long reply: ``ignored`` (no ``pause``), ``resumed``,
    ``interrupted`` (a false interruption) or ``held`` (paused, never decided)."""
    since, old, first = await _long_reply(c, reply_text, 15.0)
    track = c.mic.play(item.pcm)
    onset = await c.mic.wall_time(track, item.sample(item.onset_s))
    end = await c.mic.wall_time(track, item.sample(item.end_s) - 1)

    def of_old(*kinds: str) -> Callable[[Received], bool]:
        return lambda e: e.type in kinds and e.uid == old

    held = await c.wait_for(of_old("pause", "interrupt"), since,
                            max(0.0, end + pause_within_s - time.perf_counter()))
    if held is not None:
        await c.wait_for(of_old("resume", "interrupt"), since,
                         max(0.0, end + decide_within_s - time.perf_counter()))
    entries = c.log[since:]
    pause_t = _first_t(entries, of_old("pause"))
    resume_t = _first_t(entries, of_old("resume"))
    interrupt_t = _first_t(entries, of_old("interrupt"))
    outcome = ("interrupted" if interrupt_t is not None else "resumed" if resume_t is not None
               else "held" if pause_t is not None else "ignored")
    seqs = [int(e.data["sequence"]) for e in entries if e.type == "audio" and e.uid == old]
    settled = await _finish(c, since, stop)
    return _common(c, since, item) | {
        "old_utterance": old, "reply_started_s_before_onset": onset - first,
        "outcome": outcome, "pause_ms": _ms(pause_t, onset),
        "resume_ms_after_end": _ms(resume_t, end),
        "old_audio_onset_to_pause_ms": 20 * len(_old_audio(entries, old, onset,
                                                             pause_t or onset)),
        "sequence_gaps": sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1),
        "settled": settled}
