"""The recognizer's queue policy, pure: finals first, partials coalesced and dropped
rather than delaying finals, bounded, finals reused; time is a plain float."""

from __future__ import annotations

import numpy as np
import pytest

from duplexvoice.speech.asr_queue import AsrQueue, Job
from duplexvoice.speech.asr_types import AsrBusy, Recognition

pytestmark = pytest.mark.unit

RATE = 16000


def speech(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(seconds * RATE)) * 0.2).astype(np.float32)


def plus_silence(audio: np.ndarray, seconds: float = 0.5) -> np.ndarray:
    return np.concatenate([audio, np.zeros(round(seconds * RATE), np.float32)])


def result(text: str = "hello", final: bool = True) -> Recognition:
    return Recognition(text, final, 1.0, 50.0, 4.0)


def run(queue: AsrQueue, now: float = 0.0, text: str = "hello") -> Job:
    job = queue.take(now)
    assert isinstance(job, Job)
    queue.finish(job, result(text, job.final))
    return job


def test_finals_run_in_arrival_order_before_partials() -> None:
    q = AsrQueue(max_queue=8)
    p = q.submit(speech(), final=False, key="a", now=0.0).job
    f1 = q.submit(speech(), final=True, key="b", now=0.0).job
    f2 = q.submit(speech(), final=True, key="c", now=0.0).job
    assert p is not None and f1 is not None and f2 is not None
    order = [run(q), run(q)]
    assert order == [f1, f2]
    assert q.take(1.0) is None


def test_a_final_drops_every_waiting_partial() -> None:
    q = AsrQueue(max_queue=8)
    pa = q.submit(speech(), final=False, key="a", now=0.0).job
    pb = q.submit(speech(), final=False, key="b", now=0.0).job
    admission = q.submit(speech(), final=True, key="c", now=0.0)
    assert set(admission.dropped) == {pa, pb}
    assert q.partials_waiting == 0 and q.finals_waiting == 1
    assert q.counters.partials_dropped == 2


def test_a_partial_asked_while_finals_wait_is_dropped_at_once() -> None:
    q = AsrQueue(max_queue=8)
    q.submit(speech(), final=True, key="a", now=0.0)
    admission = q.submit(speech(), final=False, key="b", now=0.0)
    assert admission.job is None and admission.cached is None
    assert q.counters.partials_dropped == 1
    run(q)
    # once no final waits, partials are taken again
    assert q.submit(speech(), final=False, key="b", now=1.0).job is not None


def test_a_partial_asked_while_a_final_runs_but_none_waits_is_kept() -> None:
    q = AsrQueue(max_queue=8)
    q.submit(speech(), final=True, key="a", now=0.0)
    final = q.take(0.0)
    p = q.submit(speech(), final=False, key="b", now=0.1).job
    assert p is not None
    assert isinstance(final, Job)
    q.finish(final, result())
    assert q.take(0.2) is p


def test_a_newer_partial_replaces_the_waiting_one_and_keeps_its_place() -> None:
    q = AsrQueue(max_queue=8)
    a1 = q.submit(speech(), final=False, key="a", now=0.0).job
    b1 = q.submit(speech(), final=False, key="b", now=0.0).job
    admission = q.submit(speech(2.0), final=False, key="a", now=0.1)
    assert admission.dropped == (a1,)
    a2 = admission.job
    assert q.partials_waiting == 2
    assert q.take(0.2) is a2  # a's place in line, with the newer audio
    assert a2 is not None and a2.audio.size == 2 * RATE
    q.finish(a2, result(final=False))
    assert q.take(0.3) is b1


def test_a_running_partial_is_not_replaced() -> None:
    q = AsrQueue(max_queue=8)
    a1 = q.submit(speech(), final=False, key="a", now=0.0).job
    assert q.take(0.0) is a1
    admission = q.submit(speech(), final=False, key="a", now=0.1)
    assert admission.dropped == () and admission.job is not a1
    assert q.partials_waiting == 1


def test_finals_beyond_max_queue_are_refused() -> None:
    q = AsrQueue(max_queue=2)
    q.submit(speech(seed=1), final=True, key="a", now=0.0)
    q.submit(speech(seed=2), final=True, key="b", now=0.0)
    with pytest.raises(AsrBusy, match="2 final transcripts are waiting"):
        q.submit(speech(seed=3), final=True, key="c", now=0.0)
    assert q.counters.finals_refused == 1 and q.finals_waiting == 2
    q.take(0.0)  # one starts: room again
    assert q.submit(speech(seed=3), final=True, key="c", now=0.1).job is not None


