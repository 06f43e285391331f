"""``duplexvoice up``: the whole system on one machine, supervised.

1. The configuration (:mod:`duplexvoice.up_config`): every option of the orchestrator
   and of each child service, by flag, environment and YAML; what ``up`` cannot pass
   is refused in one line (exit 2).
2. Checks that fail in one line on stderr (exit 1) before anything starts: the
   HTTP/WebSocket port and each child's port can be listened on, Redis answers
   (``--redis-url``).
3. Each child service (:class:`Child`: the TTS worker) as a child process; its output
   appears in ours, each line prefixed ``[worker]``. If it dies it is restarted on
   the same port (so the embedded registry, which checks that address, finds it
   again), after a back-off of 0.5 s doubling to 10 s, back to 0.5 s once it has run
   30 s. It never outlives this process, even one killed by SIGKILL
   (``launcher.exit_with_parent``). Once ready, a child is checked (the worker knows
   ``--voice``, else exit 2 naming its voices) and wired into the orchestrator's
   config (the worker's address).
4. The orchestrator in this process; the banner once it accepts connections. Ctrl-C /
   SIGTERM stops the orchestrator, then the children, last started first (always).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from duplexvoice.config import one_line
from duplexvoice.launcher import NotReadyError, ServiceProcess, WorkerProcess, describe_exit
from duplexvoice.up_config import WORKER, UpError, UpPlan
from duplexvoice.wire.ports import bind_error, free_port, in_use_message

if TYPE_CHECKING:
    from duplexvoice.orchestrator.config import OrchestratorConfig

__all__ = ["Backoff", "Child", "Supervisor", "UpError", "banner", "free_port", "run_up", "urls"]

CHILD_LINES_KEPT = 200  # of a child's output, for its last words when it fails
REDIS_TIMEOUT_S = 2.0


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
        f"  talk: open {http}/ in a browser (microphone, or type)\n"
        f'  try: duplexvoice say "Hello" --url {ws}\n'
        f"  or:  duplexvoice say -i --url {ws}   (interactive)\n"
        "  Ctrl-C to stop."
    )


# -- supervision ----------------------------------------------------------------------


@dataclass
class Backoff:
    """The wait before each restart: ``initial_s`` doubling up to ``max_s``; a process
    that ran ``stable_after_s`` or longer starts the sequence again."""

    initial_s: float = 0.5
    max_s: float = 10.0
    stable_after_s: float = 30.0
    _next_s: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next_s = self.initial_s

    def delay(self, ran_s: float) -> float:
        """The wait before restarting a process that ran ``ran_s`` seconds."""
        if ran_s >= self.stable_after_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(delay * 2, self.max_s)
        return delay


class Supervisor:
    """Keeps one service process running: starts it, and restarts it whenever it
    ends until :meth:`stop`. ``say`` gets one line per event (exit, ready again).

    Each process is started from a thread that lives as long as it does (the
    caller's for the first, the supervisor's for the rest): Linux's parent-death
    signal follows the thread that forked, not the process.
    """

    def __init__(self, make: Callable[[], ServiceProcess], *, say: Callable[[str], None],
                 backoff: Backoff | None = None, ready_timeout_s: float = 120.0,
                 name: str = "worker") -> None:
        self.make = make
        self.say = say
        self.backoff = backoff or Backoff()
        self.ready_timeout_s = ready_timeout_s
        self.name = name
        self.current: ServiceProcess | None = None
        self.restarts = 0
        self._lock = threading.Lock()  # stop() vs. a restart spawning a process
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ServiceProcess:
        """Start the first process and wait for it (:class:`NotReadyError`), then watch."""
        with self._lock:
            proc = self.current = self.make().spawn()
        started = time.monotonic()
        proc.wait_ready(self.ready_timeout_s)
        self._thread = threading.Thread(target=self._watch, args=(proc, started),
                                        name=f"{self.name}-supervisor", daemon=True)
        self._thread.start()
        return proc

    def _watch(self, proc: ServiceProcess, started: float) -> None:
        while True:
            code = proc.wait()
            if self._stopping.is_set():
                return
            ran_s = time.monotonic() - started
            delay = self.backoff.delay(ran_s)
            self.restarts += 1
            if proc.addr:
                what = f"(pid {proc.pid}) exited ({describe_exit(code)}) after {ran_s:.1f} s"
            else:
                what = f"failed to start ({describe_exit(code)}: {proc.last_line() or '-'})"
            self.say(f"{self.name} {what}; restart {self.restarts} in {delay:g} s")
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                proc = self.current = self.make().spawn()
            started = time.monotonic()
            with contextlib.suppress(NotReadyError):  # its end is reported above, next turn
                proc.wait_ready(self.ready_timeout_s)
                self.say(f"{self.name} ready again on {proc.addr} (pid {proc.pid})")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop restarting, then end the current process (SIGTERM, SIGKILL after
        ``timeout_s``)."""
        with self._lock:
            self._stopping.set()
            proc = self.current
        if proc is not None and proc.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # then it was killed
                proc.terminate(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)


