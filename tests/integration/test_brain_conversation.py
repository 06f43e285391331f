"""The default conversation end to end: the local language model (``duplexvoice brain``,
the packaged SmolLM2) answers the user, with Piper speaking and Whisper listening.

- A spoken question gets a spoken answer that is not the question said back.
- The session's history goes to the model: a recording proxy between the orchestrator
  and the real brain shows each request's messages. An interruption cuts the
  interrupted answer in the history to what was heard.
- Through ``duplexvoice up`` (the default): the brain killed while a turn waits for it
  is a spoken apology and ``REPLY_FAILED``; the session goes on, ``up`` restarts the
  brain, and the next turn is answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from duplexvoice.launcher import BrainProcess, OrchestratorProcess, WorkerProcess
from duplexvoice.replies.config import DEFAULT_APOLOGY
from duplexvoice.replies.history import CUT_MARK
from duplexvoice.wire.ports import free_port
from tests.support.mic import MicClient, connected_mic
from tests.support.speech import SPEAKERS, say, silence
from tests.support.up_process import BANNER, UpProcess

pytestmark = pytest.mark.integration

STORY = "Tell me a long story about a dragon who lives by the sea."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


class RecordingProxy:
    """Between the orchestrator and the brain: keeps each chat request's JSON body and
    passes request and (streamed) response through unchanged. Its own event loop in a
    thread, so it outlives each test's loop."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(json.loads(body))
        async with self._http.post(f"{self.upstream}/chat/completions", data=body,
                                   headers={"Content-Type": "application/json"}) as up:
            response = web.StreamResponse(status=up.status, headers={
                "Content-Type": up.headers.get("Content-Type", "text/event-stream")})
            await response.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the orchestrator stopped reading (an interrupted answer)
            return response

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._http.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def brain() -> Iterator[BrainProcess]:
    proc = BrainProcess("--port", "0").start(timeout=120)
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def proxy(brain: BrainProcess) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(brain.base_url)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def stack(real_worker: WorkerProcess, proxy: RecordingProxy) -> Iterator[OrchestratorProcess]:
    orch = OrchestratorProcess("--workers", real_worker.addr,
                               "--reply-local-url", proxy.base_url).start()
    yield orch
    orch.terminate()


@pytest.fixture
async def mic(stack: OrchestratorProcess, proxy: RecordingProxy) -> AsyncIterator[MicClient]:
    proxy.requests.clear()
    async with connected_mic(stack.ws_url) as client:
        yield client


def reply_text(mic: MicClient, uid: int) -> str:
    return " ".join(m["text"] for m in mic.messages("reply") if m["utterance_id"] == uid)


async def test_a_spoken_question_gets_a_spoken_answer_from_the_local_model(
        mic: MicClient, proxy: RecordingProxy) -> None:
    question = "What should I cook for dinner tonight?"
    feeding = asyncio.create_task(mic.feed(np.concatenate([silence(0.3),
                                                           say(question, SPEAKERS[0])]),
                                           then_silence_s=2.0))
    final = await mic.until(lambda m: m["type"] == "transcript" and m["final"])
    heard = final.message["text"]
    assert {"cook", "dinner"} <= set(words(heard)), heard
    reply = await mic.until(lambda m: m["type"] == "reply", timeout=60)
    uid = reply.message["utterance_id"]
    end = await mic.until(lambda m: m["type"] == "utterance_end" and m["utterance_id"] == uid,
                          timeout=90)
    assert end.message["reason"] == "completed" and end.message["frames"] > 10
    answer = reply_text(mic, uid)
    assert words(answer) and words(answer) != words(heard), answer  # not an echo
    assert not mic.messages("error")
    await feeding
    # The model was asked with the system prompt and what was heard.
    (request,) = proxy.requests
    assert request["stream"] is True
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert request["messages"][1]["content"] == heard


async def test_the_history_goes_to_the_model_cut_to_what_was_heard(
        mic: MicClient, proxy: RecordingProxy) -> None:
    await mic.ws.send_json({"type": "user_text", "text": STORY})
    first = await mic.until(lambda m: m["type"] == "reply", timeout=60)
    uid = first.message["utterance_id"]
    await mic.until(lambda m: len(mic.frames(uid)) >= 25, timeout=60)  # half a second
    await mic.ws.send_json({"type": "user_text", "text": "Stop. What is two plus two?"})
    cut = await mic.until(lambda m: m["type"] == "interrupt", timeout=30)
    assert cut.message["utterance_id"] == uid
    second = await mic.until(lambda m: m["type"] == "reply" and m["utterance_id"] > uid,
                             timeout=60)
    await mic.until(lambda m: m["type"] == "utterance_end"
                    and m["utterance_id"] == second.message["utterance_id"], timeout=90)
    assert len(proxy.requests) == 2
    messages = proxy.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == STORY
    assert messages[3]["content"] == "Stop. What is two plus two?"
    # What the first answer said before the interruption, and no more: a prefix of the
    # text that was given to the voice (the local engine sends no "…" mark: the small
    # model imitates it).
    said = messages[2]["content"]
    assert not said.endswith(CUT_MARK), said
    spoken = said.strip()
    full = reply_text(mic, uid)
    assert " ".join(full.split()).startswith(" ".join(spoken.split())), (said, full)
    assert len(spoken) < len(" ".join(full.split())), (said, full)


# -- through up: the brain dies and comes back ----------------------------------------------


async def test_up_restarts_a_killed_brain_and_the_session_goes_on() -> None:
    with UpProcess() as up:  # the default: the local brain answers
        brain = await up.await_line(r"brain ready on http://([\d.]+:\d+) \(pid (\d+)\)",
                                    timeout=180)
        ws_url = (await up.await_line(BANNER, timeout=180)).group(2)
        pid = int(brain.group(2))
        async with connected_mic(ws_url) as mic:
            await mic.ws.send_json({"type": "user_text", "text": "Hello there!"})
            one = await mic.until(lambda m: m["type"] == "reply", timeout=60)
            await mic.until(lambda m: m["type"] == "utterance_end"
                            and m["utterance_id"] == one.message["utterance_id"],
                            timeout=90)
            # Frozen, so the next request waits on it; then gone.
            os.kill(pid, signal.SIGSTOP)
            after = len(up.lines)
            await mic.ws.send_json({"type": "user_text", "text": "What is the time?"})
            await mic.until(lambda m: m["type"] == "transcript" and m["turn"] == 2)
            os.kill(pid, signal.SIGKILL)
            failed = await mic.until(lambda m: m["type"] == "error", timeout=60)
            assert failed.message["code"] == "REPLY_FAILED", failed.message
            apology = await mic.until(lambda m: m["type"] == "reply"
                                      and m["turn"] == 2, timeout=30)
            assert apology.message["text"].strip() == DEFAULT_APOLOGY
            await mic.until(lambda m: m["type"] == "utterance_end"
                            and m["utterance_id"] == apology.message["utterance_id"],
                            timeout=60)
            await up.await_line(r"brain ready again on", timeout=120, after=after)
            await mic.ws.send_json({"type": "user_text", "text": "Are you back?"})
            three = await mic.until(lambda m: m["type"] == "reply" and m["turn"] == 3,
                                    timeout=60)
            end = await mic.until(lambda m: m["type"] == "utterance_end"
                                  and m["utterance_id"] == three.message["utterance_id"],
                                  timeout=90)
            assert end.message["reason"] == "completed"
            assert three.message["text"].strip() != DEFAULT_APOLOGY
            assert [m["code"] for m in mic.messages("error")] == ["REPLY_FAILED"]
