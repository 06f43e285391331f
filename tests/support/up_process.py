"""`duplexvoice up` as a user starts it, in a subprocess, with its output collected
line by line so a test can wait for a line (with a deadline) instead of sleeping."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Self

import aiohttp

READY = re.compile(r"worker ready on grpc://([\d.]+:\d+) \(pid (\d+)\)")
BANNER = re.compile(r"duplexvoice up: (http://[\d.]+:\d+) \(WebSocket (ws://[\d.]+:\d+/ws)\)")


class UpProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXVOICE_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duplexvoice", "up", "--port", "0", "--worker-port", "0",
             "--brain-port", "0",
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env={**clean, **(env or {})},
            start_new_session=True,  # a signal for the test, not for pytest's group
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.ended: list[list[str]] = []  # the streams that reached EOF
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._pump, args=(stream, into), daemon=True)
                         for stream, into in ((self.proc.stdout, self.lines),
                                              (self.proc.stderr, self.errors))]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: object, into: list[str]) -> None:
        assert hasattr(stream, "__iter__")
        for line in stream:
            with self._changed:
                into.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended.append(into)  # an ended stream stops every wait at once
            self._changed.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n-- stderr --\n" + "\n".join(self.errors)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 120.0,
                 after: int = 0) -> re.Match[str]:
        """The first stdout line from index ``after`` matching ``pattern``; fails on a
        deadline or once up's output has ended without it."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | bool | None:
            for line in self.lines[after:]:
                if match := regex.search(line):
                    return match
            return any(stream is self.lines for stream in self.ended)

        with self._changed:
            result = self._changed.wait_for(found, timeout)
        if not isinstance(result, re.Match):
            raise AssertionError(f"no line matching {regex.pattern!r}:\n{self.text}")
        return result

    async def await_line(self, pattern: str | re.Pattern[str], timeout: float = 120.0,
                         after: int = 0) -> re.Match[str]:
        return await asyncio.to_thread(self.wait_for, pattern, timeout, after)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may wait for a reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (not Linux): os.kill said it exists


async def speaks(ws_url: str, text: str = "Back again.", timeout: float = 30.0) -> bool:
    """A new session's text gets audio (a frame, JSON or binary) before any error."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await ws.send_json({"type": "text", "text": text})
        async with asyncio.timeout(timeout):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    return True
                if msg.type == aiohttp.WSMsgType.TEXT:
                    kind = msg.json().get("type")
                    if kind == "audio":
                        return True
                    if kind in ("error", "session_end"):
                        return False
    return False
