"""The transcriber's asyncio and thread layer, with a fake engine in place of Whisper:
jobs run off the event loop, finals first, partials dropped rather than delaying
finals, reuse, cancellation, errors, close."""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from duplexvoice.speech.asr import (
    AsrBusy,
    AsrClosed,
    AsrConfig,
    AsrInputError,
    AsrModelError,
    Recognition,
    Transcriber,
)
from tests.support.eventually import eventually

pytestmark = pytest.mark.unit

RATE = 16000
WAIT_S = 10.0


class FakeEngine:
    """Answers ``n=<samples>``; ``hold()`` makes each job wait for ``release()``;
    ``fail_with`` makes the next job raise."""

    def __init__(self) -> None:
        self.started: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.calls: list[tuple[int, bool]] = []
        self.threads: set[str] = set()
        self.niceness: list[int] = []
        self._gate = threading.Event()
        self._gate.set()
        self.fail_with: Exception | None = None

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def run(self, audio: np.ndarray, final: bool) -> Recognition:
        self.threads.add(threading.current_thread().name)
        self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        self.calls.append((audio.size, final))
        self.started.put((audio.size, final))
        if not self._gate.wait(WAIT_S):
            raise RuntimeError("the test never released the fake engine")
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return Recognition(f"n={audio.size}", final, audio.size / RATE, 1.0, 4.0)

    def plain(self, audio: np.ndarray) -> str:
        return f"plain n={audio.size}"

    async def next_start(self) -> tuple[int, bool]:
        return await asyncio.to_thread(self.started.get, True, WAIT_S)


def speech(samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(samples) * 0.2).astype(np.float32)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def transcriber(engine: FakeEngine) -> Iterator[Transcriber]:
    t = Transcriber(AsrConfig(max_queue=8), engine=engine)
    yield t
    engine.release()
    t.close()


async def waiting(t: Transcriber, finals: int = 0, partials: int = 0) -> None:
    await eventually(
        lambda: (t.stats().finals_waiting, t.stats().partials_waiting) == (finals, partials),
        timeout=WAIT_S, what=f"{finals} finals and {partials} partials waiting",
    )


