"""Run one worker process: load the default voice, serve gRPC, register, and shut
down gracefully on SIGTERM/SIGINT (deregister, stop new sessions, give active
streams ``shutdown_grace_s`` to finish, unload models).

Start-up problems a user can fix (a voice pack folder that does not exist, a model
id no pack provides, a port in use, a default voice that fails to load) raise
:class:`~duplexvoice.config.OptionError` naming the option, before any model loads
where possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import grpc

from duplexvoice.config import OptionError
from duplexvoice.launcher import exit_with_parent, parent_to_follow
from duplexvoice.rpc import tts_pb2_grpc
from duplexvoice.worker.adapters import FamilyNotInstalledError, adapter_for
from duplexvoice.worker.config import WorkerConfig
from duplexvoice.worker.model_policy import ModelError
from duplexvoice.worker.runtime import WorkerRuntime
from duplexvoice.worker.service import TTSServicer

log = logging.getLogger(__name__)

# A TextChunk is small, but a StartSession may carry a CSM conversation context: up to
# 30 s of 24 kHz PCM16 as base64 (~1.9 MB). Anything beyond is a client bug or an attack.
MAX_MESSAGE_BYTES = 4 << 20

# Synthesis threads run Python between model calls (phonemes, the audio pipeline) and
# hold the GIL meanwhile; the event loop waits up to the switch interval (5 ms by
# default) to get it back. 1 ms keeps Control replies and frames prompt.
GIL_SWITCH_INTERVAL_S = 0.001


def check_voicepack_dirs(config: WorkerConfig) -> None:
    missing = [str(d) for d in config.voicepack_dirs if not d.is_dir()]
    if missing:
        raise OptionError("voicepack_dirs", f"no such folder: {', '.join(missing)}")


def check_model_ids(config: WorkerConfig, known: set[str]) -> None:
    """The start-up models must be in the catalog: say which are not, and what is."""
    voices = ", ".join(sorted(known)) or "none"
    if config.models.default_model_id not in known:
        raise OptionError("default_model_id", f"no voice pack provides "
                          f"{config.models.default_model_id!r} (known voices: {voices})")
    unknown = [m for m in config.models.preload_model_ids if m not in known]
    if unknown:
        raise OptionError("preload_model_ids", f"no voice pack provides "
                          f"{', '.join(map(repr, unknown))} (known voices: {voices})")


def _bind(server: grpc.aio.Server, config: WorkerConfig) -> int:
    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError:  # grpcio >= 1.5x raises where older ones returned 0
        port = 0
    if port == 0:
        raise OptionError("port", f"cannot listen on {config.host}:{config.port} (in use?)")
    return port


def check_families(runtime: WorkerRuntime) -> None:
    """The default voice's family (and a LoRA voice's base's) must import here: a GPU
    family lives in its own environment, and the error names the command that makes it."""
    model_id = runtime.config.models.default_model_id
    pack = runtime.catalog.get(model_id)
    if pack is None:
        return
    try:
        adapter_for(pack.family, runtime.adapters)
    except FamilyNotInstalledError as exc:
        raise OptionError("default_model_id", f"voice {model_id!r}: {exc}") from None


async def serve(config: WorkerConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives (or, when started by
    ``duplexvoice up``, its parent ends)."""
    stop = stop or asyncio.Event()
    check_voicepack_dirs(config)
    runtime = WorkerRuntime(config)
    check_model_ids(config, set(runtime.catalog))
    check_families(runtime)
    for problem in runtime.scan_errors:
        print(f"warning: voice pack skipped: {problem}", flush=True)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    tts_pb2_grpc.add_TTSServiceServicer_to_server(TTSServicer(runtime), server)
    runtime.port = _bind(server, config)  # before loading models: a busy port fails fast

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = parent_to_follow()
    watch = asyncio.create_task(exit_with_parent(parent, stop)) if parent else None
    try:
        try:
            await runtime.start()
        except ModelError as exc:
            raise OptionError("default_model_id", str(exc)) from exc
        await server.start()
        await runtime.start_registry()
        print(
            f"duplexvoice worker {config.name} ready on grpc://{config.host}:{runtime.port} "
            f"(default voice {config.models.default_model_id}; "
            f"{len(runtime.catalog)} voices: {', '.join(sorted(runtime.catalog))})",
            flush=True,
        )
        await stop.wait()
    finally:
        log.info("shutting down")
        if watch is not None:
            watch.cancel()
        runtime.accepting = False
        await runtime.stop_registry()  # orchestrators stop routing here first
        await server.stop(config.shutdown_grace_s)
        await runtime.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        # The parent may be gone (and the pipe with it): the last word is optional.
        with contextlib.suppress(OSError):
            print(f"duplexvoice worker {config.name} stopped", flush=True)
