"""What a session sends its client, typed: the interface between the driver and a
transport.

The driver hands a transport batches of items, in order: audio frames and the typed
server messages of :mod:`duplexvoice.wire.messages` (``Pause``, ``Resume`` and
``Interrupt`` among them: the playback controls of the client's player). An audio
frame is the session machine's own :class:`~.events.SendAudio` (``utterance_id``,
``sequence``: per session, from 1, gapless; ``pcm``: one 20 ms frame, PCM16LE mono at
48 kHz), passed on as it is: no copy per frame. The driver never encodes: each
transport writes the items its own way (the WebSocket as JSON text or binary frames,
as the client asked; WebRTC audio onto its Opus track, messages onto its data
channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from duplexvoice.orchestrator.sessions.events import SendAudio
from duplexvoice.wire.messages import Outbound

__all__ = ["OutputItem", "SendAudio", "SessionOutput"]

OutputItem = SendAudio | Outbound


class SessionOutput(Protocol):
    """The sending side of a session, implemented by each transport."""

    async def send(self, items: Sequence[OutputItem]) -> None:
        """Write ``items`` in order, as one batch (one socket write where the
        transport can). Raise ``ConnectionError`` once the client is gone (the driver
        then drops the rest), ``TimeoutError`` for a client that reads nothing for
        too long (the session then ends)."""

    async def close(self, code: int, reason: str) -> None:
        """The session ends from the server's side (``code`` as a WebSocket close
        code), after the batch that carries ``session_end``."""
