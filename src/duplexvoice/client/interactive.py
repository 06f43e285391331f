"""``duplexvoice say -i``: a console session. Lines typed (or piped in) are spoken in
order; ``/pause /resume /stop /voice [ID] /quit`` control the session. Audio plays as
it arrives, or goes to ``utterance-<id>.wav`` files.

Input is read once the server is ready: its first ``state`` (the worker session is
up) and, with ``--voice``, the config check of :mod:`.messages` passed (a refused
voice ends the session before anything is spoken).

How it ends:

- end of input (Ctrl-D, the end of a pipe): every line already sent is spoken and
  every command answered first (see ``ConsoleView``), then the session closes, exit
  0. A pause met after the end of input is resumed (nothing else could resume it).
- ``/quit``: at once, exit 0.
- Ctrl-C: at once; ``asyncio.run`` raises ``KeyboardInterrupt``, which the CLI turns
  into exit 130 (cancellation closes the socket and stops the player on the way out).
- the server ends the session, or refuses the voice: its error and reason are shown,
  exit 1. An utterance that failed (``utterance_end error``) also makes the exit code
  1 at the end, though the session goes on.

The pure part, what is shown and sent for what the server says, is
:class:`~duplexvoice.client.console_view.ConsoleView`; ``interactive`` carries it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from duplexvoice.client.console import Player, find_player, stdin_lines
from duplexvoice.client.console_view import ConsoleView, Output, Play, WriteWav
from duplexvoice.client.messages import PROBE, config_message, load_message
from duplexvoice.client.worker_client import write_wav
from duplexvoice.client.ws_client import (
    DEFAULT_URL,
    ConnectFailed,
    connect,
    list_voices,
    sender,
)
from duplexvoice.wire.protocol import encode_json

if TYPE_CHECKING:
    import aiohttp

HELP: Final = ("Type a line to speak it. Commands: /pause /resume /stop /voice [ID] /quit. "
               "Ctrl-D: speak what is left, then quit. Ctrl-C: quit now.")
VOICE_USAGE: Final = "usage: /voice MODEL_ID (from the next line on)"

Command = dict[str, Any] | Literal["quit", "voices", "help"] | None


def parse_command(line: str) -> Command:
    """What a typed line stands for: a message to send, "quit", "voices" (``/voice``
    alone: show the usage and the voices), "help", or None (blank line).
    ``ValueError`` for an unknown command."""
    line = line.strip()
    if not line:
        return None
    if not line.startswith("/"):
        return {"type": "text", "text": line}
    word, _, rest = line.partition(" ")
    word, rest = word.lower(), rest.strip()
    if word in ("/quit", "/exit", "/q"):
        return "quit"
    if word in ("/help", "/?"):
        return "help"
    if word in ("/pause", "/resume", "/stop"):
        return {"type": "control", "command": word[1:].upper()}
    if word == "/voice":
        return {"type": "config", "voice": rest} if rest else "voices"
    raise ValueError(f"unknown command {word!r}. {HELP}")


# -- the session (I/O) -----------------------------------------------------------------


async def interactive(url: str = DEFAULT_URL, *, voice: str = "", api_key: str = "",
                      out_dir: Path | None = None,
                      player: list[str] | Literal["auto"] | None = "auto",
                      timeout_s: float = 30.0) -> int:
    """A console session on standard input and output; returns an exit code.

    Audio is played as it arrives (``player``; "auto": ``find_player()``) or written
    to ``utterance-<id>.wav`` in ``out_dir`` (default: the current directory).
    ``timeout_s``: how long to wait for the server when it owes an answer (the
    session's start, the audio of the last lines at the end of input)."""
    import aiohttp

    command = find_player() if player == "auto" else player
    out_dir = Path.cwd() if out_dir is None else out_dir
    if not command:
        out_dir.mkdir(parents=True, exist_ok=True)
    sink = await Player(command).start() if command else None
    view = ConsoleView(None if sink else out_dir, probing=bool(voice))
    where = (f"playing with {Path(command[0]).name}" if command
             else f"writing utterance-<id>.wav files to {out_dir}")
    finished = False  # False on the way out of Ctrl-C: stop the player at once
    try:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, url, api_key)
            async with ws:
                print(f"connected to {url}; {where}", flush=True)
                code = await _Session(ws, http, view, sink, url=url, voice=voice,
                                      api_key=api_key, timeout_s=timeout_s).run()
        finished = True
        return code
    except ConnectFailed as exc:
        print(f"duplexvoice say: {exc}", file=sys.stderr)
        return 1
    finally:
        if sink is not None:
            await sink.close(abort=not finished)


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession,
                 view: ConsoleView, sink: Player | None, *, url: str, voice: str,
                 api_key: str, timeout_s: float) -> None:
        self.ws, self.http, self.view, self.sink = ws, http, view, sink
        self.url, self.voice, self.api_key, self.timeout_s = url, voice, api_key, timeout_s
        self.send = sender(ws)
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()  # something the main loop waits on has changed
        self.answered = asyncio.Event()  # a message from the server was handled
        self.heard_at = self.loop.time()  # the server's last message
        self.eof_at: float | None = None
        self.quit = False

    async def run(self) -> int:
        # A failed send means the server already closed: the pump reads why.
        config = config_message(self.voice, binary=True)
        if config is not None and await self.send(encode_json(config)) and self.voice:
            await self.send(encode_json(PROBE))
        pump = asyncio.create_task(self._pump())
        reader: asyncio.Task[None] | None = None
        started = self.loop.time()
        code = 0
        try:
            while True:
                self.wake.clear()
                for task in (pump, reader):
                    if task is not None and task.done():
                        task.result()  # a bug in there: let it show
                deadline: float | None = None
                if self.view.over or self.view.refused:
                    code = 1
                    break
                if not self.view.ready:
                    deadline = started + self.timeout_s
                    if self.loop.time() >= deadline:
                        self._print(f"[the server is not ready after {self.timeout_s:g} s]")
                        code = 1
                        break
                elif reader is None:
                    self._print(HELP)
                    reader = asyncio.create_task(self._read_input())
                elif self.quit:
                    break
                elif self.eof_at is not None:
                    if self.view.finished:
                        break
                    message, outputs = self.view.at_end_of_input()
                    self._carry_out(outputs)
                    if message is not None:
                        await self.send(encode_json(message))
                    deadline = max(self.heard_at, self.eof_at) + self.timeout_s
                    if self.loop.time() >= deadline:
                        self._print(f"[no answer from the server for {self.timeout_s:g} s: "
                                    "giving up]")
                        code = 1
                        break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self.wake.wait()
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            self.view.leave()
            await self.ws.close()  # also ends the pump's wait for a message
            await asyncio.wait({pump}, timeout=5.0)
            if not pump.done():
                pump.cancel()
            elif not pump.cancelled():
                pump.exception()  # retrieved: an error on the way out changes nothing
            self._carry_out(self.view.flush())
        if not self.view.sequence.ok:
            self._print(f"[warning: audio sequence gaps {self.view.sequence.gaps[:5]}]")
        if self.view.failed_utterances and code == 0:
            code = 1  # a script piping lines in learns that not everything was spoken
        return code

    async def _pump(self) -> None:
        import aiohttp

        try:
            async for msg in self.ws:
                self.heard_at = self.loop.time()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._carry_out(self.view.on_binary(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self._carry_out(self.view.on_message(load_message(msg.data)))
                else:  # a protocol error: the connection is over
                    break
                self.wake.set()
                self.answered.set()
            self._carry_out(self.view.on_closed(self.ws.close_code))
        finally:
            self.wake.set()
            self.answered.set()

    async def _read_input(self) -> None:
        try:
            lines = stdin_lines(self.loop)
            while (line := await lines.get()) is not None:
                # In order: a line waits for the answer to the control before it.
                while True:
                    self.answered.clear()
                    if self.view.control_due is None or self.view.over:
                        break
                    try:
                        async with asyncio.timeout(self.timeout_s):
                            await self.answered.wait()
                    except TimeoutError:
                        self._carry_out(self.view.no_answer())
                if self.view.over or not await self._command(line):
                    return
            self.eof_at = self.loop.time()
        finally:
            self.wake.set()

    async def _command(self, line: str) -> bool:
        """Carry out one typed line; False when no more input should be read."""
        try:
            cmd = parse_command(line)
        except ValueError as exc:
            self._print(str(exc))
            return True
        if cmd is None:
            return True
        if cmd == "quit":
            self.quit = True
            return False
        if cmd == "help":
            self._print(HELP)
            return True
        if cmd == "voices":
            self._print(await self._voices())
            return True
        send, outputs = self.view.command(cmd)
        self._carry_out(outputs)
        # A failed send: the server closed; the pump shows what it said.
        return not send or await self.send(encode_json(cmd))

    async def _voices(self) -> str:
        try:
            voices = await list_voices(self.http, self.url, self.api_key)
        except ConnectFailed as exc:
            return f"{VOICE_USAGE}\n({exc})"
        return f"{VOICE_USAGE}\nvoices: {', '.join(voices) or 'none'}"

    def _carry_out(self, outputs: list[Output]) -> None:
        for item in outputs:
            if isinstance(item, Play):
                if self.sink is not None:
                    self.sink.write(item.pcm)
            elif isinstance(item, WriteWav):
                try:
                    write_wav(item.path, item.pcm)
                except OSError as exc:
                    self._print(f"[cannot write {item.path}: {exc}]")
            else:
                self._print(item.text)

    @staticmethod
    def _print(text: str) -> None:
        print(text, flush=True)


__all__ = ["HELP", "VOICE_USAGE", "interactive", "parse_command"]
