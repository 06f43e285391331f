"""The server-sent events decoder: line endings, splits, fields, bounds."""

from __future__ import annotations

import pytest

from duplexvoice.replies.sse import SseDecoder, SseError

pytestmark = pytest.mark.unit


def decode(chunks: list[bytes]) -> list[str]:
    decoder = SseDecoder()
    events: list[str] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


STREAM = (
    b": a comment\n"
    b"event: message\nid: 1\nretry: 100\n"
    b'data: {"a": 1}\n\n'
    b"data:no space\r\n\r\n"
    b"data: line one\rdata: line two\r\r"
    b"data: caf\xc3\xa9 \xe2\x80\x94 ok\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = ['{"a": 1}', "no space", "line one\nline two", "café — ok", "[DONE]"]


def test_events() -> None:
    assert decode([STREAM]) == EVENTS


def test_every_split_gives_the_same_events() -> None:
    # Including splits inside CRLF and inside multi-byte UTF-8 characters.
    for cut in range(len(STREAM) + 1):
        assert decode([STREAM[:cut], STREAM[cut:]]) == EVENTS, cut
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EVENTS


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # "a\r" | "\n" | "\r\n" is a line then a blank line: one event, not two.
    assert decode([b"data: a\r", b"\n", b"data: b\r\n\r\n"]) == ["a\nb"]


def test_last_event_without_blank_line_is_kept_at_close() -> None:
    assert decode([b"data: x\n\ndata: [DONE]"]) == ["x", "[DONE]"]
    assert decode([b"data: y\n"]) == ["y"]


def test_blank_lines_and_other_fields_make_no_events() -> None:
    assert decode([b"\n\n\r\n: keepalive\n\nevent: ping\n\n"]) == []


def test_data_with_colons_and_empty_data() -> None:
    assert decode([b"data: a: b\n\ndata\n\n"]) == ["a: b", ""]


def test_overlong_line_and_event_are_errors() -> None:
    decoder = SseDecoder(max_chars=100)
    with pytest.raises(SseError, match="line"):
        decoder.feed(b"data: " + b"x" * 200)
    decoder = SseDecoder(max_chars=100)
    with pytest.raises(SseError, match="event"):
        decoder.feed(b"data: " + b"x" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert decode([b"data: \xff\xfe ok\n\n"]) == ["\ufffd\ufffd ok"]
