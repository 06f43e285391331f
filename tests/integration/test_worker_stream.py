"""Synthesis over real gRPC against a real worker process: frames, streaming,
per-session control.

Every wait is for frames or a state, under a generous deadline that only bounds a
failure. "Nothing arrived" is asserted only while something else demonstrably did:
another session on the same worker and connection kept receiving frames.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from duplexvoice.audio import SAMPLE_RATE
from duplexvoice.client.worker_client import WorkerClient, synthesize_text
from duplexvoice.rpc import tts_pb2
from tests.support.eventually import eventually
from tests.support.grpc_stream import Receiver, check_frames, same_audio, within

pytestmark = pytest.mark.integration

SENTENCES = "The weather is nice today. Shall we go for a walk in the park? I think so."

# Bounds one wait (an utterance, a few frames) far beyond what a healthy worker needs,
# even Piper on a loaded 2-core machine.
WAIT_S = 60.0


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def collect(call: AsyncIterator[tts_pb2.AudioFrame]) -> list[tts_pb2.AudioFrame]:
    async def read() -> list[tts_pb2.AudioFrame]:
        return [frame async for frame in call]

    return await within(read(), "the whole utterance")


async def active_streams(client: WorkerClient) -> float:
    caps = await client.stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest())
    return caps.metrics["active_streams"]


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
        await asyncio.wait_for(first_audio.wait(), WAIT_S)  # no audio: the call fails
        yield tts_pb2.TextChunk(session_id=sid, text="How are you?", is_final=True)

    frames = []

    async def read() -> None:
        async for frame in real_client.stub.Synthesize(chunks()):
            if frame.audio_data:
                first_audio.set()
            frames.append(frame)

    await within(read(), "the streamed utterance")
    await real_client.end_session(sid)
    pcm = check_frames(frames)
    assert len(pcm) / 2 / SAMPLE_RATE > 1.5  # both sentences were spoken


async def test_sessions_on_one_model_synthesize_concurrently(real_client: WorkerClient) -> None:
    results = await within(asyncio.gather(
        *(synthesize_text(real_client, SENTENCES, "piper-en-us-joe-medium") for _ in range(3))
    ), "three concurrent utterances")
    lengths = {len(r.frames) for r in results}
    assert all(r.frames for r in results)
    # Same text, same voice: about the same length (Piper adds a little noise).
    assert max(lengths) - min(lengths) < 0.1 * max(lengths)


async def test_mock_is_deterministic_through_the_worker(mock_client: WorkerClient) -> None:
    a = await synthesize_text(mock_client, SENTENCES)
    b = await synthesize_text(mock_client, SENTENCES)
    assert same_audio(a.pcm, b.pcm) and len(a.frames) > 50


async def test_pause_resume_is_per_session_and_loses_nothing(mock_client: WorkerClient) -> None:
    text = "[[slow:20]] " + SENTENCES  # the first sentence renders at ~2x real time
    reference = await synthesize_text(mock_client, text)
    a, b = new_id(), new_id()
    await mock_client.start_session(a)
    await mock_client.start_session(b)
    got_a = Receiver(mock_client.synthesize(a, text), "paused session")
    got_b = Receiver(mock_client.synthesize(b, text), "other session")
    await got_a.wait_for_count(10)  # frames flow
    reply = await mock_client.control(a, tts_pb2.PAUSE)
    assert reply.success and reply.timestamp_ms > 0
    # Frames sent before the PAUSE (up to the 16 KiB flow-control window) may still
    # land. They are ahead of what b receives from now on, on the same connection:
    # once b has 30 more frames, a's in-flight frames are in.
    b_mark = len(got_b.frames)
    await got_b.wait_for_count(b_mark + 30)
    held_at = len(got_a.frames)
    # While b receives 30 more frames (the worker serves, the connection carries),
    # a receives nothing: its pause holds it, and only it.
    await got_b.wait_for_count(b_mark + 60)
    during = len(got_a.frames) - held_at
    assert during == 0, f"the paused session received {during} frames while paused"
    assert not got_a.task.done()
    assert (await mock_client.control(a, tts_pb2.RESUME)).success
    frames_a, frames_b = await got_a.end(), await got_b.end()
    assert len(frames_a) > held_at + 1  # it went on after RESUME...
    assert frames_a[held_at].sequence_number == held_at + 1  # ...with the next frame
    for frames in (frames_a, frames_b):
        pcm = check_frames(frames)
        assert same_audio(pcm, reference.pcm), "audio lost, replayed or altered by the pause"
    for sid in (a, b):
        await mock_client.end_session(sid)


async def test_stop_ends_the_utterance_and_the_next_one_works(mock_client: WorkerClient) -> None:
    text = "[[slow:20]] " + SENTENCES * 3
    whole = await synthesize_text(mock_client, text)
    sid = new_id()
    await mock_client.start_session(sid)
    got = Receiver(mock_client.synthesize(sid, text), "stopped session")
    await got.wait_for_count(5)  # frames flow
    reply = await mock_client.control(sid, tts_pb2.STOP)
    assert reply.success and reply.message == "stopped"
    frames = await got.end()
    check_frames(frames)  # ends with its one final marker, no error
    assert len(frames) < len(whole.frames) // 2  # it did not run to the end
    # Same session, next utterance: complete and normal.
    reference = await synthesize_text(mock_client, "Good morning.")
    after = await collect(mock_client.synthesize(sid, "Good morning."))
    assert same_audio(check_frames(after), reference.pcm)
    nothing = await mock_client.control(sid, tts_pb2.STOP)
    assert nothing.success and nothing.message == "nothing to stop"
    await mock_client.end_session(sid)


async def test_stop_while_paused_releases_the_stream(mock_client: WorkerClient) -> None:
    sid, other = new_id(), new_id()
    await mock_client.start_session(sid)
    await mock_client.start_session(other)
    await mock_client.control(sid, tts_pb2.PAUSE)  # before the utterance begins
    got = Receiver(mock_client.synthesize(sid, SENTENCES), "paused session")

    async def stream_is_live() -> bool:
        return await active_streams(mock_client) == 1

    await eventually(stream_is_live, what="the paused session's stream live on the worker")
    # Meanwhile a whole utterance, started later on another session, plays to its end...
    other_frames = await collect(mock_client.synthesize(other, SENTENCES))
    assert len(check_frames(other_frames)) > 0 and len(other_frames) > 50
    # ...and the paused one has had nothing: paused before it began, nothing plays.
    assert len(got.frames) == 0, f"{len(got.frames)} frames played while paused"
    assert not got.task.done()
    assert (await mock_client.control(sid, tts_pb2.STOP)).message == "stopped"
    frames = await got.end()
    assert [(f.sequence_number, f.is_final) for f in frames] == [(1, True)]
    # STOP ended the pause too: the next utterance plays in full.
    after = await collect(mock_client.synthesize(sid, "Good morning."))
    assert len(check_frames(after)) > 0 and len(after) > 10
    for session_id in (sid, other):
        await mock_client.end_session(session_id)


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

    async def slow_stream_is_live() -> bool:
        return await active_streams(real_client) == 1

    # Its stream is live on the worker, so its first piece is being rendered.
    await eventually(slow_stream_is_live, what="the slow session's stream live")
    assert "slow-first-frame" not in events
    for _ in range(3):
        reply = await real_client.control(fast, tts_pb2.PAUSE)
        assert reply.success
        events.append("control-reply")
        await real_client.control(fast, tts_pb2.RESUME)
    frames = await collect(real_client.synthesize(fast, "Quick."))
    assert frames[-1].is_final
    events.append("fast-utterance-done")
    await within(task, "the slow utterance")
    assert events.index("fast-utterance-done") < events.index("slow-first-frame"), events
    for sid in (slow, fast):
        await real_client.end_session(sid)
