"""``duplexvoice up``: the whole system on one machine. One TTS worker as a child
process, the orchestrator in this process, pointed at it (embedded registry) or at
Redis. Ctrl-C / SIGTERM stops the orchestrator, then the worker (always).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from duplexvoice.orchestrator.config import OrchestratorConfig


def free_port(host: str) -> int:
    """A port free right now on ``host`` (for ``--port 0``, so the URL can be shown)."""
    bind = "127.0.0.1" if host in ("", "0.0.0.0") else host
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((bind, 0))
        port: int = sock.getsockname()[1]
        return port


def urls(host: str, port: int) -> tuple[str, str]:
    """(http URL, WebSocket URL) to show; a wildcard bind is reached on 127.0.0.1."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}", f"ws://{shown}:{port}/ws"


def banner(host: str, port: int) -> str:
    http, ws = urls(host, port)
    return (
        f"duplexvoice up: {http} (WebSocket {ws})\n"
        f'  try: duplexvoice say "Hello" --url {ws}\n'
        f"  or:  duplexvoice say -i --url {ws}   (interactive)\n"
        "  Ctrl-C to stop."
    )


async def _wait_listening(host: str, port: int, interval_s: float = 0.05) -> None:
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
    while True:
        try:
            _reader, writer = await asyncio.open_connection(connect, port)
        except OSError:
            await asyncio.sleep(interval_s)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def run_orchestrator(config: OrchestratorConfig, stop: asyncio.Event | None = None) -> None:
    """``serve(config)``, printing the banner once the port accepts connections."""
    from duplexvoice.orchestrator.server import serve

    server = asyncio.create_task(serve(config, stop))
    listening = asyncio.create_task(_wait_listening(config.host, config.port))
    try:
        await asyncio.wait({server, listening}, return_when=asyncio.FIRST_COMPLETED)
        if listening.done() and not server.done():
            print(banner(config.host, config.port), flush=True)
        await server  # raises what serve raised (e.g. the port is taken)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        if not server.done():
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server


def run_up(*, port: int = 8080, worker_port: int = 7001, voice: str = "",
           redis_url: str | None = None, host: str = "127.0.0.1",
           worker_timeout_s: float = 120.0) -> int:
    """Start the worker, serve until stopped, stop the worker. Returns an exit code."""
    from duplexvoice.launcher import WorkerProcess
    from duplexvoice.orchestrator.config import OrchestratorConfig

    # WorkerProcess puts "--port 0" first; argparse keeps the last value given.
    worker_args = ["--port", str(worker_port)]
    if redis_url:
        worker_args += ["--redis-url", redis_url]
    worker = WorkerProcess(*worker_args, name="tts-worker-0")
    try:
        if port == 0:
            port = free_port(host)
        print(f"duplexvoice up: starting the TTS worker on port {worker_port} ...", flush=True)
        try:
            worker.start(worker_timeout_s)
        except RuntimeError as exc:
            print(f"duplexvoice up: {exc}", file=sys.stderr)
            return 1
        print(f"duplexvoice up: worker ready on grpc://{worker.addr}", flush=True)
        config = OrchestratorConfig(
            host=host, port=port, redis_url=redis_url or None, default_voice=voice,
            workers=[f"{worker.name}={worker.addr}"],
        )
        try:
            asyncio.run(run_orchestrator(config))
        except OSError as exc:
            print(f"duplexvoice up: orchestrator: {exc}", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:  # before serve() took over SIGINT
        return 0
    finally:
        if worker.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # then it was killed
                worker.terminate()
            print("duplexvoice up: worker stopped", flush=True)
