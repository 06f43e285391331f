"""The gRPC servicer (worker/service.py) over a real WorkerRuntime whose only voices are
the fake adapter's (tests/support/fake_tts.py): servicer methods called directly with a
fake context, no server, no socket.

What it owns: sequence numbers and the one final marker, Control, and the mapping of
every error to its status code. The synthesis path under it is tested on its own in
test_worker_synthesis.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from duplexvoice.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from duplexvoice.rpc import tts_pb2
from duplexvoice.worker.config import WorkerConfig
from duplexvoice.worker.model_manager import ModelManagerConfig
from duplexvoice.worker.runtime import WorkerRuntime
from duplexvoice.worker.service import TTSServicer
from duplexvoice.worker.textchunk import split_text
from tests.support.eventually import eventually
from tests.support.fake_grpc import Aborted, FakeContext
from tests.support.fake_tts import FAMILY, MODEL_ID, FakeAdapter, tag_of, write_fake_pack

pytestmark = pytest.mark.unit

# Bounds a wait that only a broken worker would reach; a passing test never waits this.
WAIT_S = 10.0
THREADED_ID = "fake-en-us-threaded"  # renders on synthesis threads, like a real model
MAX_SESSIONS = 4

THREE = "The weather is nice today. Shall we go for a walk? I think so."


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[WorkerRuntime]:
    write_fake_pack(tmp_path, MODEL_ID)
    write_fake_pack(tmp_path, THREADED_ID, inline=False)
    config = WorkerConfig(
        name="tts-worker-unit", voicepack_dirs=[tmp_path], max_sessions=MAX_SESSIONS,
        synthesis_threads=2, synthesis_niceness=0,
        models=ModelManagerConfig(default_model_id=MODEL_ID, warmup_enabled=False),
    )
    rt = WorkerRuntime(config, adapters={FAMILY: FakeAdapter})
    assert rt.scan_errors == []
    await rt.start()
    yield rt
    await rt.close()


@pytest.fixture
def servicer(runtime: WorkerRuntime) -> TTSServicer:
    return TTSServicer(runtime)


async def adapter_of(servicer: TTSServicer, model_id: str = MODEL_ID) -> FakeAdapter:
    await servicer.rt.models.load(model_id)
    voice = servicer.rt.models.get(model_id)
    assert voice is not None and isinstance(voice.adapter, FakeAdapter)
    return voice.adapter


async def start_session(servicer: TTSServicer, session_id: str, model_id: str = "",
                        options: dict[str, str] | None = None) -> None:
    reply = await servicer.StartSession(tts_pb2.StartSessionRequest(
        session_id=session_id, model_id=model_id, options=options or {}), FakeContext())
    assert reply.success


async def control(servicer: TTSServicer, session_id: str, command: int) -> tts_pb2.ControlResponse:
    return await servicer.Control(
        tts_pb2.ControlRequest(session_id=session_id, command=command),  # type: ignore[arg-type]
        FakeContext(),
    )


async def status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(Aborted) as info:
        await asyncio.wait_for(call, WAIT_S)  # type: ignore[arg-type]
    return info.value.code


class Stream:
    """One Synthesize call: TextChunks in through ``send``, the frames it writes in
    ``frames``; the request stream stays open until a final chunk or ``half_close``."""

    def __init__(self, servicer: TTSServicer, session_id: str) -> None:
        self.session_id = session_id
        self.context = FakeContext()
        self._text: asyncio.Queue[tts_pb2.TextChunk | None] = asyncio.Queue()
        self._requests = self._read()
        self.task = asyncio.create_task(servicer.Synthesize(self._requests, self.context))

    async def _read(self) -> AsyncIterator[tts_pb2.TextChunk]:
        while (chunk := await self._text.get()) is not None:
            yield chunk

    def send(self, text: str, *, final: bool = True, session_id: str | None = None) -> None:
        sid = self.session_id if session_id is None else session_id
        self._text.put_nowait(tts_pb2.TextChunk(session_id=sid, text=text, is_final=final))

    def half_close(self) -> None:
        self._text.put_nowait(None)

    @property
    def frames(self) -> list[tts_pb2.AudioFrame]:
        return self.context.written  # type: ignore[return-value]

    async def wait_frames(self, n: int) -> None:
        """Until ``n`` frames are written; fails at once if the call ends first."""
        try:
            async with asyncio.timeout(WAIT_S):
                while len(self.frames) < n and not self.task.done():
                    self.context.wrote.clear()
                    wrote = asyncio.ensure_future(self.context.wrote.wait())
                    await asyncio.wait([wrote, self.task], return_when=asyncio.FIRST_COMPLETED)
                    wrote.cancel()
        except TimeoutError:
            raise AssertionError(
                f"{self.session_id}: {len(self.frames)} frames within {WAIT_S} s, wanted {n}"
            ) from None
        assert len(self.frames) >= n, f"{self.session_id}: call ended after {len(self.frames)}"

    async def result(self) -> list[tts_pb2.AudioFrame]:
        """Every frame, once the call has ended; raises Aborted if it failed."""
        await asyncio.wait_for(asyncio.shield(self.task), WAIT_S)
        return self.frames

    async def close(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self._requests.aclose()  # type: ignore[attr-defined]


@pytest.fixture
async def streams(servicer: TTSServicer) -> AsyncIterator[list[Stream]]:
    made: list[Stream] = []
    yield made
    for stream in made:
        await stream.close()


OpenStream = Callable[[str], Stream]


@pytest.fixture
def open_stream(servicer: TTSServicer, streams: list[Stream]) -> OpenStream:
    def make(session_id: str) -> Stream:
        streams.append(Stream(servicer, session_id))
        return streams[-1]

    return make


def check_frames(frames: list[tts_pb2.AudioFrame], session_id: str) -> list[int]:
    """WIRE §2: data frames numbered from 1, then exactly one empty final marker.
    Returns the fake's tags of the data frames."""
    assert frames, "no frames"
    assert [f.sequence_number for f in frames] == list(range(1, len(frames) + 1))
    assert [f.is_final for f in frames] == [False] * (len(frames) - 1) + [True]
    assert frames[-1].audio_data == b""
    for f in frames:
        assert f.session_id == session_id
        assert (f.sample_rate, f.frame_duration_ms) == (SAMPLE_RATE, FRAME_MS)
    assert all(len(f.audio_data) == FRAME_BYTES for f in frames[:-1])
    return [tag_of(f.audio_data) for f in frames[:-1]]


