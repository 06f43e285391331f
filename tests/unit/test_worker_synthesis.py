"""One utterance's synthesis path (worker/synthesis.py, session.py, voice.py) against a
fake adapter: text in, frames out, PAUSE / RESUME / STOP, failures. No gRPC, no
sockets; the servicer on top is tested in test_worker_service.py.

The fake tags every chunk it yields (tests/support/fake_tts.py) and each chunk is one
frame, so ``tags(frames) == adapter.tags()`` says: every chunk arrived, once, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from duplexvoice.audio import FRAME_BYTES
from duplexvoice.rpc import tts_pb2
from duplexvoice.worker.adapters.base import AdapterError, FloatAudio, SynthesisOptions
from duplexvoice.worker.session import SynthesisSession
from duplexvoice.worker.synthesis import StreamError, UtteranceStream
from duplexvoice.worker.textchunk import ChunkingConfig, split_text
from duplexvoice.worker.voice import LoadedVoice
from tests.support.fake_tts import FakeAdapter, chunk_for, fake_pack, tag_of

pytestmark = pytest.mark.unit

# Bounds a wait that only a broken worker would reach; a passing test never waits this.
WAIT_S = 10.0

THREE = "The weather is nice today. Shall we go for a walk? I think so."


def tags(frames: list[bytes]) -> list[int]:
    return [tag_of(frame) for frame in frames]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-synth")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def new_session(adapter: FakeAdapter, session_id: str = "s1",
                voice: LoadedVoice | None = None) -> SynthesisSession:
    return SynthesisSession(session_id, voice or LoadedVoice(fake_pack(), adapter),
                         SynthesisOptions())


class Run:
    """Drives one UtteranceStream the way the servicer does: text in through ``say``, the
    producer on its own task, frames out through ``next_frame`` / ``rest``."""

    def __init__(self, session: SynthesisSession, executor: ThreadPoolExecutor, *,
                 max_text_chars: int = 5000, buffer_frames: int = 250) -> None:
        self.session = session
        self.utterance = UtteranceStream(
            session, chunking=ChunkingConfig(), max_text_chars=max_text_chars,
            buffer_frames=buffer_frames, executor=executor,
        )
        session.utterance = self.utterance
        self.producer = asyncio.create_task(self.utterance.produce())
        self._frames = aiter(self.utterance.frames_out())
        self.received: list[bytes] = []

    async def say(self, text: str, *, final: bool = True) -> bool:
        return await self.utterance.add_text(tts_pb2.TextChunk(
            session_id=self.session.session_id, text=text, is_final=final))

    async def next_frame(self) -> bytes | None:
        """The next frame, or None at the end; raises the stream's StreamError."""
        try:
            async with asyncio.timeout(WAIT_S):
                frame = await anext(self._frames, None)
        except TimeoutError:
            raise AssertionError(
                f"session {self.session.session_id}: no frame and no end within {WAIT_S} s "
                f"(paused: {self.session.paused}, after {len(self.received)} frames)"
            ) from None
        if frame is not None:
            self.received.append(frame)
        return frame

    async def rest(self) -> list[bytes]:
        """Every frame up to the end (all of them also land in ``received``)."""
        frames = []
        while (frame := await self.next_frame()) is not None:
            frames.append(frame)
        return frames

    async def synthesized(self) -> None:
        """Wait for the producer to finish: every frame rendered and queued (or dropped)."""
        await asyncio.wait_for(asyncio.shield(self.producer), WAIT_S)

    async def close(self) -> None:
        self.utterance.stop()
        await self._frames.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(self.producer, WAIT_S)
        if self.session.utterance is self.utterance:
            self.session.utterance = None


@pytest.fixture
async def runs(executor: ThreadPoolExecutor) -> AsyncIterator[list[Run]]:
    """Runs made by a test, closed afterwards (each test appends the ones it makes)."""
    made: list[Run] = []
    yield made
    for run in made:
        await run.close()


Start = Callable[..., Run]


@pytest.fixture
def start(runs: list[Run], executor: ThreadPoolExecutor) -> Start:
    def make(session: SynthesisSession, **kwargs: int) -> Run:
        runs.append(Run(session, executor, **kwargs))
        return runs[-1]

    return make


# -- frames out ------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "on-a-thread"])
async def test_frames_are_the_adapter_chunks_in_order(start: Start, inline: bool) -> None:
    adapter = FakeAdapter(inline=inline)
    run = start(new_session(adapter))
    assert await run.say(THREE)
    frames = await run.rest()
    assert adapter.texts() == split_text(THREE)  # one model call per sentence
    assert len(frames) == len(THREE.split())  # the fake: one chunk (one frame) per word
    assert tags(frames) == adapter.tags()
    assert all(len(frame) == FRAME_BYTES for frame in frames)
    assert run.utterance.error is None and run.utterance.first_frame_s is not None
    await run.synthesized()
    assert all(call.completed for call in adapter.calls)


