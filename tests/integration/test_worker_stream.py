"""Synthesis over real gRPC against a real worker process: frames, streaming,
per-session control."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from duplexvoice.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from duplexvoice.client.worker_client import WorkerClient, synthesize_text
from duplexvoice.rpc import tts_pb2

pytestmark = pytest.mark.integration

SENTENCES = "The weather is nice today. Shall we go for a walk in the park? I think so."


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def collect(call: AsyncIterator[tts_pb2.AudioFrame]) -> list[tts_pb2.AudioFrame]:
    return [frame async for frame in call]


def check_frames(frames: list[tts_pb2.AudioFrame]) -> bytes:
    """The contract of WIRE §2: data frames, then exactly one final marker."""
    assert frames, "no frames"
    assert [f.sequence_number for f in frames] == list(range(1, len(frames) + 1))
    finals = [f for f in frames if f.is_final]
    assert len(finals) == 1 and frames[-1].is_final
    for f in frames:
        assert f.sample_rate == SAMPLE_RATE and f.frame_duration_ms == FRAME_MS
        if not f.is_final:
            assert len(f.audio_data) == FRAME_BYTES
        else:
            assert len(f.audio_data) in (0, FRAME_BYTES)
    return b"".join(f.audio_data for f in frames)


def same_audio(a: bytes, b: bytes) -> bool:
    """Same samples frame by frame, up to a gain (loudness calibration may drift between
    utterances): a lost, repeated or shifted frame breaks the per-frame correlation."""
    if len(a) != len(b):
        return False
    x = np.frombuffer(a, dtype="<i2").astype(np.float64).reshape(-1, FRAME_BYTES // 2)
    y = np.frombuffer(b, dtype="<i2").astype(np.float64).reshape(-1, FRAME_BYTES // 2)
    for fx, fy in zip(x, y, strict=True):
        nx, ny = np.linalg.norm(fx), np.linalg.norm(fy)
        if nx < 30 and ny < 30:  # both (near) silent
            continue
        if float(np.dot(fx, fy)) / (nx * ny + 1e-9) < 0.99:
            return False
    return True


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0


@pytest.mark.parametrize("model_id", ["piper-en-us-joe-medium", "espeak-en-us-default",
                                      "mock-en-us-tone"])
async def test_each_voice_streams_well_formed_frames(real_client: WorkerClient,
                                                     model_id: str) -> None:
    sid = new_id()
    await real_client.start_session(sid, model_id)
    frames = await collect(real_client.synthesize(sid, SENTENCES))
    await real_client.end_session(sid)
    pcm = check_frames(frames)
    seconds = len(pcm) / 2 / SAMPLE_RATE
    # 15 words of speech: a few seconds, not silence.
    assert 2.0 < seconds < 12.0
    assert rms(pcm) > 0.02


async def test_first_audio_arrives_before_the_text_is_complete(real_client: WorkerClient) -> None:
    """Streamed text is synthesized as sentences complete, not at the end."""
    sid = new_id()
    await real_client.start_session(sid, "piper-en-us-joe-medium")
    first_audio = asyncio.Event()

    async def chunks() -> AsyncIterator[tts_pb2.TextChunk]:
        yield tts_pb2.TextChunk(session_id=sid, text="Hello there, my friend. ", is_final=False)
        await asyncio.wait_for(first_audio.wait(), 20)
        yield tts_pb2.TextChunk(session_id=sid, text="How are you?", is_final=True)

    frames = []
    async for frame in real_client.stub.Synthesize(chunks()):
        if frame.audio_data:
            first_audio.set()
        frames.append(frame)
    await real_client.end_session(sid)
    pcm = check_frames(frames)
    assert len(pcm) / 2 / SAMPLE_RATE > 1.5  # both sentences were spoken


async def test_sessions_on_one_model_synthesize_concurrently(real_client: WorkerClient) -> None:
    results = await asyncio.gather(
        *(synthesize_text(real_client, SENTENCES, "piper-en-us-joe-medium") for _ in range(3))
    )
    lengths = {len(r.frames) for r in results}
    assert all(r.frames for r in results)
    # Same text, same voice: about the same length (Piper adds a little noise).
    assert max(lengths) - min(lengths) < 0.1 * max(lengths)


async def test_mock_is_deterministic_through_the_worker(mock_client: WorkerClient) -> None:
    a = await synthesize_text(mock_client, SENTENCES)
    b = await synthesize_text(mock_client, SENTENCES)
    assert same_audio(a.pcm, b.pcm) and len(a.frames) > 50


async def _frames_with_times(call: AsyncIterator[tts_pb2.AudioFrame],
                             out: list[tuple[float, tts_pb2.AudioFrame]]) -> None:
    async for frame in call:
        out.append((time.monotonic(), frame))


async def test_pause_resume_is_per_session_and_loses_nothing(mock_client: WorkerClient) -> None:
    text = "[[slow:20]] " + SENTENCES  # the mock renders at about twice real time
    reference = await synthesize_text(mock_client, text)
    a, b = new_id(), new_id()
    await mock_client.start_session(a)
    await mock_client.start_session(b)
    got_a: list[tuple[float, tts_pb2.AudioFrame]] = []
    got_b: list[tuple[float, tts_pb2.AudioFrame]] = []
    task_a = asyncio.create_task(_frames_with_times(mock_client.synthesize(a, text), got_a))
    task_b = asyncio.create_task(_frames_with_times(mock_client.synthesize(b, text), got_b))
    while len(got_a) < 10:
        await asyncio.sleep(0.005)
    reply = await mock_client.control(a, tts_pb2.PAUSE)
    assert reply.success and reply.timestamp_ms > 0
    paused_at = time.monotonic()
    b_before = len(got_b)
    await asyncio.sleep(0.4)
    a_during = [f for t, f in got_a if t > paused_at + 0.05]  # in-flight frames may land
    assert a_during == [], "paused session kept receiving audio"
    assert len(got_b) > b_before + 5, "the other session was paused too"
    assert (await mock_client.control(a, tts_pb2.RESUME)).success
    await asyncio.wait_for(asyncio.gather(task_a, task_b), 30)
    for got in (got_a, got_b):
        pcm = check_frames([f for _, f in got])
        assert same_audio(pcm, reference.pcm), "audio lost, replayed or altered by the pause"
    for sid in (a, b):
        await mock_client.end_session(sid)


async def test_stop_ends_the_utterance_and_the_next_one_works(mock_client: WorkerClient) -> None:
    sid = new_id()
    await mock_client.start_session(sid)
    got: list[tuple[float, tts_pb2.AudioFrame]] = []
    task = asyncio.create_task(
        _frames_with_times(mock_client.synthesize(sid, "[[slow:20]] " + SENTENCES * 3), got)
    )
    while len(got) < 5:
        await asyncio.sleep(0.005)
    reply = await mock_client.control(sid, tts_pb2.STOP)
    assert reply.success and reply.message == "stopped"
    await asyncio.wait_for(task, 5)
    frames = [f for _, f in got]
    check_frames(frames)
    assert len(frames) < 200  # it did not run to the end (~400 frames)
    # Same session, next utterance: complete and normal.
    reference = await synthesize_text(mock_client, "Good morning.")
    after = await collect(mock_client.synthesize(sid, "Good morning."))
    assert same_audio(check_frames(after), reference.pcm)
    nothing = await mock_client.control(sid, tts_pb2.STOP)
    assert nothing.success and nothing.message == "nothing to stop"
    await mock_client.end_session(sid)


async def test_stop_while_paused_releases_the_stream(mock_client: WorkerClient) -> None:
    sid = new_id()
    await mock_client.start_session(sid)
    await mock_client.control(sid, tts_pb2.PAUSE)
    got: list[tuple[float, tts_pb2.AudioFrame]] = []
    task = asyncio.create_task(_frames_with_times(mock_client.synthesize(sid, SENTENCES), got))
    await asyncio.sleep(0.2)
    assert got == []  # paused before it began: nothing plays
    await mock_client.control(sid, tts_pb2.STOP)
    await asyncio.wait_for(task, 5)
    assert [f.is_final for _, f in got] == [True]
    await mock_client.end_session(sid)


async def test_a_long_synthesis_never_blocks_other_sessions(real_client: WorkerClient) -> None:
    """Model inference runs off the event loop: while one session's first chunk is
    being rendered (slowed down with speed 0.25, so it takes hundreds of ms), another
    session's Control replies and mock frames keep coming."""
    slow, fast = new_id(), new_id()
    await real_client.start_session(slow, "piper-en-us-joe-medium", {"speed": "0.25"})
    await real_client.start_session(fast, "mock-en-us-tone")
    events: list[str] = []

    async def slow_stream() -> None:
        async for frame in real_client.synthesize(
            slow, "Twenty seven enormous elephants wandered slowly across the dusty plain."
        ):
            if frame.audio_data and "slow-first-frame" not in events:
                events.append("slow-first-frame")

    task = asyncio.create_task(slow_stream())
    await asyncio.sleep(0.02)  # the slow session's inference has started
    for _ in range(3):
        reply = await real_client.control(fast, tts_pb2.PAUSE)
        assert reply.success
        events.append("control-reply")
        await real_client.control(fast, tts_pb2.RESUME)
    frames = [f async for f in real_client.synthesize(fast, "Quick.")]
    assert frames[-1].is_final
    events.append("fast-utterance-done")
    await task
    assert events.index("fast-utterance-done") < events.index("slow-first-frame"), events
    for sid in (slow, fast):
        await real_client.end_session(sid)
