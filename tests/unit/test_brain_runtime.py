"""The brain's bridge between llama.cpp's blocking, callback-driven requests and
asyncio: admission, chunks in order, cancellation at the next token, errors as
events. A stand-in for the model (no model, no sockets)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from duplexvoice.brain.config import BrainConfig
from duplexvoice.brain.runtime import BrainBusy, BrainClosed, BrainRuntime, Generation

pytestmark = pytest.mark.unit

WAIT_S = 5.0


def chunk(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class FakeModel:
    """``handle_chat_completions`` as llama.cpp's: blocks its thread, calls back per
    token, stops when the callback returns True. Each token waits for ``gate``
    (set: run free); ``tokens`` caps the answer (None: until stopped)."""

    def __init__(self, tokens: int | None = 3, raises: Exception | None = None) -> None:
        self.tokens = tokens
        self.raises = raises
        self.gate = threading.Event()
        self.gate.set()
        self.made = 0
        self.stopped_early = threading.Event()
        self.bodies: list[dict[str, Any]] = []

    def handle_chat_completions(self, body: dict[str, Any], callback: Any) -> None:
        self.bodies.append(body)
        if self.raises is not None:
            raise self.raises
        i = 0
        while self.tokens is None or i < self.tokens:
            assert self.gate.wait(WAIT_S)
            self.made += 1
            if callback(chunk(f"t{i}")):
                self.stopped_early.set()
                return
            i += 1
        callback(chunk(finish="stop"))


def runtime(model: FakeModel, **options: Any) -> BrainRuntime:
    made = BrainRuntime(BrainConfig(niceness=0, **options), Path("/m/fake.gguf"))
    made.use_server(model)
    return made


async def read_all(generation: Generation) -> list[dict[str, Any]]:
    async def drain() -> list[dict[str, Any]]:
        return [event async for event in generation.events()]

    return await asyncio.wait_for(drain(), WAIT_S)


async def test_chunks_arrive_in_order_and_the_end_is_marked() -> None:
    model = FakeModel(tokens=3)
    brain = runtime(model)
    generation = brain.start({"messages": []})
    events = await read_all(generation)
    await asyncio.wait_for(generation.ended, WAIT_S)
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["t0", "t1", "t2", None]
    assert (generation.tokens, generation.finished, generation.failed) == (3, True, False)
    assert brain.active == 0
    await brain.close(0)


async def test_cancel_stops_the_model_at_its_next_token() -> None:
    model = FakeModel(tokens=None)  # would never end on its own
    brain = runtime(model)
    generation = brain.start({"messages": []})
    seen = 0
    async for _event in generation.events():
        seen += 1
        if seen == 2:
            break
    generation.cancel()
    await asyncio.wait_for(generation.ended, WAIT_S)
    assert model.stopped_early.is_set()
    assert not generation.finished and generation.tokens >= 2
    assert brain.active == 0
    await brain.close(0)


async def test_admission_is_bounded_and_a_place_frees_when_the_thread_returns() -> None:
    model = FakeModel(tokens=2)
    model.gate.clear()  # the first request holds its place
    brain = runtime(model, parallel=1, max_queued=1)
    first, second = brain.start({"n": 1}), brain.start({"n": 2})
    with pytest.raises(BrainBusy, match="busy"):
        brain.start({"n": 3})
    assert brain.active == 2
    model.gate.set()
    await read_all(first)
    await read_all(second)
    await asyncio.wait_for(asyncio.gather(first.ended, second.ended), WAIT_S)
    third = brain.start({"n": 4})
    await read_all(third)
    assert [b["n"] for b in model.bodies] == [1, 2, 4]
    await brain.close(0)


async def test_a_refused_or_failing_request_is_an_error_event() -> None:
    brain = runtime(FakeModel(raises=ValueError("Expected 'messages' to be an array")))
    events = await read_all(brain.start({"messages": "x"}))
    assert events == [{"error": {"code": 400, "type": "invalid_request_error",
                                 "message": "Expected 'messages' to be an array"}}]
    broken = runtime(FakeModel(raises=RuntimeError("boom")))
    generation = broken.start({})
    events = await read_all(generation)
    assert events[0]["error"]["code"] == 500 and "boom" in events[0]["error"]["message"]
    assert generation.failed
    await brain.close(0)
    await broken.close(0)


async def test_close_stops_what_is_running_and_refuses_more() -> None:
    model = FakeModel(tokens=None)
    brain = runtime(model)
    generation = brain.start({})
    await asyncio.wait_for(generation.queue.get(), WAIT_S)  # it is generating
    await asyncio.wait_for(brain.close(grace_s=0), WAIT_S)
    assert model.stopped_early.is_set() and generation.ended.done()
    with pytest.raises(BrainClosed):
        brain.start({})