async def test_streamed_text_is_synthesized_as_each_sentence_completes(start: Start) -> None:
    adapter = FakeAdapter()
    run = start(new_session(adapter))
    assert not await run.say("Hello there, my friend. How are", final=False)
    first = await run.next_frame()  # audio, while the second sentence is still unwritten
    assert first is not None
    assert adapter.texts() == ["Hello there, my friend."]
    assert await run.say(" you today?", final=True)
    await run.rest()
    assert adapter.texts() == ["Hello there, my friend.", "How are you today?"]
    assert tags(run.received) == adapter.tags()


async def test_a_half_closed_request_stream_ends_the_text(start: Start) -> None:
    adapter = FakeAdapter()
    run = start(new_session(adapter))

    async def chunks() -> AsyncIterator[tts_pb2.TextChunk]:
        for text in ("One more. And the", " last words"):  # never is_final
            yield tts_pb2.TextChunk(session_id="s1", text=text, is_final=False)

    await asyncio.wait_for(run.utterance.feed(chunks()), WAIT_S)
    frames = await run.rest()
    assert adapter.texts() == ["One more.", "And the last words"]
    assert tags(frames) == adapter.tags()


# -- PAUSE / RESUME --------------------------------------------------------------------


async def test_pause_holds_the_next_frame_and_resume_loses_nothing(start: Start) -> None:
    adapter = FakeAdapter(inline=False)
    session = new_session(adapter)
    run = start(session)
    await run.say(THREE)
    for _ in range(3):
        assert await run.next_frame() is not None  # frames flow
    session.pause()
    held = asyncio.create_task(run.next_frame())
    # Synthesis runs on into the buffer while paused: all of it is ready to go...
    await run.synthesized()
    total = len(adapter.tags())
    # ...the sender has taken the 4th frame and holds it, the rest wait behind it.
    assert len(run.utterance.frames) == total - 4
    assert not held.done() and len(run.received) == 3
    session.resume()
    assert await asyncio.wait_for(held, WAIT_S) is not None
    await run.rest()
    assert tags(run.received) == adapter.tags()  # nothing lost, nothing replayed


async def test_pausing_one_session_never_holds_another_on_the_same_voice(start: Start) -> None:
    adapter = FakeAdapter(inline=False)
    voice = LoadedVoice(fake_pack(), adapter)
    paused, playing = new_session(adapter, "a", voice), new_session(adapter, "b", voice)
    paused.pause()
    run_a, run_b = start(paused), start(playing)
    await run_a.say("Alpha speaks these words.")
    await run_b.say("Bravo speaks other words.")
    held = asyncio.create_task(run_a.next_frame())
    frames_b = await run_b.rest()  # b plays to its end...
    assert tags(frames_b) == adapter.tags("Bravo") and len(frames_b) == 4
    await run_a.synthesized()  # ...a's audio is ready too, and only a's pause holds it
    assert not held.done() and run_a.received == []
    paused.resume()
    assert await asyncio.wait_for(held, WAIT_S) is not None
    await run_a.rest()
    assert tags(run_a.received) == adapter.tags("Alpha")


# -- STOP ------------------------------------------------------------------------------


async def test_stop_ends_a_synthesis_in_progress_and_drops_what_is_queued(start: Start) -> None:
    adapter = FakeAdapter(inline=False)
    adapter.hold_on("stuck", after=2)  # the second sentence blocks after two chunks
    session = new_session(adapter)
    run = start(session)
    await run.say("The first sentence has six words. Then it is stuck here for good.")
    assert await run.next_frame() is not None
    assert await asyncio.to_thread(adapter.holding.wait, WAIT_S)
    assert len(run.utterance.frames) == 6 + 2 - 1  # rendered and queued, not yet sent
    assert session.stop()
    assert await run.rest() == []  # queued frames are dropped, not sent after a STOP
    assert run.utterance.error is None  # a STOP is not a failure
    await run.synthesized()
    assert adapter.calls[-1].cancelled  # the model was told to stop, not left running
    assert not session.paused


