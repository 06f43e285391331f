"""Audio frames waiting to leave, with hold, rewind and the fence: one pure object (no
asyncio, no clock: ``now`` is passed in, seconds on any monotonic clock).

Two places hold a session's outbound audio, and both use this: the session's
:class:`~.playout.Playout` (which adds pacing and sequence numbers) and the WebRTC
track's queue (:mod:`..transports.rtc_audio`, which adds the bound and the rewind).
Every frame carries its utterance id; frames leave in the order pushed.

- ``push(uid, pcm)`` queues a frame. One of an id at or below the fence is refused
  (``False``, counted in ``refused``). With ``max_frames``, a push onto a full queue
  first drops the oldest frame (counted in ``dropped``): audio that late is worth
  less than the audio after it.
- ``take(now)`` hands out the front frame (``None`` while held or empty);
  ``next_id`` is the utterance of the frame it would hand out.
- ``hold(now, uid)``: nothing is handed out until ``unhold``. With ``rewind_ms``,
  the frames of ``uid`` handed out within the last ``rewind_ms`` go back to the
  front (a player that gates at once on ``pause`` never played those still in
  flight); the boundary is exclusive. A hold while held, or of a fenced utterance,
  changes nothing.
- ``drop(uid)`` discards one utterance's frames, wherever they are.
- ``fence(uid)`` discards the frames of ``uid`` and every earlier id, refuses them
  from now on, and ends a hold of one of them. The fence never moves back.
- ``clear()`` discards every frame and ends any hold; the fence stays.
"""

from __future__ import annotations

from collections import deque

Frame = tuple[int, bytes]  # (utterance id, pcm)


class FrameQueue:
    def __init__(self, *, max_frames: int | None = None, rewind_ms: float = 0.0) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        if rewind_ms < 0:
            raise ValueError("rewind_ms must be >= 0")
        self.max_frames = max_frames
        self.rewind_s = rewind_ms / 1000.0
        self._frames: deque[Frame] = deque()
        self._count: dict[int, int] = {}  # queued frames per utterance
        self._handed: deque[tuple[float, Frame]] = deque()  # for the rewind
        self._held = False
        self._held_id: int | None = None
        self.fenced = 0  # frames of this utterance id or lower are refused
        self.dropped = 0  # frames dropped at the bound
        self.refused = 0  # frames refused by the fence

    # -- state ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def held(self) -> bool:
        return self._held

    @property
    def held_id(self) -> int | None:
        """The utterance the hold was asked for (``None``: not held, or none named)."""
        return self._held_id

    @property
    def next_id(self) -> int | None:
        """The utterance of the frame ``take`` would hand out; ``None``: held or empty."""
        if self._held or not self._frames:
            return None
        return self._frames[0][0]

    def buffered(self, utterance_id: int) -> int:
        return self._count.get(utterance_id, 0)

    def frames(self) -> list[Frame]:
        """What waits, front first (for tests and diagnostics)."""
        return list(self._frames)

    # -- changes -------------------------------------------------------------------

    def push(self, utterance_id: int, pcm: bytes) -> bool:
        if utterance_id <= self.fenced:
            self.refused += 1
            return False
        if self.max_frames is not None:
            while len(self._frames) >= self.max_frames:
                self._discount(self._frames.popleft()[0])
                self.dropped += 1
        self._frames.append((utterance_id, pcm))
        self._count[utterance_id] = self._count.get(utterance_id, 0) + 1
        return True

    def take(self, now: float) -> Frame | None:
        if self.rewind_s:
            horizon = now - self.rewind_s
            handed = self._handed
            while handed and handed[0][0] <= horizon:
                handed.popleft()
        if self._held or not self._frames:
            return None
        frame = self._frames.popleft()
        self._discount(frame[0])
        if self.rewind_s:
            self._handed.append((now, frame))
        return frame

    def hold(self, now: float, utterance_id: int | None = None) -> bool:
        """Hold; ``False`` if that changed nothing (already held, or fenced)."""
        if self._held or (utterance_id is not None and utterance_id <= self.fenced):
            return False
        self._held, self._held_id = True, utterance_id
        if self._handed and utterance_id is not None:
            horizon = now - self.rewind_s
            back = [f for at, f in self._handed if at > horizon and f[0] == utterance_id]
            self._frames.extendleft(reversed(back))
            if back:
                self._count[utterance_id] = self.buffered(utterance_id) + len(back)
        self._handed.clear()  # rewound once: a second hold must not bring them back again
        return True

    def unhold(self) -> None:
        self._held, self._held_id = False, None

    def drop(self, utterance_id: int) -> int:
        """Discard the frames of ``utterance_id``; how many were queued."""
        n = self._count.pop(utterance_id, 0)
        if n:
            self._frames = deque(f for f in self._frames if f[0] != utterance_id)
        if self._handed:
            self._handed = deque(h for h in self._handed if h[1][0] != utterance_id)
        return n

    def fence(self, utterance_id: int) -> None:
        if utterance_id <= self.fenced:
            return
        self.fenced = utterance_id
        stale = [uid for uid in self._count if uid <= utterance_id]
        if stale:
            for uid in stale:
                del self._count[uid]
            self._frames = deque(f for f in self._frames if f[0] > utterance_id)
        if self._handed:
            self._handed = deque(h for h in self._handed if h[1][0] > utterance_id)
        if self._held_id is not None and self._held_id <= utterance_id:
            self.unhold()

    def clear(self) -> None:
        self._frames.clear()
        self._count.clear()
        self._handed.clear()
        self.unhold()

    def _discount(self, utterance_id: int) -> None:
        n = self._count[utterance_id] - 1
        if n:
            self._count[utterance_id] = n
        else:
            del self._count[utterance_id]