def test_waiting_partials_are_bounded() -> None:
    q = AsrQueue(max_queue=2, max_partials=3)
    jobs = [q.submit(speech(), final=False, key=k, now=0.0).job for k in "abcd"]
    assert q.partials_waiting == 3
    assert q.counters.partials_dropped == 1
    assert q.take(0.0) is jobs[1]  # the oldest (a) made room for d


def test_a_final_of_the_same_audio_plus_silence_is_answered_from_the_cache() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    q.submit(audio, final=True, key="a", now=0.0)
    run(q, text="speculative")
    admission = q.submit(plus_silence(audio), final=True, key="a", now=1.0)
    assert admission.job is None
    assert admission.cached is not None and admission.cached.text == "speculative"
    assert q.counters.finals_reused == 1
    assert q.take(1.0) is None  # nothing recomputed


def test_the_cache_is_per_caller_and_needs_the_same_speech() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    q.submit(audio, final=True, key="a", now=0.0)
    run(q)
    # another caller with the same audio: computed
    assert q.submit(plus_silence(audio), final=True, key="b", now=1.0).job is not None
    # the same caller with more speech: computed
    more = np.concatenate([audio, speech(0.5, seed=9)])
    assert q.submit(more, final=True, key="a", now=1.0).job is not None
    # no key: never cached
    q2 = AsrQueue(max_queue=8)
    q2.submit(audio, final=True, key=None, now=0.0)
    run(q2)
    assert q2.submit(audio, final=True, key=None, now=1.0).job is not None


def test_the_cache_holds_one_final_per_caller_until_forgotten() -> None:
    q = AsrQueue(max_queue=8)
    first, second = speech(seed=1), speech(seed=2)
    q.submit(first, final=True, key="a", now=0.0)
    run(q)
    q.submit(second, final=True, key="a", now=1.0)
    run(q)
    assert q.cached_keys == 1
    assert q.submit(first, final=True, key="a", now=2.0).job is not None  # replaced
    run(q)
    q.forget("a")
    assert q.cached_keys == 0
    assert q.submit(first, final=True, key="a", now=3.0).job is not None


def test_a_final_joins_the_same_speech_waiting_or_running() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    waiting = q.submit(audio, final=True, key="a", now=0.0).job
    joined = q.submit(plus_silence(audio), final=True, key="a", now=0.1)
    assert joined.job is waiting and joined.joined
    assert q.finals_waiting == 1
    running = q.take(0.2)
    assert running is waiting
    again = q.submit(plus_silence(audio, 1.0), final=True, key="a", now=0.3)
    assert again.job is running and again.joined
    assert q.counters.finals_reused == 2


def test_a_failed_final_is_not_cached() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    job = q.submit(audio, final=True, key="a", now=0.0).job
    assert q.take(0.0) is job and job is not None
    q.finish(job, None)
    assert q.submit(audio, final=True, key="a", now=1.0).job is not None


def test_cancel_withdraws_waiting_jobs_only() -> None:
    q = AsrQueue(max_queue=8)
    f = q.submit(speech(), final=True, key="a", now=0.0).job
    g = q.submit(speech(), final=True, key="b", now=0.0).job
    assert f is not None and g is not None
    assert q.cancel(g) and q.finals_waiting == 1
    assert q.take(0.0) is f
    assert not q.cancel(f)  # running
    q.finish(f, result())
    p = q.submit(speech(), final=False, key="c", now=1.0).job
    assert p is not None and q.cancel(p) and q.partials_waiting == 0
    assert not q.cancel(p)


def test_a_withdrawn_final_keeps_its_place_for_its_callers_next_final() -> None:
    # The user went on speaking: the session withdraws its final and asks again with
    # more audio. Under load that final must not go to the back of the line.
    q = AsrQueue(max_queue=8)
    first = q.submit(speech(seed=1), final=True, key="a", now=0.0).job
    later = [q.submit(speech(seed=s), final=True, key=k, now=0.0).job
             for s, k in ((2, "b"), (3, "c"))]
    assert first is not None and q.cancel(first)
    assert q.finals_waiting == 2  # the kept place counts for nothing
    more = np.concatenate([speech(seed=1), speech(0.5, seed=9)])
    again = q.submit(more, final=True, key="a", now=0.5).job
    assert again is not None and again is not first
    assert q.counters.finals_kept_place == 1
    assert [run(q), run(q), run(q)] == [again, *later]
    assert q.take(1.0) is None


def test_a_place_nobody_claims_is_skipped_and_places_stay_bounded() -> None:
    q = AsrQueue(max_queue=8)
    a1, b, a2, n = (q.submit(speech(seed=seed), final=True, key=key, now=0.0).job
                    for seed, key in ((1, "a"), (2, "b"), (3, "a"), (4, None)))
    assert a1 is not None and b is not None and a2 is not None and n is not None
    assert q.cancel(a1) and q.cancel(a2) and q.cancel(n)
    # one place per caller with a key: a1's kept; a2 (a's second) and n (no key) gone
    assert q.places_kept == 1 and q.finals_waiting == 1
    assert not q.cancel(a1)
    assert run(q) is b  # a's unclaimed place (before b) skipped
    assert q.take(1.0) is None and q.places_kept == 0
    assert q.drain() == []