# -- Synthesize ------------------------------------------------------------------------


async def test_frames_are_numbered_from_1_and_end_with_one_final_marker(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    adapter = await adapter_of(servicer)
    await start_session(servicer, "s1")
    stream = open_stream("s1")
    stream.send(THREE)
    frames = await stream.result()
    assert check_frames(frames, "s1") == adapter.tags()
    assert adapter.texts() == split_text(THREE)
    metrics = servicer.rt.metrics()
    assert metrics["frames_sent"] == len(frames) - 1 and metrics["utterances"] == 1
    assert metrics["active_streams"] == 0 and metrics["stream_errors"] == 0
    assert servicer.rt.sessions["s1"].utterance is None  # free for the next utterance


async def test_streamed_text_is_spoken_while_it_still_arrives(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    adapter = await adapter_of(servicer)
    await start_session(servicer, "s1")
    stream = open_stream("s1")
    stream.send("Hello there, my friend. How are", final=False)
    await stream.wait_frames(1)  # audio out before the rest of the text came in
    assert adapter.texts() == ["Hello there, my friend."]
    stream.send(" you today?")
    assert check_frames(await stream.result(), "s1") == adapter.tags()
    assert adapter.texts() == ["Hello there, my friend.", "How are you today?"]


async def test_a_half_closed_request_stream_is_one_complete_utterance(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    adapter = await adapter_of(servicer)
    await start_session(servicer, "s1")
    stream = open_stream("s1")
    stream.send("Without a final", final=False)
    stream.send(" chunk at all.", final=False)
    stream.half_close()
    assert check_frames(await stream.result(), "s1") == adapter.tags()
    assert adapter.texts() == ["Without a final chunk at all."]


# -- Control ---------------------------------------------------------------------------


async def test_pause_holds_frames_and_resume_continues_with_the_next_number(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    adapter = await adapter_of(servicer, THREADED_ID)
    await start_session(servicer, "s1", THREADED_ID)
    stream = open_stream("s1")
    stream.send(THREE)
    await stream.wait_frames(3)  # frames flow
    reply = await control(servicer, "s1", tts_pb2.PAUSE)
    assert reply.success and reply.message == "paused" and reply.timestamp_ms > 0
    sent = len(stream.frames)
    # Synthesis runs on while paused: wait until the model has rendered all of it...
    await eventually(
        lambda: adapter.texts() == split_text(THREE) and all(c.completed for c in adapter.calls),
        timeout=WAIT_S, what="the whole text rendered while paused",
    )
    utterance = servicer.rt.sessions["s1"].utterance
    assert utterance is not None and len(utterance.frames) > 0  # ...frames wait to go out
    assert len(stream.frames) == sent, "frames were sent while paused"
    assert (await control(servicer, "s1", tts_pb2.RESUME)).message == "resumed"
    frames = await stream.result()
    assert frames[sent].sequence_number == sent + 1  # the next one: nothing lost
    assert check_frames(frames, "s1") == adapter.tags()  # nor replayed


async def test_stop_ends_the_utterance_with_a_final_marker_and_the_session_goes_on(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    adapter = await adapter_of(servicer, THREADED_ID)
    adapter.hold_on("stuck", after=2)
    await start_session(servicer, "s1", THREADED_ID)
    stream = open_stream("s1")
    stream.send("The first sentence has six words. Then it is stuck here for good.")
    await stream.wait_frames(1)
    assert await asyncio.to_thread(adapter.holding.wait, WAIT_S)  # mid-synthesis
    reply = await control(servicer, "s1", tts_pb2.STOP)
    assert reply.success and reply.message == "stopped"
    tags = check_frames(await stream.result(), "s1")  # one final marker, no error
    assert tags == adapter.tags()[: len(tags)] and len(tags) <= 6 + 2
    # The model thread saw the cancel and returned (it is not left running).
    await eventually(lambda: adapter.calls[-1].cancelled, timeout=WAIT_S,
                     what="the held model call cancelled")
    assert (await control(servicer, "s1", tts_pb2.STOP)).message == "nothing to stop"
    # Same session, next utterance: complete, numbered from 1 again.
    again = open_stream("s1")
    again.send("Good morning to you.")
    assert check_frames(await again.result(), "s1") == adapter.tags("morning")


async def test_stop_while_paused_sends_only_the_final_marker(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    adapter = await adapter_of(servicer)
    await start_session(servicer, "s1")
    assert (await control(servicer, "s1", tts_pb2.PAUSE)).success  # before any utterance
    stream = open_stream("s1")
    stream.send("None of this is ever heard.")
    await eventually(lambda: adapter.calls and adapter.calls[-1].completed, timeout=WAIT_S,
                     what="the text rendered while paused")
    assert stream.frames == []  # rendered, and held back
    assert (await control(servicer, "s1", tts_pb2.STOP)).message == "stopped"
    frames = await stream.result()
    assert [(f.sequence_number, f.is_final) for f in frames] == [(1, True)]
    # STOP also ended the pause: the next utterance plays.
    again = open_stream("s1")
    again.send("Now it is heard.")
    assert check_frames(await again.result(), "s1") == adapter.tags("Now")


async def test_control_of_an_unknown_session_answers_false(servicer: TTSServicer) -> None:
    for command in (tts_pb2.PAUSE, tts_pb2.RESUME, tts_pb2.STOP):
        reply = await control(servicer, "nobody", command)
        assert not reply.success and "unknown session" in reply.message


# -- failures --------------------------------------------------------------------------


async def test_a_failing_model_fails_only_its_own_stream(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    adapter = await adapter_of(servicer)
    adapter.fail_on("boom", after=1)
    await start_session(servicer, "good")
    await start_session(servicer, "bad")
    good = open_stream("good")
    good.send("Good words keep coming. ", final=False)
    await good.wait_frames(1)  # the other stream is live on the same model
    bad = open_stream("bad")
    bad.send("Fine words first. Then it goes boom.")
    with pytest.raises(Aborted) as info:
        await bad.result()
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "synthesis failed" in info.value.details and "boom" in info.value.details
    assert not any(f.is_final for f in bad.frames)  # an error ends it, not a final marker
    good.send("More good words.")
    assert check_frames(await good.result(), "good") == adapter.tags("Good", "More")
    assert servicer.rt.metrics()["stream_errors"] == 1
    again = open_stream("bad")  # the failed session speaks again
    again.send("Recovered now.")
    assert check_frames(await again.result(), "bad") == adapter.tags("Recovered")


async def test_synthesize_errors_map_to_status_codes(
    servicer: TTSServicer, open_stream: OpenStream
) -> None:
    await start_session(servicer, "s1")
    nothing = open_stream("s1")
    nothing.half_close()
    assert await status_of(nothing.result()) == grpc.StatusCode.INVALID_ARGUMENT
    no_id = open_stream("")
    no_id.send("Hello.")
    assert await status_of(no_id.result()) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = open_stream("nobody")
    unknown.send("Hello.")
    assert await status_of(unknown.result()) == grpc.StatusCode.NOT_FOUND
    empty = open_stream("s1")
    empty.send("   ")
    assert await status_of(empty.result()) == grpc.StatusCode.INVALID_ARGUMENT
    intruder = open_stream("s1")
    intruder.send("First part, ", final=False)
    intruder.send("intruder.", session_id="someone-else")
    assert await status_of(intruder.result()) == grpc.StatusCode.INVALID_ARGUMENT
    busy = open_stream("s1")
    busy.send("Still talking. ", final=False)
    await busy.wait_frames(1)
    second = open_stream("s1")
    second.send("Me too.")
    assert await status_of(second.result()) == grpc.StatusCode.FAILED_PRECONDITION
    busy.send("And done.")
    check_frames(await busy.result(), "s1")  # the first stream was not disturbed
    assert servicer.rt.sessions["s1"].utterance is None


async def test_start_and_end_session_errors_map_to_status_codes(
    servicer: TTSServicer,
) -> None:
    rt = servicer.rt

    def start(sid: str, model_id: str = "", options: dict[str, str] | None = None) -> object:
        return servicer.StartSession(tts_pb2.StartSessionRequest(
            session_id=sid, model_id=model_id, options=options or {}), FakeContext())

    assert await status_of(start("")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(start("x" * 129)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(start("s", options={"speed": "fast"})) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await status_of(start("s", "no-such-model")) == grpc.StatusCode.NOT_FOUND
    await start_session(servicer, "s1")
    assert rt.models.refcount(MODEL_ID) == 1  # a session holds its model
    assert await status_of(start("s1")) == grpc.StatusCode.ALREADY_EXISTS
    for i in range(2, MAX_SESSIONS + 1):
        await start_session(servicer, f"s{i}")
    assert await status_of(start("one-too-many")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    for i in range(1, MAX_SESSIONS + 1):
        assert (await servicer.EndSession(
            tts_pb2.EndSessionRequest(session_id=f"s{i}"), FakeContext())).success
    assert rt.models.refcount(MODEL_ID) == 0 and rt.sessions == {}
    assert await status_of(servicer.EndSession(
        tts_pb2.EndSessionRequest(session_id="s1"), FakeContext())) == grpc.StatusCode.NOT_FOUND
    rt.accepting = False  # shutting down
    assert await status_of(start("late")) == grpc.StatusCode.UNAVAILABLE