async def test_stop_while_paused_drops_the_held_frame(start: Start) -> None:
    adapter = FakeAdapter()
    session = new_session(adapter)
    session.pause()  # before the utterance begins
    run = start(session)
    await run.say("None of this is ever heard.")
    held = asyncio.create_task(run.next_frame())
    await run.synthesized()
    assert len(run.utterance.frames) == 6 - 1 and not held.done()  # ready, held back
    assert session.stop()
    assert await asyncio.wait_for(held, WAIT_S) is None  # ends without the held frame
    assert run.received == [] and not session.paused


def test_stop_without_an_utterance_reports_nothing_and_unpauses() -> None:
    session = new_session(FakeAdapter())
    session.pause()
    assert not session.stop()
    assert not session.paused


# -- failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (AdapterError("engine said no"), "synthesis failed: engine said no"),
        (RuntimeError("bug in the engine"), "synthesis failed: RuntimeError: bug in the engine"),
    ],
    ids=["adapter-error", "crash"],
)
async def test_a_failing_adapter_fails_only_its_own_utterance(
    start: Start, error: Exception, message: str
) -> None:
    adapter = FakeAdapter()
    adapter.fail_on("boom", after=1, error=error)
    voice = LoadedVoice(fake_pack(), adapter)
    bad, good = new_session(adapter, "bad", voice), new_session(adapter, "good", voice)
    run_bad, run_good = start(bad), start(good)
    await run_good.say("Good words keep coming. More good words.")
    await run_bad.say("Fine words first. Then it goes boom.")
    with pytest.raises(StreamError) as info:
        await run_bad.rest()
    assert info.value.code == grpc.StatusCode.INTERNAL and info.value.message == message
    sent = tags(run_bad.received)
    assert sent == adapter.tags("Fine", "boom")[: len(sent)]  # a clean prefix, then the error
    assert tags(await run_good.rest()) == adapter.tags("Good", "More")
    assert run_good.utterance.error is None
    # The failed session speaks again: the error belonged to that utterance only.
    await run_bad.close()
    again = start(bad)
    await again.say("Recovered now.")
    assert tags(await again.rest()) == adapter.tags("Recovered")


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([""], "text is empty"),
        (["   ", "  "], "text is empty"),
        (["..."], "text is empty"),
        (["word " * 25], "longer than the limit of 100"),
        (["Short. ", "word " * 20], "longer than the limit of 100"),
    ],
    ids=["empty", "blank-streamed", "unpronounceable", "too-long", "too-long-streamed"],
)
async def test_text_that_cannot_be_spoken_is_refused(
    start: Start, pieces: list[str], message: str
) -> None:
    adapter = FakeAdapter()
    run = start(new_session(adapter), max_text_chars=100)
    for i, piece in enumerate(pieces, start=1):
        if await run.say(piece, final=i == len(pieces)):
            break
    with pytest.raises(StreamError) as info:
        await run.rest()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message
    assert run.received == []


async def test_a_chunk_for_another_session_is_refused(start: Start) -> None:
    adapter = FakeAdapter()
    run = start(new_session(adapter))
    assert await run.utterance.add_text(
        tts_pb2.TextChunk(session_id="someone-else", text="Intruder.", is_final=True))
    with pytest.raises(StreamError) as info:
        await run.rest()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert adapter.calls == []


class EndlessAdapter(FakeAdapter):
    """Yields chunks until cancelled; records on which thread its generator is closed
    (a model adapter joins its generation thread there)."""

    def __init__(self) -> None:
        super().__init__(inline=False)
        self.closed_on: list[str] = []
        self.closed_event = threading.Event()

    def stream(self, text: str, options: SynthesisOptions,
               cancel: threading.Event) -> Iterator[FloatAudio]:
        try:
            for tag in itertools.count(1):
                yield chunk_for(tag % 60000 + 1)
        finally:
            self.closed_on.append(threading.current_thread().name)
            self.closed_event.set()


async def test_a_stopped_model_stream_is_closed_on_a_synthesis_thread(
    executor: ThreadPoolExecutor, runs: list[Run]
) -> None:
    adapter = EndlessAdapter()
    run = Run(new_session(adapter), executor, buffer_frames=4)
    runs.append(run)
    await run.say("Talk until I stop you.")
    assert await run.next_frame() is not None
    run.session.stop()  # STOP: the producer leaves while the generator is still open
    assert await run.rest() == []
    await asyncio.wait_for(asyncio.shield(run.producer), WAIT_S)
    assert await asyncio.to_thread(adapter.closed_event.wait, WAIT_S)
    # Closed once, on a synthesis thread: never on the event loop, where an adapter's
    # clean-up (joining its generation thread) would hold every session's frames.
    assert len(adapter.closed_on) == 1
    assert adapter.closed_on[0].startswith("test-synth"), adapter.closed_on
