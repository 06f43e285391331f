"""What a session sends its client, typed: the interface between the driver and a
transport.

The driver hands a transport batches of items, in order: :class:`AudioOut` (one
20 ms frame of the session's voice) and the typed server messages of
:mod:`duplexvoice.wire.messages` (``Pause``, ``Resume`` and ``Interrupt`` among them:
the playback controls of the client's player). It never encodes: each transport
writes the items its own way (the WebSocket as JSON text or binary frames, as the
client asked; WebRTC audio onto its Opus track, messages onto its data channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from duplexvoice.wire.messages import Outbound


class AudioOut(NamedTuple):  # one per frame on the hot path: a tuple is the cheapest record
    """One frame of the session's voice: PCM16LE mono at 48 kHz (``FRAME_BYTES``)."""

    utterance_id: int
    sequence: int  # per session, from 1, gapless (``Playout``)
    pcm: bytes


OutputItem = AudioOut | Outbound


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
