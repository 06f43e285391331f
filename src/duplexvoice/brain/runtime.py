"""The model: llama.cpp's server as a Python object (``xllamacpp``), loaded once,
generating for several requests at once, bridged into asyncio.

How a request runs: ``Server.handle_chat_completions`` blocks its calling thread
(without the GIL) until the answer is complete, calling a callback with each chunk;
llama.cpp's own loop thread batches the slots. So each request takes one thread of a
pool sized to the admitted requests, the callback hands chunks to the event loop,
and its return value is the way to stop: once the request's ``cancelled`` event is
set (the client went away, or shutdown), the next chunk returns True, llama.cpp
drops the task and frees the slot. A request is admitted only while fewer than
``parallel + max_queued`` run; the others get :class:`BrainBusy` at once.

llama.cpp also starts its own HTTP listener, which cannot be turned off; it listens
on a Unix socket in a private folder (mode 0700), removed at close, so that the only
way in is our server (its limits and checks).

Priorities: the model is created on a thread ``niceness`` steps lower, so its loop
thread and compute threads inherit that priority (Linux); the request threads are
lowered too. Speech synthesis (the worker's model threads run at its
``synthesis_niceness``) and recognition get the cores first.

Errors::

    BrainError          base class
     +-- ModelLoadError the model file cannot be loaded (the message says why)
     +-- BrainBusy      every slot and queue place is taken: retry later (HTTP 503)
     +-- BrainClosed    shutting down (HTTP 503)
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from duplexvoice.brain.config import BrainConfig
from duplexvoice.brain.protocol import completion_tokens, model_error
from duplexvoice.threads import call_at_low_priority, lower_thread_priority

log = logging.getLogger(__name__)

PREWARM_BODY: Final = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4,
                       "stream": True}
_QUEUE_SLACK: Final = 8  # events beside the tokens: role, finish, usage, error
CLOSE_WAIT_S: Final = 5.0  # for request threads to return once cancelled


class BrainError(Exception):
    pass


class ModelLoadError(BrainError):
    pass


class BrainBusy(BrainError):
    pass


class BrainClosed(BrainError):
    pass


class _End:
    """Queue marker: the request's thread has returned."""


_END: Final = _End()


class Generation:
    """One admitted request: its chunks for the loop, its stop flag for the model."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_events: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | _End] = asyncio.Queue(max_events)
        self.cancelled = threading.Event()
        self.tokens = 0  # answer tokens the model made
        self.finished = False  # a finish_reason came: the model completed the answer
        self.failed = False  # the model reported an error
        self.ended: asyncio.Future[None] = loop.create_future()  # its thread returned

    def cancel(self) -> None:
        """Stop the model at its next token (the client went away, or shutdown)."""
        self.cancelled.set()

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """The model's events (chunks, or one ``{"error": ...}``) until its thread has
        returned and its place is free. Closing this early does not stop the model:
        :meth:`cancel` does."""
        while True:
            item = await self.queue.get()
            if isinstance(item, _End):
                return
            yield item

    def on_chunk(self, chunk: dict[str, Any]) -> bool:
        """llama.cpp's callback (on the request's thread): True stops the request."""
        if self.cancelled.is_set():
            return True
        # Counted here, as the model makes them (read on the loop once ``ended``).
        self.tokens += completion_tokens(chunk)
        self.finished = self.finished or any(
            isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or [])
        self.failed = self.failed or "error" in chunk
        self.loop.call_soon_threadsafe(self.put, chunk)
        return False

    def put(self, item: dict[str, Any] | _End) -> None:
        """On the loop: queue an event (the queue is bounded by the token cap)."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # cannot happen within max_tokens: never grow past it
            self.cancelled.set()


