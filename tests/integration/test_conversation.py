"""Conversation mode end to end: a Piper worker, the orchestrator with VAD, Whisper
tiny.en and echo replies, and speech made at test time by Piper and eSpeak, fed in
real time as the microphone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import aiohttp
import numpy as np
import pytest
import soxr

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.speech.wer import wer
from tests.support.mic import MicClient, connected_mic
from tests.support.speech import SPEAKERS, noise, pcm16, say, silence

pytestmark = pytest.mark.integration

LONG = ("Here is a long answer that goes on for a while, so that there is plenty of time "
        "to interrupt it. It keeps talking about the weather, the sea and the mountains, "
        "and then it talks about the weather again.")


@pytest.fixture(scope="module")
def stack(real_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    orch = OrchestratorProcess("--workers", real_worker.addr, "--reply-engine", "echo").start()
    yield orch
    orch.terminate()


@pytest.fixture
async def mic(stack: OrchestratorProcess) -> AsyncIterator[MicClient]:
    async with connected_mic(stack.ws_url) as client:
        yield client


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z']+", text.lower()))


@pytest.mark.parametrize("speaker", [SPEAKERS[0], SPEAKERS[4]], ids=lambda s: s.name)
async def test_spoken_words_are_transcribed_and_answered(mic: MicClient, speaker: object) -> None:
    text = "Please book a table for two people tomorrow evening."
    speech = say(text, speaker)  # type: ignore[arg-type]
    feeding = asyncio.create_task(mic.feed(np.concatenate([silence(0.3), speech]),
                                           then_silence_s=2.0))
    final = await mic.until(lambda m: m["type"] == "transcript" and m["final"])
    assert wer(text, final.message["text"]) <= 0.25, final.message
    reply = await mic.until(lambda m: m["type"] == "reply")
    uid = reply.message["utterance_id"]
    assert words(final.message["text"]).startswith(words(reply.message["text"])[:10])
    end = await mic.until(lambda m: m["type"] == "utterance_end" and m["utterance_id"] == uid)
    assert end.message["reason"] == "completed" and end.message["frames"] > 10
    assert len(mic.frames(uid)) == end.message["frames"]
    await feeding
    # The reply's frames came after the end of the speech, never before it.
    speech_end = mic.started + (0.3 * 16000 + len(speech)) / 16000
    assert mic.frames(uid)[0].at > speech_end
    metrics = [m for m in mic.messages("metrics") if "voice_to_voice_ms" in m]
    assert metrics and metrics[0]["voice_to_voice_ms"] > 0
    # The turn's path, each step from the VAD's end of speech, in the order it happens.
    m = metrics[0]
    assert 0 < m["offset_ms"] <= m["asr_ms"] <= m["transcript_ms"] <= m["voice_to_voice_ms"]
    assert m["asr_ms"] <= m["reply_ms"] <= m["voice_to_voice_ms"]


async def test_speech_over_a_reply_pauses_then_interrupts_and_is_answered(
        mic: MicClient) -> None:
    await mic.ws.send_json({"type": "text", "text": LONG})
    first = await mic.until(lambda m: m["type"] == "binary")
    uid = first.message["utterance_id"]
    # Keep the microphone open (silence) while the system speaks, then talk over it.
    text = "Stop, I want to ask about trains."
    speech = say(text, SPEAKERS[3])
    feeding = asyncio.create_task(mic.feed(np.concatenate([silence(1.0), speech]),
                                           then_silence_s=2.5))
    pause = await mic.until(lambda m: m["type"] == "pause")
    assert pause.message["utterance_id"] == uid
    interrupt = await mic.until(lambda m: m["type"] == "interrupt")
    assert interrupt.message == {"type": "interrupt", "utterance_id": uid,
                                 "reason": "interrupted"}
    # Nothing of the old utterance after its interrupt.
    assert all(r.at <= interrupt.at for r in mic.frames(uid))
    index = mic.log.index(interrupt)
    assert not [r for r in mic.log[index:] if r.message.get("utterance_id") == uid
                and r.message["type"] == "binary"]
    end = await mic.until(lambda m: m["type"] == "utterance_end" and m["utterance_id"] == uid)
    assert end.message["reason"] == "interrupted"
    final = await mic.until(lambda m: m["type"] == "transcript" and m["final"])
    # The new turn is transcribed (tiny.en on eSpeak's "Stop," varies with where the
    # turn's audio begins, so the key words, not a word error rate).
    heard = words(final.message["text"])
    assert "ask" in heard.split() and "train" in heard, final.message  # "outtrains" too
    reply = await mic.until(lambda m: m["type"] == "reply" and m["utterance_id"] != uid)
    assert reply.message["utterance_id"] > uid
    await feeding
    seqs = [r.message["sequence"] for r in mic.log if r.message["type"] == "binary"]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_short_sound_over_a_reply_pauses_then_resumes_losing_nothing(
        mic: MicClient) -> None:
    await mic.ws.send_json({"type": "text", "text": LONG})
    first = await mic.until(lambda m: m["type"] == "binary")
    uid = first.message["utterance_id"]
    # A voiced "uh" of 150 ms: the VAD hears a voice (white noise it ignores), but it
    # is far shorter than a real interruption and carries no words.
    burst = say("Uh.", SPEAKERS[3])[:2400]
    feeding = asyncio.create_task(mic.feed(np.concatenate([silence(0.8), burst]),
                                           then_silence_s=1.5))
    pause = await mic.until(lambda m: m["type"] == "pause", timeout=10)
    assert pause.message["utterance_id"] == uid
    resume = await mic.until(lambda m: m["type"] == "resume")
    assert resume.message["utterance_id"] == uid
    assert not [r for r in mic.log if r.message["type"] == "binary"
                and pause.at < r.at < resume.at]  # held: nothing released meanwhile
    await feeding
    end = await mic.until(lambda m: m["type"] == "utterance_end" and m["utterance_id"] == uid,
                          timeout=60)
    assert end.message["reason"] == "completed"
    assert len(mic.frames(uid)) == end.message["frames"]
    assert not mic.messages("interrupt")
    seqs = [r.message["sequence"] for r in mic.log if r.message["type"] == "binary"]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_silence_and_noise_alone_get_no_reply(mic: MicClient) -> None:
    track = np.concatenate([silence(1.0), noise(0.05, level=0.3, seed=1), silence(1.2)])
    await mic.feed(track)
    await mic.ws.send_json({"type": "text", "text": "marker"})
    await mic.until(lambda m: m["type"] == "utterance_end")
    assert not mic.messages("reply") and not [
        m for m in mic.messages("transcript") if m["final"]]


async def test_a_typed_turn_is_answered_and_takes_the_floor(mic: MicClient) -> None:
    await mic.ws.send_json({"type": "user_text", "text": LONG})
    first = await mic.until(lambda m: m["type"] == "reply")
    uid = first.message["utterance_id"]
    await mic.until(lambda m: m["type"] == "transcript" and m["final"])
    await mic.until(lambda m: len(mic.frames(uid)) >= 10)
    # Typing while the system speaks interrupts it, and the typed turn is answered.
    await mic.ws.send_json({"type": "user_text", "text": "Tell me something short."})
    cut = await mic.until(lambda m: m["type"] == "interrupt")
    assert cut.message["utterance_id"] == uid
    final = await mic.until(lambda m: m["type"] == "transcript" and m["final"]
                            and m["text"] == "Tell me something short.")
    assert final.message["turn"] == 2
    second = await mic.until(lambda m: m["type"] == "reply" and m["utterance_id"] > uid)
    end = await mic.until(lambda m: m["type"] == "utterance_end"
                          and m["utterance_id"] == second.message["utterance_id"])
    assert end.message["reason"] == "completed" and end.message["frames"] > 10
    assert all(f.at < cut.at for f in mic.frames(uid))  # nothing of the cut reply after


async def test_typed_turns_need_conversation_mode(stack: OrchestratorProcess) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(stack.ws_url) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "session_start"
        await ws.send_json({"type": "user_text", "text": "hello"})
        assert await _error(ws) == "INVALID_STATE"


async def _error(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The code of the next error (state changes skipped)."""
    while True:
        message = await ws.receive_json(timeout=10)
        if message["type"] == "error":
            return str(message["code"])
        assert message["type"] == "state", message


