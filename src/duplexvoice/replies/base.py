"""What every reply engine offers the orchestrator, and the one error it raises.

An engine turns the user's transcribed turn into the text the system speaks:
``engine.reply(history, user_text)`` returns a :class:`~.stream.ReplyStream`, an
async iterator of clauses (cut by :mod:`.clauses`) that yields the first one as soon
as it is complete, so speech starts before the model finishes. One engine serves
every session; each session brings its own :class:`~.history.History`.

Errors (the only exception a stream raises while iterating)::

    ReplyError            the reply failed; str(error) is safe to show the user
                          (never the API key); ``retryable`` says whether the same
                          request may succeed later (timeouts, 5xx, connection lost)
                          or needs a fix (401, 404, a malformed stream)

Other libraries' errors (aiohttp, JSON) are translated into ``ReplyError`` where the
engine meets them; a bug in an engine is logged and surfaces as a ``ReplyError`` too,
so a session never dies of its reply engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from duplexvoice.replies.history import History
    from duplexvoice.replies.stream import ReplyStream


class ReplyError(Exception):
    """A reply could not be produced. The message is safe to show the user."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class ReplyEngine(Protocol):
    """A source of replies; one per orchestrator, shared by sessions."""

    @property
    def name(self) -> str:
        """The engine's config name ("echo", "openai")."""
        ...

    def reply(self, history: History, user_text: str) -> ReplyStream:
        """Start a reply to ``user_text``; add it to ``history`` as the user's turn.

        Returns at once; the work starts when the stream is first iterated. The
        stream adds the assistant's turn (what it delivered) to ``history`` when it
        ends, fails or is closed. Blank ``user_text``: an empty stream, no turn.
        """
        ...

    async def close(self) -> None:
        """Release the engine's resources (connections); replies fail afterwards."""
        ...
