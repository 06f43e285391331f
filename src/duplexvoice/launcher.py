"""Start a duplexvoice service (worker, orchestrator or brain) as a child process and
wait until it prints its ready line.

Used by the tests, the benchmarks and `duplexvoice up`: the service runs exactly as a
user starts it, `python -m duplexvoice worker ...` / `... orchestrator ...`.

A child started with ``exit_with_parent=True`` gets ``DUPLEXVOICE_EXIT_WITH_PARENT``
set to this process's pid; a service that sees it calls :func:`exit_with_parent` so
it never outlives its parent, even one killed by SIGKILL.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

_READY = re.compile(r"ready on (?:grpc|http)://([\d.]+):(\d+)")

PARENT_PID_ENV = "DUPLEXVOICE_EXIT_WITH_PARENT"

# How often a child checks that its parent still lives where the death signal is
# not available (not Linux), or as a backstop to it.
PARENT_CHECK_INTERVAL_S = 1.0


class NotReadyError(RuntimeError):
    """The service exited or timed out before its ready line; ``reason`` is one line."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ServiceProcess:
    """``python -m duplexvoice <subcommand> --port 0 ...``; waits for its ready line.

    ``on_line`` gets each line the service prints (stdout and stderr), from the
    thread that reads them; ``keep_lines`` bounds what :meth:`text` keeps (a service
    that runs for days). ``exit_with_parent``: the service ends when this process
    does.
    """

    subcommand = ""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None, on_line: Callable[[str], None] | None = None,
                 keep_lines: int | None = None, exit_with_parent: bool = False) -> None:
        self.args: Sequence[str] = args
        self.env = {**os.environ, **(env or {})}
        self.exit_with_parent = exit_with_parent
        if exit_with_parent:
            self.env[PARENT_PID_ENV] = str(os.getpid())
        self.proc: subprocess.Popen[str] | None = None
        self.addr = ""
        self.cwd = cwd or Path.cwd()
        self.output: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.on_line = on_line
        self._drain: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "duplexvoice", self.subcommand, "--port", "0", *self.args]

    def start(self, timeout: float = 120.0) -> Self:
        """Spawn, then wait up to ``timeout`` s for the ready line (:class:`NotReadyError`)."""
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> Self:
        """Start the process without waiting for it to be ready."""
        self.proc = subprocess.Popen(
            self.command(), cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            errors="replace",  # a stray byte must not kill the reader (then the pipe fills)
            # A child bound to its parent gets its own process group: Ctrl-C in a
            # terminal reaches the parent only, which stops the child itself, in order.
            process_group=0 if self.exit_with_parent else None,
        )
        # One thread drains the output for the process's whole life: a chatty worker
        # must never block on a full pipe, and the ready line is found in what it reads.
        self._drain = threading.Thread(target=self._pump, daemon=True,
                                       name=f"{self.subcommand}-output")
        self._drain.start()
        return self

    def wait_ready(self, timeout: float = 120.0) -> Self:
        if self._ready.wait(timeout) and self.addr:
            return self
        self.kill()
        raise NotReadyError(f"{self.subcommand} did not become ready:\n" + self.text(),
                            self.last_line() or f"no ready line within {timeout:.0f} s")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if self.on_line is not None:
                self.on_line(line)
            if not self.addr and (match := _READY.search(line)):
                self.addr = f"{match.group(1)}:{match.group(2)}"
                self._ready.set()
        self._ready.set()  # exited: stop waiting

    def text(self) -> str:
        """Everything the process printed (complete once it has exited)."""
        if self._drain is not None and self.proc is not None and self.proc.poll() is not None:
            self._drain.join(5)
        return "".join(self.output)

    def last_line(self) -> str:
        """The last non-empty line printed (a service's one-line error, if it failed)."""
        return next((line.strip() for line in reversed(self.text().splitlines())
                     if line.strip()), "")

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its return code (negative: killed by a signal)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class WorkerProcess(ServiceProcess):
    """A TTS worker; ``addr`` is its gRPC ``host:port``."""

    subcommand = "worker"

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 name: str = "tts-worker-0", cwd: Path | None = None,
                 on_line: Callable[[str], None] | None = None, keep_lines: int | None = None,
                 exit_with_parent: bool = False) -> None:
        super().__init__(*args, env=env, cwd=cwd, on_line=on_line, keep_lines=keep_lines,
                         exit_with_parent=exit_with_parent)
        self.name = name

    def command(self) -> list[str]:
        return [*super().command(), "--name", self.name]


class OrchestratorProcess(ServiceProcess):
    """An orchestrator; ``addr`` is its HTTP/WebSocket ``host:port``."""

    subcommand = "orchestrator"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}/ws"


class BrainProcess(ServiceProcess):
    """The local language model (``duplexvoice brain``); ``addr`` is its HTTP
    ``host:port``, ready once the model is loaded and prewarmed."""

    subcommand = "brain"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``--reply-base-url`` of the orchestrator)."""
        return f"http://{self.addr}/v1"


# -- the child's side -------------------------------------------------------------------


def describe_exit(code: int) -> str:
    """``exit code 1`` / ``killed by SIGKILL`` for a Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def parent_to_follow(environ: dict[str, str] | None = None) -> int | None:
    """The pid in ``DUPLEXVOICE_EXIT_WITH_PARENT``, if this process was started so."""
    raw = (os.environ if environ is None else environ).get(PARENT_PID_ENV, "")
    return int(raw) if raw.isdigit() else None


def _set_parent_death_signal(sig: int) -> None:
    """Linux: the kernel sends ``sig`` to this process when its parent thread ends.

    Set in the child, not in a ``preexec_fn`` (no code runs between fork and exec in
    a parent that has threads); the check of the parent pid that follows covers a
    parent that died before this call. The parent must start the child from a thread
    that lives as long as the child (``up``: its main thread or its supervisor).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # the polling fallback still applies


async def exit_with_parent(parent: int, stop: asyncio.Event) -> None:
    """Set ``stop`` when ``parent`` is gone: at once by the death signal (SIGTERM, which
    the service handles as a shutdown) on Linux, within a second by polling elsewhere."""
    _set_parent_death_signal(signal.SIGTERM)
    while True:
        if os.getppid() != parent:  # reparented: the parent has ended
            stop.set()
            return
        await asyncio.sleep(PARENT_CHECK_INTERVAL_S)  # no event exists for this: poll
