"""The listening half of one session (conversation mode), I/O side: microphone audio
to VAD edges, transcripts and replies, posted to the session machine as events.

What to do is decided by the pure :class:`~.listening.Listening` (partials, turn
audio, pauses, the audio budget, what was heard of a reply) and by the machine; this
module runs the resampler and the VAD inline (cheap, per frame, on the event loop),
the recognizer, the end-of-turn model and the reply engine in tasks, and carries out the machine's
``TranscribeTurn``, ``TurnClosed``, ``StartReply`` and ``CancelReply``.

- Audio is kept in a ring of the last ``max_turn_ms`` + 2 s at 16 kHz: the turn audio
  the core asks to transcribe is read from it. Nothing else of the microphone is kept.
- A newer final for the same turn cancels the older one, so a stale transcript is
  never posted after a newer one was asked for; so does a newer end-of-turn score.
  The score runs beside the final (the model and Whisper each on their own thread),
  during the silence that waits for the end of the turn anyway.
- A reply cancelled by the machine is cut in the history once its stream has closed
  (the stream adds its turn then).
- The services (recognizer, reply engine, VAD model) are shared by all sessions;
  the session's own state here is its audio, its VAD state and its reply history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
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
)
from duplexvoice.orchestrator.sessions.listening import (
    CancelEarlyFinal,
    Decision,
    EarlyFinal,
    Listening,
    ListeningConfig,
    Score,
    Transcribe,
    system_speaking,
)
from duplexvoice.orchestrator.sessions.shared import ConversationServices
from duplexvoice.orchestrator.sessions.state import State
from duplexvoice.replies import History, ReplyError, new_history
from duplexvoice.speech import SPEECH_RATE
from duplexvoice.speech.asr_types import AsrBusy, AsrError
from duplexvoice.speech.audio_in import MicResampler
from duplexvoice.speech.endturn import WINDOW_S as ENDTURN_WINDOW_S
from duplexvoice.speech.vad import VoiceDetector
from duplexvoice.wire.messages import Error, ErrorCode

log = logging.getLogger(__name__)

FloatAudio = npt.NDArray[np.float32]


def listening_config(config: ConversationConfig, lead_ms: float,
                     scoring: bool = False) -> ListeningConfig:
    """The listening core's settings: the one place they are read from the options.
    ``scoring``: the end-of-turn model is there (turn-taking may still not use it)."""
    return ListeningConfig(
        score_turns=scoring and config.turns.uses_acoustic,
        partial_interval_ms=config.partial_interval_ms, early_final_ms=config.early_final_ms,
        barge_in_words_ms=config.turns.words_after_ms, max_turn_ms=config.turns.max_turn_ms,
        max_audio_rate=config.max_audio_rate, max_audio_burst_s=config.max_audio_burst_s,
        lead_ms=lead_ms)


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

    def since(self, start: int, end: int | None = None) -> FloatAudio:
        """Samples ``[start, end)`` (``end`` None: to the newest), of those still kept."""
        cap = len(self._buf)
        end = self.end if end is None else min(end, self.end)
        start = max(start, self.end - cap, 0)
        n = end - start
        if n <= 0:
            return np.zeros(0, np.float32)
        at = start % cap
        if at + n <= cap:
            return self._buf[at:at + n].copy()
        return np.concatenate([self._buf[at:], self._buf[:n - (cap - at)]])


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
        self.reply_engine = "echo" if "echo" in services.replies else next(iter(services.replies))
        if config.reply.engine in services.replies:
            self.reply_engine = config.reply.engine
        self.core = Listening(listening_config(config, lead_ms, services.endturn is not None),
                              time.monotonic(),
                              history=new_history(config.reply))
        self._post = post
        self._send_error = send_error
        self._current_turn = current_turn
        self._resampler: MicResampler | None = None
        self._detector: VoiceDetector = services.vad.make_detector()
        self._ring = AudioRing(self.core.config.ring_samples)
        self._partial: asyncio.Task[None] | None = None
        self._early: asyncio.Task[None] | None = None  # an early final (nobody awaits it)
        self._finals: dict[int, asyncio.Task[None]] = {}  # by turn
        self._scores: dict[int, asyncio.Task[None]] = {}  # by turn
        self._replies: dict[int, asyncio.Task[None]] = {}  # by turn
        self._chores: set[asyncio.Task[None]] = set()  # history cuts after an interruption

    @property
    def history(self) -> History:
        return self.core.history

    @property
    def speech_started_at(self) -> float | None:
        """When the last onset's speech began (monotonic clock)."""
        return self.core.speech_started_at

    @property
    def speech_ended_at(self) -> float | None:
        """When the last offset's speech ended (monotonic clock)."""
        return self.core.speech_ended_at

    # -- audio in ---------------------------------------------------------------------

    async def audio(self, pcm: bytes, sample_rate: int, state: State,
                    now: float | None = None) -> None:
        """Microphone audio (already validated by the protocol: even length, the
        session's rate) while the machine is in ``state``. Runs inline: resampling
        and VAD cost microseconds a frame."""
        now = time.monotonic() if now is None else now
        core = self.core
        dropped = core.admit(len(pcm) / 2 / sample_rate, now)
        if dropped is not None:
            if dropped.error is not None:
                await self._send_error(dropped.error)
            return
        if self._resampler is None:
            self._resampler = MicResampler(sample_rate, SPEECH_RATE)
        elif self._resampler.input_rate != sample_rate:
            self._resampler = self._resampler.with_rate(sample_rate)
        audio = self._resampler.push(pcm)
        if not len(audio):
            return
        self._ring.push(audio)
        detector = self._detector
        edges = detector.push(audio, strict=system_speaking(state))
        gate = detector.gate
        last = gate.last_voiced_s
        quiet_s = detector.framer.time_s - last if gate.speaking and last is not None else None
        decisions = core.audio(self._ring.end, edges, quiet_s, state, now)
        if decisions:
            self._carry_out(decisions)

    def _carry_out(self, decisions: Sequence[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Transcribe):
                self._transcribe(decision)
            elif isinstance(decision, Score):
                self._score(decision)
            elif isinstance(decision, EarlyFinal):
                self._cancel_early()
                audio = self._ring.since(decision.start, decision.end)
                self._early = asyncio.create_task(self._ask_early(audio))
            elif isinstance(decision, CancelEarlyFinal):
                self._cancel_early()
                self.services.transcriber.withdraw_early(self.session_id)
            else:
                self._post(decision)

    def _transcribe(self, job: Transcribe) -> None:
        audio = self._ring.since(job.start, job.end)
        if job.turn is None:  # a partial, at most one at a time (the core sees to it)
            turn = self._current_turn()
            self._partial = asyncio.create_task(self._recognize(turn, audio, final=False))
            return
        old = self._finals.pop(job.turn, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self._recognize(job.turn, audio, final=job.final))
        self._track(self._finals, job.turn, task)

    def _score(self, job: Score) -> None:
        scorer = self.services.endturn
        if scorer is None:
            return
        start = max(job.start, job.end - ENDTURN_WINDOW_S * SPEECH_RATE)
        audio = self._ring.since(start, job.end)
        old = self._scores.pop(job.turn, None)
        if old is not None:
            old.cancel()

        async def run() -> None:
            p = await scorer.score(audio)
            self._carry_out(self.core.scored(job, p))

        self._track(self._scores, job.turn, asyncio.create_task(run()))

    def _cancel_early(self) -> None:
        if self._early is not None:
            self._early.cancel()  # withdrawn from the queue if it has not started
            self._early = None

    async def _ask_early(self, audio: FloatAudio) -> None:
        """The early final: its result goes to the recognizer's cache, where the turn's
        final finds it; errors are the final's to report."""
        with contextlib.suppress(AsrError):
            await self.services.transcriber.transcribe(
                audio, final=True, key=self.session_id, early=True)

    async def _recognize(self, turn: int, audio: FloatAudio, *, final: bool) -> None:
        text = ""
        answered = True
        try:
            result = await self.services.transcriber.transcribe(
                audio, final=final, key=self.session_id)
            text = result.text if result else ""
            answered = result is not None
        except AsrBusy as exc:
            await self._send_error(Error(ErrorCode.ASR_BUSY, str(exc)))
        except Exception as exc:  # an AsrError, or a bug: the turn must not wait forever
            log.warning("session %s: ASR failed: %s", self.session_id, exc,
                        exc_info=not isinstance(exc, AsrError))
            await self._send_error(Error(ErrorCode.ASR_FAILED, "speech recognition failed"))
        self._carry_out(self.core.transcribed(turn, text, final=final, answered=answered))

    # -- the machine's actions ----------------------------------------------------------

    def act(self, action: Action) -> None:
        if isinstance(action, TranscribeTurn | TurnClosed):
            self._carry_out(self.core.act(action))
        elif isinstance(action, StartReply):
            self._cancel_reply(action.turn)
            # Replies still running and interrupted ones' history cuts: the model must
            # see the history as the user heard it (a typed turn interrupts and asks at
            # once).
            before = [*self._replies.values(), *self._chores]
            self._track(self._replies, action.turn,
                        asyncio.create_task(self._reply(action.turn, action.text, before)))
        elif isinstance(action, CancelReply):
            running = self._replies.get(action.turn)
            self._cancel_reply(action.turn)
            # After the cancelled stream has closed (it adds its turn then).
            chore = asyncio.create_task(self._cut_after(running, action))
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
        self.core.reply_asked(turn)
        stream = engine.reply(self.core.history, text)
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
            # its history.
            self.core.reply_said(turn, stream.turn_index)

    def _cancel_reply(self, turn: int) -> None:
        task = self._replies.pop(turn, None)
        if task is not None:
            task.cancel()

    def playback(self, utterance_id: int, played_ms: float) -> None:
        """The client's report of what it has played (``playback``)."""
        self.core.playback(utterance_id, played_ms)

    async def _cut_after(self, task: asyncio.Task[None] | None, action: CancelReply) -> None:
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self.core.reply_stopped(action)

    async def close(self) -> None:
        """Stop listening: every task ends; speech the VAD was hearing ends too."""
        tasks = [*self._finals.values(), *self._scores.values(), *self._replies.values(),
                 *self._chores]
        tasks += [t for t in (self._partial, self._early) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.services.transcriber.forget(self.session_id)
        self._carry_out(self.core.stopped())