def test_drain_and_misuse() -> None:
    q = AsrQueue(max_queue=8)
    f = q.submit(speech(), final=True, key="a", now=0.0).job
    q.take(0.0)
    p = q.submit(speech(), final=False, key="b", now=0.0).job
    g = q.submit(speech(), final=True, key="c", now=0.0).job
    assert p is not None and g is not None and f is not None
    assert q.drain() == [g]  # p was dropped by g
    with pytest.raises(RuntimeError):
        q.take(0.0)  # f still runs
    with pytest.raises(RuntimeError):
        q.finish(g, None)
    with pytest.raises(ValueError):
        AsrQueue(max_queue=0)



def test_every_final_gets_an_answer_under_contention() -> None:
    # Issue 17: with 6 sessions on 2 cores a turn got no transcript and no error. The
    # queue's part: every final asked is answered (its job's result, a joined job's, the
    # cache, or AsrBusy at once); only partials may be dropped, and each drop is told.
    # Six sessions, each: partials while speaking, a speculative final at the offset,
    # the real final (the same audio plus silence) at the end of turn; the model takes
    # jobs in between, in a seeded random interleaving.
    rng = np.random.default_rng(17)
    q = AsrQueue(max_queue=2)
    answered: set[int] = set()  # request ids
    finals: dict[int, Job | None] = {}  # request id -> the job it waits on
    partials: dict[int, Job] = {}
    told_dropped: set[int] = set()  # job ids
    finished: set[int] = set()  # job ids
    steps: list[tuple[str, int]] = []
    for session in range(6):
        steps += [("partial", session)] * 3 + [("final", session), ("again", session)]
    # each session's own steps in order; sessions and the model's work interleaved
    queue_of = {s: [st for st in steps if st[1] == s] for s in range(6)}
    audio = {s: speech(1.0, seed=s) for s in range(6)}
    request = 0
    for _ in range(2 * len(steps)):
        if rng.random() < 0.2 and q.running is None and (job := q.take(0.0)) is not None:
            q.finish(job, result(final=job.final))
            finished.add(job.id)
        elif q.running is not None and rng.random() < 0.2:
            job = q.running
            q.finish(job, result(final=job.final))
            finished.add(job.id)
        live = [s for s, left in queue_of.items() if left]
        if not live:
            continue
        kind, session = queue_of[int(rng.choice(live))].pop(0)
        request += 1
        clip = audio[session] if kind != "again" else plus_silence(audio[session])
        try:
            admission = q.submit(clip, final=kind != "partial", key=session, now=0.0)
        except AsrBusy:
            answered.add(request)  # refused at once: the caller reports ASR_BUSY
            continue
        told_dropped |= {job.id for job in admission.dropped}
        if kind == "partial":
            if admission.job is not None:
                partials[request] = admission.job
        elif admission.cached is not None:
            answered.add(request)
        else:
            finals[request] = admission.job
    while True:  # the model works through what is left
        if q.running is not None:
            finished.add(q.running.id)
            q.finish(q.running, result())
        job = q.take(1.0)
        if job is None:
            break
        q.finish(job, result(final=job.final))
        finished.add(job.id)
    for req, job in finals.items():
        assert job is not None and job.id in finished, (req, job)
        answered.add(req)
    assert len(answered) == sum(1 for kind, _ in steps if kind != "partial")
    for job in partials.values():
        assert (job.id in finished) != (job.id in told_dropped), job
    # the paths under test were taken: reuse, refusal and dropped partials
    c = q.counters
    assert c.finals_reused and c.finals_refused and c.partials_dropped, c


# -- early finals (asked at a pause, before the offset) ------------------------------------


def test_an_early_final_waits_behind_real_finals_and_before_partials() -> None:
    q = AsrQueue(max_queue=8)
    p = q.submit(speech(), final=False, key="a", now=0.0).job
    e = q.submit(speech(), final=True, key="b", now=0.0, early=True).job
    f = q.submit(speech(), final=True, key="c", now=0.0).job
    assert q.early_waiting == 1 and q.finals_waiting == 1
    assert p is not None  # the real final dropped it
    assert [run(q), run(q)] == [f, e]
    assert q.take(1.0) is None
    assert q.counters.early_done == 1 and q.counters.finals_done == 1