class BrainRuntime:
    """The loaded model; :meth:`generate` streams one request's events."""

    def __init__(self, config: BrainConfig, model_path: Path) -> None:
        self.config = config
        self.model_path = model_path
        self.model_name = config.served_name(model_path)
        self.ready = False
        self._server: Any = None
        self._socket_dir: Path | None = None
        self._closed = False
        self._generations: set[Generation] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=config.max_requests, thread_name_prefix="brain-request",
            initializer=lower_thread_priority, initargs=(config.niceness,))

    # -- start and stop -------------------------------------------------------------

    def load(self) -> float:
        """Load the model (blocking); seconds taken. :class:`ModelLoadError` if it fails."""
        import xllamacpp  # here only: the orchestrator never imports the model runtime

        started = time.perf_counter()
        self._socket_dir = Path(tempfile.mkdtemp(prefix="duplexvoice-brain-"))
        params = self._params(xllamacpp.CommonParams())
        try:
            self._server = call_at_low_priority(lambda: xllamacpp.Server(params),
                                                self.config.niceness, name="brain-load")
        except (RuntimeError, ValueError) as exc:
            self._remove_socket_dir()
            raise ModelLoadError(
                f"cannot load {self.model_path}: llama.cpp refused it ({exc}); a truncated "
                "file, or a model this llama.cpp cannot run? --log-level DEBUG shows "
                "llama.cpp's own log") from None
        return time.perf_counter() - started

    def use_server(self, server: Any) -> None:
        """Run requests on ``server`` (anything with llama.cpp's
        ``handle_chat_completions(body, callback)``) instead of loading the model: a
        stand-in for unit tests."""
        self._server = server

    def _params(self, params: Any) -> Any:
        config = self.config
        assert self._socket_dir is not None
        params.model.path = str(self.model_path)
        params.offline = True  # never fetch anything from a model hub
        params.hostnames = [str(self._socket_dir / "llama.sock")]
        params.port = 0
        params.n_parallel = config.parallel
        params.n_ctx = config.context_tokens * config.parallel  # split among the slots
        params.n_predict = config.max_tokens
        params.cpuparams.n_threads = config.threads
        params.cpuparams_batch.n_threads = config.prompt_threads or config.threads
        params.cache_ram_mib = config.prompt_cache_mib
        params.cache_prompt = True
        params.endpoint_metrics = False
        params.verbosity = 0 if config.log_level != "DEBUG" else 3
        return params

    async def prewarm(self) -> float:
        """Run one short request (the first one is slow: buffers, caches); seconds."""
        started = time.perf_counter()
        generation = self.start(dict(PREWARM_BODY))
        try:
            async for event in generation.events():
                if (error := model_error(event)) is not None:
                    raise ModelLoadError(f"the model failed its first request: {error}")
        finally:
            generation.cancel()
        return time.perf_counter() - started

    async def close(self, grace_s: float) -> None:
        """Refuse new requests, let those in progress finish for up to ``grace_s``,
        stop the rest, then free the model."""
        self._closed = True
        self.ready = False
        running = [g.ended for g in self._generations]
        if running:
            await asyncio.wait(running, timeout=grace_s)
        for generation in list(self._generations):
            generation.cancel()
        # Each thread returns at its next chunk, a token's time away.
        stopped = asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True))
        try:
            await asyncio.wait_for(stopped, CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("the model did not stop its requests in %g s", CLOSE_WAIT_S)
            return  # freeing the model under a running request could crash: exit as is
        self._server = None  # llama.cpp's destructor stops its loop thread
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # -- requests -------------------------------------------------------------------

    def start(self, body: dict[str, Any]) -> Generation:
        """Admit a request and start it on a request thread; read its
        :meth:`Generation.events` and always :meth:`Generation.cancel` it at the end.
        :class:`BrainBusy` when every slot and queue place is taken,
        :class:`BrainClosed` when shutting down."""
        if self._closed or self._server is None:
            raise BrainClosed("the language model is not running")
        if len(self._generations) >= self.config.max_requests:
            raise BrainBusy(
                f"the language model is busy ({self.config.parallel} answers in progress "
                f"and {self.config.max_queued} waiting); retry later")
        loop = asyncio.get_running_loop()
        generation = Generation(loop, self.config.max_tokens + _QUEUE_SLACK)
        self._generations.add(generation)
        future = loop.run_in_executor(self._executor, self._run, body, generation)

        def ended(_: object) -> None:
            # Its place is free before its reader sees the end: a client's next request
            # never finds its own last one still counted.
            self._generations.discard(generation)
            generation.ended.set_result(None)
            generation.put(_END)

        future.add_done_callback(ended)
        return generation

    @property
    def active(self) -> int:
        """Admitted requests whose thread has not returned (generating or waiting)."""
        return len(self._generations)

    def _run(self, body: dict[str, Any], generation: Generation) -> None:
        """On a request thread: run the request, then mark its end."""
        try:
            self._server.handle_chat_completions(body, generation.on_chunk)
        except ValueError as exc:  # llama.cpp refused the request (std::invalid_argument)
            generation.on_chunk({"error": {"code": 400, "type": "invalid_request_error",
                                           "message": str(exc)}})
        except Exception as exc:  # a failing model fails this request only
            log.exception("the model failed a request")
            generation.on_chunk({"error": {"code": 500, "type": "server_error",
                                           "message": f"the model failed: {exc}"}})
