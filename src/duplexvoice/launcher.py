"""Start a duplexvoice service (worker or orchestrator) as a child process and wait
until it prints its ready line.

Used by the tests, the benchmarks and `duplexvoice up`: the service runs exactly as a
user starts it, `python -m duplexvoice worker ...` / `... orchestrator ...`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Self

_READY = re.compile(r"ready on (?:grpc|http)://([\d.]+):(\d+)")


class ServiceProcess:
    """``python -m duplexvoice <subcommand> --port 0 ...``; waits for its ready line."""

    subcommand = ""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.args: Sequence[str] = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.addr = ""
        self.cwd = cwd or Path.cwd()
        self.output: list[str] = []
        self._drain: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "duplexvoice", self.subcommand, "--port", "0", *self.args]

    def start(self, timeout: float = 120.0) -> Self:
        cmd = self.command()
        self.proc = subprocess.Popen(
            cmd, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        )
        # One thread drains the output for the process's whole life: a chatty worker
        # must never block on a full pipe, and the ready line is found in what it reads.
        self._drain = threading.Thread(target=self._pump, daemon=True)
        self._drain.start()
        if self._ready.wait(timeout) and self.addr:
            return self
        self.kill()
        raise RuntimeError("worker did not become ready:\n" + self.text())

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if not self.addr and (match := _READY.search(line)):
                self.addr = f"{match.group(1)}:{match.group(2)}"
                self._ready.set()
        self._ready.set()  # exited: stop waiting

    def text(self) -> str:
        """Everything the process printed (complete once it has exited)."""
        if self._drain is not None and self.proc is not None and self.proc.poll() is not None:
            self._drain.join(5)
        return "".join(self.output)

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
                 name: str = "tts-worker-0", cwd: Path | None = None) -> None:
        super().__init__(*args, env=env, cwd=cwd)
        self.name = name

    def command(self) -> list[str]:
        return [*super().command(), "--name", self.name]


class OrchestratorProcess(ServiceProcess):
    """An orchestrator; ``addr`` is its HTTP/WebSocket ``host:port``."""

    subcommand = "orchestrator"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}/ws"
