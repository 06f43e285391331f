"""One reply in progress: text pieces in, clauses out, cancellable at any moment.

Design: the engine's text source (an async iterator of raw pieces: model tokens, or
the whole echo text at once) runs in its own task, started at the first
``__anext__``, and feeds a bounded queue of clauses cut by a
:class:`~.clauses.ClauseCutter`. The consumer (the orchestrator) reads the queue.
Why a task: ``aclose()`` must stop the work promptly from any task, even while the
consumer is blocked in ``__anext__`` waiting for the model; an async generator
cannot be closed while another task runs it, but a task can always be cancelled.
Cancelling it closes the source (``aclosing``), which closes the HTTP response.
The queue is bounded, so a consumer that stops reading stops the source too.

What counts as said: ``clauses``/``full_text`` hold only what the consumer received;
clauses still queued at ``aclose()`` were never spoken and are dropped. When the
stream ends (exhausted, failed, or closed) it adds ``full_text`` to the history as
the assistant's turn, once, and sets ``turn_index`` (None if nothing was said), so
the orchestrator can later cut that turn to what the user heard.

A first-clause deadline (``first_timeout_s``): a model that has not given the first
clause in time fails the reply (``ReplyError``, the source cancelled), so a user never
waits in silence for a slow or stuck model. An ``apology``: when the reply fails before
its first clause (the deadline, or any ``ReplyError``), the stream returns the apology
as its one clause and raises the error at the next read, so the user hears why
nothing else comes and the orchestrator still reports the failure.

``require_words``: a reply that ends without a clause with words in it (the model
answered nothing, or "…") fails with ``ReplyError`` (so the apology is said): a turn
never ends in silence.

Always end a stream: read it to the end, ``aclose()`` it, or use ``async with``.
Cancelling the task blocked in ``__anext__`` also ends it (the source is cancelled
without waiting): the usual "interrupt by cancelling the consumer" leaks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Final

from duplexvoice.replies.base import ReplyError
from duplexvoice.replies.clauses import ClauseCutter, ClauseRules
from duplexvoice.replies.history import History
from duplexvoice.text import speakable

log = logging.getLogger(__name__)

TextSource = Callable[[], AsyncGenerator[str, None]]

DEFAULT_MAX_PENDING: Final = 16  # clauses cut but not read yet
CLOSE_WAIT_S: Final = 2.0  # how long aclose() waits for the cancelled source


class _End:
    """Queue marker: the reply is complete."""


_END: Final = _End()


async def _nothing() -> AsyncGenerator[str, None]:
    return
    yield  # an async generator that yields nothing


class ReplyStream:
    """An async iterator of clauses of one reply; see the module docstring."""

    def __init__(
        self,
        source: TextSource,
        history: History | None,
        *,
        rules: ClauseRules | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        name: str = "reply",
        first_timeout_s: float | None = None,
        apology: str = "",
        require_words: bool = False,
    ) -> None:
        if first_timeout_s is not None and first_timeout_s <= 0:
            raise ValueError("first_timeout_s must be positive")
        self._source = source
        self._require_words = require_words
        self._first_timeout_s = first_timeout_s
        self._apology = " ".join(apology.split())
        self._failed: ReplyError | None = None  # raised at the read after the apology
        self._deadline: float | None = None
        self._history = history
        self._rules = rules
        self._name = name
        self._queue: asyncio.Queue[str | ReplyError | _End] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self._clauses: list[str] = []
        self._finished = False  # no more clauses will be returned
        self._complete = False  # the source ended normally and all was read
        self._turn_index: int | None = None

    @classmethod
    def empty(cls) -> ReplyStream:
        """A stream with nothing to say (and no history to touch)."""
        return cls(_nothing, None)

    @property
    def clauses(self) -> tuple[str, ...]:
        """The clauses returned so far."""
        return tuple(self._clauses)

    @property
    def full_text(self) -> str:
        """The text returned so far, clauses joined by single spaces."""
        return " ".join(self._clauses)

    @property
    def complete(self) -> bool:
        """True once the whole reply was read (not failed, not closed early)."""
        return self._complete

    @property
    def finished(self) -> bool:
        """True once the stream will return no more clauses (for whatever reason)."""
        return self._finished

    @property
    def turn_index(self) -> int | None:
        """The history index of the assistant turn this reply added, once finished;
        None before, or if nothing was said."""
        return self._turn_index

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> str:
        if self._failed is not None:
            error, self._failed = self._failed, None
            self._finish()
            raise error
        if self._finished:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = asyncio.create_task(self._produce(), name=f"{self._name}-source")
            if self._first_timeout_s is not None:
                self._deadline = loop.time() + self._first_timeout_s
        item: str | ReplyError | _End
        try:
            if self._deadline is not None and not self._clauses:
                try:
                    item = await asyncio.wait_for(self._queue.get(),
                                                  max(0.0, self._deadline - loop.time()))
                except TimeoutError:
                    self._task.cancel()  # the reader goes on: no waiting for the source
                    item = ReplyError(
                        f"no answer within {self._first_timeout_s:g} s", retryable=True)
            else:
                item = await self._queue.get()
        except asyncio.CancelledError:
            self._abandon()  # the reader's task was cancelled: nobody will read on
            raise
        if self._finished:  # closed while we waited
            raise StopAsyncIteration
        if isinstance(item, _End):
            self._complete = True
            self._finish()
            raise StopAsyncIteration
        if isinstance(item, ReplyError):
            if self._apology and not any(speakable(c) for c in self._clauses):
                if self._task is not None:
                    self._task.cancel()
                self._failed = item
                self._clauses.append(self._apology)
                return self._apology
            self._finish()
            raise item
        self._clauses.append(item)
        return item

    async def aclose(self) -> None:
        """Stop the reply now: cancel the source (closing its connection), wake a
        reader blocked in ``__anext__`` (it sees the end), record what was said.
        Safe from any task, at any time, more than once."""
        if self._finished:
            return
        self._finish()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            _, pending = await asyncio.wait({task}, timeout=CLOSE_WAIT_S)
            if pending:
                log.warning("%s: the cancelled reply source did not stop within %.1f s",
                            self._name, CLOSE_WAIT_S)
        while not self._queue.empty():  # never spoken: drop
            self._queue.get_nowait()
        self._queue.put_nowait(_END)  # wakes a reader blocked in get()

    async def __aenter__(self) -> ReplyStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _abandon(self) -> None:
        """``aclose()`` without waiting, for a reader cancelled in ``__anext__``."""
        if self._finished:
            return
        self._finish()
        if self._task is not None:
            self._task.cancel()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._history is not None and self._clauses:
            self._turn_index = self._history.add_assistant(self.full_text)

    async def _produce(self) -> None:
        cutter = ClauseCutter(self._rules)
        said = False  # a clause with words in it
        try:
            async with contextlib.aclosing(self._source()) as pieces:
                async for piece in pieces:
                    for clause in cutter.push(piece):
                        said = said or speakable(clause)
                        await self._queue.put(clause)
            rest = cutter.flush()
            if rest:
                said = said or speakable(rest)
                await self._queue.put(rest)
            if self._require_words and not said:
                # A small model sometimes answers "…" or nothing (after a history of
                # interrupted turns): the user would hear nothing at all.
                raise ReplyError("the reply engine's answer had no words", retryable=True)
            await self._queue.put(_END)
        except ReplyError as exc:
            await self._queue.put(exc)
        except Exception:
            log.exception("%s: the reply engine failed", self._name)
            await self._queue.put(ReplyError("the reply engine failed unexpectedly"))
