"""The OpenAI-compatible engine against a real local streaming server (tests/support/
fake_llm.py): clauses before the reply is done, prompt cancellation, history across
turns and after an interruption, and every failure as a ReplyError that leaves the
engine working. Synchronized on the server's events; every wait has a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from duplexvoice.replies import (
    History,
    OpenAIEngine,
    ReplyConfig,
    ReplyError,
    ReplyStream,
    heard_prefix,
    make_engine,
)
from tests.support.fake_llm import FakeLLM, Received, Script, free_port

pytestmark = pytest.mark.integration

WAIT_S = 5.0  # bounds a failure only
KEY = "sk-test-secret-key-0123456789"
STORY = (
    "Sure, I can help with that. First, open the settings menu on your phone, then tap "
    "privacy and security. After that, choose location services and turn them off."
)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM() as server:
        yield server


@pytest.fixture
async def engine(llm: FakeLLM) -> AsyncIterator[OpenAIEngine]:
    config = ReplyConfig(
        engine="openai", base_url=llm.base_url, model="fake-model", api_key=KEY,
        system_prompt="Be brief.", read_timeout_s=0.5, connect_timeout_s=2.0,
        # The engine's own errors, raised as they come (the apology and the first-clause
        # deadline are ReplyStream's, tested in tests/unit/test_replies_stream.py).
        apology="", first_clause_timeout_s=None,
    )
    made = make_engine(config)
    assert isinstance(made, OpenAIEngine)
    yield made
    await made.close()


async def next_clause(stream: ReplyStream) -> str:
    return await asyncio.wait_for(stream.__anext__(), WAIT_S)


async def read_all(stream: ReplyStream) -> list[str]:
    async def drain() -> list[str]:
        return [clause async for clause in stream]

    return await asyncio.wait_for(drain(), WAIT_S)


async def test_first_clause_arrives_while_the_server_is_still_sending(
    llm: FakeLLM, engine: OpenAIEngine
) -> None:
    # Held after "Sure, I can help with that. First": the first sentence is complete
    # (the space of " First" confirms its ".") and must reach us before the rest.
    llm.script(Script(text=STORY, hold_after=9))
    history = History()
    stream = engine.reply(history, "How do I turn off location?")
    first = await next_clause(stream)
    request = await llm.next_request()
    assert first == "Sure, I can help with that."
    assert request.held.is_set() and not request.finished.is_set()
    assert request.sent == 9 < len(request.script.token_list())
    request.release.set()
    rest = await read_all(stream)
    assert [first, *rest] == [
        "Sure, I can help with that.",
        "First, open the settings menu on your phone,",
        "then tap privacy and security.",
        "After that, choose location services and turn them off.",
    ]
    assert stream.complete and stream.full_text == STORY
    # What the server got: the model, streaming, the key, system prompt + user turn.
    assert request.body["model"] == "fake-model" and request.body["stream"] is True
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How do I turn off location?"},
    ]
    assert history.messages()[-1] == {"role": "assistant", "content": STORY}


async def test_aclose_cancels_the_server_stream_promptly(
    llm: FakeLLM, engine: OpenAIEngine
) -> None:
    llm.script(Script(text=STORY, hold_after=9))
    history = History()
    stream = engine.reply(history, "Tell me.")
    assert await next_clause(stream) == "Sure, I can help with that."
    request = await llm.next_request()
    reader = asyncio.create_task(stream.__anext__())  # blocked: the server holds
    await asyncio.wait_for(request.held.wait(), WAIT_S)
    await asyncio.wait_for(stream.aclose(), WAIT_S)
    await asyncio.wait_for(request.disconnected.wait(), 2.0)  # the server saw us go
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, WAIT_S)
    assert not request.finished.is_set()
    assert history.turns[-1].text == "Sure, I can help with that."
    assert stream.turn_index == len(history.turns) - 1


async def test_history_across_turns_and_after_an_interruption(
    llm: FakeLLM, engine: OpenAIEngine
) -> None:
    history = History()
    llm.script(
        Script(text="Paris is the capital of France. It has about two million people."),
        Script(text="It is on the Seine."),
        Script(text="You are welcome."),
    )
    first = engine.reply(history, "What is the capital of France?")
    assert await read_all(first) == [
        "Paris is the capital of France.", "It has about two million people.",
    ]
    # The user barged in 1.2 s into the 4 s of audio of the whole first reply: the
    # orchestrator keeps only what was heard.
    heard = heard_prefix(first.full_text, played_ms=1200, total_ms=4000)
    assert heard == "Paris is the capital"
    assert first.turn_index is not None
    assert history.truncate_assistant(first.turn_index, heard)

    second = engine.reply(history, "Which river?")
    assert await read_all(second) == ["It is on the Seine."]
    third = engine.reply(history, "Thanks!")
    assert await read_all(third) == ["You are welcome."]

    requests = [await llm.next_request() for _ in range(3)]
    assert requests[1].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital…"},
        {"role": "user", "content": "Which river?"},
    ]
    assert requests[2].messages[-3:] == [
        {"role": "user", "content": "Which river?"},
        {"role": "assistant", "content": "It is on the Seine."},
        {"role": "user", "content": "Thanks!"},
    ]


async def test_an_interruption_before_anything_was_heard(
    llm: FakeLLM, engine: OpenAIEngine
) -> None:
    history = History()
    llm.script(Script(text=STORY, hold_after=9), Script(text="Okay."))
    stream = engine.reply(history, "Tell me.")
    first = await next_clause(stream)
    await stream.aclose()  # the user spoke before the first frame played
    assert stream.turn_index is not None
    history.truncate_assistant(stream.turn_index, heard_prefix(first, 0, None))
    assert await read_all(engine.reply(history, "Never mind.")) == ["Okay."]
    await llm.next_request()
    second = await llm.next_request()
    assert second.messages[1:] == [
        {"role": "user", "content": "Tell me."},
        {"role": "assistant", "content": "…"},
        {"role": "user", "content": "Never mind."},
    ]


FAILURES = [
    (Script(fail="http500"), "HTTP 500: The model is overloaded", True),
    (Script(fail="http401"), "HTTP 401 (check the API key)", False),
    (Script(fail="malformed", fail_after=2), "malformed stream", False),
    (Script(fail="close", fail_after=2), "connection to the reply service was lost", True),
    (Script(fail="no_done", fail_after=2), "ended its stream before", True),
    (Script(fail="error_event", fail_after=2), "failed: generation crashed", True),
    (Script(fail="hang"), "did not answer in time", True),
]


@pytest.mark.parametrize(("script", "message", "retryable"), FAILURES,
                         ids=[s.fail for s, _, _ in FAILURES])
async def test_failures_are_reply_errors_and_the_engine_keeps_working(
    llm: FakeLLM, engine: OpenAIEngine, script: Script, message: str, retryable: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = History()
    llm.script(script, Script(text="Back to normal."))
    with caplog.at_level(logging.DEBUG), pytest.raises(ReplyError) as caught:
        await read_all(engine.reply(history, "Hello?"))
    error = caught.value
    assert message in str(error)
    assert error.retryable == retryable
    assert KEY not in str(error) and KEY not in repr(error) and KEY not in caplog.text
    failed: Received = await llm.next_request()
    if script.fail == "hang":  # the client gave up and closed the connection
        await asyncio.wait_for(failed.disconnected.wait(), WAIT_S)
    # Next turn: a fresh request on the same engine works.
    assert await read_all(engine.reply(history, "Again?")) == ["Back to normal."]
    after = await llm.next_request()
    assert [m["content"] for m in after.messages[1:]] == ["Hello?\nAgain?"]


async def test_a_server_that_ignores_stream_still_gets_answered(
    llm: FakeLLM, engine: OpenAIEngine
) -> None:
    llm.script(Script(text="One whole answer. In one piece.", fail="json"))
    assert await read_all(engine.reply(History(), "Hi")) == [
        "One whole answer.", "In one piece.",
    ]


async def test_connection_refused() -> None:
    engine = OpenAIEngine(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m",
                          api_key=KEY)
    try:
        with pytest.raises(ReplyError, match="unreachable") as caught:
            await read_all(engine.reply(History(), "Hello?"))
        assert caught.value.retryable and KEY not in str(caught.value)
    finally:
        await engine.close()


async def test_sessions_share_the_engine_with_separate_histories(
    llm: FakeLLM, engine: OpenAIEngine
) -> None:
    llm.script(Script(text="Answer one.", delay_s=0.01), Script(text="Answer two."))
    alice, bob = History(), History()
    replies = await asyncio.gather(
        read_all(engine.reply(alice, "Alice asks.")),
        read_all(engine.reply(bob, "Bob asks.")),
    )
    assert sorted(r[0] for r in replies) == ["Answer one.", "Answer two."]
    for request in [await llm.next_request(), await llm.next_request()]:
        assert len(request.messages) == 2  # each saw only its own session's turn
    assert alice.turns[0].text == "Alice asks." and bob.turns[0].text == "Bob asks."
