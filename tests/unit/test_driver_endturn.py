"""The end-of-turn model through the session driver (fake recognizer, fake model, the
loudness VAD of tests/support/fake_listening.py): asked at the offset beside the final
transcript, its answer ends the turn; without an answer the silence does. And a short
interruption whose words come after playback resumed."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import pytest

from duplexvoice.orchestrator.conversation_config import ConversationConfig
from duplexvoice.orchestrator.sessions.turns import TurnConfig
from duplexvoice.speech.asr_types import Recognition
from duplexvoice.speech.vad import VadConfig
from duplexvoice.wire.protocol import ConfigMessage
from tests.support.fake_listening import FakeScorer, FakeTranscriber, fake_services
from tests.unit.test_driver import Harness, make, speak  # noqa: F401 (make: the fixture)

pytestmark = pytest.mark.unit

# The silence alone would wait 10 s, past every wait of these tests (TIMEOUT_S, 5 s):
# a turn that ends was ended by the model's answer.
SLOW_SILENCE = TurnConfig(end_of_turn_ms=10_000, end_mode="acoustic", complete_p=0.5,
                          acoustic_complete_ms=100, interrupt_after_ms=5000)


async def conversation(make: Any, turns: TurnConfig, scorer: FakeScorer | None,  # noqa: F811
                       text: str = "hello there.", asr: FakeTranscriber | None = None,
                       partial_interval_ms: int = 0) -> tuple[Harness, FakeTranscriber]:
    asr = asr or FakeTranscriber(text)
    config = ConversationConfig(turns=turns, vad=VadConfig(min_silence_ms=100),
                                partial_interval_ms=partial_interval_ms)
    h: Harness = await make(services=fake_services(config, asr, endturn=scorer))
    await h.send(ConfigMessage(mode="conversation"))
    await speak(h, 0, 15)  # silence first: the turn's pre-roll is there
    return h, asr


async def test_a_confident_answer_ends_the_turn(make: Any) -> None:  # noqa: F811
    scorer = FakeScorer(0.9)
    h, asr = await conversation(make, SLOW_SILENCE, scorer)
    await speak(h, 12, 10)
    transcript = await h.client.wait_for("transcript", final=True)
    assert (transcript["turn"], transcript["text"]) == (1, "hello there.")
    reply = await h.client.wait_for("reply")
    assert reply["text"].strip() == "hello there."
    # Asked once, at the offset, about the turn's audio: the same samples as the final.
    finals = [n for final, n in asr.asked if final]
    assert scorer.asked == finals[:1] and 12 * 320 < scorer.asked[0] <= 37 * 320
    await h.leave()


async def test_the_model_is_not_asked_when_turn_taking_does_not_use_it(
        make: Any) -> None:  # noqa: F811
    scorer = FakeScorer(0.9)
    turns = TurnConfig(end_of_turn_ms=200, end_mode="text", interrupt_after_ms=5000)
    h, asr = await conversation(make, turns, scorer)
    await speak(h, 12, 15)
    await h.client.wait_for("transcript", final=True)
    assert scorer.asked == [] and any(final for final, _ in asr.asked)
    await h.leave()


async def test_each_pause_asks_an_early_final_and_the_voice_coming_back_withdraws_it(
        make: Any) -> None:  # noqa: F811
    turns = TurnConfig(end_of_turn_ms=200, end_mode="text", interrupt_after_ms=5000)
    h, asr = await conversation(make, turns, None)
    await speak(h, 12, 4)  # 80 ms without voice: a pause (the offset needs 100 ms)
    await speak(h, 6, 15)
    transcript = await h.client.wait_for("transcript", final=True)
    assert transcript["turn"] == 1
    # The first pause's early final had 12 frames of speech, the second's all 22.
    assert len(asr.early) == 2 and asr.early[0] < asr.early[1]
    assert asr.early_withdrawn == 1  # the voice came back once
    # The turn's final: all the speech, and at least the second early final's audio.
    finals = [n for final, n in asr.asked if final]
    assert finals and finals[0] >= asr.early[1]
    await h.leave()


async def test_no_answer_and_the_silence_ends_the_turn(make: Any) -> None:  # noqa: F811
    scorer = FakeScorer(None)  # too busy: no answer
    turns = TurnConfig(end_of_turn_ms=200, end_mode="acoustic", interrupt_after_ms=5000)
    h, _ = await conversation(make, turns, scorer)
    await speak(h, 12, 15)
    transcript = await h.client.wait_for("transcript", final=True)
    assert transcript["turn"] == 1 and len(scorer.asked) == 1
    await h.leave()


async def test_without_the_model_fused_is_the_text_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplexvoice.orchestrator.sessions import shared
    from duplexvoice.speech.endturn import EndTurnConfig, EndTurnModelMissing

    def missing(config: object) -> None:
        raise EndTurnModelMissing("pipecat-ai is not installed")

    monkeypatch.setattr(shared, "Transcriber", lambda config: FakeTranscriber())
    monkeypatch.setattr(shared, "EndTurnScorer", missing)
    fused = ConversationConfig(turns=TurnConfig(end_mode="fused"))
    services = await shared.make_services(fused)
    assert services.endturn is None and services.config.turns.end_mode == "text"
    acoustic = ConversationConfig(turns=TurnConfig(end_mode="acoustic"))
    assert (await shared.make_services(acoustic)).config.turns.end_mode == "silence"
    # A model file named in the settings that is not there is an error, not a warning.
    named = ConversationConfig(turns=TurnConfig(end_mode="fused"),
                               endturn=EndTurnConfig(model_path="/nonexistent.onnx"))
    with pytest.raises(ValueError, match="pipecat-ai"):
        await shared.make_services(named)
    # Not used: not loaded.
    text = ConversationConfig(turns=TurnConfig(end_mode="text"))
    assert (await shared.make_services(text)).endturn is None


class SlowPartials(FakeTranscriber):
    """Once ``armed``, partials wait for ``release`` (a recognizer busy with finals)."""

    def __init__(self) -> None:
        super().__init__("tell me about the sea", partial_text="")
        self.armed = False
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def transcribe(self, audio: Any, *, final: bool, key: Hashable = None,
                         early: bool = False) -> Recognition:
        if final or early or not self.armed:
            return await super().transcribe(audio, final=final, key=key, early=early)
        self.waiting.set()
        await self.release.wait()
        self.asked.append((final, int(audio.size)))
        return Recognition("wait", False, audio.size / 16_000, 0.0, 0.0)


async def test_words_after_the_resume_still_interrupt(make: Any) -> None:  # noqa: F811
    asr = SlowPartials()
    turns = TurnConfig(end_of_turn_ms=200, end_mode="text", interrupt_after_ms=5000,
                       words_after_ms=100, resume_after_ms=100, words_wait_ms=100,
                       late_words_ms=5000)
    h, _ = await conversation(make, turns, None, asr=asr, partial_interval_ms=400)
    h.pool.allowed_frames = 2  # the reply stays on the air until the test lets it go
    await speak(h, 12, 10)
    reply = await h.client.wait_for("reply")
    uid = reply["utterance_id"]
    await h.frames(2, uid)
    # "Wait," over the reply: held; its words are checked, but the recognizer is busy.
    asr.armed = True
    await speak(h, 8, 0)
    await h.client.wait_for("pause", utterance_id=uid)
    await asyncio.wait_for(asr.waiting.wait(), 5)
    await speak(h, 0, 15)
    await h.client.wait_for("resume", utterance_id=uid)  # the check lost the race
    asr.release.set()
    interrupt = await h.client.wait_for("interrupt", utterance_id=uid)
    assert interrupt["reason"] == "interrupted"
    types = h.client.types()
    assert types.index("resume") < types.index("interrupt")
    end = await h.client.wait_for("utterance_end", utterance_id=uid)
    assert end["reason"] == "interrupted"
    await h.leave()