def test_an_early_final_neither_drops_partials_nor_counts_against_max_queue() -> None:
    q = AsrQueue(max_queue=1)
    p = q.submit(speech(), final=False, key="a", now=0.0).job
    q.submit(speech(), final=True, key="b", now=0.0, early=True)
    assert q.partials_waiting == 1  # not dropped: the early final may never be needed
    later = q.submit(speech(1.0, seed=1), final=False, key="c", now=0.0).job
    assert later is not None  # a partial asked while only an early final waits is kept
    q.submit(speech(), final=True, key="d", now=0.0)  # max_queue counts real finals only
    assert q.finals_waiting == 1 and q.early_waiting == 1 and p is not None


def test_the_offsets_final_joins_its_running_early_final_or_takes_its_result() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    early = q.submit(audio, final=True, key="a", now=0.0, early=True).job
    assert q.take(0.0) is early and early is not None
    joined = q.submit(plus_silence(audio, 0.12), final=True, key="a", now=0.1)
    assert joined.job is early and joined.joined
    q.finish(early, result("hi"))
    cached = q.submit(plus_silence(audio, 0.5), final=True, key="a", now=0.6)
    assert cached.job is None and cached.cached == result("hi")
    assert q.counters.finals_reused == 2 and q.counters.early_done == 1


def test_a_real_final_drops_its_callers_early_final_that_has_not_started() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    early = q.submit(audio, final=True, key="a", now=0.0, early=True).job
    other = q.submit(speech(seed=2), final=True, key="b", now=0.0, early=True).job
    # The speech went on: the real final has more than the early one's audio.
    admission = q.submit(np.concatenate([audio, speech(0.5, seed=1)]), final=True, key="a",
                         now=0.5)
    assert early in admission.dropped and not admission.joined
    assert q.early_waiting == 1 and q.counters.early_dropped == 1
    assert [run(q), run(q)] == [admission.job, other]


def test_a_newer_early_final_replaces_the_waiting_one_and_cancel_withdraws_it() -> None:
    q = AsrQueue(max_queue=8, max_partials=2)
    first = q.submit(speech(), final=True, key="a", now=0.0, early=True).job
    second = q.submit(speech(1.2), final=True, key="a", now=0.1, early=True)
    assert second.dropped == (first,) and q.early_waiting == 1
    assert second.job is not None and q.cancel(second.job) and q.early_waiting == 0
    for n, key in enumerate("bcd"):  # bounded: the oldest goes
        q.submit(speech(seed=n), final=True, key=key, now=0.2, early=True)
    assert q.early_waiting == 2 and q.counters.early_dropped == 3
    assert len(q.drain()) == 2 and q.early_waiting == 0


def test_an_early_final_is_a_final_with_a_key() -> None:
    q = AsrQueue(max_queue=8)
    with pytest.raises(ValueError):
        q.submit(speech(), final=True, key=None, now=0.0, early=True)
    with pytest.raises(ValueError):
        q.submit(speech(), final=False, key="a", now=0.0, early=True)


def test_a_refused_final_leaves_its_callers_early_final_waiting() -> None:
    q = AsrQueue(max_queue=1)
    q.submit(speech(), final=True, key="b", now=0.0)
    early = q.submit(speech(), final=True, key="a", now=0.0, early=True).job
    with pytest.raises(AsrBusy):
        q.submit(speech(1.5), final=True, key="a", now=0.1)
    assert q.early_waiting == 1 and early is not None


def test_voice_after_the_pause_leaves_nothing_of_the_early_final_to_reuse() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    # Quieter speech after the pause would pass for silence: only the VAD can tell.
    quiet_words = np.concatenate([audio, speech(0.5, seed=3) * 0.05])
    done = q.submit(audio, final=True, key="a", now=0.0, early=True).job
    assert run(q) is done
    assert q.withdraw_early("a") == []
    assert q.submit(quiet_words, final=True, key="a", now=0.5).job is not None  # not reused
    run(q)
    running = q.submit(audio, final=True, key="b", now=1.0, early=True).job
    assert q.take(1.0) is running
    q.withdraw_early("b")
    assert not q.submit(plus_silence(audio), final=True, key="b", now=1.1).joined
    assert running is not None
    q.finish(running, result())
    assert q.submit(plus_silence(audio, 0.3), final=True, key="b", now=1.2).cached is None
    waiting = q.submit(audio, final=True, key="c", now=2.0, early=True).job
    assert q.withdraw_early("c") == [waiting] and q.early_waiting == 0
    assert q.counters.early_dropped == 1


def test_a_real_finals_result_survives_its_callers_early_withdrawal() -> None:
    q = AsrQueue(max_queue=8)
    audio = speech()
    q.submit(audio, final=True, key="a", now=0.0)
    run(q)
    q.withdraw_early("a")  # nothing early: the real final's result stays
    assert q.submit(plus_silence(audio), final=True, key="a", now=1.0).cached is not None
