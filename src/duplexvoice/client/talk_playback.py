"""What ``duplexvoice talk`` plays, as a pure object: a jitter buffer of the server's
20 ms frames, read one frame per 20 ms of the sound device's clock. No I/O, no clock
of its own: ``now`` is a parameter (a fake clock in tests).

The server paces its audio (``docs/protocol.md`` "Pacing": the client holds 80-100 ms
ahead), so the buffer only has to absorb network jitter and the gap between the
server's 40 ms send groups and our 20 ms reads:

- **Start**: an utterance starts playing once ``prebuffer_frames`` are buffered, or
  its first frame has waited ``prebuffer_ms``, or the server said it ended; after an
  underrun (the buffer ran dry mid-utterance: silence is played, counted) the same
  rule restarts it. A frame is never played twice and never skipped.
- **pause** (the user may be barging in): playback holds at once, silence plays, the
  buffered audio is kept. **resume** plays on from the very next frame: nothing lost,
  nothing replayed. Holding applies to the whole output, not just that utterance's
  frames: the server holds everything behind it too.
- **interrupt**: that utterance's buffered frames are dropped and its id is fenced:
  any frame of it that still arrives is dropped (the server never sends one after the
  interrupt, but this client does not rely on it). An interrupt (or an
  ``utterance_end`` other than ``completed``) of the held utterance ends the hold.
- **playback reports** (``{"type": "playback", "utterance_id", "played_ms"}``) tell
  the server what the user heard: every ``report_every_ms`` of an utterance's audio
  played, at every ``pause`` and ``interrupt`` (even when nothing changed since the
  last one), and when its last frame has played. The
  server keeps only that much of an interrupted reply in the conversation history.

Bounded: at most ``max_frames`` buffered (beyond that new frames are dropped and
counted: the server's pacing makes that a broken server, not a slow client), and the
per-utterance bookkeeping is forgotten once an utterance has ended and played out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from duplexvoice.audio import FRAME_BYTES, FRAME_MS

SILENCE: Final = bytes(FRAME_BYTES)
_FENCE_MEMORY = 64  # interrupted ids remembered (ids only grow; old ones never return)


@dataclass(frozen=True)
class PlaybackConfig:
    prebuffer_frames: int = 2  # the server's first send group is 2 frames
    prebuffer_ms: float = 40.0  # ... or start anyway once the first frame waited this long
    report_every_ms: float = 200.0
    max_frames: int = 1500  # 30 s of audio

    def __post_init__(self) -> None:
        if self.prebuffer_frames < 1 or self.max_frames < self.prebuffer_frames:
            raise ValueError("need 1 <= prebuffer_frames <= max_frames")
        if self.prebuffer_ms < 0 or self.report_every_ms <= 0:
            raise ValueError("prebuffer_ms must be >= 0 and report_every_ms > 0")


@dataclass(frozen=True)
class PlaybackReport:
    utterance_id: int
    played_ms: float

    def message(self) -> dict[str, object]:
        return {"type": "playback", "utterance_id": self.utterance_id,
                "played_ms": self.played_ms}


@dataclass(frozen=True)
class Played:
    """One 20 ms read: the PCM to play (silence when nothing plays) and whose it is."""

    pcm: bytes
    utterance_id: int | None = None  # None: silence
    first: bool = False  # the utterance's first frame played


@dataclass
class _Utterance:
    played: int = 0  # frames played
    buffered: int = 0
    ended: bool = False  # utterance_end received: no more frames will come
    reported: float = -1.0  # played_ms of the last report sent


@dataclass
class PlaybackStats:
    played_frames: int = 0
    underruns: int = 0  # reads that found the buffer dry in the middle of an utterance
    dropped_fenced: int = 0  # frames of an interrupted utterance that arrived after it
    dropped_interrupted: int = 0  # buffered frames thrown away by an interrupt
    dropped_overflow: int = 0


class PlaybackBuffer:
    def __init__(self, config: PlaybackConfig | None = None) -> None:
        self.config = config or PlaybackConfig()
        self._frames: deque[tuple[int, bytes, float]] = deque()  # uid, pcm, arrived at
        self._utterances: dict[int, _Utterance] = {}
        self._fenced: deque[int] = deque(maxlen=_FENCE_MEMORY)
        self._held: int | None = None  # the utterance whose pause holds the output
        self._playing = False  # the previous read played a frame (no prebuffering)
        self._last_uid: int | None = None  # whose frame the previous read played
        self._reports: list[PlaybackReport] = []
        self.stats = PlaybackStats()

    # -- what the server says ----------------------------------------------------------

    def push(self, utterance_id: int, pcm: bytes, now: float) -> bool:
        """A frame arrived; False when it was dropped (fenced, or the buffer is full)."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"a frame is {FRAME_BYTES} bytes, got {len(pcm)}")
        if utterance_id in self._fenced:
            self.stats.dropped_fenced += 1
            return False
        if len(self._frames) >= self.config.max_frames:
            self.stats.dropped_overflow += 1
            return False
        state = self._utterances.setdefault(utterance_id, _Utterance())
        state.buffered += 1
        self._frames.append((utterance_id, pcm, now))
        return True

    def pause(self, utterance_id: int) -> None:
        """Hold the output now, keep the buffered audio."""
        if utterance_id in self._fenced:
            return
        self._held = utterance_id
        self._report(utterance_id, force=True)

    def resume(self, utterance_id: int) -> None:
        """Play on from where the pause stopped."""
        if self._held == utterance_id:
            self._held = None

    def interrupt(self, utterance_id: int) -> None:
        """Drop the utterance's buffered audio; its later frames are dropped too."""
        if utterance_id not in self._fenced:
            self._fenced.append(utterance_id)
        self._report(utterance_id, force=True)
        state = self._utterances.pop(utterance_id, None)
        if state is not None and state.buffered:
            self.stats.dropped_interrupted += state.buffered
            self._frames = deque(f for f in self._frames if f[0] != utterance_id)
        if self._held is not None and self._held <= utterance_id:
            self._held = None  # the server drops everything up to the interrupted one

    def end(self, utterance_id: int, reason: str) -> None:
        """``utterance_end``: no more frames of it. ``interrupted`` and ``stopped``
        drop what is left (the server sent ``interrupt`` first anyway); ``completed``
        and ``error`` play out what arrived."""
        if reason in ("interrupted", "stopped"):
            self.interrupt(utterance_id)
            return
        state = self._utterances.get(utterance_id)
        if state is None:
            return  # no frame of it (or already forgotten)
        state.ended = True
        self._forget_if_done(utterance_id, state)

    # -- the device's clock ------------------------------------------------------------

    def read(self, now: float) -> Played:
        """The next 20 ms to play."""
        if self._held is not None or not self._frames:
            if self._held is None and self._playing and self._last_uid is not None:
                last = self._utterances.get(self._last_uid)
                if last is not None and not last.ended:
                    self.stats.underruns += 1  # dry in the middle of an utterance
            self._playing = False
            return Played(SILENCE)
        uid, pcm, arrived = self._frames[0]
        state = self._utterances[uid]
        if not self._playing and not self._ready(uid, state, arrived, now):
            return Played(SILENCE)
        self._frames.popleft()
        state.buffered -= 1
        state.played += 1
        self.stats.played_frames += 1
        self._playing = True
        self._last_uid = uid
        played_ms = state.played * FRAME_MS
        if played_ms - max(state.reported, 0.0) >= self.config.report_every_ms:
            self._report(uid)
        first = state.played == 1
        self._forget_if_done(uid, state)
        return Played(pcm, uid, first)

    def _ready(self, uid: int, state: _Utterance, arrived: float, now: float) -> bool:
        """Prebuffering: enough frames of the head utterance, or waited long enough."""
        return (state.ended or state.buffered >= self.config.prebuffer_frames
                or (now - arrived) * 1000.0 >= self.config.prebuffer_ms - 1e-6)

    # -- reports ---------------------------------------------------------------------

    def take_reports(self) -> list[PlaybackReport]:
        reports, self._reports = self._reports, []
        return reports

    def _report(self, uid: int, *, force: bool = False) -> None:
        state = self._utterances.get(uid)
        if state is None:
            return
        played_ms = float(state.played * FRAME_MS)
        if not force and (played_ms == state.reported or played_ms == 0):
            return
        state.reported = played_ms
        self._reports.append(PlaybackReport(uid, played_ms))

    def _forget_if_done(self, uid: int, state: _Utterance) -> None:
        if state.ended and state.buffered == 0:
            self._report(uid)  # the last frame played: all of it was heard
            del self._utterances[uid]

    # -- what the driver asks ----------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._held is not None

    @property
    def buffered_frames(self) -> int:
        return len(self._frames)

    @property
    def idle(self) -> bool:
        """Nothing to play and nothing more expected: every utterance that sent audio
        has ended and played out (or was dropped), and no pause holds the output."""
        return not self._frames and not self._utterances and self._held is None

    def played_ms(self, utterance_id: int) -> float | None:
        state = self._utterances.get(utterance_id)
        return None if state is None else float(state.played * FRAME_MS)


__all__ = ["FRAME_BYTES", "FRAME_MS", "SILENCE", "PlaybackBuffer", "PlaybackConfig",
           "PlaybackReport", "PlaybackStats", "Played"]
