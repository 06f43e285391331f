"""Playout, the outbound audio of one session: pure, with a fake clock (plain floats)."""

from __future__ import annotations

import random

import pytest

from duplexvoice.orchestrator.sessions.playout import Playout, PlayoutConfig, Released

pytestmark = pytest.mark.unit

FRAME_S = 0.02
EPS = 1e-9


def pcm(uid: int, i: int) -> bytes:
    return f"{uid}:{i}".encode()


def push(playout: Playout, uid: int, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        playout.push(uid, pcm(uid, i))


def sequences(frames: list[Released]) -> list[int]:
    return [f.sequence for f in frames]


def test_frames_leave_in_order_up_to_the_lead_at_once_and_are_sequenced_from_1() -> None:
    playout = Playout(PlayoutConfig(lead_ms=100, send_quantum_ms=40), now=0.0)
    assert playout.sequence == 0
    push(playout, 1, 8)
    out = playout.release(1, 0.0, paced=False)
    assert [f.pcm for f in out] == [pcm(1, i) for i in range(5)]  # 5 x 20 ms = the lead
    assert sequences(out) == [1, 2, 3, 4, 5]
    assert all(f.utterance_id == 1 for f in out)
    assert playout.sequence == 5 and len(playout) == 3 and playout.buffered(1) == 3
    assert playout.ahead(0.0) == pytest.approx(0.1)


def test_sequence_numbers_stay_gapless_across_drops() -> None:
    # Catches a sequence assigned at push time: dropping buffered audio would leave
    # holes the client reads as loss.
    playout = Playout(PlayoutConfig(lead_ms=60, send_quantum_ms=20), now=0.0)
    push(playout, 1, 6)
    first = playout.release(1, 0.0, paced=False)
    assert sequences(first) == [1, 2, 3]
    assert playout.drop(1) == 3
    push(playout, 2, 4)
    second = playout.release(2, 10.0, paced=False)
    assert sequences(second) == [4, 5, 6]
    assert playout.drop(2) == 1
    push(playout, 3, 1)
    assert sequences(playout.release(3, 20.0, paced=False)) == [7]


def test_drop_fences_only_the_given_utterance() -> None:
    # Catches a drop that clears the buffer (losing the next utterance's audio) or that
    # leaves the dropped utterance's frames behind (stale speech after a STOP).
    playout = Playout(PlayoutConfig(lead_ms=1000, send_quantum_ms=40), now=0.0)
    push(playout, 1, 3)
    push(playout, 2, 2)
    push(playout, 1, 2, start=3)  # late frames of 1 after 2's: fenced wherever they are
    push(playout, 3, 2)
    assert playout.drop(1) == 5
    assert playout.buffered(1) == 0 and playout.buffered(2) == 2 and playout.buffered(3) == 2
    assert len(playout) == 4
    assert playout.release(1, 0.0, paced=False) == []
    out = playout.release(2, 0.0, paced=False)
    assert [f.pcm for f in out] == [pcm(2, 0), pcm(2, 1)]
    out = playout.release(3, 0.0, paced=False)
    assert [f.pcm for f in out] == [pcm(3, 0), pcm(3, 1)]
    assert playout.drop(1) == 0  # nothing left: a no-op
    assert playout.drop(4) == 0


def test_only_the_head_utterance_is_released() -> None:
    playout = Playout(PlayoutConfig(lead_ms=1000, send_quantum_ms=40), now=0.0)
    push(playout, 1, 1)
    push(playout, 2, 1)
    assert playout.release(2, 0.0, paced=False) == []
    assert playout.next_release(2) is None
    assert sequences(playout.release(1, 0.0, paced=False)) == [1]
    assert sequences(playout.release(2, 0.0, paced=False)) == [2]


def test_paced_releases_go_a_whole_quantum_at_a_time() -> None:
    config = PlayoutConfig(lead_ms=100, send_quantum_ms=40)
    playout = Playout(config, now=0.0)
    push(playout, 1, 20)
    assert len(playout.release(1, 0.0, paced=False)) == 5  # filled to the lead
    assert playout.next_release(1) == pytest.approx(0.04)
    assert playout.release(1, 0.02, paced=True) == []  # one frame fits, not a quantum
    assert len(playout.release(1, 0.04, paced=True)) == 2
    assert playout.ahead(0.04) == pytest.approx(0.1)
    assert playout.next_release(1) == pytest.approx(0.08)
    # Unpaced (a new frame arrived): fills up to the lead at once, even one frame.
    assert len(playout.release(1, 0.06, paced=False)) == 1


def test_hold_releases_nothing_and_unhold_keeps_what_the_client_had_ahead() -> None:
    # Catches a resume that forgets the client's buffered audio (a burst over the lead)
    # or that counts the paused time as played (audio lost from the lead).
    playout = Playout(PlayoutConfig(lead_ms=100, send_quantum_ms=40), now=0.0)
    push(playout, 1, 20)
    assert len(playout.release(1, 0.0, paced=False)) == 5
    playout.hold(0.03)
    assert playout.held
    playout.hold(0.05)  # holding again does not re-measure
    assert playout.release(1, 5.0, paced=False) == []
    assert playout.next_release(1) is None
    playout.unhold(10.0)
    assert not playout.held
    assert playout.ahead(10.0) == pytest.approx(0.07)
    out = playout.release(1, 10.0, paced=False)
    assert len(out) == 1  # 70 ms ahead + 20 = 90 ms; another would pass 100 ms
    assert sequences(out) == [6]
    playout.unhold(11.0)  # not held: no-op
    assert playout.ahead(10.0) == pytest.approx(0.09)


def test_flushed_forgets_what_the_client_held_so_the_next_utterance_goes_at_once() -> None:
    # Catches a next utterance held back by audio the client dropped on ``interrupt``.
    playout = Playout(PlayoutConfig(lead_ms=100, send_quantum_ms=40), now=0.0)
    push(playout, 1, 8)
    assert len(playout.release(1, 0.0, paced=False)) == 5
    playout.hold(0.01)
    playout.drop(1)
    playout.unhold(0.02)
    playout.flushed(0.02)
    assert playout.ahead(0.02) == 0.0
    push(playout, 2, 8)
    assert sequences(playout.release(2, 0.02, paced=False)) == [6, 7, 8, 9, 10]


def test_flushed_never_moves_the_play_end_later() -> None:
    playout = Playout(PlayoutConfig(lead_ms=100, send_quantum_ms=40), now=0.0)
    push(playout, 1, 1)
    playout.release(1, 0.0, paced=False)
    playout.flushed(5.0)  # everything was played long ago
    assert playout.ahead(0.0) == pytest.approx(0.02)


def test_clear_empties_and_unholds() -> None:
    playout = Playout(PlayoutConfig(max_frames=2), now=0.0)
    push(playout, 1, 3)
    playout.hold(0.0)
    assert playout.full
    playout.clear()
    assert len(playout) == 0 and playout.buffered(1) == 0
    assert not playout.held and not playout.full


def test_full_has_hysteresis() -> None:
    # Set at max_frames, cleared only at 80 % of it: catches a flag that flaps at every
    # frame (one worker read per frame) or that never clears (a stalled stream).
    playout = Playout(PlayoutConfig(lead_ms=20, send_quantum_ms=20, max_frames=10), now=0.0)
    push(playout, 1, 9)
    assert not playout.full
    push(playout, 1, 1, start=9)
    assert playout.full
    now = 0.0
    seen: list[tuple[int, bool]] = []
    while len(playout):
        assert len(playout.release(1, now, paced=False)) == 1  # one frame per 20 ms
        seen.append((len(playout), playout.full))
        now += FRAME_S
    assert seen[:3] == [(9, True), (8, False), (7, False)]
    push(playout, 1, 9, start=10)
    assert not playout.full  # 9 < 10 again
    push(playout, 1, 1, start=19)
    assert playout.full
    assert playout.drop(1) == 10
    assert not playout.full  # a drop clears it too


@pytest.mark.parametrize("seed", range(20))
def test_release_never_exceeds_the_lead_and_loses_nothing(seed: int) -> None:
    rng = random.Random(seed)
    lead_ms = rng.choice([20, 40, 60, 100, 200])
    quantum_ms = rng.choice([q for q in (20, 40, 60) if q <= lead_ms])
    config = PlayoutConfig(lead_ms=lead_ms, send_quantum_ms=quantum_ms, max_frames=50)
    lead_s = lead_ms / 1000
    now = rng.uniform(0, 1000)
    playout = Playout(config, now=now)
    pushed: list[bytes] = []
    got: list[Released] = []
    held_ahead: float | None = None
    for _ in range(400):
        now += rng.choice([0.0, rng.uniform(0, 0.005), rng.uniform(0, 0.05), 0.3])
        action = rng.random()
        if action < 0.45:
            for _ in range(rng.randint(1, 4)):
                data = len(pushed).to_bytes(4, "little")
                pushed.append(data)
                playout.push(1, data)
        elif action < 0.5 and not playout.held:
            playout.hold(now)
            held_ahead = playout.ahead(now)
        elif action < 0.55 and playout.held:
            playout.unhold(now)
            assert held_ahead is not None
            assert playout.ahead(now) == pytest.approx(held_ahead)  # nothing lost
        paced = rng.random() < 0.5
        due = playout.next_release(1)
        before = playout.ahead(now)
        out = playout.release(1, now, paced=paced)
        if playout.held:
            assert out == [] and due is None
        if out:
            # What the client holds once this batch is sent, never above the lead.
            assert playout.ahead(now) <= lead_s + 1e-6
            assert playout.ahead(now) == pytest.approx(max(before, 0) + len(out) * FRAME_S)
        if paced and out:
            assert due is not None and now >= due - 1e-6  # never before it is due
        got.extend(out)
        assert playout.ahead(now) >= 0
    if playout.held:
        playout.unhold(now)
    while len(playout):  # everything comes out eventually, paced by the lead
        now += rng.uniform(0, 0.05)
        out = playout.release(1, now, paced=True)
        if out:
            assert playout.ahead(now) <= lead_s + 1e-6
        got.extend(out)
    assert [f.pcm for f in got] == pushed
    assert sequences(got) == list(range(1, len(pushed) + 1))


@pytest.mark.parametrize("kwargs", [
    {"frame_ms": 0}, {"max_frames": 0}, {"lead_ms": 10},
    {"lead_ms": 100, "send_quantum_ms": 120}, {"send_quantum_ms": 10},
])
def test_invalid_configs_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PlayoutConfig(**kwargs)
