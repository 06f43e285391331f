"""The gRPC servicer (WIRE §2): translates requests to runtime calls and our errors
to gRPC status codes. No policy lives here.

Status codes: unknown session or model ``NOT_FOUND``; missing or bad fields
``INVALID_ARGUMENT``; duplicate session id ``ALREADY_EXISTS``; a second Synthesize
on a busy session ``FAILED_PRECONDITION``; worker full ``RESOURCE_EXHAUSTED``;
shutting down ``UNAVAILABLE``; a failing model ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from duplexvoice.audio import FRAME_MS, SAMPLE_RATE
from duplexvoice.rpc import tts_pb2, tts_pb2_grpc
from duplexvoice.worker.adapters.base import AdapterError
from duplexvoice.worker.model_manager import (
    CapacityError,
    ModelError,
    ModelInUseError,
    ModelLoadError,
    ModelNotLoadedError,
    UnknownModelError,
)
from duplexvoice.worker.runtime import WorkerRuntime
from duplexvoice.worker.session import (
    MAX_SESSION_ID_CHARS,
    SessionOptionError,
    SynthesisSession,
    parse_options,
)
from duplexvoice.worker.synthesis import StreamError, UtteranceStream

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[object, object]

# How long stream cleanup waits for its tasks after cancelling them.
_CLEANUP_TIMEOUT_S = 1.0


def _model_status(exc: ModelError) -> grpc.StatusCode:
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, CapacityError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, ModelInUseError | ModelNotLoadedError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


async def _abort(context: Ctx, code: grpc.StatusCode,
                 message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort() always raises


def _now_ms() -> int:
    return int(time.time() * 1000)


class TTSServicer(tts_pb2_grpc.TTSServiceServicer):
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.rt = runtime

    # -- sessions -------------------------------------------------------------------

    async def StartSession(
        self, request: tts_pb2.StartSessionRequest, context: Ctx
    ) -> tts_pb2.StartSessionResponse:
        rt = self.rt
        sid = request.session_id
        if not rt.accepting:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "worker is shutting down")
        if not sid or len(sid) > MAX_SESSION_ID_CHARS:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"session_id must be 1..{MAX_SESSION_ID_CHARS} characters")
        if sid in rt.sessions:
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS, f"session {sid!r} already exists")
        if len(rt.sessions) >= rt.config.max_sessions:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"worker is full ({rt.config.max_sessions} sessions)")
        try:
            options = parse_options(dict(request.options))
        except SessionOptionError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        model_id = request.model_id or rt.config.models.default_model_id
        try:
            voice = await rt.models.acquire(model_id)
        except ModelError as exc:
            await _abort(context, _model_status(exc), str(exc))
        try:
            voice.adapter.check_options(options)
        except AdapterError as exc:
            rt.models.release(model_id)
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if sid in rt.sessions or not rt.accepting:  # raced while the model loaded
            rt.models.release(model_id)
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS if rt.accepting
                         else grpc.StatusCode.UNAVAILABLE, f"session {sid!r} not started")
        rt.sessions[sid] = SynthesisSession(sid, voice, options)
        rt.notify_changed()
        return tts_pb2.StartSessionResponse(success=True, message=f"session started on {model_id}")

    async def EndSession(
        self, request: tts_pb2.EndSessionRequest, context: Ctx
    ) -> tts_pb2.EndSessionResponse:
        if not self.rt.end_session(request.session_id):
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"unknown session {request.session_id!r}")
        return tts_pb2.EndSessionResponse(success=True)

    # -- synthesis ------------------------------------------------------------------

    async def Synthesize(  # type: ignore[override]  # a coroutine handler, not a generator
        self,
        request_iterator: AsyncIterator[tts_pb2.TextChunk],
        context: Ctx,
    ) -> None:
        # Frames go out with context.write: about a third cheaper per message than
        # yielding from an async generator, and this runs once per 20 ms frame.
        rt = self.rt
        requests = aiter(request_iterator)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no TextChunk received")
        sid = first.session_id
        if not sid:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "TextChunk.session_id is empty")
        session = rt.sessions.get(sid)
        if session is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"unknown session {sid!r}: call StartSession first")
        if session.utterance is not None:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"session {sid!r} already has a Synthesize stream")
        utterance = UtteranceStream(
            session,
            chunking=rt.chunking,
            max_text_chars=rt.config.max_text_chars,
            buffer_frames=rt.config.frame_buffer_frames,
            executor=rt.executor,
        )
        session.utterance = utterance
        session.utterances += 1
        rt.utterances += 1

        async def read_text() -> None:
            if not await utterance.add_text(first):
                await utterance.feed(requests)

        producer = asyncio.create_task(utterance.produce(), name=f"produce-{sid}")
        reader = asyncio.create_task(read_text(), name=f"read-{sid}")
        sequence = 0
        failure: StreamError | None = None
        try:
            async for frame in utterance.frames_out():
                sequence += 1
                if sequence == 1 and utterance.first_frame_s is not None:
                    rt.record_first_audio(utterance.first_frame_s * 1000)
                await context.write(tts_pb2.AudioFrame(
                    session_id=sid, audio_data=frame, sample_rate=SAMPLE_RATE,
                    frame_duration_ms=FRAME_MS, sequence_number=sequence,
                ))
            rt.frames_sent += sequence
            # Exactly one final marker ends every synthesis, stopped or completed.
            await context.write(tts_pb2.AudioFrame(
                session_id=sid, sample_rate=SAMPLE_RATE, frame_duration_ms=FRAME_MS,
                sequence_number=sequence + 1, is_final=True,
            ))
        except StreamError as exc:
            failure = exc
        finally:
            # Stop reading the request stream before the call ends: grpc reports an
            # internal error if a read is still pending when the handler aborts.
            utterance.stop()
            for task in (reader, producer):
                task.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(
                    asyncio.gather(reader, producer, return_exceptions=True), _CLEANUP_TIMEOUT_S
                )
            if session.utterance is utterance:
                session.utterance = None
            session.touch()
        if failure is not None:
            rt.stream_errors += 1
            await _abort(context, failure.code, failure.message)

    # -- control --------------------------------------------------------------------

    async def Control(
        self, request: tts_pb2.ControlRequest, context: Ctx
    ) -> tts_pb2.ControlResponse:
        command = request.command
        if command == tts_pb2.RELOAD:
            result = self.rt.rescan()
            message = f"{len(result.packs)} voice packs"
            if result.errors:
                message += f"; skipped {len(result.errors)}: " + " | ".join(result.errors)
            self.rt.notify_changed()
            return tts_pb2.ControlResponse(success=True, message=message, timestamp_ms=_now_ms())
        session = self.rt.sessions.get(request.session_id)
        if session is None:
            return tts_pb2.ControlResponse(
                success=False, message=f"unknown session {request.session_id!r}",
                timestamp_ms=_now_ms(),
            )
        session.touch()
        if command == tts_pb2.PAUSE:
            session.pause()
            message = "paused"
        elif command == tts_pb2.RESUME:
            session.resume()
            message = "resumed"
        elif command == tts_pb2.STOP:
            message = "stopped" if session.stop() else "nothing to stop"
        else:
            return tts_pb2.ControlResponse(
                success=False, message=f"unknown command {command}", timestamp_ms=_now_ms()
            )
        return tts_pb2.ControlResponse(success=True, message=message, timestamp_ms=_now_ms())

    # -- models ---------------------------------------------------------------------

    async def ListModels(
        self, request: tts_pb2.ListModelsRequest, context: Ctx
    ) -> tts_pb2.ListModelsResponse:
        resident = set(self.rt.models.resident_models())
        models = []
        for model_id, pack in sorted(self.rt.catalog.items()):
            meta = pack.metadata
            info: dict[str, str] = {
                "name": meta.name,
                "version": meta.version,
                "description": meta.description,
                "tags": ",".join(meta.tags),
                "license": meta.license,
            }
            if "sample_rate" in meta.audio:
                info["native_sample_rate"] = str(meta.audio["sample_rate"])
            if meta.base_model is not None:
                info["base_model"] = meta.base_model  # a LoRA voice over this model
            models.append(tts_pb2.ModelInfo(
                model_id=model_id, family=meta.family, is_loaded=model_id in resident,
                languages=meta.languages, metadata=info,
            ))
        return tts_pb2.ListModelsResponse(models=models)

    async def LoadModel(
        self, request: tts_pb2.LoadModelRequest, context: Ctx
    ) -> tts_pb2.LoadModelResponse:
        if not request.model_id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "model_id is empty")
        try:
            duration_ms = await self.rt.models.load(request.model_id)
        except (UnknownModelError, CapacityError) as exc:
            await _abort(context, _model_status(exc), str(exc))
        except ModelLoadError as exc:
            return tts_pb2.LoadModelResponse(success=False, message=str(exc))
        message = "loaded" if duration_ms > 0 else "already resident"
        return tts_pb2.LoadModelResponse(
            success=True, message=message, load_duration_ms=round(duration_ms)
        )

    async def UnloadModel(
        self, request: tts_pb2.UnloadModelRequest, context: Ctx
    ) -> tts_pb2.UnloadModelResponse:
        if request.model_id not in self.rt.catalog:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_id!r}")
        try:
            await self.rt.models.unload(request.model_id)
        except (ModelInUseError, ModelNotLoadedError) as exc:
            return tts_pb2.UnloadModelResponse(success=False, message=str(exc))
        return tts_pb2.UnloadModelResponse(success=True, message="unloaded")

    async def GetCapabilities(
        self, request: tts_pb2.GetCapabilitiesRequest,
        context: Ctx,
    ) -> tts_pb2.GetCapabilitiesResponse:
        caps = self.rt.capabilities()
        return tts_pb2.GetCapabilitiesResponse(
            capabilities=tts_pb2.Capabilities(**caps),  # type: ignore[arg-type]
            resident_models=self.rt.models.resident_models(),
            metrics=dict(self.rt.metrics()),
        )
