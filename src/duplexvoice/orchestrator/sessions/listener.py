"""The listening half of one session (conversation mode): microphone audio to VAD
edges, transcripts and replies, posted to the session machine as events.

I/O only: what to do is the machine's (and its turn-taking core's) decision; this
module runs the resampler and the VAD inline (cheap, per frame, on the event loop),
the recognizer and the reply engine in tasks, and carries out the machine's
``TranscribeTurn``, ``TurnClosed``, ``StartReply`` and ``CancelReply``.

- Audio is kept in a ring of the last ``max_turn_ms`` + 2 s at 16 kHz; a turn's audio
  runs from ``PREROLL_S`` before its first onset (Whisper needs the attack) to the
  moment it is transcribed. Nothing else of the microphone is kept.
- Microphone audio faster than ``max_audio_rate`` seconds per second (after a burst of
  ``max_audio_burst_s``) is dropped with one ``RATE_LIMITED`` error per second.
- Partial transcripts: every ``partial_interval_ms`` of new speech, at most one at a
  time per session (the recognizer drops them first when it is busy).
- A newer final for the same turn cancels the older one, so a stale transcript is
  never posted after a newer one was asked for.
- The services (recognizer, reply engine, VAD model) are shared by all sessions;
  the session's own state here is its audio, its VAD state and its reply history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from duplexvoice.orchestrator.conversation_config import ConversationConfig
from duplexvoice.orchestrator.sessions.events import (
    Action,
    CancelReply,
    Event,
    ReplyChunk,
    ReplyFailed,
    StartReply,
    TranscribeTurn,
    TurnClosed,
    UserSpeechEnded,
    UserSpeechPaused,
    UserSpeechResumed,
    UserSpeechStarted,
    UserTranscript,
)
from duplexvoice.replies import (
    History,
    ReplyConfig,
    ReplyEngine,
    ReplyError,
    heard_prefix,
    make_engine,
)
from duplexvoice.speech import SPEECH_RATE
from duplexvoice.speech.asr import Transcriber
from duplexvoice.speech.asr_types import AsrBusy, AsrConfig, AsrError
from duplexvoice.speech.audio_in import MicResampler
from duplexvoice.speech.vad import VadConfig, VoiceDetector
from duplexvoice.speech.vad_gate import SpeechOffset, SpeechOnset
from duplexvoice.wire.messages import Error, ErrorCode

log = logging.getLogger(__name__)

FloatAudio = npt.NDArray[np.float32]
PREROLL_S = 0.3  # audio kept before an onset: the VAD confirms speech after it began
_ERROR_EVERY_S = 1.0
_QUIET_S = 0.048  # no voice this long within speech: a pause (not yet an offset)


@dataclass
class ConversationServices:
    """What all conversation sessions share: one recognizer, one reply engine per
    name, the VAD settings. The recognizer loads in the background from the start:
    the first turn waits for it only if it comes within the first second or so."""

    config: ConversationConfig
    transcriber: Transcriber
    replies: dict[str, ReplyEngine]
    vad: VadConfig = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.vad = VadConfig(
            engine=c.vad_engine, aggressiveness=c.vad_aggressiveness,
            silero_hop=c.vad_silero_hop,
            threshold=c.vad_threshold, neg_threshold=c.vad_neg_threshold,
            speaking_threshold=c.vad_speaking_threshold, min_speech_ms=c.vad_min_speech_ms,
            speaking_min_speech_ms=c.vad_speaking_min_speech_ms,
            min_silence_ms=c.vad_min_silence_ms,
            fast_onset=c.vad_fast_onset, fast_rise_db=c.vad_fast_rise_db,
            fast_min_level_db=c.vad_fast_min_level_db, fast_backoff_ms=c.vad_fast_backoff_ms,
            fast_backoff_max_ms=max(60_000, c.vad_fast_backoff_ms))

    async def close(self) -> None:
        for engine in self.replies.values():
            await engine.close()
        await asyncio.to_thread(self.transcriber.close)


def asr_config(config: ConversationConfig) -> AsrConfig:
    # The library's default is 4 threads: more than a small machine has.
    threads = config.asr_threads or min(4, os.cpu_count() or 1)
    return AsrConfig(model_path=config.asr_model or None,
                     device=config.asr_device,
                     compute_type=config.asr_compute_type, cpu_threads=threads,
                     beam_size=config.asr_beam_size,
                     max_queue=config.asr_max_queue)


def reply_config(config: ConversationConfig, engine: str) -> ReplyConfig:
    return ReplyConfig(engine=engine, base_url=config.reply_base_url, model=config.reply_model,
                       api_key_env=config.reply_api_key_env,
                       system_prompt=config.reply_system_prompt, timeout_s=config.reply_timeout_s)


async def make_services(config: ConversationConfig) -> ConversationServices:
    """The shared parts of conversation mode. Raises ``ValueError`` for settings that
    cannot work (a model directory that does not exist)."""
    transcriber = await asyncio.to_thread(Transcriber, asr_config(config))
    replies = {"echo": make_engine(reply_config(config, "echo"))}
    if config.reply_engine != "echo":
        replies[config.reply_engine] = make_engine(reply_config(config, config.reply_engine))
    return ConversationServices(config, transcriber, replies)


class AudioRing:
    """The last ``capacity`` samples, addressed by absolute sample index."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, np.float32)
        self.end = 0  # absolute index one past the newest sample

    def push(self, audio: FloatAudio) -> None:
        n = len(audio)
        cap = len(self._buf)
        if n > cap:  # only the newest ``cap`` samples can be kept
            self.end += n - cap
            audio, n = audio[-cap:], cap
        at = self.end % cap
        first = min(n, cap - at)
        self._buf[at:at + first] = audio[:first]
        self._buf[:n - first] = audio[first:]
        self.end += n

    def since(self, start: int) -> FloatAudio:
        cap = len(self._buf)
        start = max(start, self.end - cap, 0)
        n = self.end - start
        if n <= 0:
            return np.zeros(0, np.float32)
        at = start % cap
        if at + n <= cap:
            return self._buf[at:at + n].copy()
        return np.concatenate([self._buf[at:], self._buf[:n - (cap - at)]])


