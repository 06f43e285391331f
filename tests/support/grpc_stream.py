"""What the gRPC tests of every worker (Piper, and each GPU family in its own
environment) share: deadlines that only bound a failure, a stream reader tests wait on
by frame count, the frame contract of WIRE §2, and the model list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import numpy as np

from duplexvoice.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.rpc import tts_pb2

# Bounds one wait (an utterance, a few frames) far beyond what a healthy worker needs,
# even a model on a loaded 2-core machine.
WAIT_S = 90.0

T = TypeVar("T")


async def within(awaitable: Awaitable[T], what: str, wait_s: float = WAIT_S) -> T:
    try:
        return await asyncio.wait_for(awaitable, wait_s)
    except TimeoutError:
        raise AssertionError(f"not within {wait_s:.0f} s: {what}") from None


class Receiver:
    """Reads one stream on its own task; tests wait for frame counts on an event."""

    def __init__(self, call: AsyncIterator[tts_pb2.AudioFrame], name: str) -> None:
        self.name = name
        self.frames: list[tts_pb2.AudioFrame] = []
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read(call))

    async def _read(self, call: AsyncIterator[tts_pb2.AudioFrame]) -> None:
        try:
            async for frame in call:
                self.frames.append(frame)
                self._arrived.set()
        finally:
            self._arrived.set()  # wake waiters: the stream has ended

    async def wait_for_count(self, n: int) -> None:
        async def arrived() -> None:
            while len(self.frames) < n:
                if self.task.done():
                    raise AssertionError(
                        f"{self.name}: stream ended after {len(self.frames)} frames, "
                        f"waiting for {n}"
                    )
                self._arrived.clear()
                await self._arrived.wait()

        await within(arrived(), f"{self.name}: {n} frames (got {len(self.frames)})")

    async def end(self) -> list[tts_pb2.AudioFrame]:
        await within(asyncio.shield(self.task), f"{self.name}: end of the stream")
        return self.frames


def check_frames(frames: list[tts_pb2.AudioFrame]) -> bytes:
    """The contract of WIRE §2: numbered 20 ms frames at 48 kHz, then exactly one final
    marker (empty, or a last full frame)."""
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


async def models(client: WorkerClient) -> dict[str, tts_pb2.ModelInfo]:
    """ListModels, by model id."""
    reply = await client.stub.ListModels(tts_pb2.ListModelsRequest())
    return {m.model_id: m for m in reply.models}