async def test_bad_microphone_input_gets_clear_errors_and_the_session_goes_on(
        stack: OrchestratorProcess) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(stack.ws_url) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "session_start"
        await ws.send_bytes(b"\x00\x00" * 320)  # audio before conversation mode
        assert await _error(ws) == "INVALID_STATE"
        await ws.send_json({"type": "config", "mode": "conversation", "input_sample_rate": 8000})
        await ws.send_bytes(b"\x00" * 321)  # odd byte count
        assert await _error(ws) == "INVALID_AUDIO"
        await ws.send_json({"type": "audio", "pcm": "not base64!"})
        assert await _error(ws) == "INVALID_AUDIO"
        await ws.send_json({"type": "config", "input_sample_rate": 7000})
        assert await _error(ws) == "INVALID_CONFIG"
        # A flood: half a minute of audio at once is refused, the session lives on.
        await ws.send_bytes(pcm16(np.zeros(8000 * 30, np.float32)))
        assert await _error(ws) == "RATE_LIMITED"
        await ws.send_json({"type": "text", "text": "still here"})
        kinds = set()
        while "utterance_end" not in kinds:
            msg = await ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.TEXT:
                kinds.add(msg.json()["type"])
        assert "error" not in kinds


async def test_the_input_rate_may_change_mid_session(mic: MicClient) -> None:
    text = "The museum opens at nine in the morning."
    speech = np.concatenate([silence(0.3), say(text, SPEAKERS[1])])
    await mic.ws.send_json({"type": "config", "input_sample_rate": 48000})
    await mic.feed(soxr.resample(speech, 16000, 48000).astype(np.float32),
                   then_silence_s=1.2, rate=48000)
    first = await mic.until(lambda m: m["type"] == "transcript" and m["final"])
    assert wer(text, first.message["text"]) <= 0.25, first.message
    await mic.ws.send_json({"type": "config", "input_sample_rate": 8000})
    await mic.feed(soxr.resample(speech, 16000, 8000).astype(np.float32),
                   then_silence_s=1.2, rate=8000)
    second = await mic.until(lambda m: m["type"] == "transcript" and m["final"]
                             and m["turn"] > first.message["turn"])
    assert wer(text, second.message["text"]) <= 0.34, second.message


