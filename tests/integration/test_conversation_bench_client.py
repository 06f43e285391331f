"""The conversation benchmark's client (bench/conversation_client.py) against a small
fake conversation server on a loopback port (an energy "VAD", ``pause`` /
``interrupt`` / ``resume``, echo-like replies), and the benchmark's reference set and
naive pipeline with real voices and models: it checks that the client speaks WIRE §1.2
and measures what it claims, not how fast anything is. (Its pure parts are in
``tests/unit/test_conversation_bench.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import conversation
import conversation_client as cc
import conversation_set as cs

from duplexvoice.speech.wer import wer
from duplexvoice.wire.protocol import encode_binary_frame
from tests.support import speech
from tests.support.bench_items import bench_item, tone

# -- the client against a fake conversation server --------------------------------------


METRICS = {"offset_ms": 100.0, "asr_ms": 200.0, "transcript_ms": 300.0, "reply_ms": 210.0,
           "voice_to_voice_ms": 350.0}


class FakeConversation:
    """Energy VAD on 20 ms frames; while speaking, speech gives ``pause``, 10 frames of
    it ``interrupt``, 12 silent frames ``resume``; a turn ends after 25 silent frames
    with a final transcript, a ``reply`` and 50 frames of audio, the turn's ``metrics``
    after the first (:data:`METRICS`, as the orchestrator's extension message)."""

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []
        self.mic: list[bytes] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "session_start", "session_id": "s1"})
        s: dict[str, Any] = {"uid": 0, "seq": 0, "task": None, "paused": None, "speech": 0,
                             "silence": 0, "turn": 0}
        resume = asyncio.Event()
        resume.set()

        async def speak(frames: int, turn: int | None = None) -> None:
            s["uid"] += 1
            uid = s["uid"]
            await ws.send_json({"type": "reply", "utterance_id": uid, "text": "ok"}
                               | ({"turn": turn} if turn is not None else {}))
            for k in range(frames):
                await resume.wait()
                s["seq"] += 1
                await ws.send_bytes(encode_binary_frame(bytes(1920), s["seq"], uid))
                if k == 0 and turn is not None:
                    await ws.send_json({"type": "metrics", "turn": turn} | METRICS)
                await asyncio.sleep(0.02)
            await ws.send_json({"type": "utterance_end", "utterance_id": uid,
                                "reason": "completed", "frames": frames})

        def start(frames: int, turn: int | None = None) -> None:
            s["task"] = asyncio.create_task(speak(frames, turn))

        async def end(reason: str, message: str | None = None) -> None:
            task = s["task"]
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if message:
                    await ws.send_json({"type": message, "utterance_id": s["uid"],
                                        "reason": reason})
                await ws.send_json({"type": "utterance_end", "utterance_id": s["uid"],
                                    "reason": reason, "frames": 0})
            resume.set()

        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["type"] == "config":
                    self.configs.append(data)
                elif data["type"] == "text":
                    start(200)
                elif data["type"] == "control" and data["command"] == "STOP":
                    await end("stopped")
                continue
            self.mic.append(msg.data)
            loud = np.abs(np.frombuffer(msg.data, "<i2")).max() > 300
            s["speech"], s["silence"] = (s["speech"] + 1, 0) if loud else (0, s["silence"] + 1)
            speaking = s["task"] is not None and not s["task"].done()
            if loud and speaking and s["paused"] is None:
                s["paused"] = s["uid"]
                resume.clear()
                await ws.send_json({"type": "pause", "utterance_id": s["uid"]})
            elif loud and s["paused"] is not None and s["speech"] >= 10:
                s["paused"] = None
                await end("interrupted", "interrupt")
            elif s["paused"] is not None and s["silence"] >= 12:
                await ws.send_json({"type": "resume", "utterance_id": s["paused"]})
                s["paused"] = None
                resume.set()
            if loud and not speaking:
                s["turn"] += 1
            elif s["turn"] and s["silence"] == 25:
                s["turn"] = 0
                s["turns"] = s.get("turns", 0) + 1
                await ws.send_json({"type": "transcript", "text": "hello", "final": True,
                                    "turn": s["turns"]})
                start(50, s["turns"])
        return ws


