"""ReplyStream (clauses out, cancellation, history), the echo engine, the config and
make_engine, and the OpenAI engine's pure helpers. No sockets: text sources are
scripted async generators driven by the test."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import pytest
from pydantic import ValidationError

from duplexvoice.replies import (
    DEFAULT_SYSTEM_PROMPT,
    LOCAL_BRAIN_URL,
    LOCAL_SYSTEM_PROMPT,
    EchoEngine,
    History,
    OpenAIEngine,
    ReplyConfig,
    ReplyError,
    ReplyStream,
    make_engine,
    new_history,
)
from duplexvoice.replies.openai import ChunkError, display_url, error_text, parse_chunk, scrub
from tests.support.aio import settle

pytestmark = pytest.mark.unit

WAIT_S = 5.0  # bounds a failure only


class Source:
    """A text source the test feeds piece by piece: str, an exception, or None (end)."""

    def __init__(self) -> None:
        self.feed: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        self.started = False
        self.closed = False
        self.cancelled = False

    async def __call__(self) -> AsyncGenerator[str, None]:
        self.started = True
        try:
            while True:
                item = await self.feed.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


async def next_clause(stream: ReplyStream) -> str:
    return await asyncio.wait_for(stream.__anext__(), WAIT_S)


async def test_clauses_come_as_soon_as_they_are_complete() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history)
    reader = asyncio.create_task(stream.__anext__())
    source.feed.put_nowait("Hello there")
    source.feed.put_nowait(".")
    await settle()
    assert source.started and not reader.done()  # "." may still become "..."
    source.feed.put_nowait(" How are you")
    assert await asyncio.wait_for(reader, WAIT_S) == "Hello there."
    assert stream.full_text == "Hello there." and not stream.finished
    source.feed.put_nowait("?")
    source.feed.put_nowait(None)
    assert await next_clause(stream) == "How are you?"
    with pytest.raises(StopAsyncIteration):
        await next_clause(stream)
    assert stream.complete and stream.finished and source.closed
    assert stream.clauses == ("Hello there.", "How are you?")
    assert stream.turn_index == 1
    assert history.messages()[-1] == {"role": "assistant", "content": stream.full_text}


async def test_aclose_from_another_task_stops_a_blocked_reader_and_the_source() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history)
    source.feed.put_nowait("First sentence here. Second one")
    assert await next_clause(stream) == "First sentence here."
    reader = asyncio.create_task(stream.__anext__())
    await settle()
    assert not reader.done()  # waiting for the model
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, WAIT_S)
    assert source.cancelled and source.closed
    assert stream.finished and not stream.complete
    # What was delivered is the assistant's turn; the unfinished rest was never said.
    assert stream.turn_index == 1
    assert history.turns[-1].text == "First sentence here."
    await stream.aclose()  # again: nothing happens
    assert len(history.turns) == 2
    with pytest.raises(StopAsyncIteration):
        await next_clause(stream)


async def test_cancelling_the_reader_ends_the_stream_and_the_source() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history)
    source.feed.put_nowait("Heard this part. Still thinking")
    assert await next_clause(stream) == "Heard this part."
    reader = asyncio.create_task(stream.__anext__())
    await settle()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await settle()
    assert source.cancelled and source.closed and stream.finished
    assert history.turns[-1].text == "Heard this part."
    await stream.aclose()  # still fine afterwards


async def test_clauses_queued_but_not_read_are_not_said() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history)
    source.feed.put_nowait("One two three. Four five six. Seven eight. ")
    assert await next_clause(stream) == "One two three."
    await settle()  # the other two are cut and queued
    await stream.aclose()
    assert stream.full_text == "One two three."
    assert history.turns[-1].text == "One two three."


async def test_aclose_before_reading_starts_nothing_and_records_nothing() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history)
    await stream.aclose()
    assert not source.started and stream.turn_index is None
    assert [t.role for t in history.turns] == ["user"]
    with pytest.raises(StopAsyncIteration):
        await next_clause(stream)


async def test_closed_before_the_first_clause_records_no_turn() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history)
    reader = asyncio.create_task(stream.__anext__())
    source.feed.put_nowait("Thinking about")
    await settle()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, WAIT_S)
    assert stream.turn_index is None and len(history.turns) == 1


async def test_reply_error_after_some_clauses() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history)
    source.feed.put_nowait("Said this. Not this")
    source.feed.put_nowait(ReplyError("the service went away", retryable=True))
    assert await next_clause(stream) == "Said this."
    with pytest.raises(ReplyError, match="went away") as caught:
        await next_clause(stream)
    assert caught.value.retryable
    assert stream.finished and not stream.complete
    assert history.turns[-1].text == "Said this."
    with pytest.raises(StopAsyncIteration):
        await next_clause(stream)


async def test_a_bug_in_a_source_is_a_reply_error_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    stream = ReplyStream(source, History())
    source.feed.put_nowait(RuntimeError("internal detail"))
    with caplog.at_level(logging.ERROR), pytest.raises(ReplyError) as caught:
        await next_clause(stream)
    assert "internal detail" not in str(caught.value)
    assert "internal detail" in caplog.text


async def test_a_reader_that_stops_reading_stops_the_source() -> None:
    produced = 0

    async def endless() -> AsyncGenerator[str, None]:
        nonlocal produced
        while True:
            produced += 1
            yield "A short sentence. "

    stream = ReplyStream(endless, History(), max_pending=4)
    assert await next_clause(stream) == "A short sentence."
    await settle(50)
    assert produced <= 4 + 3  # bounded by the queue, not by the source
    await stream.aclose()


async def test_async_with_closes() -> None:
    source = Source()
    async with ReplyStream(source, History()) as stream:
        source.feed.put_nowait("Hello there. More")
        assert await next_clause(stream) == "Hello there."
    assert stream.finished and source.closed


async def test_empty_stream() -> None:
    stream = ReplyStream.empty()
    assert [c async for c in stream] == []
    assert stream.complete and stream.turn_index is None


# -- echo ------------------------------------------------------------------------------------


async def test_echo_says_back_what_it_heard_in_clauses() -> None:
    engine, history = EchoEngine(), History()
    said = "well, I think that the weather is nice, and it is warm today"
    stream = engine.reply(history, f"  {said}\n")
    clauses = [c async for c in stream]
    assert clauses == ["well, I think that the weather is nice,", "and it is warm today"]
    assert history.messages() == [
        {"role": "user", "content": said},
        {"role": "assistant", "content": said},
    ]
    assert engine.name == "echo"
    await engine.close()


async def test_echo_prefix_and_blank_input() -> None:
    engine, history = EchoEngine(prefix="You said:"), History()
    assert [c async for c in engine.reply(history, "hello")] == ["You said: hello"]
    assert [c async for c in engine.reply(history, " \n ")] == []
    assert len(history.turns) == 2  # the blank turn added nothing


# -- config and make_engine -------------------------------------------------------------------


def test_default_config_is_the_local_brain() -> None:
    config = ReplyConfig()
    engine = make_engine(config)
    assert isinstance(engine, OpenAIEngine)
    assert (engine.name, engine.base_url) == ("local", LOCAL_BRAIN_URL.rstrip("/"))
    assert engine.system_prompt == LOCAL_SYSTEM_PROMPT
    assert isinstance(make_engine(ReplyConfig(engine="echo")), EchoEngine)
    assert ReplyConfig(engine="openai").model == "gpt-4o-mini"  # the model has a default
    openai = make_engine(ReplyConfig(engine="openai"), environ={})
    assert isinstance(openai, OpenAIEngine)
    assert openai.system_prompt == DEFAULT_SYSTEM_PROMPT
    custom = make_engine(ReplyConfig(system_prompt="Be brief."))
    assert isinstance(custom, OpenAIEngine) and custom.system_prompt == "Be brief."
    history = new_history(config)
    assert (history.max_turns, history.max_chars) == (20, 8000)


def test_the_local_engine_sends_no_key() -> None:
    engine = make_engine(ReplyConfig(engine="local", api_key="sk-secret123456"),
                         environ={"OPENAI_API_KEY": "sk-other1234567"})
    assert isinstance(engine, OpenAIEngine)
    assert engine._key is None


# -- the first-clause deadline and the apology -------------------------------------------------


async def test_no_first_clause_by_the_deadline_fails_the_reply() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history, first_timeout_s=0.05)
    with pytest.raises(ReplyError, match=r"no answer within 0\.05 s") as caught:
        await next_clause(stream)
    assert caught.value.retryable
    await asyncio.wait_for(stream.aclose(), WAIT_S)
    assert source.cancelled and source.closed
    assert stream.turn_index is None and not stream.complete


async def test_the_deadline_is_only_for_the_first_clause() -> None:
    source = Source()
    stream = ReplyStream(source, History(), first_timeout_s=0.2)
    source.feed.put_nowait("One. ")
    assert await next_clause(stream) == "One."
    reader = asyncio.create_task(stream.__anext__())
    done, _ = await asyncio.wait({reader}, timeout=0.4)  # twice the deadline: no failure
    assert not done
    source.feed.put_nowait("Two.")
    source.feed.put_nowait(None)
    assert await asyncio.wait_for(reader, WAIT_S) == "Two."
    with pytest.raises(StopAsyncIteration):
        await next_clause(stream)
    assert stream.complete


async def test_a_failure_before_the_first_clause_says_the_apology_then_fails() -> None:
    source, history = Source(), History()
    history.add_user("hi")
    stream = ReplyStream(source, history, apology="  Sorry,  not now. ")
    source.feed.put_nowait(ReplyError("the reply service is unreachable", retryable=True))
    assert await next_clause(stream) == "Sorry, not now."
    with pytest.raises(ReplyError, match="unreachable"):
        await next_clause(stream)
    with pytest.raises(StopAsyncIteration):
        await next_clause(stream)
    assert stream.turn_index is not None
    assert history.turns[stream.turn_index].text == "Sorry, not now."


async def test_the_deadline_with_an_apology() -> None:
    source = Source()
    stream = ReplyStream(source, History(), first_timeout_s=0.05, apology="Sorry.")
    assert await next_clause(stream) == "Sorry."
    with pytest.raises(ReplyError, match="no answer"):
        await next_clause(stream)
    await asyncio.wait_for(stream.aclose(), WAIT_S)
    assert source.cancelled


async def test_no_apology_after_the_reply_has_begun() -> None:
    source = Source()
    stream = ReplyStream(source, History(), apology="Sorry.")
    source.feed.put_nowait("Well, the answer is. ")
    assert await next_clause(stream) == "Well, the answer is."
    source.feed.put_nowait(ReplyError("connection lost", retryable=True))
    with pytest.raises(ReplyError, match="connection lost"):
        await next_clause(stream)
    assert stream.full_text == "Well, the answer is."


async def test_an_answer_without_words_fails_when_words_are_required() -> None:
    source = Source()
    stream = ReplyStream(source, History(), require_words=True, apology="Sorry.")
    source.feed.put_nowait(" … ")
    source.feed.put_nowait(None)
    clauses = []
    with pytest.raises(ReplyError, match="no words"):
        while True:
            clauses.append(await next_clause(stream))
    assert "Sorry." in clauses  # "…" alone is no answer: the apology is said


async def test_an_empty_answer_is_fine_unless_words_are_required() -> None:
    source = Source()
    stream = ReplyStream(source, History())
    source.feed.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await next_clause(stream)
    assert stream.complete


def test_a_first_clause_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplyStream(Source(), None, first_timeout_s=0)


def test_every_field_is_documented() -> None:
    for name, info in ReplyConfig.model_fields.items():
        assert info.description, name


@pytest.mark.parametrize(
    "fields",
    [
        {"engine": "gpt"},
        {"engine": "openai", "model": ""},  # no model
        {"engine": "openai", "model": "  "},
        {"base_url": "ftp://host/v1"},
        {"base_url": "localhost:8000"},
        {"local_url": "127.0.0.1:8090"},
        {"first_clause_timeout_s": 0},
        {"temperature": 3},
        {"max_tokens": 0},
        {"timeout_s": 0},
        {"max_history_turns": 1},
        {"max_history_chars": 10},
        {"clause_max_chars": 10},
        {"first_clause_max_chars": 200},  # over clause_max_chars
        {"unknown": 1},
    ],
)
def test_bad_config_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReplyConfig.model_validate(fields)


def test_api_key_is_secret_and_comes_from_config_or_environment() -> None:
    config = ReplyConfig(engine="openai", model="m", api_key="sk-from-config-123456")
    assert "sk-from-config" not in repr(config) and "sk-from-config" not in str(config)
    engine = make_engine(config, environ={"OPENAI_API_KEY": "sk-from-env-123456"})
    assert isinstance(engine, OpenAIEngine)
    assert engine.request_headers()["Authorization"] == "Bearer sk-from-config-123456"
    config = ReplyConfig(engine="openai", model="m", api_key_env="MY_KEY")
    engine = make_engine(config, environ={"MY_KEY": "sk-from-env-123456"})
    assert isinstance(engine, OpenAIEngine)
    assert engine.request_headers()["Authorization"] == "Bearer sk-from-env-123456"
    engine = make_engine(config, environ={})
    assert isinstance(engine, OpenAIEngine)
    assert "Authorization" not in engine.request_headers()  # a local server needs no key


def test_engine_gets_the_configured_settings() -> None:
    config = ReplyConfig(engine="openai", model="llama", base_url="http://h:1/v1/",
                         temperature=None, max_tokens=50, system_prompt="Be short.")
    engine = make_engine(config)
    assert isinstance(engine, OpenAIEngine)
    messages = [{"role": "user", "content": "hi"}]
    assert engine.request_body(messages) == {
        "model": "llama", "messages": messages, "stream": True, "max_tokens": 50,
    }
    assert engine.base_url == "http://h:1/v1"


async def test_a_closed_engine_fails_replies_cleanly() -> None:
    engine = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m")
    await engine.close()
    with pytest.raises(ReplyError, match="shut down"):
        await next_clause(engine.reply(History(), "hello"))


async def test_openai_blank_input_is_an_empty_stream() -> None:
    engine, history = OpenAIEngine(base_url="http://127.0.0.1:9/v1", model="m"), History()
    assert [c async for c in engine.reply(history, "  ")] == []
    assert history.turns == ()


def test_engine_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAIEngine(base_url="file:///etc/passwd", model="m")
    with pytest.raises(ValueError, match="model"):
        OpenAIEngine(base_url="http://h/v1", model="")
    with pytest.raises(ValueError, match="timeouts"):
        OpenAIEngine(base_url="http://h/v1", model="m", read_timeout_s=0)


# -- the OpenAI engine's pure helpers -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        ('{"choices": [{"delta": {"content": "Hi"}, "finish_reason": null}]}', ("Hi", None)),
        ('{"choices": [{"delta": {"role": "assistant", "content": null}}]}', ("", None)),
        ('{"choices": [{"delta": {}, "finish_reason": "stop"}]}', ("", "stop")),
        ('{"choices": [{"finish_reason": "length"}]}', ("", "length")),
        ('{"choices": [], "usage": {"total_tokens": 5}}', ("", None)),
    ],
)
def test_parse_chunk(data: str, parsed: tuple[str, str | None]) -> None:
    assert parse_chunk(data) == parsed


@pytest.mark.parametrize(
    ("data", "from_server"),
    [
        ("{not json", False),
        ("[1, 2]", False),
        ('{"id": "x"}', False),
        ('{"choices": ["x"]}', False),
        ('{"choices": [{"delta": "x"}]}', False),
        ('{"choices": [{"delta": {"content": 5}}]}', False),
        ('{"error": {"message": "overloaded"}}', True),
    ],
)
def test_parse_chunk_errors(data: str, from_server: bool) -> None:
    with pytest.raises(ChunkError) as caught:
        parse_chunk(data)
    assert caught.value.from_server == from_server


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        ({"error": {"message": "bad model", "type": "x"}}, "bad model"),
        ({"error": "plain"}, "plain"),
        ({"detail": [{"msg": "field required"}]}, '{"msg": "field required"}'),
        ({"message": "m"}, "m"),
        ("text", "text"),
    ],
)
def test_error_text(payload: object, text: str) -> None:
    assert error_text(payload) == text


def test_scrub_masks_the_key_and_key_like_strings() -> None:
    key = "my-very-secret-value"
    text = f"Incorrect API key provided: {key}; also sk-abcdef123456 and Bearer tok.en"
    scrubbed = scrub(text, key)
    assert key not in scrubbed and "abcdef123456" not in scrubbed and "tok.en" not in scrubbed
    assert scrub("nothing secret", None) == "nothing secret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@host:8000/v1?key=abc#x", "http://host:8000/v1"),
        ("https://api.example.com/v1", "https://api.example.com/v1"),
    ],
)
def test_display_url_hides_credentials(url: str, shown: str) -> None:
    assert display_url(url) == shown
