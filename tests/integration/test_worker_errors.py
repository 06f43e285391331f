"""Bad input over real gRPC: each case gets its status code, the worker stays up,
and other sessions are untouched.

Waits are on frames and states, each under a generous deadline that only bounds a
failure."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from duplexvoice.client.worker_client import WorkerClient, synthesize_text
from duplexvoice.rpc import tts_pb2
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

# Bounds a wait for a frame, far beyond what a healthy worker needs.
WAIT_S = 30.0


def new_id() -> str:
    return f"e-{uuid.uuid4().hex[:10]}"


async def next_frame(frames: AsyncIterator[tts_pb2.AudioFrame]) -> tts_pb2.AudioFrame:
    return await asyncio.wait_for(anext(frames), WAIT_S)


async def rest(frames: AsyncIterator[tts_pb2.AudioFrame]) -> list[tts_pb2.AudioFrame]:
    async def drain() -> list[tts_pb2.AudioFrame]:
        return [frame async for frame in frames]

    return await asyncio.wait_for(drain(), WAIT_S)


async def status_of(call: object) -> grpc.StatusCode:
    async def finish() -> None:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[attr-defined]
                pass
        else:
            await call  # type: ignore[misc]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(finish(), WAIT_S)
    code: grpc.StatusCode = info.value.code()
    return code


async def test_synthesize_without_start_session(mock_client: WorkerClient) -> None:
    assert await status_of(mock_client.synthesize("nobody", "Hello.")) == grpc.StatusCode.NOT_FOUND


async def test_synthesize_without_session_id(mock_client: WorkerClient) -> None:
    assert await status_of(mock_client.synthesize("", "Hello.")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_empty_and_oversize_text(mock_client: WorkerClient) -> None:
    sid = new_id()
    await mock_client.start_session(sid)
    for text in ("", "   ", ["", ""]):
        assert await status_of(mock_client.synthesize(sid, text)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    # The worker under test allows 400 characters per utterance, streamed or not.
    assert await status_of(mock_client.synthesize(sid, "word " * 100)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await status_of(mock_client.synthesize(sid, ["word " * 50] * 3)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # The session still works.
    frames = [f async for f in mock_client.synthesize(sid, "Still here.")]
    assert frames[-1].is_final and len(frames) > 10
    await mock_client.end_session(sid)


async def test_unknown_model_duplicate_session_and_bad_options(mock_client: WorkerClient) -> None:
    assert await status_of(mock_client.start_session(new_id(), "no-such-model")) == (
        grpc.StatusCode.NOT_FOUND
    )
    sid = new_id()
    await mock_client.start_session(sid)
    assert await status_of(mock_client.start_session(sid)) == grpc.StatusCode.ALREADY_EXISTS
    assert await status_of(mock_client.start_session("")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(mock_client.start_session("x" * 500)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    for speed in ("fast", "0", "100"):
        assert await status_of(mock_client.start_session(new_id(), "", {"speed": speed})) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    await mock_client.end_session(sid)
    assert await status_of(mock_client.end_session(sid)) == grpc.StatusCode.NOT_FOUND


async def test_control_of_unknown_session_answers_false(mock_client: WorkerClient) -> None:
    for command in (tts_pb2.PAUSE, tts_pb2.RESUME, tts_pb2.STOP):
        reply = await mock_client.control("nobody", command)
        assert not reply.success and "unknown session" in reply.message


async def test_two_streams_on_one_session(mock_client: WorkerClient) -> None:
    sid = new_id()
    await mock_client.start_session(sid)
    first = aiter(mock_client.synthesize(
        sid, "[[slow:20]] A long enough sentence to keep going."))
    assert not (await next_frame(first)).is_final  # the first stream is live
    assert await status_of(mock_client.synthesize(sid, "Second.")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (await rest(first))[-1].is_final  # and undisturbed: it ends normally
    await mock_client.end_session(sid)


async def test_cancelled_stream_leaks_nothing(mock_client: WorkerClient) -> None:
    sid = new_id()
    await mock_client.start_session(sid)
    call = mock_client.synthesize(sid, "[[slow:20]] " + "Some words to say. " * 10)
    frames = aiter(call)
    for _ in range(5):
        assert not (await next_frame(frames)).is_final

    async def active_streams() -> float:
        caps = await mock_client.stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest())
        return caps.metrics["active_streams"]

    assert await active_streams() == 1  # the stream is live before the cancel
    call.cancel()

    async def released() -> bool:
        return await active_streams() == 0

    # The worker notices the cancel and frees the session: a new stream is accepted.
    await eventually(released, what="the cancelled stream released on the worker")
    again = await rest(aiter(mock_client.synthesize(sid, "Again.")))
    assert again[-1].is_final and len(again) > 5
    await mock_client.end_session(sid)


async def test_model_failure_hits_only_its_session(mock_client: WorkerClient) -> None:
    good, bad = new_id(), new_id()
    await mock_client.start_session(good)
    await mock_client.start_session(bad)
    # A healthy stream on the same model, live while the other session's model fails.
    healthy = aiter(mock_client.synthesize(
        good, "[[slow:10]] A healthy session keeps talking, and talking, and talking."))
    first = await next_frame(healthy)
    assert first.audio_data and not first.is_final
    assert await status_of(mock_client.synthesize(bad, "Fine words [[fail-after:3]] then")) == (
        grpc.StatusCode.INTERNAL
    )
    assert await status_of(mock_client.synthesize(bad, "[[fail]]")) == grpc.StatusCode.INTERNAL
    frames = [first, *await rest(healthy)]
    assert [f.sequence_number for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1].is_final and len(frames) > 50
    # Both sessions still work after the failure.
    for sid in (good, bad):
        frames = [f async for f in mock_client.synthesize(sid, "Recovered.")]
        assert frames[-1].is_final and len(frames) > 5
        await mock_client.end_session(sid)


async def test_worker_full(mock_client: WorkerClient) -> None:
    caps = await mock_client.stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest())
    limit = caps.capabilities.max_concurrent_sessions
    assert limit == 6
    started = []
    try:
        for _ in range(limit - int(caps.metrics["queue_depth"])):
            sid = new_id()
            await mock_client.start_session(sid)
            started.append(sid)
        assert await status_of(mock_client.start_session(new_id())) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    finally:
        for sid in started:
            await mock_client.end_session(sid)
    await mock_client.start_session(sid := new_id())  # room again
    await mock_client.end_session(sid)


async def test_garbage_bytes_do_not_hurt_the_worker(mock_client: WorkerClient) -> None:
    """A raw call with an unparseable request body is refused; the worker goes on."""
    method = mock_client.channel.unary_unary(
        "/tts.TTSService/StartSession",
        request_serializer=lambda b: b,  # send raw bytes
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await method(b"\xff\xff\xff\xff\x0f garbage")
    result = await synthesize_text(mock_client, "Still alive.")
    assert result.frames


async def _late_chunks(sid: str) -> AsyncIterator[tts_pb2.TextChunk]:
    yield tts_pb2.TextChunk(session_id=sid, text="First part, ", is_final=False)
    yield tts_pb2.TextChunk(session_id="someone-else", text="intruder.", is_final=True)


async def test_chunk_for_another_session_is_refused(mock_client: WorkerClient) -> None:
    sid = new_id()
    await mock_client.start_session(sid)
    assert await status_of(mock_client.stub.Synthesize(_late_chunks(sid))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    await mock_client.end_session(sid)
