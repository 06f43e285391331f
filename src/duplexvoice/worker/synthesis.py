"""One Synthesize stream: text chunks in, 20 ms frames out, as early as possible.

Three cooperating parts, joined by bounded channels:

- ``feed``: reads TextChunks, cuts the text into sentence/clause segments the moment
  they are complete (streamed text is synthesized incrementally);
- ``produce``: renders segments on a synthesis thread, chunk by chunk, and queues
  frames (at most ``frame_buffer_frames`` ahead of the sender: bounded memory);
- the sender (:meth:`UtteranceStream.frames_out`): yields frames, holding before each
  one while the session is paused, so PAUSE takes effect within one frame.

STOP aborts both channels and the adapter's cancel flag at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import grpc

from duplexvoice.rpc import tts_pb2
from duplexvoice.worker.adapters.base import AdapterError
from duplexvoice.worker.channel import Channel, ChannelAborted
from duplexvoice.worker.session import SynthesisSession
from duplexvoice.worker.textchunk import ChunkingConfig, TextChunker
from duplexvoice.worker.voice import UtteranceRenderer

log = logging.getLogger(__name__)

# How far ahead of the sender a cheap (inline) renderer stays: 500 ms.
_INLINE_AHEAD_FRAMES = 25

_SEGMENT_QUEUE = 64


class StreamError(Exception):
    """Ends one Synthesize stream with a gRPC status; the session survives."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UtteranceStream:
    def __init__(
        self,
        session: SynthesisSession,
        *,
        chunking: ChunkingConfig,
        max_text_chars: int,
        buffer_frames: int,
        executor: Executor,
    ) -> None:
        self.session = session
        self.cancel = threading.Event()
        self.frames: Channel[bytes] = Channel(buffer_frames)
        self.segments: Channel[str] = Channel(_SEGMENT_QUEUE)
        self.error: StreamError | None = None
        self.started = time.perf_counter()
        self.first_frame_s: float | None = None
        self._chunker = TextChunker(chunking)
        self._max_text_chars = max_text_chars
        self._text_chars = 0
        self._segment_count = 0
        self._executor = executor

    def stop(self) -> None:
        self.cancel.set()
        self.frames.abort()
        self.segments.abort()

    def _fail(self, code: grpc.StatusCode, message: str) -> None:
        if self.error is None:
            self.error = StreamError(code, message)
        self.cancel.set()
        self.frames.abort()
        self.segments.abort()

    async def _emit_segments(self, segments: list[str]) -> None:
        for segment in segments:
            self._segment_count += 1
            await self.segments.put(segment)

    async def add_text(self, chunk: tts_pb2.TextChunk) -> bool:
        """Take one TextChunk; True once the utterance's text is complete."""
        if chunk.session_id and chunk.session_id != self.session.session_id:
            self._fail(grpc.StatusCode.INVALID_ARGUMENT, "TextChunk for another session")
            return True
        self._text_chars += len(chunk.text)
        if self._text_chars > self._max_text_chars:
            self._fail(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text longer than the limit of {self._max_text_chars} characters",
            )
            return True
        await self._emit_segments(self._chunker.feed(chunk.text))
        if chunk.is_final:
            await self.end_text()
            return True
        return False

    async def end_text(self) -> None:
        await self._emit_segments(self._chunker.finish())
        if self._segment_count == 0:
            self._fail(grpc.StatusCode.INVALID_ARGUMENT, "text is empty")
            return
        self.segments.finish()

    async def feed(self, requests: AsyncIterator[tts_pb2.TextChunk]) -> None:
        """Read the rest of the request stream (after the first chunk)."""
        try:
            async for chunk in requests:
                if await self.add_text(chunk):
                    return
            await self.end_text()  # the client half-closed without is_final
        except ChannelAborted:
            pass

    async def produce(self) -> None:
        loop = asyncio.get_running_loop()
        session = self.session
        renderer = session.voice.renderer(session.options, self.cancel, session.loudness)
        try:
            while (segment := await self.segments.get()) is not None:
                renderer.begin(segment)
                while True:
                    if renderer.inline:
                        # Cheap to render on demand: stay just ahead of the sender, so
                        # that many sessions starting at once do not render seconds
                        # ahead while frames that are due wait behind them.
                        await self.frames.wait_below(_INLINE_AHEAD_FRAMES)
                        frames = renderer.step()
                        await asyncio.sleep(0)  # other sessions' frames between chunks
                    else:
                        frames = await loop.run_in_executor(self._executor, renderer.step)
                    if frames is None:
                        break
                    for frame in frames:
                        await self.frames.put(frame)
            if self.segments.aborted:
                return
            for frame in renderer.finish():
                await self.frames.put(frame)
            self.frames.finish()
        except ChannelAborted:
            pass
        except AdapterError as exc:
            log.warning("session %s: synthesis failed: %s", self.session.session_id, exc)
            self._fail(grpc.StatusCode.INTERNAL, f"synthesis failed: {exc}")
        except Exception as exc:
            log.exception("session %s: synthesis crashed", self.session.session_id)
            self._fail(grpc.StatusCode.INTERNAL, f"synthesis failed: {type(exc).__name__}: {exc}")
        finally:
            self._close(renderer)

    def _close(self, renderer: UtteranceRenderer) -> None:
        """Close a stopped segment's generator off the event loop: a model adapter's
        clean-up (joining its generation thread) must not hold up other sessions'
        frames. Runs after a step still in flight (the renderer serializes them)."""
        if not renderer.open:
            return
        if renderer.inline:
            self._close_now(renderer)
            return
        try:
            self._executor.submit(self._close_now, renderer)
        except RuntimeError:  # the executor is shutting down with the worker
            self._close_now(renderer)

    def _close_now(self, renderer: UtteranceRenderer) -> None:
        try:
            renderer.close()
        except Exception:
            log.exception("session %s: closing a stopped synthesis failed",
                          self.session.session_id)

    async def frames_out(self) -> AsyncIterator[bytes]:
        """Frames in order; pauses hold here. Raises StreamError if the stream failed."""
        while True:
            frame = await self.frames.get()
            if frame is None:
                break
            await self.session.wait_playing()
            if self.frames.aborted:
                break  # stopped while paused: drop the frame we held
            if self.first_frame_s is None:
                self.first_frame_s = time.perf_counter() - self.started
            yield frame
        if self.error is not None:
            raise self.error
