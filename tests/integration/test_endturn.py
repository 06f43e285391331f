"""The acoustic end-of-turn model for real: Smart-Turn v3.2 from the pipecat-ai wheel
on onnxruntime, on speech made at test time by Piper; and an orchestrator whose turns
only the model can end soon (the silence alone would wait 10 s)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator
from types import ModuleType

import numpy as np
import pytest

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.speech import endturn
from duplexvoice.speech.endturn import EndTurnConfig, EndTurnScorer, SmartTurn
from tests.support.mic import MicClient, connected_mic
from tests.support.speech import SPEAKERS, say, say_steady, silence

pytestmark = pytest.mark.integration

PIPER = SPEAKERS[:3]  # joe-medium at three speeds
COMPLETE = ("What time does the pharmacy close tonight?",
            "Please remind me to call my sister tomorrow morning.")
BROKEN_OFF = ("I want to book a table for, um, for", "I went to the store and")


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    return SmartTurn()


def reference_features() -> ModuleType:
    """The wheel's own numpy feature code, loaded from its file (importing pipecat
    would need its dependencies)."""
    path = endturn.model_path().parents[1] / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("smart_turn_features", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seconds", [0.5, 3.0, 8.0, 11.0])
def test_our_features_are_the_models_own(seconds: float) -> None:
    audio = say(COMPLETE[0], SPEAKERS[0])
    audio = np.resize(audio, round(seconds * 16000)).astype(np.float32)
    # The model sees the last 8 s, zero-padded in front when shorter.
    window = audio[-128_000:]
    window = np.concatenate([np.zeros(128_000 - window.size, np.float32), window])
    ours = endturn.features(audio)
    theirs = reference_features().compute_whisper_log_mel_features(window)
    assert ours.shape == theirs.shape == (80, 800)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_model_and_its_licence_come_from_the_package() -> None:
    assert endturn.model_path().name == "smart-turn-v3.2-cpu.onnx"
    assert "BSD 2-Clause" in endturn.licence_path().read_text()
    with pytest.raises(endturn.EndTurnModelMissing, match="not a file"):
        endturn.model_path(EndTurnConfig(model_path="/nonexistent/model.onnx"))


@pytest.mark.parametrize("speaker", PIPER, ids=lambda s: s.name)
def test_a_finished_sentence_sounds_finished_and_a_broken_off_one_does_not(
        model: SmartTurn, speaker: object) -> None:
    def p(text: str) -> float:
        audio = say_steady(text, speaker)  # type: ignore[arg-type]
        return model.probability(np.concatenate([audio, silence(0.2)]))

    # The model's own line is 0.5. The takes are Piper's without its random noise: with
    # it, one take in eight of "What time does the pharmacy close tonight?" at 0.85
    # scored 0.29-0.5 (the others 0.74-0.96). Steady: the broken-off ones 0.006-0.025,
    # the finished ones 0.88-0.99.
    for text in COMPLETE:
        assert p(text) >= 0.5, text
    for text in BROKEN_OFF:
        assert p(text) < 0.5, text


def test_bad_audio_is_refused(model: SmartTurn) -> None:
    with pytest.raises(ValueError, match="mono"):
        model.probability(np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.probability(np.full(16000, np.nan, np.float32))
    assert 0.0 <= model.probability(np.zeros(0, np.float32)) <= 1.0  # silence: an answer


async def test_the_shared_scorer_answers_off_the_event_loop() -> None:
    scorer = EndTurnScorer(EndTurnConfig(max_pending=2))
    try:
        audio = np.concatenate([say(COMPLETE[0], SPEAKERS[0]), silence(0.2)])
        answers = await asyncio.gather(*(scorer.score(audio) for _ in range(3)))
        # Two at most wait: the third gets no answer rather than queueing.
        assert sorted(a is None for a in answers) == [False, False, True]
        assert all(a == pytest.approx(scorer.probability_sync(audio)) for a in answers if a)
        assert scorer.calls == 2 and scorer.refused == 1
        assert await scorer.score(np.full(100, np.nan, np.float32)) is None  # logged
    finally:
        scorer.close()


# -- through the orchestrator ---------------------------------------------------------

@pytest.fixture(scope="module")
def stack(real_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    orch = OrchestratorProcess(
        "--workers", real_worker.addr, "--turns-end-mode", "acoustic",
        "--turns-end-of-turn-ms", "10000", "--turns-acoustic-complete-ms", "150",
        "--turns-complete-p", "0.5").start()  # the model's own line (Piper's takes vary)
    yield orch
    orch.terminate()


@pytest.fixture
async def mic(stack: OrchestratorProcess) -> AsyncIterator[MicClient]:
    async with connected_mic(stack.ws_url) as client:
        yield client


async def test_the_model_ends_a_finished_turn_long_before_the_silence_would(
        mic: MicClient) -> None:
    speech = np.concatenate([silence(0.3), say_steady(COMPLETE[0], SPEAKERS[0])])
    # 9 s of silence after the speech: the silence alone would end the turn 10 s after
    # it, after the last of it was sent; a busy machine only makes that later.
    feeding = asyncio.create_task(mic.feed(speech, then_silence_s=9.0))
    final = await mic.until(lambda m: m["type"] == "transcript" and m["final"])
    # Confirmed while the silence was still being sent: only the model could end it.
    assert not feeding.done()
    assert final.message["turn"] == 1 and "pharmacy" in final.message["text"].lower()
    await mic.until(lambda m: m["type"] == "reply")
    await feeding
