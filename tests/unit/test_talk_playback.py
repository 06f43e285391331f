"""The talk client's jitter buffer with a fake clock: real-time playback, pause and
resume with nothing lost or replayed, interrupt and fencing, playback reports."""

from __future__ import annotations

import pytest

from duplexvoice.client.talk_playback import (
    FRAME_BYTES,
    SILENCE,
    PlaybackBuffer,
    PlaybackConfig,
    PlaybackReport,
)

pytestmark = pytest.mark.unit


def frame(uid: int, n: int) -> bytes:
    """A recognizable frame: utterance and index in the first bytes."""
    return bytes([uid, n % 256, n // 256]) + bytes(FRAME_BYTES - 3)


def label(pcm: bytes) -> tuple[int, int] | None:
    return None if pcm == SILENCE else (pcm[0], pcm[1] + 256 * pcm[2])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def tick(self) -> float:
        self.now += 0.02
        return self.now


def play(buffer: PlaybackBuffer, clock: Clock, ticks: int) -> list[tuple[int, int] | None]:
    return [label(buffer.read(clock.tick()).pcm) for _ in range(ticks)]


def push(buffer: PlaybackBuffer, clock: Clock, uid: int, frames: range) -> None:
    for n in frames:
        buffer.push(uid, frame(uid, n), clock.now)


def test_frames_play_in_order_one_per_tick_then_silence() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    assert play(buffer, clock, 2) == [None, None]
    push(buffer, clock, 1, range(4))
    buffer.end(1, "completed")
    assert play(buffer, clock, 6) == [(1, 0), (1, 1), (1, 2), (1, 3), None, None]
    assert buffer.idle and buffer.stats.played_frames == 4 and buffer.stats.underruns == 0


def test_an_utterance_starts_after_two_frames_or_40_ms() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(1))
    assert play(buffer, clock, 1) == [None]  # one frame, waited 20 ms: not yet
    assert play(buffer, clock, 1) == [(1, 0)]  # waited 40 ms: go
    push(buffer, clock, 2, range(2))
    assert play(buffer, clock, 1) == [(2, 0)]  # continuous: no prebuffering mid-stream


def test_first_frame_and_whose_frame_is_reported() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 3, range(2))
    first, second = buffer.read(clock.tick()), buffer.read(clock.tick())
    assert (first.utterance_id, first.first) == (3, True)
    assert (second.utterance_id, second.first) == (3, False)
    assert buffer.read(clock.tick()).utterance_id is None


def test_pause_holds_and_resume_goes_on_with_nothing_lost_or_replayed() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(10))
    heard = play(buffer, clock, 3)
    buffer.pause(1)
    held = play(buffer, clock, 5)
    assert held == [None] * 5 and buffer.held and buffer.buffered_frames == 7
    push(buffer, clock, 1, range(10, 12))  # audio keeps arriving while held
    buffer.resume(1)
    buffer.end(1, "completed")
    heard += play(buffer, clock, 12)
    assert [x for x in heard if x] == [(1, n) for n in range(12)]
    assert buffer.idle


def test_resume_of_another_utterance_does_not_release_the_hold() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 2, range(4))
    buffer.pause(2)
    buffer.resume(1)
    assert play(buffer, clock, 3) == [None] * 3


def test_interrupt_drops_the_buffer_and_fences_late_frames() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(10))
    play(buffer, clock, 2)
    buffer.pause(1)
    buffer.interrupt(1)
    assert not buffer.held and buffer.buffered_frames == 0
    assert not buffer.push(1, frame(1, 10), clock.now)  # fenced
    buffer.end(1, "interrupted")
    push(buffer, clock, 2, range(3))
    buffer.end(2, "completed")
    assert [x for x in play(buffer, clock, 6) if x] == [(2, 0), (2, 1), (2, 2)]
    assert buffer.stats.dropped_interrupted == 8 and buffer.stats.dropped_fenced == 1
    assert buffer.idle


def test_interrupt_of_one_utterance_keeps_the_next_ones_audio() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(3))
    push(buffer, clock, 2, range(3))
    buffer.interrupt(1)
    assert [x for x in play(buffer, clock, 5) if x] == [(2, 0), (2, 1), (2, 2)]


def test_pause_of_an_interrupted_utterance_is_ignored() -> None:
    buffer = PlaybackBuffer()
    buffer.interrupt(4)
    buffer.pause(4)
    assert not buffer.held


def test_end_stopped_drops_like_an_interrupt() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(5))
    buffer.end(1, "stopped")
    assert play(buffer, clock, 3) == [None] * 3 and buffer.idle


def test_end_error_plays_out_what_arrived() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(2))
    buffer.end(1, "error")
    assert [x for x in play(buffer, clock, 3) if x] == [(1, 0), (1, 1)]


def test_reports_every_200_ms_at_pause_at_interrupt_and_at_the_end() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(25))
    play(buffer, clock, 12)
    assert buffer.take_reports() == [PlaybackReport(1, 200.0)]
    buffer.pause(1)
    assert buffer.take_reports() == [PlaybackReport(1, 240.0)]
    play(buffer, clock, 3)
    assert buffer.take_reports() == []  # nothing played while held
    buffer.resume(1)
    play(buffer, clock, 11)
    assert buffer.take_reports() == [PlaybackReport(1, 440.0)]
    buffer.interrupt(1)
    assert buffer.take_reports() == [PlaybackReport(1, 460.0)]
    push(buffer, clock, 2, range(3))
    buffer.end(2, "completed")
    play(buffer, clock, 4)
    assert buffer.take_reports() == [PlaybackReport(2, 60.0)]  # all of it was heard
    assert PlaybackReport(2, 60.0).message() == {"type": "playback", "utterance_id": 2,
                                                 "played_ms": 60.0}


def test_an_underrun_plays_silence_and_is_counted_then_playback_goes_on() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(2))
    assert play(buffer, clock, 3) == [(1, 0), (1, 1), None]
    push(buffer, clock, 1, range(2, 4))
    buffer.end(1, "completed")
    assert play(buffer, clock, 3) == [(1, 2), (1, 3), None]
    assert buffer.stats.underruns == 1


def test_not_idle_while_an_utterance_is_open_or_held() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(2))
    play(buffer, clock, 4)
    assert not buffer.idle  # no utterance_end yet: more may come
    buffer.end(1, "completed")
    assert buffer.idle
    buffer.pause(2)
    assert not buffer.idle


def test_the_buffer_is_bounded() -> None:
    buffer, clock = PlaybackBuffer(PlaybackConfig(max_frames=5)), Clock()
    push(buffer, clock, 1, range(8))
    assert buffer.buffered_frames == 5 and buffer.stats.dropped_overflow == 3


def test_a_frame_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="1920"):
        PlaybackBuffer().push(1, b"\x00" * 10, 0.0)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        PlaybackConfig(prebuffer_frames=0)
    with pytest.raises(ValueError):
        PlaybackConfig(report_every_ms=0)


def test_a_pause_always_reports_even_right_after_a_periodic_report() -> None:
    buffer, clock = PlaybackBuffer(), Clock()
    push(buffer, clock, 1, range(12))
    play(buffer, clock, 10)
    assert buffer.take_reports() == [PlaybackReport(1, 200.0)]
    buffer.pause(1)
    assert buffer.take_reports() == [PlaybackReport(1, 200.0)]
