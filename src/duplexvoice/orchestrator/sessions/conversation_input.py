"""The driver's conversation half: whether the session listens, and where its
microphone audio, playback reports and listening actions go.

Part of :class:`~.driver.SessionDriver` (split to keep files small). ``mode:
conversation`` makes a :class:`~.listener.Listener` for the session; ``mode: tts``
closes it. Microphone audio outside conversation mode is refused with one
``INVALID_STATE`` error a second, not one per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from duplexvoice.orchestrator.sessions.events import Action, Event, UserSpeechEnded
from duplexvoice.orchestrator.sessions.listener import Listener
from duplexvoice.orchestrator.sessions.machine import State
from duplexvoice.orchestrator.sessions.shared import ConversationServices
from duplexvoice.wire.messages import Error, ErrorCode
from duplexvoice.wire.protocol import AudioInput

_REFUSED_EVERY_S = 1.0


class ConversationInput:
    def __init__(
        self,
        session_id: str,
        services: ConversationServices | None,
        *,
        post: Callable[[Event], None],
        send_error: Callable[[Error], Coroutine[Any, Any, None]],
        current_turn: Callable[[], int],
        lead_ms: float,
    ) -> None:
        self.session_id = session_id
        self.services = services
        self.listener: Listener | None = None
        self._post = post
        self._send_error = send_error
        self._current_turn = current_turn
        self._lead_ms = lead_ms
        self._refused_at = -1e9

    @property
    def listening(self) -> bool:
        """In conversation mode (the session has a listener)."""
        return self.listener is not None

    @property
    def offered_replies(self) -> set[str]:
        return set(self.services.replies) if self.services is not None else set()

    async def set_mode(self, mode: str) -> None:
        if mode == "conversation" and self.listener is None and self.services is not None:
            self.listener = Listener(
                self.session_id, self.services, post=self._post, send_error=self._send_error,
                current_turn=self._current_turn, lead_ms=self._lead_ms)
        elif mode == "tts" and self.listener is not None:
            listener, self.listener = self.listener, None
            await listener.close()
            # Speech the VAD was hearing ends here: a hold over it must not last.
            self._post(UserSpeechEnded())

    def set_reply(self, engine: str) -> None:
        if self.listener is not None:
            self.listener.reply_engine = engine

    async def audio(self, message: AudioInput, state: State, now: float) -> None:
        listener = self.listener
        if listener is None:
            if now - self._refused_at >= _REFUSED_EVERY_S:
                self._refused_at = now
                await self._send_error(Error(
                    ErrorCode.INVALID_STATE, "microphone audio needs conversation mode: "
                    'send {"type": "config", "mode": "conversation"} first'))
            return
        speaking = state in (State.SPEAKING, State.BARGED_IN, State.PAUSED)
        await listener.audio(message.pcm, message.sample_rate, speaking,
                             holding=state is State.BARGED_IN, now=now)

    def playback(self, utterance_id: int, played_ms: float) -> None:
        if self.listener is not None:
            self.listener.playback(utterance_id, played_ms)

    def act(self, action: Action) -> None:
        if self.listener is not None:
            self.listener.act(action)

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
