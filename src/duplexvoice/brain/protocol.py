"""The OpenAI chat-completions format, pure: requests checked and normalised, chunks
from the model made public, server-sent-event framing, errors in OpenAI's shape.

No I/O and no model: bytes or dicts in, dicts or bytes out (unit-tested alone).

What a request may hold (anything else is ignored, as OpenAI ignores unknown
fields, and never reaches the model: llama.cpp's own extensions such as
``n_predict`` or ``ignore_eos`` would get around the server's token cap):

- ``messages`` (required): a non-empty list of ``{"role", "content"}``; roles
  ``system``, ``developer`` (read as ``system``), ``user``, ``assistant``; content a
  string, null, or a list of ``{"type": "text", "text"}`` parts (joined).
- ``stream``, ``stream_options.include_usage``; ``max_tokens`` and
  ``max_completion_tokens`` (the smaller, and never above the server's cap: a larger
  one is lowered, and ``finish_reason: "length"`` says when it cut the answer);
  ``temperature``, ``top_p``, ``presence_penalty``, ``frequency_penalty``, ``seed``,
  ``stop``; ``model`` (any name: the one model loaded answers).
- Refused with a clear 400 rather than answered wrongly: ``n`` other than 1,
  ``tools``/``functions``, a ``response_format`` other than text, ``logprobs``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

ROLES: Final = {"system": "system", "developer": "system", "user": "user",
                "assistant": "assistant"}
MAX_STOP: Final = 4  # OpenAI's limit on stop sequences
_RANGES: Final = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0),
                  "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}

SSE_DONE: Final = b"data: [DONE]\n\n"


class RequestError(Exception):
    """A request the server answers with an error (OpenAI's JSON error shape)."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers errors."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: what the model is asked, and how the answer is sent."""

    messages: tuple[dict[str, str], ...]
    stream: bool
    include_usage: bool
    max_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)

    def model_body(self) -> dict[str, Any]:
        """The request given to the model: always streamed (so that a client that
        leaves stops the generation, streamed or not) and always with usage."""
        return {"messages": [dict(m) for m in self.messages], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": self.max_tokens,
                **self.sampling}


def parse_request(raw: bytes, *, max_tokens_cap: int) -> ChatRequest:
    """Check a request body; :class:`RequestError` (400) says what is wrong."""
    try:
        body = json.loads(raw.decode("utf-8"))  # not json's guess among UTF-8/16/32
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON ({exc.msg} at line "
                           f"{exc.lineno}, column {exc.colno})") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    _refuse_unsupported(body)
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    include_usage = _bool(options or {}, "include_usage", False,
                          shown="stream_options.include_usage")
    return ChatRequest(
        messages=_messages(body.get("messages")),
        stream=stream,
        include_usage=stream and include_usage,
        max_tokens=_max_tokens(body, max_tokens_cap),
        sampling=_sampling(body),
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise RequestError("'n' must be 1: this server gives one answer per request", param="n")
    for name in ("tools", "functions"):
        if body.get(name):
            raise RequestError(f"'{name}' are not supported by this server", param=name)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise RequestError("only the 'text' response_format is supported",
                           param="response_format")
    if body.get("logprobs"):
        raise RequestError("'logprobs' are not supported by this server", param="logprobs")


def _bool(body: dict[str, Any], name: str, default: bool, *, shown: str = "") -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        shown = shown or name
        raise RequestError(f"'{shown}' must be true or false", param=shown)
    return value


def _messages(value: object) -> tuple[dict[str, str], ...]:
    if value is None:
        raise RequestError("'messages' is required: a list of {role, content}",
                           param="messages")
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list of {role, content}",
                           param="messages")
    return tuple(_message(item, i) for i, item in enumerate(value))


def _message(item: object, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise RequestError(f"{where} must be an object with role and content", param=where)
    role = item.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)} "
                           f"(got {str(role)[:40]!r})", param=f"{where}.role")
    return {"role": ROLES[role], "content": _content(item.get("content"), where)}


def _content(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise RequestError(f"{where}.content: only text parts "
                                   "({\"type\": \"text\", \"text\": ...}) are supported",
                                   param=f"{where}.content")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError(f"{where}.content must be text", param=f"{where}.content")


def _max_tokens(body: dict[str, Any], cap: int) -> int:
    wanted = cap
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(f"'{name}' must be a whole number of at least 1", param=name)
        wanted = min(wanted, value)
    return wanted


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    for name, (low, high) in _RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not low <= value <= high):
            raise RequestError(f"'{name}' must be a number from {low:g} to {high:g}", param=name)
        sampling[name] = float(value)
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError("'seed' must be a whole number", param="seed")
        sampling["seed"] = seed % (1 << 32)  # llama.cpp's seeds are 32-bit
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (not isinstance(stops, list) or len(stops) > MAX_STOP
                or not all(isinstance(s, str) and s for s in stops)):
            raise RequestError(f"'stop' must be a string or a list of up to {MAX_STOP} "
                               "non-empty strings", param="stop")
        if stops:
            sampling["stop"] = stops
    return sampling


# -- answers ------------------------------------------------------------------------


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload`` as JSON on one ``data:`` line."""
    # json.dumps escapes line breaks inside strings, so the data is one line.
    return b"data: " + json.dumps(payload, ensure_ascii=False,
                                  separators=(",", ":")).encode() + b"\n\n"


def model_error(event: dict[str, Any]) -> RequestError | None:
    """The error a model event reports (``{"error": {...}}``), or None for a chunk."""
    error = event.get("error")
    if error is None:
        return None
    if not isinstance(error, dict):
        return RequestError(str(error)[:300], status=500, kind="server_error")
    status = error.get("code")
    status = status if isinstance(status, int) and 400 <= status <= 599 else 500
    kind = str(error.get("type") or "server_error")
    return RequestError(str(error.get("message") or "the model failed")[:1000],
                        status=status, kind=kind)


def public_chunk(event: dict[str, Any], model: str, *,
                 include_usage: bool) -> dict[str, Any] | None:
    """A model chunk as the client gets it: our model id (llama.cpp names the file's
    path), no llama.cpp timings; the usage chunk only when the client asked for it."""
    if "usage" in event and not event.get("choices"):
        if not include_usage:
            return None
        return {**_without(event, "timings"), "model": model}
    return {**_without(event, "timings", "usage"), "model": model}


def _without(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in names}


@dataclass
class Completion:
    """Streamed chunks gathered into one ``chat.completion`` (a non-streamed answer)."""

    model: str
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")

    def add(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("id"), str):
            self.id = event["id"]
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.parts.append(delta["content"])
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def body(self, created: int | None = None) -> dict[str, Any]:
        usage = self.usage or {}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()) if created is None else created,
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text},
                         "finish_reason": self.finish_reason or "stop"}],
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens",
                                            "total_tokens") if k in usage},
        }


def completion_tokens(event: dict[str, Any]) -> int:
    """Tokens of answer text a chunk carries (llama.cpp: one per content chunk)."""
    choices = event.get("choices") or []
    return sum(1 for c in choices if isinstance(c, dict)
               and isinstance((c.get("delta") or {}).get("content"), str))
