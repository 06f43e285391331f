"""The recognizer with the real tiny.en model on speech made at test time by Piper and
eSpeak (several voices and speeds): words match, the windowed path agrees with the
library's plain 30 s path, silence and noise give no words, the shared queue serves
concurrent finals and drops partials rather than delay them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from duplexvoice.speech.asr import AsrConfig, AsrModelError, Transcriber
from duplexvoice.speech.wer import corpus_wer, wer
from tests.support.speech import SPEAKERS, noise, say, silence

pytestmark = pytest.mark.integration

WAIT_S = 60.0

SAMPLES = [
    ("Could you book a table for two at seven tonight, please?", SPEAKERS[0]),
    ("The weather has been strange this week.", SPEAKERS[3]),
    ("Can you remind me to call the dentist tomorrow?", SPEAKERS[2]),
    ("What time is it in Tokyo right now?", SPEAKERS[1]),
    ("I think the meeting moved to Thursday afternoon.", SPEAKERS[4]),
    ("No, that's not what I meant.", SPEAKERS[6]),
]


@pytest.fixture(scope="module")
def transcriber() -> Iterator[Transcriber]:
    t = Transcriber(AsrConfig(cpu_threads=2))
    yield t
    t.close()


def test_words_match_the_spoken_text_across_voices(transcriber: Transcriber) -> None:
    results = [(text, transcriber.transcribe_sync(say(text, speaker))) for text, speaker in SAMPLES]
    assert corpus_wer((text, r.text) for text, r in results) <= 0.1, [r.text for _, r in results]
    for text, r in results:
        assert wer(text, r.text) <= 0.35, (text, r.text)
        assert r.final and r.window_s < 30 and r.compute_ms > 0


def test_the_windowed_path_agrees_with_the_plain_30s_path(transcriber: Transcriber) -> None:
    pairs = []
    for text, speaker in SAMPLES[:4]:
        audio = say(text, speaker)
        pairs.append((transcriber.transcribe_plain(audio), transcriber.transcribe_sync(audio).text))
    assert corpus_wer(pairs) <= 0.1, pairs


@pytest.mark.parametrize(
    "name", ["digital silence", "faint hiss", "a noise burst", "a click in silence"]
)
def test_no_words_from_silence_or_noise(transcriber: Transcriber, name: str) -> None:
    rng = np.random.default_rng(1)
    audio = {
        "digital silence": silence(2.0),
        "faint hiss": (rng.standard_normal(32000) * 0.003).astype(np.float32),
        "a noise burst": noise(0.4, seed=2),
        "a click in silence": np.concatenate([silence(0.3), noise(0.03, 0.8, seed=4),
                                              silence(0.5)]),
    }[name]
    result = transcriber.transcribe_sync(audio)
    assert result.text == "", result


async def test_concurrent_finals_complete_and_partials_are_dropped(
    transcriber: Transcriber,
) -> None:
    texts = [(text, speaker) for text, speaker in SAMPLES]
    audios = [say(text, speaker) for text, speaker in texts]
    before = transcriber.stats()
    finals = [
        transcriber.transcribe(audio, final=True, key=f"final-{i}")
        for i, audio in enumerate(audios)
    ]
    # partials from other sessions arrive while those finals wait
    partials = [
        transcriber.transcribe(audio[: audio.size // 2], final=False, key=f"partial-{i}")
        for i, audio in enumerate(audios[:3])
    ]
    results = await asyncio.wait_for(asyncio.gather(*finals, *partials), WAIT_S)
    final_results, partial_results = results[: len(audios)], results[len(audios) :]
    assert all(r is not None and r.final for r in final_results)
    assert corpus_wer((t, r.text) for (t, _), r in zip(texts, final_results, strict=True)
                      if r is not None) <= 0.15
    assert partial_results == [None, None, None]
    after = transcriber.stats()
    assert after.finals_done - before.finals_done == len(audios)
    assert after.partials_dropped - before.partials_dropped == 3
    assert after.queue_depth == 0


async def test_the_final_at_end_of_turn_reuses_the_speculative_one(
    transcriber: Transcriber,
) -> None:
    audio = say("Turn off the lights in the kitchen.", SPEAKERS[1])
    speculative = await transcriber.transcribe(audio, final=True, key="turn")
    real = await transcriber.transcribe(
        np.concatenate([audio, silence(0.7)]), final=True, key="turn"
    )
    assert speculative is not None and real is not None
    assert real.reused and real.text == speculative.text and real.compute_ms == 0
    transcriber.forget("turn")


async def test_a_partial_transcribes_what_has_been_said_so_far(transcriber: Transcriber) -> None:
    audio = say("Please read me the first chapter of the book.", SPEAKERS[0])
    partial = await transcriber.transcribe(audio[: audio.size * 2 // 3], final=False, key="p")
    assert partial is not None and not partial.final
    assert partial.text.lower().startswith("please read me")


async def test_a_final_longer_than_one_window_is_transcribed_in_pieces(
    transcriber: Transcriber,
) -> None:
    sentences = [
        "My sister is flying in from Chicago on Sunday morning.",
        "I need to pick her up at the airport before noon.",
        "Then we will drive to the lake house for the weekend.",
        "Please remind me to buy groceries on the way.",
        "We should also call the plumber about the kitchen sink.",
        "The weather report says it will rain on Saturday.",
        "Maybe we can visit the museum if it stays dry.",
        "Let me know what you think about this plan.",
    ]
    parts = []
    for i, sentence in enumerate(sentences):
        parts += [say(sentence, SPEAKERS[1 if i % 2 else 4]), silence(1.2)]
    audio = np.concatenate(parts)
    assert audio.size / 16000 > 30
    result = await asyncio.wait_for(transcriber.transcribe(audio, final=True), WAIT_S)
    assert result is not None
    assert wer(" ".join(sentences), result.text) <= 0.15, result.text
    # a partial of the same audio covers only its last window
    partial = await asyncio.wait_for(transcriber.transcribe(audio, final=False), WAIT_S)
    assert partial is not None
    assert 0 < len(partial.text.split()) < len(result.text.split())


def test_a_model_that_cannot_load_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AsrModelError, match="cannot load the Whisper model"):
        Transcriber(AsrConfig(model_path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrModelError, match="cannot load the Whisper model"):
        Transcriber(AsrConfig(model_path=str(tmp_path / "empty")))
    with pytest.raises(AsrModelError, match="English-only"):
        Transcriber(AsrConfig(language="fr"))
