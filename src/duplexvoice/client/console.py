"""The console side of the WebSocket client: playback through the sound card when one
seems present (``find_player``, ``Player``; without one the callers write WAV files),
and the lines of standard input (``stdin_lines``). The console session itself is
:mod:`.interactive`.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import os
import select
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from duplexvoice.wire.protocol import OUTPUT_SAMPLE_RATE

# -- playback ------------------------------------------------------------------------


def _has_alsa_device(dev_snd: Path) -> bool:
    if not dev_snd.is_dir():
        return False
    try:
        return any(dev_snd.iterdir())
    except OSError:
        return False


def _has_pulse(env: Mapping[str, str]) -> bool:
    if env.get("PULSE_SERVER"):
        return True
    runtime = env.get("XDG_RUNTIME_DIR")
    return runtime is not None and runtime != "" and Path(runtime, "pulse", "native").exists()


def find_player(env: Mapping[str, str] | None = None,
                dev_snd: Path = Path("/dev/snd")) -> list[str] | None:
    """A command that plays raw PCM16LE mono 48 kHz from stdin, or None when no player
    is installed or no sound device seems present (then audio goes to WAV files).
    ``DUPLEXVOICE_NO_PLAYER=1`` forces None."""
    env = os.environ if env is None else env
    if env.get("DUPLEXVOICE_NO_PLAYER"):
        return None
    path = env.get("PATH", os.defpath)
    alsa = _has_alsa_device(dev_snd)
    pulse = _has_pulse(env)
    rate = str(OUTPUT_SAMPLE_RATE)
    if alsa and (exe := shutil.which("aplay", path=path)):
        return [exe, "-q", "-t", "raw", "-f", "S16_LE", "-r", rate, "-c", "1"]
    if pulse and (exe := shutil.which("paplay", path=path)):
        return [exe, "--raw", f"--rate={rate}", "--channels=1", "--format=s16le"]
    if (alsa or pulse) and (exe := shutil.which("ffplay", path=path)):
        return [exe, "-nodisp", "-autoexit", "-loglevel", "quiet",
                "-f", "s16le", "-ar", rate, "-ac", "1", "-i", "-"]
    return None


class Player:
    """A player subprocess fed with PCM as it arrives (writes never block the loop)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Player:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return self

    def write(self, pcm: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        proc.stdin.write(pcm)

    async def close(self, wait_s: float = 30.0, *, abort: bool = False) -> None:
        """Let the player finish what it was given (up to ``wait_s``), or with ``abort``
        stop it at once."""
        proc = self._proc
        if proc is None:
            return
        if abort:
            if proc.returncode is None:
                proc.kill()
            if proc.stdin is not None:
                proc.stdin.close()
        elif proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), wait_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- standard input ------------------------------------------------------------------


_LINES_QUEUED = 64  # lines read ahead of the session; the reader waits beyond that


def stdin_lines(loop: asyncio.AbstractEventLoop, fd: int = 0) -> asyncio.Queue[str | None]:
    """Lines of ``fd`` (standard input), then None at the end of input (Ctrl-D, the end
    of a pipe or file, or a read error).

    A daemon thread reads with ``os.read``: a blocking read must not hold up the exit
    (an executor thread would be joined at shutdown, forever on an open terminal), and
    unlike ``sys.stdin`` a bare ``os.read`` holds no lock that interpreter shutdown
    needs. The thread waits while the queue is full; it stops when the loop is gone.
    """
    queue: asyncio.Queue[str | None] = asyncio.Queue(_LINES_QUEUED)

    def put(item: str | None) -> bool:
        coro = queue.put(item)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop is closed
            coro.close()
            return False
        try:
            future.result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            return False  # the loop is shutting down
        return True

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:  # a non-blocking descriptor inherited from the shell
                select.select([fd], [], [])
                continue
            except OSError:  # e.g. EIO from a terminal that went away: the end of input
                chunk = b""
            pending += decoder.decode(chunk, final=not chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                if not put(line):
                    return
            if not chunk:
                break
        if not pending or put(pending):
            put(None)

    with _signals_blocked():  # the thread starts with them blocked (it inherits the mask)
        threading.Thread(target=pump, name="stdin-reader", daemon=True).start()
    return queue


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread while the block runs, so that threads
    started in it never take them. The kernel gives a signal to any thread that does
    not block it; Python runs its handler only on the main thread, whose event loop
    sleeps on until its next event, which for an idle console never comes (Ctrl-C
    seen only at the next message from the server, or never)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
