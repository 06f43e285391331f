"""The brain's request checks and answer format (pure: no model, no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from duplexvoice.brain.protocol import (
    SSE_DONE,
    Completion,
    RequestError,
    completion_tokens,
    model_error,
    parse_request,
    public_chunk,
    sse_event,
)
from duplexvoice.replies.openai import parse_chunk
from duplexvoice.replies.sse import SseDecoder

pytestmark = pytest.mark.unit

CAP = 100
HELLO = [{"role": "user", "content": "Hello"}]


def parse(body: Any, cap: int = CAP) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, max_tokens_cap=cap)


def refused(body: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(body)
    assert caught.value.status == 400
    return caught.value


def test_a_plain_request_is_normalised_for_the_model() -> None:
    chat = parse({"model": "gpt-4o-mini", "messages": HELLO, "stream": True,
                  "temperature": 0.5, "stop": "\n", "seed": 7})
    assert chat.stream and not chat.include_usage
    assert chat.model_body() == {
        "messages": HELLO, "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": CAP, "temperature": 0.5, "stop": ["\n"], "seed": 7}


def test_unknown_fields_are_ignored_and_never_reach_the_model() -> None:
    # llama.cpp's own extensions would get around the token cap.
    chat = parse({"messages": HELLO, "n_predict": 100000, "ignore_eos": True, "user": "u1",
                  "cache_prompt": False, "frequency_penalty": 0.5})
    body = chat.model_body()
    assert not {"n_predict", "ignore_eos", "user", "cache_prompt"} & set(body)
    assert body["frequency_penalty"] == 0.5


@pytest.mark.parametrize(("asked", "given"), [
    ({}, CAP), ({"max_tokens": 10}, 10), ({"max_tokens": 10_000}, CAP),
    ({"max_completion_tokens": 20}, 20), ({"max_tokens": 30, "max_completion_tokens": 20}, 20),
])
def test_max_tokens_is_capped_by_the_server(asked: dict[str, int], given: int) -> None:
    assert parse({"messages": HELLO, **asked}).max_tokens == given


def test_roles_and_content_parts() -> None:
    chat = parse({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "one"},
                                     {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": None},
    ]})
    assert chat.messages == ({"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "one\ntwo"},
                             {"role": "assistant", "content": ""})


def test_usage_is_sent_only_to_a_stream_that_asks() -> None:
    assert parse({"messages": HELLO, "stream": True,
                  "stream_options": {"include_usage": True}}).include_usage
    assert not parse({"messages": HELLO, "stream_options": {"include_usage": True}}).include_usage


@pytest.mark.parametrize(("body", "fragment", "param"), [
    (b"{\"messages\": ", "not valid JSON", None),
    (b"\xff\xfe", "not UTF-8", None),
    ([1, 2], "JSON object", None),
    ({}, "'messages' is required", "messages"),
    ({"messages": []}, "non-empty list", "messages"),
    ({"messages": "hi"}, "non-empty list", "messages"),
    ({"messages": ["hi"]}, "messages[0] must be an object", "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "must be text", "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text parts",
     "messages[0].content"),
    ({"messages": HELLO, "stream": "yes"}, "'stream' must be true or false", "stream"),
    ({"messages": HELLO, "stream_options": 1}, "'stream_options' must be an object",
     "stream_options"),
    ({"messages": HELLO, "max_tokens": 0}, "at least 1", "max_tokens"),
    ({"messages": HELLO, "max_tokens": True}, "at least 1", "max_tokens"),
    ({"messages": HELLO, "max_completion_tokens": 2.5}, "whole number", "max_completion_tokens"),
    ({"messages": HELLO, "temperature": 3}, "from 0 to 2", "temperature"),
    ({"messages": HELLO, "top_p": "high"}, "from 0 to 1", "top_p"),
    ({"messages": HELLO, "seed": 1.5}, "whole number", "seed"),
    ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "up to 4", "stop"),
    ({"messages": HELLO, "stop": [""]}, "non-empty strings", "stop"),
    ({"messages": HELLO, "n": 2}, "'n' must be 1", "n"),
    ({"messages": HELLO, "tools": [{"type": "function"}]}, "not supported", "tools"),
    ({"messages": HELLO, "response_format": {"type": "json_object"}}, "'text' response_format",
     "response_format"),
    ({"messages": HELLO, "logprobs": True}, "not supported", "logprobs"),
])
def test_a_bad_request_says_what_is_wrong(body: Any, fragment: str, param: str | None) -> None:
    error = refused(body)
    assert fragment in error.message
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error",
                                      "param": param, "code": None}}


def test_harmless_known_fields_are_accepted() -> None:
    parse({"messages": HELLO, "n": 1, "tools": [], "response_format": {"type": "text"},
           "logprobs": False, "stream": None, "temperature": None, "stop": []})


def test_sse_events_are_what_the_openai_engine_reads() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hi,\nthere \u00e9"},
                          "finish_reason": None}]}
    stream = sse_event(chunk) + sse_event({"choices": [{"index": 0, "delta": {},
                                                        "finish_reason": "stop"}]}) + SSE_DONE
    assert sse_event(chunk).startswith(b"data: {") and sse_event(chunk).endswith(b"}\n\n")
    assert sse_event(chunk).count(b"\n") == 2  # one data line: line breaks stay escaped
    events = SseDecoder().feed(stream)
    assert [parse_chunk(e) for e in events[:2]] == [("Hi,\nthere \u00e9", None), ("", "stop")]
    assert events[2] == "[DONE]"


MODEL_CHUNK = {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "Hi"}}],
               "created": 1, "id": "chatcmpl-1", "model": "/home/me/models/x.gguf",
               "object": "chat.completion.chunk", "timings": {"prompt_n": 3}}
USAGE_CHUNK = {"choices": [], "id": "chatcmpl-1", "model": "/home/me/models/x.gguf",
               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
               "timings": {"prompt_n": 3}}


def test_public_chunks_name_the_model_not_its_path() -> None:
    chunk = public_chunk(MODEL_CHUNK, "x", include_usage=False)
    assert chunk is not None and chunk["model"] == "x" and "timings" not in chunk
    assert chunk["choices"] == MODEL_CHUNK["choices"]
    assert public_chunk(USAGE_CHUNK, "x", include_usage=False) is None
    usage = public_chunk(USAGE_CHUNK, "x", include_usage=True)
    assert usage is not None and usage["usage"]["total_tokens"] == 4 and usage["model"] == "x"


def test_a_completion_gathers_the_chunks() -> None:
    completion = Completion("x")
    role = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                   "content": None}}]}
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    for event in (role, MODEL_CHUNK, {**MODEL_CHUNK, "choices": [
            {"index": 0, "delta": {"content": " there"}}]}, end, USAGE_CHUNK):
        completion.add(event)
    body = completion.body(created=5)
    assert body == {"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "x",
                    "choices": [{"index": 0, "message": {"role": "assistant",
                                                         "content": "Hi there"},
                                 "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    assert [completion_tokens(e) for e in (role, MODEL_CHUNK, end, USAGE_CHUNK)] == [0, 1, 0, 0]


def test_a_model_error_keeps_its_status_and_type() -> None:
    error = model_error({"error": {"code": 400, "type": "exceed_context_size_error",
                                   "message": "request (5000 tokens) exceeds the context"}})
    assert error is not None and error.status == 400
    assert error.body()["error"]["type"] == "exceed_context_size_error"
    assert model_error(MODEL_CHUNK) is None
    odd = model_error({"error": {"code": 42, "message": ""}})
    assert odd is not None and (odd.status, odd.kind, odd.message) == (
        500, "server_error", "the model failed")
