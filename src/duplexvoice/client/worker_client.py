"""A small asyncio client for the worker's gRPC API (WIRE §2).

Used by ``duplexvoice synth``, the tests and the benchmarks; the orchestrator builds
on the same calls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import wave
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from duplexvoice.audio import SAMPLE_RATE
from duplexvoice.rpc import tts_pb2, tts_pb2_grpc
from duplexvoice.wire.channels import channel_options, grpc_target

__all__ = ["DEFAULT_WINDOW_BYTES", "SynthesisResult", "WorkerClient", "channel_options",
           "grpc_target", "synthesize_text", "write_wav"]


# A small, fixed HTTP/2 receive window per stream bounds the audio in flight from the
# worker (16 KiB: about 8 frames, 160 ms), so after a PAUSE only those few frames
# still arrive. Throughput stays far above real time (one window per round trip).
DEFAULT_WINDOW_BYTES = 16 * 1024


class WorkerClient:
    def __init__(self, addr: str, *, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self.channel = grpc.aio.insecure_channel(grpc_target(addr),
                                                 options=channel_options(window_bytes))
        self.stub = tts_pb2_grpc.TTSServiceStub(self.channel)

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def wait_ready(self, within_s: float = 30.0) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), within_s)

    async def start_session(
        self, session_id: str, model_id: str = "", options: Mapping[str, str] | None = None
    ) -> tts_pb2.StartSessionResponse:
        return await self.stub.StartSession(tts_pb2.StartSessionRequest(
            session_id=session_id, model_id=model_id, options=dict(options or {})
        ))

    async def end_session(self, session_id: str) -> tts_pb2.EndSessionResponse:
        return await self.stub.EndSession(tts_pb2.EndSessionRequest(session_id=session_id))

    async def control(self, session_id: str, command: int) -> tts_pb2.ControlResponse:
        return await self.stub.Control(
            tts_pb2.ControlRequest(session_id=session_id, command=command)  # type: ignore[arg-type]
        )

    def synthesize(
        self, session_id: str, text: str | Iterable[str]
    ) -> grpc.aio.StreamStreamCall[tts_pb2.TextChunk, tts_pb2.AudioFrame]:
        """One utterance: a string, or pieces of streamed text (the last one is final)."""
        pieces = [text] if isinstance(text, str) else list(text)

        async def chunks() -> AsyncIterator[tts_pb2.TextChunk]:
            for i, piece in enumerate(pieces, start=1):
                yield tts_pb2.TextChunk(
                    session_id=session_id, text=piece, is_final=i == len(pieces),
                    sequence_number=i,
                )

        return self.stub.Synthesize(chunks())


@dataclass
class SynthesisResult:
    frames: list[bytes] = field(default_factory=list)
    first_audio_ms: float | None = None
    total_ms: float = 0.0

    @property
    def pcm(self) -> bytes:
        return b"".join(self.frames)

    @property
    def audio_ms(self) -> float:
        return len(self.frames) * 20.0


async def synthesize_text(
    client: WorkerClient, text: str, model_id: str = "", options: Mapping[str, str] | None = None
) -> SynthesisResult:
    """Start a session, speak ``text``, end the session; frames and first-audio latency."""
    session_id = f"synth-{uuid.uuid4().hex[:12]}"
    await client.start_session(session_id, model_id, options)
    result = SynthesisResult()
    try:
        start = time.perf_counter()
        async for frame in client.synthesize(session_id, text):
            if frame.audio_data:
                if result.first_audio_ms is None:
                    result.first_audio_ms = (time.perf_counter() - start) * 1000
                result.frames.append(frame.audio_data)
            if frame.is_final:
                break
        result.total_ms = (time.perf_counter() - start) * 1000
    finally:
        await client.end_session(session_id)
    return result


def write_wav(path: Path, pcm: bytes, sample_rate: int = SAMPLE_RATE) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
