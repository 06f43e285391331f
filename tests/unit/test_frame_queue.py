"""FrameQueue, the one hold / rewind / fence object of outbound audio (the session's
playout and the WebRTC track): pure, with a fake clock (plain floats).

The cases of the WebRTC track's queue (hold, rewind, fence, bound) and of the
playout's buffer (drop per utterance, hold), then a model check: random operations
against a plain list model of the documented rules, with the invariants checked
after each step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from duplexvoice.orchestrator.sessions.frame_queue import FrameQueue

pytestmark = pytest.mark.unit

F = 0.02  # one frame, in seconds


def pcm(n: int) -> bytes:
    return n.to_bytes(4, "little")


def label(frame: tuple[int, bytes] | None) -> int | None:
    """The ``n`` of a frame from :func:`pcm`, ``None`` for nothing handed out."""
    return None if frame is None else int.from_bytes(frame[1], "little")


def play(q: FrameQueue, start: float, count: int) -> list[int | None]:
    """``count`` frames taken at 20 ms steps from ``start``."""
    return [label(q.take(start + i * F)) for i in range(count)]


def fill(q: FrameQueue, uid: int, first: int, count: int) -> None:
    for n in range(first, first + count):
        assert q.push(uid, pcm(n))


def queued(q: FrameQueue) -> list[int | None]:
    return [label(f) for f in q.frames()]


# -- order, hold, resume ---------------------------------------------------------------


def test_frames_leave_in_order_then_nothing() -> None:
    q = FrameQueue()
    assert q.take(0.0) is None and q.next_id is None
    fill(q, 1, 1, 3)
    fill(q, 2, 4, 2)
    assert q.next_id == 1 and q.buffered(1) == 3 and q.buffered(2) == 2
    assert play(q, 1.0, 7) == [1, 2, 3, 4, 5, None, None]
    assert len(q) == 0 and q.buffered(1) == 0 and q.buffered(2) == 0


def test_take_hands_out_the_utterance_id_with_the_pcm() -> None:
    q = FrameQueue()
    fill(q, 7, 1, 1)
    assert q.take(0.0) == (7, pcm(1))


def test_hold_hands_out_nothing_and_keeps_the_queue_then_unhold_goes_on() -> None:
    q = FrameQueue()
    fill(q, 1, 1, 5)
    assert play(q, 0.0, 2) == [1, 2]
    assert q.hold(0.03, 1)
    assert q.held and q.held_id == 1 and q.next_id is None
    assert play(q, 0.04, 3) == [None, None, None]
    fill(q, 1, 6, 1)  # the driver may still send a little after the pause
    q.unhold()
    assert not q.held and q.held_id is None and q.next_id == 1
    assert play(q, 0.1, 5) == [3, 4, 5, 6, None]


def test_a_hold_while_held_changes_nothing() -> None:
    q = FrameQueue(rewind_ms=40)
    fill(q, 1, 1, 3)
    assert play(q, 0.0, 1) == [1]
    assert q.hold(0.01, 1)
    assert not q.hold(0.015, 1) and not q.hold(0.015, 2)
    assert q.held_id == 1 and queued(q) == [1, 2, 3]  # rewound once, not twice


def test_a_hold_without_an_utterance_rewinds_nothing() -> None:
    # The playout's hold: it names no utterance and has no rewind.
    q = FrameQueue(rewind_ms=100)
    fill(q, 1, 1, 3)
    assert play(q, 0.0, 2) == [1, 2]
    assert q.hold(0.03)
    assert q.held and q.held_id is None and queued(q) == [3]


def test_unhold_ends_any_hold() -> None:
    q = FrameQueue()
    fill(q, 2, 1, 1)
    q.hold(0.0, 2)
    q.unhold()
    q.unhold()  # not held: a no-op
    assert play(q, 0.1, 1) == [1]


# -- rewind ----------------------------------------------------------------------------


def test_hold_rewinds_frames_handed_out_within_the_window() -> None:
    q = FrameQueue(rewind_ms=40)
    fill(q, 1, 1, 6)
    assert play(q, 0.0, 4) == [1, 2, 3, 4]  # handed at 0, 20, 40, 60 ms
    q.hold(0.07, 1)  # handed within 40 ms: frames 3 (30 ms ago) and 4 (10 ms ago)
    assert queued(q) == [3, 4, 5, 6] and q.buffered(1) == 4
    assert play(q, 0.08, 2) == [None, None]
    q.unhold()
    assert play(q, 0.12, 5) == [3, 4, 5, 6, None]


def test_rewind_window_boundary_is_exclusive() -> None:
    q = FrameQueue(rewind_ms=40)
    fill(q, 1, 1, 4)
    assert play(q, 0.0, 3) == [1, 2, 3]  # at 0, 20, 40 ms
    q.hold(0.08, 1)  # frame 2 was handed exactly 60 ms ago, 3 exactly 40 ms ago
    assert queued(q) == [4]
    q.unhold()
    q.hold(0.081, 1)  # nothing handed since: nothing to rewind, nothing doubled
    assert queued(q) == [4]


def test_rewind_takes_only_the_held_utterance() -> None:
    q = FrameQueue(rewind_ms=100)
    fill(q, 1, 1, 2)
    fill(q, 2, 3, 2)
    assert play(q, 0.0, 3) == [1, 2, 3]
    q.hold(0.05, 2)
    assert queued(q) == [3, 4] and q.buffered(1) == 0 and q.buffered(2) == 2


def test_without_a_rewind_window_nothing_comes_back() -> None:
    q = FrameQueue()
    fill(q, 1, 1, 3)
    assert play(q, 0.0, 2) == [1, 2]
    q.hold(0.021, 1)
    assert queued(q) == [3]


def test_frames_dropped_or_fenced_are_not_rewound() -> None:
    q = FrameQueue(rewind_ms=100)
    fill(q, 1, 1, 2)
    fill(q, 2, 3, 2)
    assert play(q, 0.0, 3) == [1, 2, 3]
    assert q.drop(2) == 1  # frame 4 queued; frame 3 was handed
    q.hold(0.07, 2)
    assert queued(q) == []  # 3 stays gone: the utterance was dropped
    q.unhold()
    fill(q, 3, 5, 2)
    assert play(q, 0.1, 1) == [5]
    q.fence(3)
    assert not q.hold(0.11, 3) and queued(q) == []


# -- drop and fence --------------------------------------------------------------------


def test_drop_discards_only_the_given_utterance_wherever_its_frames_are() -> None:
    q = FrameQueue()
    fill(q, 1, 1, 3)
    fill(q, 2, 4, 2)
    fill(q, 1, 6, 2)  # late frames of 1 after 2's
    fill(q, 3, 8, 2)
    assert q.drop(1) == 5
    assert q.buffered(1) == 0 and q.buffered(2) == 2 and q.buffered(3) == 2 and len(q) == 4
    assert q.drop(1) == 0 and q.drop(9) == 0
    assert q.push(1, pcm(10))  # a drop is no fence
    assert play(q, 0.0, 6) == [4, 5, 8, 9, 10, None]


def test_fence_drops_its_frames_and_earlier_ones_and_refuses_them_later() -> None:
    q = FrameQueue()
    fill(q, 1, 1, 2)
    fill(q, 2, 3, 2)
    fill(q, 3, 5, 2)
    assert play(q, 0.0, 1) == [1]
    q.fence(2)
    assert queued(q) == [5, 6] and q.buffered(1) == q.buffered(2) == 0
    assert not q.push(2, pcm(9)) and not q.push(1, pcm(9))  # late frames: refused
    assert q.refused == 2 and q.fenced == 2
    assert q.push(3, pcm(7)) and q.push(4, pcm(8))
    assert play(q, 1.0, 5) == [5, 6, 7, 8, None]


def test_fence_ends_a_hold_on_the_utterance_and_forgets_its_rewind() -> None:
    q = FrameQueue(rewind_ms=40)
    fill(q, 1, 1, 3)
    assert play(q, 0.0, 2) == [1, 2]
    q.hold(0.03, 1)
    q.fence(1)
    assert not q.held and len(q) == 0
    fill(q, 2, 10, 1)  # the next reply plays at once
    assert play(q, 0.1, 2) == [10, None]
    assert not q.hold(0.2, 1)  # a hold of a fenced utterance is moot
    assert not q.held


def test_fence_keeps_a_hold_of_a_later_utterance() -> None:
    q = FrameQueue()
    fill(q, 3, 1, 1)
    q.hold(0.0, 3)
    q.fence(2)
    assert q.held and q.held_id == 3 and queued(q) == [1]


def test_an_older_fence_does_not_lower_it() -> None:
    q = FrameQueue()
    q.fence(5)
    q.fence(3)
    assert q.fenced == 5 and not q.push(4, pcm(1)) and q.push(6, pcm(1))


def test_clear_empties_and_unholds_and_keeps_the_fence() -> None:
    q = FrameQueue(rewind_ms=100)
    q.fence(1)
    fill(q, 2, 1, 3)
    assert play(q, 0.0, 1) == [1]
    q.hold(0.01, 2)
    q.clear()
    assert len(q) == 0 and q.buffered(2) == 0 and not q.held
    assert not q.push(1, pcm(1))
    q.hold(0.02, 2)
    assert queued(q) == []  # what was handed before the clear is gone too


# -- bound -----------------------------------------------------------------------------


def test_the_bound_drops_the_oldest_frames() -> None:
    q = FrameQueue(max_frames=3)
    fill(q, 1, 1, 3)
    fill(q, 2, 4, 2)
    assert len(q) == 3 and q.dropped == 2
    assert q.buffered(1) == 1 and q.buffered(2) == 2
    assert play(q, 0.0, 4) == [3, 4, 5, None]


def test_without_a_bound_nothing_is_dropped() -> None:
    q = FrameQueue()
    fill(q, 1, 0, 1000)
    assert len(q) == 1000 and q.dropped == 0


def test_a_rewind_over_the_bound_is_trimmed_by_the_next_push() -> None:
    q = FrameQueue(max_frames=3, rewind_ms=40)
    fill(q, 1, 1, 4)  # 1 dropped
    assert play(q, 0.0, 2) == [2, 3]
    fill(q, 1, 5, 1)
    q.hold(0.03, 1)  # 2 and 3 back: 4 queued
    assert queued(q) == [2, 3, 4, 5]
    fill(q, 1, 6, 1)
    assert queued(q) == [4, 5, 6] and q.buffered(1) == 3


@pytest.mark.parametrize("kwargs", [{"max_frames": 0}, {"rewind_ms": -1}])
def test_bad_arguments_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FrameQueue(**kwargs)  # type: ignore[arg-type]


# -- the model check -------------------------------------------------------------------


@dataclass
class Model:
    """The documented rules, as plainly as they can be written."""

    max_frames: int | None
    rewind_s: float
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    handed: list[tuple[float, tuple[int, bytes]]] = field(default_factory=list)
    held: bool = False
    held_id: int | None = None
    fenced: int = 0
    dropped: int = 0
    refused: int = 0

    def push(self, uid: int, data: bytes) -> bool:
        if uid <= self.fenced:
            self.refused += 1
            return False
        while self.max_frames is not None and len(self.frames) >= self.max_frames:
            self.frames.pop(0)
            self.dropped += 1
        self.frames.append((uid, data))
        return True

    def take(self, now: float) -> tuple[int, bytes] | None:
        if self.held or not self.frames:
            return None
        frame = self.frames.pop(0)
        self.handed.append((now, frame))
        return frame

    def hold(self, now: float, uid: int | None) -> bool:
        if self.held or (uid is not None and uid <= self.fenced):
            return False
        self.held, self.held_id = True, uid
        back = [f for at, f in self.handed if now - at < self.rewind_s and f[0] == uid]
        self.frames = back + self.frames
        self.handed = []
        return True

    def unhold(self) -> None:
        self.held, self.held_id = False, None

    def drop(self, uid: int) -> int:
        n = sum(1 for f in self.frames if f[0] == uid)
        self.frames = [f for f in self.frames if f[0] != uid]
        self.handed = [h for h in self.handed if h[1][0] != uid]
        return n

    def fence(self, uid: int) -> None:
        if uid <= self.fenced:
            return
        self.fenced = uid
        self.frames = [f for f in self.frames if f[0] > uid]
        self.handed = [h for h in self.handed if h[1][0] > uid]
        if self.held_id is not None and self.held_id <= uid:
            self.unhold()

    def clear(self) -> None:
        self.frames, self.handed = [], []
        self.unhold()


@pytest.mark.parametrize("seed", range(40))
def test_random_operations_follow_the_model(seed: int) -> None:
    rng = random.Random(seed)
    max_frames = rng.choice([None, 1, 3, 8])
    # Times on a 10 ms grid and windows off it: never a tie at the window's boundary
    # (the model's "now - at < window" and the queue's horizon round alike otherwise).
    rewind_ms = rng.choice([0, 25, 45, 105])
    q = FrameQueue(max_frames=max_frames, rewind_ms=rewind_ms)
    m = Model(max_frames, rewind_ms / 1000)
    tick, n, base, playing = 0, 0, 1, 1
    for _ in range(400):
        tick += rng.choice([0, 0, 1, 1, 2, 5])
        now = tick / 100
        base += rng.random() < 0.05  # utterances go on, as a session's do
        uid = max(1, base + rng.randint(-1, 2))
        op = rng.random()
        pushed = False
        if op < 0.35:
            n += 1
            pushed = q.push(uid, pcm(n))
            assert pushed == m.push(uid, pcm(n))
        elif op < 0.6:
            frame = q.take(now)
            assert frame == m.take(now)
            playing = frame[0] if frame is not None else playing
        elif op < 0.66:
            # Mostly the utterance playing, as a pause names it; then any, or none.
            named = rng.choice([playing, playing, playing, uid, None])
            assert q.hold(now, named) == m.hold(now, named)
        elif op < 0.8:
            q.unhold()
            m.unhold()
        elif op < 0.86:
            assert q.drop(uid) == m.drop(uid)
        elif op < 0.94:
            q.fence(uid)
            m.fence(uid)
        else:
            q.clear()
            m.clear()
        if not m.rewind_s:
            m.handed = []  # no window: nothing is ever rewound
        assert q.frames() == m.frames
        assert len(q) == len(m.frames)
        assert (q.held, q.held_id, q.fenced) == (m.held, m.held_id, m.fenced)
        assert (q.dropped, q.refused) == (m.dropped, m.refused)
        assert q.next_id == (None if m.held or not m.frames else m.frames[0][0])
        for u in range(0, base + 3):
            assert q.buffered(u) == sum(1 for f in m.frames if f[0] == u)
        assert all(f[0] > q.fenced for f in q.frames())
        if max_frames is not None and pushed:
            assert len(q) <= max_frames  # a push trims even a rewind over the bound
