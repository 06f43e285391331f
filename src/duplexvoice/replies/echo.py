"""The default reply engine: offline, it says back what it heard.

Useful without any model server (tests, benchmarks of the voice loop, a first run),
and it behaves like any engine: the user's turn and its own go into the history, and
its reply comes as clauses, cut by the same rules as a model's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from duplexvoice.replies.clauses import ClauseRules
from duplexvoice.replies.history import History
from duplexvoice.replies.stream import ReplyStream


class EchoEngine:
    """Replies with ``prefix`` (if any) and then the user's words as they were heard."""

    name = "echo"

    def __init__(self, prefix: str = "", rules: ClauseRules | None = None) -> None:
        self.prefix = " ".join(prefix.split())
        self._rules = rules

    def reply(self, history: History, user_text: str) -> ReplyStream:
        text = " ".join(user_text.split())
        if not text:
            return ReplyStream.empty()
        history.add_user(text)
        spoken = f"{self.prefix} {text}" if self.prefix else text

        async def source() -> AsyncGenerator[str, None]:
            yield spoken

        return ReplyStream(source, history, rules=self._rules, name="echo")

    async def close(self) -> None:
        """Nothing to release."""