class _Lines:
    """Whole lines to stdout from several threads (the worker's reader, the supervisor)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            # A closed stdout (``up | head``) must not kill the worker's reader thread:
            # then its pipe fills and the worker blocks.
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


# -- checks ---------------------------------------------------------------------------


def resolve_port(label: str, host: str, port: int) -> int:
    """The port to use (0: a free one, fixed now so a restarted child comes back on
    its port); :class:`UpError` if it cannot be listened on. ``label`` names the
    option in the error (``--worker-port 7001``)."""
    if port == 0:
        return free_port(host)
    if (error := bind_error(host, port)) is not None:
        raise UpError(f"{label}: {in_use_message(host, port, error)}")
    return port


def check_ports(plan: UpPlan) -> dict[str, int]:
    """The port of the orchestrator (key "") and of each child (by name), resolved and
    checked: each can be listened on, no two the same."""
    orch = plan.orchestrator
    labels = {"": plan.label("port")}
    ports = {"": resolve_port(labels[""], orch.host, orch.port)}
    for name, child in plan.children.items():
        labels[name] = child.label("port")
        port = resolve_port(labels[name], child.config.host, child.config.port)
        if (same := next((k for k, p in ports.items() if p == port), None)) is not None:
            raise UpError(f"{labels[same]} and {labels[name]}: both are port {port}", code=2)
        ports[name] = port
    return ports


def check_redis(url: str, label: str, timeout_s: float = REDIS_TIMEOUT_S) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                      socket_timeout=timeout_s)
    except ValueError as exc:  # not a redis:// URL
        raise UpError(f"{label}: {one_line(str(exc))}", code=2) from exc
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise UpError(f"{label}: no Redis answers there "
                      f"({one_line(str(exc)) or type(exc).__name__})") from exc
    finally:
        client.close()


async def worker_voices(addr: str, timeout_s: float = 10.0) -> list[str]:
    """The model ids a worker can load (its ListModels)."""
    from duplexvoice.client.worker_client import WorkerClient
    from duplexvoice.rpc import tts_pb2

    async with WorkerClient(addr) as client:
        reply = await client.stub.ListModels(tts_pb2.ListModelsRequest(), timeout=timeout_s)
    return sorted(model.model_id for model in reply.models)


def check_voice(addr: str, voice: str, label: str) -> None:
    import grpc

    try:
        known = asyncio.run(worker_voices(addr))
    except grpc.RpcError as exc:
        raise UpError(f"cannot list the worker's voices: {exc}") from exc
    if voice not in known:
        raise UpError(f"{label}: the worker has no such voice "
                      f"(known voices: {', '.join(known) or 'none'})", code=2)


# -- running --------------------------------------------------------------------------


async def _wait_listening(host: str, port: int, interval_s: float = 0.05) -> None:
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
    while True:
        try:
            _reader, writer = await asyncio.open_connection(connect, port)
        except OSError:
            await asyncio.sleep(interval_s)  # serve() offers no event for "bound"
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


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM before serve() handles it: stop the children too


@dataclass
class Child:
    """A service ``up`` runs as a supervised child process, and how the orchestrator
    gets to it. ``make`` builds a new (unstarted) process: each restart makes one."""

    name: str  # "worker": its lines are prefixed [worker]
    title: str  # "TTS worker", in up's own lines
    port: int
    make: Callable[[], ServiceProcess]
    # the orchestrator's config once the child is ready at ``addr``
    wire: Callable[[OrchestratorConfig, str], OrchestratorConfig]
    check: Callable[[str], None] = field(default=lambda addr: None)  # once ready
    scheme: str = "grpc"  # of its address, in the ready line


def worker_child(plan: UpPlan, port: int, say: Callable[[str], None]) -> Child:
    worker = plan.children[WORKER.name]
    name = worker.config.name
    args = [*worker.args, "--port", str(port)]
    voice = plan.orchestrator.default_voice

    def check(addr: str) -> None:
        if voice:
            check_voice(addr, voice, plan.label("default_voice"))

    return Child(
        "worker", "TTS worker", port,
        make=lambda: WorkerProcess(*args, name=name, keep_lines=CHILD_LINES_KEPT,
                                   on_line=lambda line: say(f"[worker] {line.rstrip()}"),
                                   exit_with_parent=True),
        wire=lambda config, addr: config.model_copy(update={"workers": [f"{name}={addr}"]}),
        check=check,
    )


def run_up(plan: UpPlan, *, ready_timeout_s: float = 120.0,
           backoff: Callable[[], Backoff] = Backoff) -> int:
    """Check, start the children, serve until stopped, stop the children. An exit code."""
    config = plan.orchestrator
    lines = _Lines()
    try:
        ports = check_ports(plan)
        if config.redis_url:
            check_redis(config.redis_url, plan.label("redis_url"))
    except UpError as exc:
        print(f"duplexvoice up: {exc}", file=sys.stderr)
        return exc.code
    config = config.model_copy(update={"port": ports[""]})
    children = [worker_child(plan, ports[WORKER.name], lines)]
    supervisors: list[tuple[Child, Supervisor]] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for child in children:
            supervisor = Supervisor(child.make, say=lambda m: lines(f"duplexvoice up: {m}"),
                                    backoff=backoff(), ready_timeout_s=ready_timeout_s,
                                    name=child.name)
            supervisors.append((child, supervisor))
            lines(f"duplexvoice up: starting the {child.title} on port {child.port} ...")
            try:
                proc = supervisor.start()
            except NotReadyError as exc:
                raise UpError(f"the {child.title} did not start: {exc.reason}") from exc
            lines(f"duplexvoice up: {child.name} ready on {child.scheme}://{proc.addr} "
                  f"(pid {proc.pid})")
            child.check(proc.addr)
            config = child.wire(config, proc.addr)
        asyncio.run(run_orchestrator(config))
        return 0
    except UpError as exc:
        print(f"duplexvoice up: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"duplexvoice up: orchestrator: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before serve() took over SIGINT / SIGTERM
        return 0
    finally:
        for child, supervisor in reversed(supervisors):
            supervisor.stop()
            if supervisor.current is not None:
                lines(f"duplexvoice up: {child.name} stopped")
        signal.signal(signal.SIGTERM, previous)