class AudioBudget:
    """Token bucket in seconds of audio: a client may not send audio much faster than
    real time (a flood would cost every session CPU)."""

    def __init__(self, rate: float, burst_s: float, now: float) -> None:
        self.rate, self.burst = rate, burst_s
        self._tokens, self._at = burst_s, now

    def take(self, seconds: float, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)
        if seconds > self._tokens:
            return False
        self._tokens -= seconds
        return True


class Listener:
    def __init__(
        self,
        session_id: str,
        services: ConversationServices,
        *,
        post: Callable[[Event], None],
        send_error: Callable[[Error], Coroutine[Any, Any, None]],
        current_turn: Callable[[], int],
        lead_ms: float = 100.0,
    ) -> None:
        self.session_id = session_id
        self.services = services
        config = services.config
        self.config = config
        self.reply_engine = "echo" if "echo" in services.replies else next(iter(services.replies))
        if config.reply_engine in services.replies:
            self.reply_engine = config.reply_engine
        self._lead_ms = lead_ms
        self._post = post
        self._send_error = send_error
        self._current_turn = current_turn
        self._resampler: MicResampler | None = None
        self._detector: VoiceDetector = services.vad.make_detector()
        self._ring = AudioRing(int((config.max_turn_ms / 1000 + 2 + PREROLL_S) * SPEECH_RATE))
        self._budget = AudioBudget(config.max_audio_rate, config.max_audio_burst_s,
                                   time.monotonic())
        self._last_error_at = -1e9
        self._turn_start: int | None = None  # sample index; None: no open turn
        self._speaking = False  # the VAD's view
        self._quiet = False  # within speech, no voice for a while (told to the machine)
        self._partial_at = 0  # sample index of the last partial asked
        self._partial: asyncio.Task[None] | None = None
        self._forced_pending = False  # a words check waits for the running partial
        self._finals: dict[int, asyncio.Task[None]] = {}  # by turn
        self._replies: dict[int, asyncio.Task[None]] = {}  # by turn
        self._streams: dict[int, Any] = {}  # turn -> its ReplyStream
        self._asked: dict[int, int] = {}  # turn -> history index of the user's words
        self.history = History()
        self._chores: set[asyncio.Task[None]] = set()  # history cuts after an interruption
        self._played: dict[int, float] = {}  # utterance id -> ms the client reports played
        self.speech_started_at: float | None = None  # wall clock of the last onset event
        self.speech_ended_at: float | None = None  # wall clock of the last speech sample

    # -- audio in ---------------------------------------------------------------------

    async def audio(self, pcm: bytes, sample_rate: int, system_speaking: bool,
                    holding: bool = False, now: float | None = None) -> None:
        """Microphone audio (already validated by the protocol: even length, the
        session's rate). Runs inline: resampling and VAD cost microseconds a frame.
        ``holding``: the system's speech is held for a possible barge-in; words decide
        it, so partials come sooner, and at once when the speech stops."""
        now = time.monotonic() if now is None else now
        if not self._budget.take(len(pcm) / 2 / sample_rate, now):
            if now - self._last_error_at >= _ERROR_EVERY_S:
                self._last_error_at = now
                await self._send_error(Error(
                    ErrorCode.RATE_LIMITED,
                    "microphone audio arrives faster than real time; audio dropped"))
            return
        if self._resampler is None:
            self._resampler = MicResampler(sample_rate, SPEECH_RATE)
        elif self._resampler.input_rate != sample_rate:
            self._resampler = self._resampler.with_rate(sample_rate)
        audio = self._resampler.push(pcm)
        if not len(audio):
            return
        self._ring.push(audio)
        for edge in self._detector.push(audio, strict=system_speaking):
            if isinstance(edge, SpeechOnset):
                self._speaking = True
                if self._turn_start is None:
                    start = int(max(0.0, edge.start_s - PREROLL_S) * SPEECH_RATE)
                    self._turn_start = self._partial_at = start
                # When the speech began, on the wall clock (the VAD confirmed it later).
                lead = max(0.0, self._audio_now() - edge.start_s)
                self.speech_started_at = now - lead
                self._post(UserSpeechStarted(lead))
            elif isinstance(edge, SpeechOffset):
                self._speaking = False
                silence = max(0.0, edge.confirmed_s - edge.end_s)
                self.speech_ended_at = now - max(0.0, self._audio_now() - edge.end_s)
                # "Wait," is short: while holding, its words decide, so they are
                # checked now and the hold waits for the answer.
                checking = holding and bool(self.config.partial_interval_ms)
                self._post(UserSpeechEnded(silence, checking_words=checking))
                if checking:
                    self._maybe_partial(force=True)
            self._quiet = False
        self._track_quiet()
        self._maybe_partial(sooner=holding)

    def _track_quiet(self) -> None:
        """Tell the machine when the voice stops within speech (the offset is only
        confirmed ``vad_min_silence_ms`` later) and when it comes back: a barge-in's
        speech is measured to the last voice, not to the offset."""
        gate = self._detector.gate
        last = gate.last_voiced_s
        if not gate.speaking or last is None:
            return
        quiet_s = self._detector.framer.time_s - last
        if not self._quiet and quiet_s >= _QUIET_S:
            self._quiet = True
            self._post(UserSpeechPaused(quiet_s))
        elif self._quiet and quiet_s < _QUIET_S:
            self._quiet = False
            self._post(UserSpeechResumed())

    def _audio_now(self) -> float:
        return self._ring.end / SPEECH_RATE

    def _turn_audio(self) -> FloatAudio:
        if self._turn_start is None:
            return np.zeros(0, np.float32)
        return self._ring.since(self._turn_start)

    def _maybe_partial(self, *, sooner: bool = False, force: bool = False) -> None:
        interval_ms = self.config.partial_interval_ms
        if sooner and interval_ms:
            interval_ms = min(interval_ms, self.config.barge_in_words_ms)
        interval = interval_ms * SPEECH_RATE // 1000
        if not interval or self._turn_start is None:
            return
        if self._partial is not None and not self._partial.done():
            # The one running did not hear the end: a forced check follows it.
            self._forced_pending = self._forced_pending or force
            return
        if not force and (not self._speaking or self._ring.end - self._partial_at < interval):
            return
        self._start_partial()

    def _start_partial(self) -> None:
        self._partial_at = self._ring.end
        turn, audio = self._current_turn(), self._turn_audio()
        self._partial = asyncio.create_task(self._transcribe(turn, audio, final=False))

    async def _transcribe(self, turn: int, audio: FloatAudio, *, final: bool) -> None:
        try:
            result = await self.services.transcriber.transcribe(
                audio, final=final, key=self.session_id)
        except AsrBusy as exc:
            await self._send_error(Error(ErrorCode.ASR_BUSY, str(exc)))
            result = None
        except AsrError as exc:
            log.warning("session %s: ASR failed: %s", self.session_id, exc)
            await self._send_error(Error(ErrorCode.ASR_FAILED, "speech recognition failed"))
            result = None
        text = result.text if result else ""
        if final or text or not self._forced_pending:
            # Empty partials too: a held barge-in may be waiting for "no words" (but
            # not from a partial that missed the end of the speech).
            self._post(UserTranscript(turn, text, final))
        if not final and self._forced_pending:
            self._forced_pending = False
            if self._turn_start is not None:
                self._start_partial()

    # -- the machine's actions ----------------------------------------------------------

    def act(self, action: Action) -> None:
        if isinstance(action, TranscribeTurn):
            old = self._finals.pop(action.turn, None)
            if old is not None:
                old.cancel()
            task = asyncio.create_task(
                self._transcribe(action.turn, self._turn_audio(), final=True))
            self._track(self._finals, action.turn, task)
        elif isinstance(action, TurnClosed):
            # Speech going on past a forced end belongs to the next turn.
            self._turn_start = self._ring.end if self._speaking else None
            self._partial_at = self._ring.end
        elif isinstance(action, StartReply):
            self._cancel_reply(action.turn)
            before = list(self._replies.values())
            self._track(self._replies, action.turn,
                        asyncio.create_task(self._reply(action.turn, action.text, before)))
        elif isinstance(action, CancelReply):
            running = self._replies.get(action.turn)
            self._cancel_reply(action.turn)
            if action.utterance_id is not None or action.unheard:
                # After the cancelled stream has closed (it adds its turn then).
                chore = asyncio.create_task(self._truncate_after(running, action))
                self._chores.add(chore)
                chore.add_done_callback(self._chores.discard)

    @staticmethod
    def _track(tasks: dict[int, asyncio.Task[None]], turn: int, task: asyncio.Task[None]) -> None:
        """Keep ``task`` under ``turn`` until it is done (then forget it)."""
        tasks[turn] = task

        def done(_: asyncio.Task[None]) -> None:
            if tasks.get(turn) is task:
                del tasks[turn]

        task.add_done_callback(done)

    async def _reply(self, turn: int, text: str, before: list[asyncio.Task[None]]) -> None:
        # A cancelled reply adds its (cut) turn to the history when it closes: let it,
        # so the history stays in order.
        await asyncio.gather(*before, return_exceptions=True)
        engine = self.services.replies[self.reply_engine]
        self._asked[turn] = self.history.next_index  # the user turn the engine adds
        while len(self._asked) > 4:
            del self._asked[min(self._asked)]
        stream = engine.reply(self.history, text)
        self._streams[turn] = stream
        try:
            async for clause in stream:
                # The trailing space lets the worker cut the sentence now rather than
                # wait for the next text to see where it ends.
                self._post(ReplyChunk(turn, clause + " "))
            self._post(ReplyChunk(turn, "", final=True))
        except ReplyError as exc:
            self._post(ReplyFailed(turn, str(exc)))
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
            # Kept after its end: an interruption while it is still being spoken cuts
            # its history. Only the last few turns can still be playing.
            while len(self._streams) > 4:
                del self._streams[min(self._streams)]

    def _cancel_reply(self, turn: int) -> None:
        task = self._replies.pop(turn, None)
        if task is not None:
            task.cancel()

    def playback(self, utterance_id: int, played_ms: float) -> None:
        """The client's report of what it has played (``playback``)."""
        self._played[utterance_id] = played_ms
        while len(self._played) > 8:
            del self._played[min(self._played)]

    async def _truncate_after(self, task: asyncio.Task[None] | None,
                              action: CancelReply) -> None:
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if action.unheard:
            # A speculative reply never heard leaves no trace, nor does the shorter
            # version of the turn it answered.
            asked = self._asked.pop(action.turn, None)
            if asked is not None and asked < self.history.next_index:
                turn = self.history.turn(asked)
                if turn is not None and turn.role == "user":
                    self.history.retract(asked)
            return
        stream = self._streams.get(action.turn)
        if stream is not None:
            self._truncate(stream, action)

    def _truncate(self, stream: Any, action: CancelReply) -> None:
        """Keep in the history only what the user heard of an interrupted reply: the
        client's report if it sent one, else what the server released minus the
        client's lead (what it still had buffered)."""
        index = stream.turn_index
        if index is None or action.utterance_id is None:
            return
        played = self._played.get(action.utterance_id)
        if played is None:
            played = max(0.0, action.released_ms - self._lead_ms)
        heard = heard_prefix(action.text, played, None)
        self.history.truncate_assistant(index, heard)

    async def close(self) -> None:
        tasks = [*self._finals.values(), *self._replies.values(), *self._chores]
        if self._partial is not None:
            tasks.append(self._partial)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.services.transcriber.forget(self.session_id)
