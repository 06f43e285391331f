"""Speech recognition for the orchestrator: one Whisper model, shared by every session
through a bounded priority queue, run on its own thread.

Design:

- **One model per process.** Loading tiny.en takes about a second and 200 MB (with
  its libraries); every session's requests go to one :class:`Transcriber`.
- **Off the event loop, one job at a time.** A dedicated thread takes jobs from the
  queue and runs the model; CTranslate2 releases the GIL, so the event loop keeps
  serving audio meanwhile. One job at a time because the model already uses every
  core it is given: two decodes at once would each take about twice as long, and a
  final would share the CPU with a partial.
- **Finals before partials** (the policy and its reasons: :mod:`.asr_queue`). Under
  contention, N finals arriving together complete one after another: the k-th waits
  for k-1 decodes (``bench/asr.py`` measures it). Partials are dropped rather than delay a
  final; beyond ``max_queue`` waiting finals, :class:`AsrBusy`.
- **The encoder window fits the utterance** (:mod:`.asr_whisper`): measured about
  3.5-4.5x faster than faster-whisper's 30 s ``transcribe()`` at the same beam size,
  with the same accuracy; a decode that loops is retried on twice the window, then 30 s.
- **Greedy by default** (``beam_size`` 1, partials always greedy): with the encoder no
  longer starved of its cores, a beam of 5 cost 35-90 ms more per final on the human
  recordings and was no more accurate there (WER 0.159 against 0.145, 19 turns).
- **Early finals** (:mod:`.asr_queue`): a session asks for its final when the speaker
  pauses; the offset's final joins it.
- **Reuse**: a final of the same audio plus silence (the early final at a pause, the
  speculative final at speech offset, then the real one at the end of turn) is
  answered from the first, or joins it while it is still being computed.
- **Cancellation**: a caller cancelled while waiting withdraws its job if nobody else
  waits for it; a job already running completes and its result is discarded.

Errors (tree in :mod:`.asr_types`): :class:`AsrBusy`, :class:`AsrClosed`,
:class:`AsrInputError`, :class:`AsrModelError`, all :class:`AsrError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import numpy.typing as npt

from duplexvoice.speech import SPEECH_RATE
from duplexvoice.speech.asr_queue import AsrQueue, Job
from duplexvoice.speech.asr_rules import MAX_WINDOW_S
from duplexvoice.speech.asr_types import (
    AsrBusy,
    AsrClosed,
    AsrConfig,
    AsrError,
    AsrInputError,
    AsrModelError,
    AsrStats,
    Engine,
    FloatAudio,
    Recognition,
)
from duplexvoice.threads import lower_thread_priority

__all__ = [
    "AsrBusy",
    "AsrClosed",
    "AsrConfig",
    "AsrError",
    "AsrInputError",
    "AsrModelError",
    "AsrStats",
    "Engine",
    "Recognition",
    "Transcriber",
]

_JOIN_TIMEOUT_S = 10.0


@dataclasses.dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Recognition | None]
    audio_s: float
    joined: bool  # waits on an earlier final of the same speech


def check_audio(audio: npt.NDArray[Any], *, final: bool, max_final_s: float) -> FloatAudio:
    """A private float32 copy of valid mono audio; :class:`AsrInputError` otherwise."""
    array = np.asarray(audio)
    if array.ndim == 1 and not final:
        array = array[-int(MAX_WINDOW_S * SPEECH_RATE) :]  # a partial sees one window at most
    if array.ndim != 1:
        raise AsrInputError(f"audio must be mono (1-D), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise AsrInputError(f"audio must be float samples in [-1, 1], got dtype {array.dtype}")
    if final and array.size > max_final_s * SPEECH_RATE:
        raise AsrInputError(
            f"audio of {array.size / SPEECH_RATE:.1f} s is longer than max_final_s "
            f"({max_final_s:g} s)"
        )
    copy = np.array(array, dtype=np.float32, copy=True)
    if not np.isfinite(copy).all():
        raise AsrInputError("audio contains NaN or infinite samples")
    copy.setflags(write=False)
    return copy


class Transcriber:
    """The shared speech recognizer. Build once, :meth:`close` at shutdown.

    ``engine`` replaces the Whisper model (tests inject a fake); ``clock`` is the
    monotonic clock of the queue (how long a job waited: ``queued_ms``)."""

    def __init__(
        self,
        config: AsrConfig | None = None,
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or AsrConfig()
        if engine is None:
            from duplexvoice.speech.asr_whisper import WhisperEngine

            engine = WhisperEngine(self.config)
        self._engine = engine
        self._clock = clock
        self._queue = AsrQueue(self.config.max_queue)
        self._cond = threading.Condition()
        self._waiters: dict[int, list[_Waiter]] = {}
        self._fallbacks = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="asr", daemon=True)
        self._thread.start()

    # -- asking (event loop side) ---------------------------------------------------

    async def transcribe(
        self, audio: npt.NDArray[np.float32], *, final: bool, key: Hashable = None,
        early: bool = False,
    ) -> Recognition | None:
        """Transcribe 16 kHz mono float32 ``audio``; ``key`` names the caller (its
        session) for partial coalescing and final reuse. ``early``: an early final
        (the speaker paused; see :mod:`.asr_queue`), which needs a ``key``. ``None``
        only for a partial or an early final that was dropped or replaced. Raises
        :class:`AsrBusy` when too many finals wait, :class:`AsrInputError` for bad
        audio, :class:`AsrClosed`."""
        if early and key is None:
            raise ValueError("an early final needs a key")
        samples = check_audio(audio, final=final, max_final_s=self.config.max_final_s)
        if samples.size == 0:
            return Recognition("", final, 0.0, 0.0, 0.0)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recognition | None] = loop.create_future()
        with self._cond:
            if self._closed:
                raise AsrClosed("the speech recognizer is closed")
            admission = self._queue.submit(samples, final=final or early, key=key,
                                           now=self._clock(), early=early)
            for job in admission.dropped:
                self._resolve(job, None)
            if admission.cached is not None:
                return dataclasses.replace(
                    admission.cached, audio_s=samples.size / SPEECH_RATE, compute_ms=0.0,
                    queued_ms=0.0, reused=True,
                )
            waited = admission.job
            if waited is None:
                return None
            waiter = _Waiter(loop, future, samples.size / SPEECH_RATE, admission.joined)
            self._waiters.setdefault(waited.id, []).append(waiter)
            self._cond.notify_all()
        try:
            return await future
        except asyncio.CancelledError:
            self._withdraw(waited, waiter)
            raise

    def _withdraw(self, job: Job, waiter: _Waiter) -> None:
        with self._cond:
            waiters = self._waiters.get(job.id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self._queue.cancel(job):
                self._waiters.pop(job.id, None)

    def transcribe_sync(self, audio: npt.NDArray[np.float32]) -> Recognition:
        """The windowed transcript of ``audio`` as a final, in the calling thread, past
        the queue (tests and benchmarks)."""
        samples = check_audio(audio, final=True, max_final_s=self.config.max_final_s)
        if samples.size == 0:
            return Recognition("", True, 0.0, 0.0, 0.0)
        return self._engine.run(samples, True)

    def transcribe_plain(self, audio: npt.NDArray[np.float32]) -> str:
        """faster-whisper's own ``transcribe()`` (30 s window): the baseline."""
        samples = check_audio(audio, final=True, max_final_s=self.config.max_final_s)
        return self._engine.plain(samples) if samples.size else ""

    def withdraw_early(self, key: Hashable) -> None:
        """The caller ``key``'s voice came back after its early final: nothing may reuse
        that final (see :meth:`AsrQueue.withdraw_early`)."""
        with self._cond:
            for job in self._queue.withdraw_early(key):
                self._resolve(job, None)

    def forget(self, key: Hashable) -> None:
        """The session ``key`` ended: drop what is kept for it."""
        with self._cond:
            self._queue.forget(key)

    def stats(self) -> AsrStats:
        with self._cond:
            q = self._queue
            c = q.counters
            return AsrStats(
                finals_waiting=q.finals_waiting, partials_waiting=q.partials_waiting,
                running=q.running is not None, finals_done=c.finals_done,
                partials_done=c.partials_done, partials_dropped=c.partials_dropped,
                finals_refused=c.finals_refused, finals_reused=c.finals_reused,
                fallbacks=self._fallbacks, early_done=c.early_done,
                early_dropped=c.early_dropped, early_waiting=q.early_waiting,
            )

    def close(self) -> None:
        """Stop the thread; waiting callers get :class:`AsrClosed`. Blocks until the
        running job (if any) ends, at most about a second for tiny.en on a CPU; from
        the event loop, ``await asyncio.to_thread(transcriber.close)``. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for job in self._queue.drain():
                self._resolve(job, AsrClosed("the speech recognizer was closed"))
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_TIMEOUT_S)

    # -- serving (the model thread) -------------------------------------------------

    def _work(self) -> None:
        lower_thread_priority(self.config.nice)  # the decodes run here (and on the model's threads)
        while True:
            with self._cond:
                job = self._next_job()
                if job is None:
                    return
            outcome: Recognition | AsrError
            try:
                outcome = self._engine.run(job.audio, job.final)
            except AsrError as exc:
                outcome = exc
            except Exception as exc:  # an engine bug must not kill the thread
                outcome = AsrModelError(f"speech recognition failed: {exc!r}")
            with self._cond:
                result = outcome if isinstance(outcome, Recognition) else None
                if result is not None:
                    assert job.started is not None
                    result = dataclasses.replace(
                        result, queued_ms=(job.started - job.submitted) * 1000.0
                    )
                    self._fallbacks += result.fell_back
                self._queue.finish(job, result)
                self._resolve(job, result if result is not None else outcome)

    def _next_job(self) -> Job | None:
        """Wait (holding the condition) for a job to run; None once closed."""
        while not self._closed:
            job = self._queue.take(self._clock())
            if job is not None:
                return job
            self._cond.wait()
        return None

    def _resolve(self, job: Job, outcome: Recognition | BaseException | None) -> None:
        """Answer every caller waiting on ``job`` (under the condition)."""
        for waiter in self._waiters.pop(job.id, []):
            value: Recognition | BaseException | None = outcome
            if isinstance(outcome, Recognition) and waiter.joined:
                value = dataclasses.replace(outcome, audio_s=waiter.audio_s, reused=True)
            with contextlib.suppress(RuntimeError):  # that caller's loop is closed
                waiter.loop.call_soon_threadsafe(_settle, waiter.future, value)


def _settle(
    future: asyncio.Future[Recognition | None], value: Recognition | BaseException | None
) -> None:
    if future.done():  # cancelled meanwhile
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
