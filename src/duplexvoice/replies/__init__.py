"""Reply engines for conversation mode: what the system says after the user's turn.

``make_engine(config)`` gives the configured engine (one per orchestrator, shared
by sessions); each session keeps its own ``new_history(config)``. A reply is
``engine.reply(history, user_text)``: an async iterator of clauses to speak, closed
with ``aclose()`` when the user interrupts. See :mod:`.base` for the contract,
:mod:`.clauses` for where replies are cut, :mod:`.history` for what is remembered.

How the orchestrator uses it, per session::

    history = new_history(config)                 # at session start
    stream = engine.reply(history, final_transcript)  # adds the user turn
    async with stream:                            # aclose() on exit, always
        async for clause in stream:
            send clause + " " to the worker       # the trailing space lets the
                                                  # worker's chunker see the end
    # user barged in (real turn): await stream.aclose() first (it records what was
    # delivered as the assistant turn), then, once the heard length is known:
    if stream.turn_index is not None:
        history.truncate_assistant(stream.turn_index,
                                   heard_prefix(text_sent, played_ms, total_ms))

``text_sent`` is the clauses given to the worker joined by spaces (``full_text``
when every clause read was sent); ``played_ms`` the utterance's audio played (the
client's ``playback`` reports, else the server's playout clock); ``total_ms`` the
duration of all its synthesized audio once the worker has finished it, else None.
A stream must be closed before the session's next ``reply`` (turn order).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from duplexvoice.replies.base import ReplyEngine, ReplyError
from duplexvoice.replies.clauses import ClauseCutter, ClauseRules, cut_clauses
from duplexvoice.replies.config import (
    DEFAULT_SYSTEM_PROMPT,
    LOCAL_BRAIN_URL,
    LOCAL_SYSTEM_PROMPT,
    ReplyConfig,
)
from duplexvoice.replies.echo import EchoEngine
from duplexvoice.replies.history import History, Turn, heard_prefix
from duplexvoice.replies.openai import OpenAIEngine
from duplexvoice.replies.stream import ReplyStream

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "LOCAL_BRAIN_URL",
    "LOCAL_SYSTEM_PROMPT",
    "ClauseCutter",
    "ClauseRules",
    "EchoEngine",
    "History",
    "OpenAIEngine",
    "ReplyConfig",
    "ReplyEngine",
    "ReplyError",
    "ReplyStream",
    "Turn",
    "clause_rules",
    "cut_clauses",
    "heard_prefix",
    "make_engine",
    "new_history",
]


def clause_rules(config: ReplyConfig) -> ClauseRules:
    """Where the configured engine cuts its replies."""
    return ClauseRules(
        first_min_words=config.first_clause_min_words,
        min_words=config.clause_min_words,
        max_chars=config.clause_max_chars,
        first_max_chars=config.first_clause_max_chars,
    )


def make_engine(config: ReplyConfig, environ: Mapping[str, str] | None = None) -> ReplyEngine:
    """The engine ``config`` names. ``environ`` (default ``os.environ``) supplies the
    API key when the config has none."""
    rules = clause_rules(config)
    if config.engine == "echo":
        return EchoEngine(config.echo_prefix, rules=rules)
    if config.engine == "local":
        # The brain serves one model whatever the name; it needs no key.
        base_url, model, key = config.local_url, "local", None
        prompt = LOCAL_SYSTEM_PROMPT
    else:
        base_url, model, prompt = config.base_url, config.model, DEFAULT_SYSTEM_PROMPT
        key = config.api_key.get_secret_value() if config.api_key is not None else None
        if not key and config.api_key_env:
            key = (os.environ if environ is None else environ).get(config.api_key_env) or None
    return OpenAIEngine(
        base_url=base_url,
        model=model,
        api_key=key,
        name=config.engine,
        system_prompt=prompt if config.system_prompt is None else config.system_prompt,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        timeout_s=config.timeout_s,
        rules=rules,
        first_clause_timeout_s=config.first_clause_timeout_s,
        apology=config.apology,
        # The small local model imitates "…" marks; its prompt does not explain them.
        cut_marks=config.engine != "local",
    )


def new_history(config: ReplyConfig) -> History:
    """A fresh history for one session, bounded as configured."""
    return History(max_turns=config.max_history_turns, max_chars=config.max_history_chars)
