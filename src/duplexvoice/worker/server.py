"""Run one worker process: load the default voice, serve gRPC, register, and shut
down gracefully on SIGTERM/SIGINT (deregister, stop new sessions, give active
streams ``shutdown_grace_s`` to finish, unload models).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc

from duplexvoice.rpc import tts_pb2_grpc
from duplexvoice.worker.config import WorkerConfig
from duplexvoice.worker.runtime import WorkerRuntime
from duplexvoice.worker.service import TTSServicer

log = logging.getLogger(__name__)

# A TextChunk is small; anything near this is a client bug or an attack.
MAX_MESSAGE_BYTES = 1 << 20

# Synthesis threads run Python between model calls (phonemes, the audio pipeline) and
# hold the GIL meanwhile; the event loop waits up to the switch interval (5 ms by
# default) to get it back. 1 ms keeps Control replies and frames prompt.
GIL_SWITCH_INTERVAL_S = 0.001


async def serve(config: WorkerConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    runtime = WorkerRuntime(config)
    for problem in runtime.scan_errors:
        print(f"warning: voice pack skipped: {problem}", flush=True)
    await runtime.start()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    tts_pb2_grpc.add_TTSServiceServicer_to_server(TTSServicer(runtime), server)
    runtime.port = server.add_insecure_port(f"{config.host}:{config.port}")
    if runtime.port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    await server.start()
    await runtime.start_registry()
    print(
        f"duplexvoice worker {config.name} ready on grpc://{config.host}:{runtime.port} "
        f"(default voice {config.models.default_model_id}; "
        f"{len(runtime.catalog)} voices: {', '.join(sorted(runtime.catalog))})",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        runtime.accepting = False
        await runtime.stop_registry()  # orchestrators stop routing here first
        await server.stop(config.shutdown_grace_s)
        await runtime.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        print(f"duplexvoice worker {config.name} stopped", flush=True)