async def test_clipped_speech_is_still_heard(mic: MicClient) -> None:
    text = "Turn left at the next corner."
    speech = np.clip(say(text, SPEAKERS[2]) * 6.0, -1.0, 1.0).astype(np.float32)
    await mic.feed(np.concatenate([silence(0.3), speech]), then_silence_s=1.2)
    final = await mic.until(lambda m: m["type"] == "transcript" and m["final"])
    assert wer(text, final.message["text"]) <= 0.5, final.message


async def test_endless_speech_is_ended_by_force(real_worker: WorkerProcess) -> None:
    orch = OrchestratorProcess("--workers", real_worker.addr, "--max-turn-ms", "2000",
                                "--reply-engine", "echo").start()
    try:
        async with aiohttp.ClientSession() as http:
            mic = MicClient(await http.ws_connect(orch.ws_url))
            await mic.start()
            speech = say("I keep talking about the weather and the sea and the mountains "
                         "and the rivers and the trees without ever stopping at all.",
                         SPEAKERS[0])
            assert len(speech) > 3 * 16000
            feeding = asyncio.create_task(mic.feed(speech, then_silence_s=1.5))
            final = await mic.until(lambda m: m["type"] == "transcript" and m["final"])
            # The turn ended while the speech was still going.
            assert final.at < mic.started + len(speech) / 16000
            assert final.message["text"]
            await feeding
            await mic.stop()
    finally:
        orch.terminate()
