"""Replies from any OpenAI-compatible chat-completions endpoint, streamed.

``POST {base_url}/chat/completions`` with ``stream: true`` (OpenAI, vLLM, llama.cpp's
server, Ollama, LM Studio, ...). The answer is server-sent events, each ``data:`` a
JSON chunk whose ``choices[0].delta.content`` is the next piece of text, ending with
``data: [DONE]``. Pieces go through the clause cutter as they arrive, so the first
clause is spoken while the model still writes the rest.

Decisions:

- aiohttp, no SDK: one ``ClientSession`` per engine, created at the first request (it
  needs the running loop), shared by every session (its connection pool keeps TLS
  connections warm between turns), closed by ``close()``. Proxies from the
  environment are not used (``trust_env`` off: a local model server must not be
  sent through a proxy by accident).
- Timeouts: ``connect_timeout_s`` to connect, ``read_timeout_s`` for any gap in the
  response (the first token included: a hung server fails in seconds, not at the
  end of ``timeout_s``), ``timeout_s`` for the whole reply.
- Cancellation: the stream cancels the task running :meth:`OpenAIEngine._pieces`;
  leaving the request closes the response (and its connection) at once, so the
  server sees the client go and stops generating.
- Errors become :class:`~.base.ReplyError` with a message for people: unreachable,
  HTTP status with the server's own message, malformed stream, timeout, connection
  lost, stream ended before ``[DONE]`` (accepted if a ``finish_reason`` came: some
  servers omit ``[DONE]``). The API key is never in a message: it is only ever
  sent in the ``Authorization`` header, and every text taken from the server or an
  exception is scrubbed of it (servers echo keys back in 401 bodies) and of
  anything that looks like a key. The URL shown has no user, password or query.
- A server that ignores ``stream: true`` and answers one JSON completion still works
  (the whole text is cut into clauses at once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator
from typing import Any, Final

import aiohttp
from yarl import URL

from duplexvoice.replies.base import ReplyError
from duplexvoice.replies.clauses import ClauseRules
from duplexvoice.replies.history import History
from duplexvoice.replies.sse import SseDecoder, SseError
from duplexvoice.replies.stream import ReplyStream

log = logging.getLogger(__name__)

_ERROR_BODY_LIMIT: Final = 64 * 1024  # bytes of an error body read for its message
_MESSAGE_LIMIT: Final = 300  # characters of a server's message shown
_KEY_LIKE: Final = re.compile(r"\b(sk|pk|rk|key|gsk|xai)-[A-Za-z0-9_\-]{6,}")
_BEARER: Final = re.compile(r"(?i)bearer\s+\S+")


class OpenAIEngine:
    """Streams chat completions from an OpenAI-compatible server; see the module doc."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        system_prompt: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 15.0,
        timeout_s: float = 60.0,
        rules: ClauseRules | None = None,
        first_clause_timeout_s: float | None = None,
        apology: str = "",
        name: str = "openai",
        cut_marks: bool = True,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {display_url(base_url)!r}")
        if not model:
            raise ValueError("model must be named")
        if min(connect_timeout_s, read_timeout_s, timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._url = f"{self.base_url}/chat/completions"
        self._shown_url = display_url(self.base_url)
        self._key = api_key or None
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._read_timeout_s = read_timeout_s
        self._timeout_s = timeout_s
        self._rules = rules
        self._first_timeout_s = first_clause_timeout_s
        self._apology = apology
        self.name = name
        self._cut_marks = cut_marks  # "…" on interrupted replies in the history sent
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def reply(self, history: History, user_text: str) -> ReplyStream:
        text = " ".join(user_text.split())
        if not text:
            return ReplyStream.empty()
        history.add_user(text)
        messages = history.messages(self.system_prompt, cut_marks=self._cut_marks)
        return ReplyStream(
            lambda: self._pieces(messages), history, rules=self._rules, name=self.name,
            first_timeout_s=self._first_timeout_s, apology=self._apology, require_words=True,
        )

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The JSON body of a request for ``messages`` (chat-completions format)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ReplyError("the reply engine is shut down")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def request_headers(self) -> dict[str, str]:
        """The headers of a request (with the API key: never log them)."""
        headers = {"Accept": "text/event-stream"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    async def _pieces(self, messages: list[dict[str, str]]) -> AsyncGenerator[str, None]:
        """The reply's text, piece by piece; every failure raised as ReplyError."""
        session = self._client()
        try:
            async with session.post(
                self._url, json=self.request_body(messages), headers=self.request_headers()
            ) as response:
                if response.status != 200:
                    raise self._http_error(response.status, await _read_bounded(response))
                if response.content_type == "application/json":
                    text = self._whole_completion(await _read_bounded(response))
                    if text:
                        yield text
                    return
                async with contextlib.aclosing(self._events(response)) as pieces:
                    async for piece in pieces:
                        yield piece
        except ReplyError:
            raise
        except SseError as exc:
            raise self._fail(f"the reply service sent a malformed stream ({exc})") from None
        except TimeoutError:
            raise self._fail(
                f"the reply service at {self._shown_url} did not answer in time "
                f"(nothing for {self._read_timeout_s:g} s, or over {self._timeout_s:g} s)",
                retryable=True,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            reason = ("connection refused" if isinstance(cause, ConnectionRefusedError)
                      else cause.strerror or type(cause).__name__)
            hint = (" (is `duplexvoice brain` running? `up` starts it; or choose "
                    "another reply engine)" if self.name == "local" else "")
            raise self._fail(
                f"the reply service at {self._shown_url} is unreachable ({reason}){hint}",
                retryable=True,
            ) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError) as exc:
            raise self._fail(
                f"the connection to the reply service was lost ({type(exc).__name__})",
                retryable=True,
            ) from None
        except aiohttp.ClientError as exc:
            raise self._fail(
                f"the request to the reply service failed ({type(exc).__name__}: "
                f"{self._scrub(str(exc))})",
                retryable=True,
            ) from None

    async def _events(self, response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
        decoder = SseDecoder()
        finished = False  # a chunk gave a finish_reason
        complete = False
        try:
            async for chunk in response.content.iter_any():
                for data in decoder.feed(chunk):
                    if data.strip() == "[DONE]":
                        complete = True
                        return
                    content, reason = self._chunk(data)
                    finished = finished or reason is not None
                    if content:
                        yield content
            for data in decoder.close():
                if data.strip() == "[DONE]":
                    complete = True
                    return
                content, reason = self._chunk(data)
                finished = finished or reason is not None
                if content:
                    yield content
            complete = finished
            if not finished:
                raise self._fail(
                    "the reply service ended its stream before the reply was complete",
                    retryable=True,
                )
        finally:
            if not complete:
                response.close()  # cancelled or failed: drop the connection now

    def _chunk(self, data: str) -> tuple[str, str | None]:
        try:
            return parse_chunk(data)
        except ChunkError as exc:
            if exc.from_server:
                raise self._fail(f"the reply service failed: {exc}", retryable=True) from None
            raise self._fail(f"the reply service sent a malformed stream ({exc})") from None

    def _whole_completion(self, body: bytes) -> str:
        """The text of a non-streamed completion (a server that ignored ``stream``)."""
        try:
            answer = json.loads(body)
            if isinstance(answer, dict) and "error" in answer:
                raise self._fail(f"the reply service failed: {error_text(answer)}")
            content = answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._fail("the reply service sent neither a stream nor a completion") \
                from None
        return content if isinstance(content, str) else ""

    def _http_error(self, status: int, body: bytes) -> ReplyError:
        try:
            detail = error_text(json.loads(body))
        except ValueError:
            detail = body.decode("utf-8", "replace")
        detail = " ".join(detail.split())[:_MESSAGE_LIMIT] or "no details"
        hint = {401: " (check the API key)", 403: " (check the API key)",
                404: " (check the base URL and the model)"}.get(status, "")
        return self._fail(
            f"the reply service answered HTTP {status}{hint}: {detail}",
            retryable=status in (408, 409, 429) or status >= 500,
        )

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _fail(self, message: str, *, retryable: bool = False) -> ReplyError:
        message = self._scrub(message)
        log.warning("reply engine %s (%s): %s", self.name, self._shown_url, message)
        return ReplyError(message, retryable=retryable)


class ChunkError(ValueError):
    """An event that is not a usable chat-completions chunk; ``from_server``: the
    server reported an error in the stream."""

    def __init__(self, message: str, *, from_server: bool = False) -> None:
        super().__init__(message)
        self.from_server = from_server


def parse_chunk(data: str) -> tuple[str, str | None]:
    """``(content, finish_reason)`` of one event's data (a chat-completions chunk).

    Lenient where servers differ: no ``choices`` items (a usage chunk), no ``delta``,
    ``content`` null (a role-only first chunk) all give "". Strict where the text
    would be wrong: non-JSON, not an object, ``choices`` missing, content not text.
    """
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ChunkError(f"not JSON: {data[:60]!r}") from None
    if not isinstance(chunk, dict):
        raise ChunkError("a chunk is not an object")
    if "error" in chunk:
        raise ChunkError(error_text(chunk), from_server=True)
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise ChunkError("a chunk has no choices")
    if not choices:
        return "", None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ChunkError("a choice is not an object")
    delta = choice.get("delta")
    if not isinstance(delta, dict | None):
        raise ChunkError("a delta is not an object")
    content = (delta or {}).get("content")
    if not isinstance(content, str | None):
        raise ChunkError("a delta's content is not text")
    reason = choice.get("finish_reason")
    return content or "", reason if isinstance(reason, str) else None


def error_text(payload: object) -> str:
    """The message in an error body: OpenAI's ``{"error": {"message"}}``, FastAPI's
    ``{"detail": ...}`` and kin; bounded."""
    if isinstance(payload, dict):
        for field in ("error", "detail", "message"):
            if field in payload:
                return error_text(payload[field])
        return json.dumps(payload)[:_MESSAGE_LIMIT]
    if isinstance(payload, list) and payload:
        return error_text(payload[0])
    return str(payload)[:_MESSAGE_LIMIT]


def scrub(text: str, key: str | None) -> str:
    """``text`` with ``key``, and anything shaped like a key or bearer token, masked."""
    if key:
        text = text.replace(key, "***")
    return _BEARER.sub("Bearer ***", _KEY_LIKE.sub(r"\1-***", text))


def display_url(url: str) -> str:
    """``url`` safe to show: no user, password, query or fragment."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid URL>"


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """At most ``_ERROR_BODY_LIMIT`` bytes of the body (an error body can be huge)."""
    chunks: list[bytes] = []
    size = 0
    while size < _ERROR_BODY_LIMIT:
        chunk = await response.content.read(_ERROR_BODY_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
