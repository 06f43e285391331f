"""Playout: the outbound audio of one session, as a pure object (no I/O, no clock).

It holds worker frames tagged with their utterance id and releases them to the
client paced against real time, so the client never holds more than ``lead_ms`` of
audio. It owns what must never break: the audio ``sequence`` is assigned at the
moment a frame is released (so dropping buffered audio can never leave a gap), and
frames are fenced by utterance id (an utterance dropped here leaves nothing behind).
The frames wait in a :class:`~.frame_queue.FrameQueue` (hold and drop by utterance
are its own; the WebRTC track's queue is the same object); pacing, sequence numbers
and back-pressure are added here.

- ``push(uid, pcm)`` buffers a frame; ``release(uid, now, paced)`` returns the frames
  of utterance ``uid`` that are due now, each with its sequence number. On the pacing
  clock (``paced``), a release starts only once a whole ``send_quantum_ms`` fits under
  the lead, so frames leave in groups; otherwise (a new frame, a resume) it fills up
  to the lead at once.
- ``hold(now)`` stops releasing and remembers how much the client still had ahead;
  ``unhold(now)`` continues from there: nothing lost or replayed.
- ``drop(uid)`` discards an utterance's buffered frames.
- ``flushed(now)``: the client dropped the audio it held (``interrupt``), so the next
  utterance need not wait behind it.
- ``full`` is back-pressure with hysteresis: set at ``max_frames``, cleared once the
  buffer is down to 80 % of it (the reader then takes a burst, not a frame per frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from duplexvoice.orchestrator.sessions.frame_queue import FrameQueue

_EPS = 1e-6  # seconds; absorbs float error when a release lands exactly on a deadline
_LOW_WATER = 0.8  # of max_frames: where reading the worker resumes


@dataclass(frozen=True)
class PlayoutConfig:
    frame_ms: int = 20
    lead_ms: int = 100  # how far released audio may run ahead of real time
    # Audio leaves this much at a time (one wake-up and one socket write per quantum);
    # the client then holds between lead - quantum + frame and lead ms.
    send_quantum_ms: int = 40
    max_frames: int = 250  # high-water mark for ``full``

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.max_frames < 1:
            raise ValueError("frame_ms must be positive and max_frames >= 1")
        if self.lead_ms < self.frame_ms:
            raise ValueError("lead_ms must be >= frame_ms")
        if not self.frame_ms <= self.send_quantum_ms <= self.lead_ms:
            raise ValueError("send_quantum_ms must be between frame_ms and lead_ms")


class Released(NamedTuple):  # one per frame: a tuple is the cheapest record
    utterance_id: int
    sequence: int
    pcm: bytes


class Playout:
    def __init__(self, config: PlayoutConfig, now: float) -> None:
        self.config = config
        self._frames = FrameQueue()  # no bound (``full`` is back-pressure), no rewind
        self._sequence = 0
        self._play_end = now  # when the client will have played everything released
        self._held_ahead = 0.0
        self._full = False

    # -- state ---------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._frames.held

    @property
    def full(self) -> bool:
        return self._full

    @property
    def sequence(self) -> int:
        """The last sequence number given out (0: none yet)."""
        return self._sequence

    def __len__(self) -> int:
        return len(self._frames)

    def buffered(self, utterance_id: int) -> int:
        return self._frames.buffered(utterance_id)

    def ahead(self, now: float) -> float:
        """Seconds of released audio the client has not played yet (at most lead)."""
        return max(0.0, self._play_end - now)

    def next_release(self, utterance_id: int) -> float | None:
        """When frames of ``utterance_id`` are next due (None: none waiting, or held)."""
        if self._frames.next_id != utterance_id:
            return None
        quantum_s = self.config.send_quantum_ms / 1000
        return self._play_end + quantum_s - self.config.lead_ms / 1000

    # -- changes -------------------------------------------------------------------

    def push(self, utterance_id: int, pcm: bytes) -> None:
        self._frames.push(utterance_id, pcm)  # never fenced: the machine fences itself
        self._update_full()

    def drop(self, utterance_id: int) -> int:
        """Discard every buffered frame of ``utterance_id``; how many there were."""
        n = self._frames.drop(utterance_id)
        if n:
            self._update_full()
        return n

    def flushed(self, now: float) -> None:
        """The client dropped everything it held (it got ``interrupt``): nothing is
        ahead any more. Without this the next utterance's first frames would wait for
        audio the client no longer plays (up to the lead)."""
        self._play_end = min(self._play_end, now)
        self._held_ahead = 0.0

    def clear(self) -> None:
        self._frames.clear()
        self._update_full()

    def hold(self, now: float) -> None:
        if self._frames.hold(now):
            self._held_ahead = self.ahead(now)

    def unhold(self, now: float) -> None:
        """Continue: the client still has what it had ahead when held."""
        if self._frames.held:
            self._frames.unhold()
            self._play_end = now + self._held_ahead

    def release(self, utterance_id: int, now: float, *, paced: bool) -> list[Released]:
        """The frames of ``utterance_id`` due at ``now``, in order, sequenced."""
        out: list[Released] = []
        lead_s, frame_s = self.config.lead_ms / 1000, self.config.frame_ms / 1000
        start_below_s = lead_s - self.config.send_quantum_ms / 1000 + frame_s
        releasing = not paced
        frames = self._frames
        while frames.next_id == utterance_id:
            start = max(self._play_end, now)
            ahead = start + frame_s - now  # what the client holds once this one is sent
            if ahead > lead_s + _EPS or (not releasing and ahead > start_below_s + _EPS):
                break  # far enough ahead: wait for the next release time
            releasing = True
            frame = frames.take(now)
            assert frame is not None  # next_id said there is one
            self._sequence += 1
            self._play_end = start + frame_s
            out.append(Released(utterance_id, self._sequence, frame[1]))
        if out:
            self._update_full()
        return out

    # -- internals -----------------------------------------------------------------

    def _update_full(self) -> None:
        n = len(self._frames)
        if n >= self.config.max_frames:
            self._full = True
        elif n <= self.config.max_frames * _LOW_WATER:
            self._full = False