async def test_a_final_runs_on_the_model_thread(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    result = await asyncio.wait_for(transcriber.transcribe(speech(1600), final=True), WAIT_S)
    assert result is not None
    assert result.text == "n=1600" and result.final and result.queued_ms >= 0
    assert engine.threads == {"asr"}
    stats = transcriber.stats()
    assert stats.finals_done == 1 and stats.queue_depth == 0 and not stats.running


async def test_finals_go_first_and_partials_are_dropped_rather_than_delay_them(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    engine.hold()
    busy = asyncio.create_task(transcriber.transcribe(speech(100), final=False, key="x"))
    assert await engine.next_start() == (100, False)  # a partial holds the model
    partial_a = asyncio.create_task(transcriber.transcribe(speech(200), final=False, key="a"))
    await waiting(transcriber, partials=1)
    final_b = asyncio.create_task(transcriber.transcribe(speech(300), final=True, key="b"))
    final_c = asyncio.create_task(transcriber.transcribe(speech(400), final=True, key="c"))
    await waiting(transcriber, finals=2)
    assert await asyncio.wait_for(partial_a, WAIT_S) is None  # dropped by the finals
    late = await transcriber.transcribe(speech(500), final=False, key="d")
    assert late is None  # asked while finals wait
    engine.release()
    results = await asyncio.wait_for(asyncio.gather(busy, final_b, final_c), WAIT_S)
    assert [r.text if r else None for r in results] == ["n=100", "n=300", "n=400"]
    assert engine.calls == [(100, False), (300, True), (400, True)]
    assert transcriber.stats().partials_dropped == 2


async def test_a_newer_partial_replaces_a_waiting_one(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    engine.hold()
    first = asyncio.create_task(transcriber.transcribe(speech(100), final=True, key="x"))
    await engine.next_start()
    older = asyncio.create_task(transcriber.transcribe(speech(200), final=False, key="a"))
    await waiting(transcriber, partials=1)
    newer = asyncio.create_task(transcriber.transcribe(speech(300), final=False, key="a"))
    assert await asyncio.wait_for(older, WAIT_S) is None
    engine.release()
    result = await asyncio.wait_for(newer, WAIT_S)
    assert result is not None and result.text == "n=300" and not result.final
    await asyncio.wait_for(first, WAIT_S)
    assert (200, False) not in engine.calls


async def test_six_concurrent_finals_all_complete_in_arrival_order(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    engine.hold()
    tasks = []
    for i in range(6):
        tasks.append(
            asyncio.create_task(transcriber.transcribe(speech(100 * (i + 1)), final=True, key=i))
        )
        await waiting(transcriber, finals=i) if i else await engine.next_start()
    engine.release()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert [r.text for r in results if r] == [f"n={100 * (i + 1)}" for i in range(6)]
    assert [size for size, _ in engine.calls] == [100 * (i + 1) for i in range(6)]
    assert all(r is not None and r.queued_ms >= 0 for r in results)


async def test_finals_beyond_max_queue_are_refused(engine: FakeEngine) -> None:
    t = Transcriber(AsrConfig(max_queue=2), engine=engine)
    try:
        engine.hold()
        running = asyncio.create_task(t.transcribe(speech(100), final=True, key="r"))
        await engine.next_start()
        queued = [
            asyncio.create_task(t.transcribe(speech(200 + i), final=True, key=i)) for i in range(2)
        ]
        await waiting(t, finals=2)
        with pytest.raises(AsrBusy, match="max_queue 2") as info:
            await t.transcribe(speech(300), final=True, key="z")
        assert info.value.retryable
        engine.release()
        await asyncio.wait_for(asyncio.gather(running, *queued), WAIT_S)
        assert t.stats().finals_refused == 1
    finally:
        engine.release()
        t.close()


async def test_a_final_of_the_same_speech_plus_silence_is_reused(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    audio = speech(8000)
    longer = np.concatenate([audio, np.zeros(4000, np.float32)])
    first = await transcriber.transcribe(audio, final=True, key="s")
    second = await transcriber.transcribe(longer, final=True, key="s")
    assert first is not None and second is not None
    assert second.text == first.text and second.reused and second.compute_ms == 0.0
    assert second.audio_s == pytest.approx(0.75)
    assert len(engine.calls) == 1
    transcriber.forget("s")
    await transcriber.transcribe(longer, final=True, key="s")
    assert len(engine.calls) == 2


async def test_the_real_final_joins_the_speculative_one_still_running(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    audio = speech(8000)
    engine.hold()
    speculative = asyncio.create_task(transcriber.transcribe(audio, final=True, key="s"))
    await engine.next_start()
    real = asyncio.create_task(
        transcriber.transcribe(np.concatenate([audio, np.zeros(8000, np.float32)]), final=True,
                               key="s")
    )
    await eventually(lambda: transcriber.stats().finals_reused == 1, timeout=WAIT_S)
    engine.release()
    a, b = await asyncio.wait_for(asyncio.gather(speculative, real), WAIT_S)
    assert a is not None and b is not None
    assert a.text == b.text == "n=8000" and not a.reused and b.reused
    assert b.audio_s == pytest.approx(1.0)
    assert len(engine.calls) == 1


async def test_a_cancelled_caller_withdraws_its_waiting_job(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    engine.hold()
    running = asyncio.create_task(transcriber.transcribe(speech(100), final=True, key="r"))
    await engine.next_start()
    doomed = asyncio.create_task(transcriber.transcribe(speech(200), final=True, key="d"))
    await waiting(transcriber, finals=1)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert transcriber.stats().finals_waiting == 0
    engine.release()
    await asyncio.wait_for(running, WAIT_S)
    after = await asyncio.wait_for(transcriber.transcribe(speech(300), final=True), WAIT_S)
    assert after is not None
    assert [size for size, _ in engine.calls] == [100, 300]


async def test_engine_errors_reach_the_caller_and_the_thread_survives(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    engine.fail_with = AsrModelError("boom")
    with pytest.raises(AsrModelError, match="boom"):
        await asyncio.wait_for(transcriber.transcribe(speech(100), final=True, key="k"), WAIT_S)
    engine.fail_with = RuntimeError("a bug")
    with pytest.raises(AsrModelError, match="a bug"):
        await asyncio.wait_for(transcriber.transcribe(speech(100), final=True, key="k"), WAIT_S)
    ok = await asyncio.wait_for(transcriber.transcribe(speech(100), final=True, key="k"), WAIT_S)
    assert ok is not None and ok.text == "n=100"  # a failed final was not cached


async def test_bad_audio_is_refused_with_a_clear_error(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    with pytest.raises(AsrInputError, match="mono"):
        await transcriber.transcribe(np.zeros((2, 100), np.float32), final=True)
    with pytest.raises(AsrInputError, match="float"):
        await transcriber.transcribe(np.zeros(100, np.int16), final=True)  # type: ignore[arg-type]
    bad = speech(100)
    bad[3] = np.nan
    with pytest.raises(AsrInputError, match="NaN"):
        await transcriber.transcribe(bad, final=True)
    with pytest.raises(AsrInputError, match="max_final_s"):
        await transcriber.transcribe(np.zeros(121 * RATE, np.float32), final=True)
    assert isinstance(AsrInputError("x"), ValueError)
    empty = await transcriber.transcribe(np.zeros(0, np.float32), final=True)
    assert empty is not None and empty.text == "" and empty.audio_s == 0.0
    assert engine.calls == []


async def test_the_callers_array_may_change_afterwards(
    transcriber: Transcriber, engine: FakeEngine
) -> None:
    audio = speech(8000)
    await transcriber.transcribe(audio, final=True, key="s")
    kept = audio.copy()
    audio[:] = 0.5  # the caller reuses its buffer
    again = await transcriber.transcribe(kept, final=True, key="s")
    assert again is not None and again.reused


async def test_close_answers_waiting_callers_and_refuses_new_ones(engine: FakeEngine) -> None:
    t = Transcriber(AsrConfig(), engine=engine)
    engine.hold()
    running = asyncio.create_task(t.transcribe(speech(100), final=True))
    await engine.next_start()
    waiting_final = asyncio.create_task(t.transcribe(speech(200), final=True))
    await waiting(t, finals=1)
    closer = asyncio.create_task(asyncio.to_thread(t.close))
    with pytest.raises(AsrClosed):
        await asyncio.wait_for(waiting_final, WAIT_S)
    engine.release()
    await asyncio.wait_for(closer, WAIT_S)
    result = await asyncio.wait_for(running, WAIT_S)  # the running job still completes
    assert result is not None
    with pytest.raises(AsrClosed):
        await t.transcribe(speech(100), final=True)
    t.close()  # idempotent


def test_sync_and_plain_paths_bypass_the_queue(engine: FakeEngine) -> None:
    t = Transcriber(AsrConfig(), engine=engine)
    try:
        assert t.transcribe_sync(speech(1600)).text == "n=1600"
        assert t.transcribe_plain(speech(1600)) == "plain n=1600"
        assert t.transcribe_plain(np.zeros(0, np.float32)) == ""
        assert t.stats().finals_done == 0
    finally:
        t.close()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        AsrConfig(device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AsrConfig(max_queue=0)
    with pytest.raises(ValueError):
        AsrConfig(window_margin_s=0.1)
    with pytest.raises(ValueError):
        AsrConfig(unknown=1)  # type: ignore[call-arg]
    config = AsrConfig()
    assert config.model_path is None and config.device == "cpu" and config.beam_size == 1
    assert config.max_queue == 16
    assert AsrConfig(model_path="").model_path is None  # empty: the packaged model
    assert 1 <= config.threads <= 4 and AsrConfig(cpu_threads=7).threads == 7


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness")
async def test_the_recognizers_thread_runs_below_the_event_loop(engine: FakeEngine) -> None:
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = Transcriber(AsrConfig(nice=5), engine=engine)
    try:
        assert await asyncio.wait_for(t.transcribe(speech(1600), final=True), WAIT_S)
    finally:
        t.close()
    assert engine.niceness == [min(19, here + 5)]  # the decode ran lowered
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here  # untouched