@contextlib.asynccontextmanager
async def _fake_server() -> AsyncIterator[tuple[FakeConversation, str]]:
    fake = FakeConversation()
    app = web.Application()
    app.router.add_get("/ws", fake.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"ws://127.0.0.1:{port}/ws"
    finally:
        await runner.cleanup()


async def _with_client(body: Callable[[cc.ConversationClient, FakeConversation],
                                      Awaitable[None]]) -> None:
    async with _fake_server() as (fake, url), aiohttp.ClientSession() as http:
        client = await cc.ConversationClient.connect(http, url, voice="v1")
        try:
            async with asyncio.timeout(30):
                await body(client, fake)
        finally:
            await client.close()


@pytest.mark.integration
async def test_the_client_configures_conversation_mode_and_streams_the_microphone() -> None:
    item = bench_item("utt-01", "utterance", "hello", (("silence", speech.silence(0.1), ""),
                                                  ("speech", tone(0.3), "hello")))

    async def body(c: cc.ConversationClient, fake: FakeConversation) -> None:
        row = await cc.run_utterance(c, item)
        assert fake.configs == [{"type": "config", "mode": "conversation",
                                 "input_sample_rate": 16000, "output_format": "binary",
                                 "voice": "v1"}]
        assert {len(f) for f in fake.mic} == {640}  # 20 ms of PCM16 at 16 kHz
        heard = b"".join(fake.mic)
        assert item.pcm in heard  # the timeline, intact, between silence
        assert row["finals"] == ["hello"] and row["replies"] == ["ok"]
        assert row["v2v_ms"] is not None and row["v2v_ms"] > 0 and row["settled"]

    await _with_client(body)


@pytest.mark.integration
async def test_voice_to_voice_counts_from_the_end_of_the_voice_too() -> None:
    # 0.3 s of tone, then 0.2 s of silence that still belongs to the speech piece (as a
    # voice's clip ends): the voice ends 200 ms before the piece does.
    item = bench_item("hum-01", "human", "hello", (
        ("silence", speech.silence(0.1), ""),
        ("speech", np.concatenate([tone(0.3), speech.silence(0.2)]), "hello")))

    async def body(c: cc.ConversationClient, fake: FakeConversation) -> None:
        row = await cc.run_utterance(c, item)
        assert row["voice_end_before_speech_end_ms"] == 200.0
        # Same reply frame, counted from a frame sent earlier.
        assert row["v2v_voice_ms"] > row["v2v_ms"] > 0
        assert row["turn"] == 1 and row["server"] == METRICS
        assert row["final_after_voice_ms"] is not None and row["final_after_voice_ms"] > 0
        assert row["cut_off"] is False and row["finals"] == ["hello"]

    await _with_client(body)


@pytest.mark.integration
async def test_an_interruption_is_measured_from_the_speech_onset() -> None:
    item = bench_item("int-01", "interruption", "stop", (("silence", speech.silence(0.3), ""),
                                                    ("speech", tone(0.5), "stop")), 0.3)

    async def body(c: cc.ConversationClient, fake: FakeConversation) -> None:
        row = await cc.run_interruption(c, item, "a long reply")
        assert row["old_utterance"] == 1 and not row["missed"]
        assert 0 <= row["pause_ms"] < row["interrupt_ms"]
        assert row["old_frames_after_interrupt"] == 0 and row["old_end_reason"] == "interrupted"
        assert row["reply_after_speech_ms"] is not None and row["settled"]

    await _with_client(body)


@pytest.mark.integration
async def test_a_click_during_a_reply_is_resumed() -> None:
    item = bench_item("burst-01", "burst", "", (("silence", speech.silence(0.3), ""),
                                           ("noise", speech.noise(0.05, 0.4, 1), "")), 0.3)

    async def body(c: cc.ConversationClient, fake: FakeConversation) -> None:
        row = await cc.run_burst(c, item, "a long reply")
        assert row["outcome"] == "resumed" and row["pause_ms"] is not None
        assert row["sequence_gaps"] == 0 and row["settled"]

    await _with_client(body)


@pytest.mark.integration
async def test_a_refused_config_is_an_error_not_a_hang() -> None:
    async def refuse(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "session_start", "session_id": "s1"})
        await ws.receive()
        await ws.send_json({"type": "error", "code": "INVALID_CONFIG", "message": "mode"})
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/ws", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(cc.ConfigRefused, match="INVALID_CONFIG"):
                await cc.ConversationClient.connect(
                    http, f"ws://127.0.0.1:{runner.addresses[0][1]}/ws", check_s=5)
    finally:
        await runner.cleanup()


# -- the reference set and the naive pipeline (real voices, real models) ------------------


@pytest.fixture(scope="module")
def reference() -> cs.ReferenceSet:
    return cs.build_set()


@pytest.mark.integration
def test_the_reference_set_is_the_same_bytes_every_time(reference: cs.ReferenceSet) -> None:
    again = cs.build_set()
    assert again.fingerprint == reference.fingerprint
    assert [i.pcm for i in again.items] == [i.pcm for i in reference.items]


@pytest.mark.integration
def test_the_reference_set_has_what_the_benchmark_needs(reference: cs.ReferenceSet) -> None:
    assert len(reference.references) == 20 and len(reference.of("cutoff")) == 7
    assert len(reference.of("interruption")) == 10 and len(reference.of("burst")) == 10
    assert {i.speaker for i in reference.references} == {s.name for s in speech.SPEAKERS}
    for item in reference.items:
        at = 0.0
        for piece in item.pieces:  # contiguous, covering the whole timeline
            assert piece.start_s == pytest.approx(at)
            at = piece.end_s
            part = item.audio[item.sample(piece.start_s):item.sample(piece.end_s)]
            assert (np.abs(part).max() > 0.05) == (piece.kind != "silence"), item.id
        assert at == pytest.approx(item.duration_s)
    for item in reference.references:
        assert 1.0 <= item.speech_s <= 6.0, item.id
    for item, (_, pause, _) in zip(reference.of("cutoff"), cs.CUTOFFS, strict=True):
        assert item.continuation_s is not None
        gap = item.pieces[1]
        assert gap.kind == "silence" and gap.end_s - gap.start_s == pytest.approx(pause)
        assert item.continuation_s == pytest.approx(gap.end_s)
    for item in reference.of("interruption", "burst"):
        assert item.onset_s == pytest.approx(item.offset_s)
        low, high = (1.0, 2.0) if item.kind == "interruption" else (0.05, 0.3)
        assert low - 1e-3 <= item.speech_s <= high + 1e-3, item.id


@pytest.mark.integration
def test_the_naive_pipeline_transcribes_and_speaks(reference: cs.ReferenceSet) -> None:
    naive = conversation.Naive(500, beam=1, threads=0)
    item = reference.references[0]
    row = naive.run(item)
    assert wer(item.text, row["text"]) <= 0.2, row["text"]
    assert row["asr_ms"] > 0 and row["tts_ms"] > 0
    assert row["total_ms"] == pytest.approx(500 + row["asr_ms"] + row["tts_ms"])
