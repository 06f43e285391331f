"""Reply engine configuration: which engine, and how to reach the model server.

One model, validated on creation (for the YAML / environment / flag loader of
:mod:`duplexvoice.config`). The API key is a ``SecretStr`` (never printed, never in
a repr or a validation error); without one in the config it is read from the
environment variable named by ``api_key_env`` when the engine is made, and a local
server that needs no key gets no ``Authorization`` header at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from yarl import URL

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant in a spoken conversation. Everything you write "
    "is read aloud by a text-to-speech voice, so answer the way a person talks: short, "
    "natural sentences, usually one to three, the most useful part first. Never use "
    "markdown, lists, headings, code, emoji or symbols that cannot be spoken; write "
    "numbers, units and abbreviations the way they should be said. The user's words "
    "come from speech recognition and may contain mistakes; if something is unclear, "
    "ask a short question. When one of your earlier replies ends with \"…\", the user "
    "interrupted you there and heard only that much; do not repeat it unless asked."
)


# Short on purpose: a small local model follows a short prompt better, and every token
# of it is prefilled before the first word of the first reply of each slot.
LOCAL_SYSTEM_PROMPT = (
    "You are a friendly voice assistant talking with someone. Answer in one or two short "
    "spoken sentences. Never use lists, markdown or emoji; write numbers as words."
)
LOCAL_BRAIN_URL = "http://127.0.0.1:8090/v1"  # `duplexvoice brain`'s default address
DEFAULT_APOLOGY = "Sorry, I can't answer that right now."


class ReplyConfig(BaseModel):
    """How the system answers the user in conversation mode: ``conversation.reply`` of
    the orchestrator's config (flags ``--reply-<option>``)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["local", "echo", "openai"] = Field(
        "local",
        description="reply engine: local (the local language model of `duplexvoice brain`, "
        "which `up` starts), echo (offline, says back what it heard) or openai (any "
        "OpenAI-compatible chat-completions server at base_url)",
    )
    local_url: str = Field(
        LOCAL_BRAIN_URL,
        description="local engine: the brain's API base URL (`duplexvoice brain`)",
    )
    echo_prefix: str = Field(
        "", max_length=200, description="echo engine: words said before the echoed text"
    )
    base_url: str = Field(
        "http://localhost:8000/v1",
        description="openai engine: API base URL; requests go to {base_url}/chat/completions",
    )
    model: str = Field(
        "gpt-4o-mini", max_length=200, description="openai engine: model name"
    )
    api_key: SecretStr | None = Field(
        None, description="openai engine: API key (none: read from api_key_env)"
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="environment variable holding the API key when api_key is none "
        "(unset or empty: no key is sent, as local servers need none)",
    )
    system_prompt: str | None = Field(
        None,
        max_length=20_000,
        description="local and openai engines: system prompt (none: each engine's own, "
        "asking for short spoken answers without markdown)",
    )
    temperature: float | None = Field(
        0.7, ge=0.0, le=2.0, description="openai engine: sampling temperature (none: server's)"
    )
    max_tokens: int | None = Field(
        300, ge=1, le=100_000, description="openai engine: longest reply in tokens (none: server's)"
    )
    timeout_s: float = Field(
        60.0, gt=0, le=3600, description="openai engine: longest time for a whole reply"
    )
    first_clause_timeout_s: float | None = Field(
        6.0, gt=0, le=3600,
        description="local and openai engines: a reply with no first clause by then fails "
        "(the user hears the apology, the client gets REPLY_FAILED; none: no deadline)",
    )
    apology: str = Field(
        DEFAULT_APOLOGY, max_length=500,
        description="said when a reply fails before its first clause (empty: silence)",
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, le=600, description="openai engine: longest time to connect"
    )
    read_timeout_s: float = Field(
        15.0, gt=0, le=3600,
        description="openai engine: longest wait for more of the response, the first "
        "token included",
    )
    max_history_turns: int = Field(
        20, ge=2, le=10_000,
        description="turns (user or assistant) kept per session; the oldest go first",
    )
    max_history_chars: int = Field(
        8000, ge=100, le=10_000_000,
        description="characters of turns kept per session (the system prompt not counted)",
    )
    first_clause_min_words: int = Field(
        3, ge=1, le=100,
        description="words before a comma may end the reply's first spoken clause",
    )
    clause_min_words: int = Field(
        6, ge=1, le=100, description="words before a comma may end a later spoken clause"
    )
    first_clause_max_chars: int = Field(
        80, ge=32, le=10_000,
        description="the reply's first clause is cut at a word boundary at this length "
        "(speech starts early even after a long first sentence)",
    )
    clause_max_chars: int = Field(
        160, ge=32, le=10_000, description="a later clause this long is cut at a word boundary"
    )

    @field_validator("base_url", "local_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = URL(value)
        except (ValueError, TypeError):
            raise ValueError("base_url is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ReplyConfig:
        if self.engine == "openai" and not self.model.strip():
            raise ValueError("the openai reply engine needs a model name (model)")
        if self.first_clause_max_chars > self.clause_max_chars:
            raise ValueError("first_clause_max_chars must not exceed clause_max_chars")
        return self
