"""Who gets the model next: the queue policy of the shared recognizer, pure (time is a
parameter, no threads; the caller holds a lock).

One model serves every session, one job at a time. The policy, in order:

- **Finals first.** A final transcript ends a user's turn and gates the reply; a
  partial only decorates the screen. Finals run in arrival order.
- **Partials never delay finals.** A partial asked while a final waits is dropped at
  once (its caller gets ``None``), and a new final drops every waiting partial. A
  partial already running is not interrupted (the model cannot be), so a final waits
  at most one partial.
- **One waiting partial per caller.** A newer partial replaces an older one that has
  not started (it covers more audio); the older caller gets ``None``. How often a
  caller asks is its own business (a session paces its partials by new speech,
  :mod:`duplexvoice.orchestrator.sessions.listening`).
- **Bounded.** More than ``max_queue`` waiting finals: the next is refused
  (:class:`AsrBusy`), so a flood shows as an error, not as unbounded delay. Waiting
  partials are bounded by ``max_partials`` (the oldest is dropped).
- **Reuse.** The orchestrator asks for a speculative final when the VAD hears speech
  stop, then for the real final when the end of turn is confirmed: the same audio
  plus silence. Such a final returns the cached result of the caller's last final, or
  joins that final while it is still waiting or running, instead of recomputing. The
  cache holds one entry per key until :meth:`AsrQueue.forget`.
- **Early finals.** A session may ask for its final early, when the speaker has only
  paused (48 ms without voice; the end of speech is confirmed 160 ms after it ends),
  so that the real final, asked at the offset, finds it done or running and joins it
  (the same audio plus silence). An early final is a final for the cache and for
  joining, but waits behind every real final and before partials; one per caller (a
  newer one replaces it), and a real final of that caller drops it if it has not
  started (the real one covers more). The caller withdraws it when the voice comes
  back, and then nothing reuses it.
- **A caller keeps its place.** A waiting final withdrawn (:meth:`AsrQueue.cancel`:
  the session's user went on speaking, so it asks again with more audio) leaves its
  place in line to that caller's next final, as a newer partial takes an older one's:
  under load the turn's final does not go to the back of a queue of other sessions'
  finals (seconds on 2 cores, issue 17). One place per caller (none without a key);
  a place nobody claims is skipped; it counts for nothing (not against ``max_queue``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from duplexvoice.speech.asr_rules import extends_with_silence
from duplexvoice.speech.asr_types import AsrBusy, FloatAudio, Recognition


@dataclass(eq=False)
class Job:
    """One transcription asked for. ``key`` is the caller (its session)."""

    id: int
    key: Hashable
    final: bool
    audio: FloatAudio
    submitted: float
    started: float | None = None
    # Cancelled while waiting: a place kept for the key's next final; an early final:
    # not to be reused (the voice came back).
    withdrawn: bool = False
    early: bool = False  # an early final (asked at a pause, before the offset)


@dataclass(frozen=True)
class Admission:
    """What :meth:`AsrQueue.submit` decided.

    ``job``: the job whose result answers this request (``None``: nothing to wait for,
    either ``cached`` is the answer or the partial was dropped). ``joined``: ``job`` is
    an earlier final of the same speech. ``dropped``: waiting partials displaced by this
    request, whose callers get ``None``."""

    job: Job | None
    cached: Recognition | None = None
    joined: bool = False
    dropped: tuple[Job, ...] = ()


@dataclass
class _Counters:
    finals_done: int = 0
    partials_done: int = 0
    partials_dropped: int = 0
    finals_refused: int = 0
    finals_reused: int = 0
    finals_kept_place: int = 0  # finals that took a withdrawn one's place in line
    early_done: int = 0  # early finals decoded (a real final may have joined them)
    early_dropped: int = 0  # early finals replaced or dropped before they started


@dataclass
class _Cached:
    audio: FloatAudio
    transcript: Recognition
    early: bool = False  # from an early final


@dataclass
class AsrQueue:
    max_queue: int
    max_partials: int = 64
    counters: _Counters = field(default_factory=_Counters)

    def __post_init__(self) -> None:
        if self.max_queue < 1 or self.max_partials < 1:
            raise ValueError("max_queue and max_partials must be >= 1")
        self._ids = itertools.count(1)
        self._finals: deque[Job] = deque()
        self._partials: dict[Hashable, Job] = {}  # insertion order: arrival order
        self._early: dict[Hashable, Job] = {}  # early finals, in arrival order
        self._cache: dict[Hashable, _Cached] = {}
        self.running: Job | None = None

    # -- asking ---------------------------------------------------------------------

    def submit(self, audio: FloatAudio, *, final: bool, key: Hashable, now: float,
               early: bool = False) -> Admission:
        """Queue a request, or answer it from the cache, or drop it (partials only).
        Raises :class:`AsrBusy` for a final beyond ``max_queue``. ``early``: an early
        final (needs a ``key``)."""
        if early:
            if not final or key is None:
                raise ValueError("an early final is a final with a key")
            return self._submit_early(audio, key, now)
        if final:
            return self._submit_final(audio, key, now)
        if self.finals_waiting:
            self.counters.partials_dropped += 1
            return Admission(None)
        job = Job(next(self._ids), key, False, audio, now)
        dropped: list[Job] = []
        old = self._partials.get(key)
        if old is not None:
            dropped.append(old)
        elif len(self._partials) >= self.max_partials:
            oldest = next(iter(self._partials))
            dropped.append(self._partials.pop(oldest))
        self._partials[key] = job  # a replacement keeps the older one's place in line
        self.counters.partials_dropped += len(dropped)
        return Admission(job, dropped=tuple(dropped))

    def _reuse(self, audio: FloatAudio, key: Hashable) -> Admission | None:
        """The caller's cached final, or its final waiting or running, when ``audio``
        is that final's audio plus silence."""
        cached = self._cache.get(key)
        if cached is not None and extends_with_silence(cached.audio, audio):
            self.counters.finals_reused += 1
            return Admission(None, cached=cached.transcript)
        for job in (self.running, *self._finals):
            if (job is not None and job.final and job.key == key and not job.withdrawn
                    and extends_with_silence(job.audio, audio)):
                self.counters.finals_reused += 1
                return Admission(job, joined=True)
        return None

    def _submit_early(self, audio: FloatAudio, key: Hashable, now: float) -> Admission:
        reused = self._reuse(audio, key)
        if reused is not None:
            return reused
        dropped: list[Job] = []
        old = self._early.pop(key, None)
        if old is not None:
            dropped.append(old)
        elif len(self._early) >= self.max_partials:
            dropped.append(self._early.pop(next(iter(self._early))))
        self.counters.early_dropped += len(dropped)
        job = Job(next(self._ids), key, True, audio, now, early=True)
        self._early[key] = job
        return Admission(job, dropped=tuple(dropped))

    def _submit_final(self, audio: FloatAudio, key: Hashable, now: float) -> Admission:
        place: Job | None = None  # a withdrawn final of this caller: its place in line
        if key is not None:
            reused = self._reuse(audio, key)
            if reused is not None:
                return reused
            place = next((j for j in self._finals if j.key == key and j.withdrawn), None)
        waiting = self.finals_waiting
        if waiting >= self.max_queue:
            self.counters.finals_refused += 1
            raise AsrBusy(
                f"speech recognizer busy: {waiting} final transcripts are waiting "
                f"(max_queue {self.max_queue})"
            )
        dropped = tuple(self._partials.values())
        self._partials.clear()
        self.counters.partials_dropped += len(dropped)
        early = self._early.pop(key, None) if key is not None else None
        if early is not None:  # not started: this final covers more
            dropped += (early,)
            self.counters.early_dropped += 1
        job = Job(next(self._ids), key, True, audio, now)
        if place is None:
            self._finals.append(job)
        else:
            self._finals[self._finals.index(place)] = job
            self.counters.finals_kept_place += 1
        return Admission(job, dropped=dropped)

    def cancel(self, job: Job) -> bool:
        """Withdraw a job nobody waits for any more; False if it started or is gone. A
        final's place in line is kept for its caller's next final."""
        if job in self._finals and not job.withdrawn:
            # One place kept per caller (so they stay bounded by the callers): none
            # for a caller without a key, nor a second one.
            if job.key is None or any(j.withdrawn and j.key == job.key for j in self._finals):
                self._finals.remove(job)
            else:
                job.withdrawn = True
            return True
        if self._partials.get(job.key) is job:
            del self._partials[job.key]
            return True
        if self._early.get(job.key) is job:
            del self._early[job.key]
            self.counters.early_dropped += 1
            return True
        return False

    def withdraw_early(self, key: Hashable) -> list[Job]:
        """The caller's voice came back: what its early final heard is not the end of
        its turn, so no final may reuse it, waiting, running or done (speech after the
        pause that is quieter than the rest would pass for silence). Returns the early
        final dropped before it started, if any (its callers get ``None``)."""
        cached = self._cache.get(key)
        if cached is not None and cached.early:
            del self._cache[key]
        if self.running is not None and self.running.early and self.running.key == key:
            self.running.withdrawn = True  # it runs on, unused
        waiting = self._early.pop(key, None)
        if waiting is None:
            return []
        self.counters.early_dropped += 1
        return [waiting]

    def forget(self, key: Hashable) -> None:
        """The caller is gone: drop its cached final."""
        self._cache.pop(key, None)

    # -- serving --------------------------------------------------------------------

    def take(self, now: float) -> Job | None:
        """The next job to run (it becomes ``running``), started at ``now``; None when
        nothing waits."""
        if self.running is not None:
            raise RuntimeError("a job is already running")
        while self._finals:
            job = self._finals.popleft()
            if not job.withdrawn:  # a place nobody claimed is skipped
                return self._start(job, now)
        if self._early:
            return self._start(self._early.pop(next(iter(self._early))), now)
        if self._partials:
            key = next(iter(self._partials))
            return self._start(self._partials.pop(key), now)
        return None

    def _start(self, job: Job, now: float) -> Job:
        job.started = now
        self.running = job
        return job

    def finish(self, job: Job, result: Recognition | None) -> None:
        """The running ``job`` ended, with ``result`` (None: it failed)."""
        if job is not self.running:
            raise RuntimeError("finish() of a job that is not running")
        self.running = None
        if job.final:
            if job.early:
                self.counters.early_done += 1
            else:
                self.counters.finals_done += 1
            if result is not None and job.key is not None and not job.withdrawn:
                self._cache[job.key] = _Cached(job.audio, result, job.early)
        else:
            self.counters.partials_done += 1

    def drain(self) -> list[Job]:
        """Every waiting job, removed (on close)."""
        jobs = [*(job for job in self._finals if not job.withdrawn), *self._early.values(),
                *self._partials.values()]
        self._finals.clear()
        self._early.clear()
        self._partials.clear()
        return jobs

    @property
    def finals_waiting(self) -> int:
        return sum(not job.withdrawn for job in self._finals)

    @property
    def places_kept(self) -> int:
        """Withdrawn finals' places kept for their callers (at most one per caller)."""
        return sum(job.withdrawn for job in self._finals)

    @property
    def early_waiting(self) -> int:
        return len(self._early)

    @property
    def partials_waiting(self) -> int:
        return len(self._partials)

    @property
    def cached_keys(self) -> int:
        return len(self._cache)
