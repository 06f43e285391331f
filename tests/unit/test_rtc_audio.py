"""The WebRTC outgoing audio queue (pure: hold, rewind, fence, bound), the frame
conversions of the tracks, and the receiving side's jitter buffer."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpReceiver,
)
from aiortc.rtp import RtpPacket

from duplexvoice.orchestrator.transports.rtc_audio import (
    SILENCE,
    ImmediateAudioBuffer,
    OutgoingAudioTrack,
    OutgoingQueue,
    frame_to_pcm16_mono,
    hand_on_at_once,
    pcm_frame,
)

pytestmark = pytest.mark.unit

F = 0.02  # one frame, in seconds


def pcm(n: int) -> bytes:
    """A distinct frame: every sample is ``n``."""
    return np.full(960, n, "<i2").tobytes()


def label(frame: object) -> int | None:
    """The ``n`` of a frame from :func:`pcm`, ``None`` for silence."""
    if frame is None:
        return None
    return int(np.frombuffer(frame.pcm, "<i2")[0])  # type: ignore[attr-defined]


def play(q: OutgoingQueue, start: float, count: int) -> list[int | None]:
    """``count`` frames taken at 20 ms steps from ``start``."""
    return [label(q.take(start + i * F)) for i in range(count)]


def fill(q: OutgoingQueue, uid: int, first: int, count: int) -> None:
    for n in range(first, first + count):
        assert q.push(uid, pcm(n))


def test_frames_leave_in_order_then_silence() -> None:
    q = OutgoingQueue()
    assert q.take(0.0) is None  # nothing queued: silence
    fill(q, 1, 1, 3)
    fill(q, 2, 4, 2)
    assert play(q, 1.0, 7) == [1, 2, 3, 4, 5, None, None]
    assert len(q) == 0


def test_hold_gives_silence_and_keeps_the_queue_then_resume_goes_on() -> None:
    q = OutgoingQueue(hold_rewind_ms=0)
    fill(q, 1, 1, 5)
    assert play(q, 0.0, 2) == [1, 2]
    q.hold(1, now=0.03)
    assert q.held == 1 and play(q, 0.04, 3) == [None, None, None]
    fill(q, 1, 6, 1)  # the driver may still send a little after the pause
    q.resume(1)
    assert play(q, 0.1, 5) == [3, 4, 5, 6, None]


def test_hold_rewinds_frames_handed_out_within_the_window() -> None:
    q = OutgoingQueue(hold_rewind_ms=40)
    fill(q, 1, 1, 6)
    assert play(q, 0.0, 4) == [1, 2, 3, 4]  # handed at 0, 20, 40, 60 ms
    q.hold(1, now=0.07)  # handed within 40 ms: frames 3 (30 ms ago) and 4 (10 ms ago)
    assert [label(f) for f in q.queued()] == [3, 4, 5, 6]
    assert play(q, 0.08, 2) == [None, None]
    q.resume(1)
    assert play(q, 0.12, 5) == [3, 4, 5, 6, None]


def test_rewind_window_boundary_is_exclusive() -> None:
    q = OutgoingQueue(hold_rewind_ms=40)
    fill(q, 1, 1, 4)
    assert play(q, 0.0, 3) == [1, 2, 3]  # at 0, 20, 40 ms
    q.hold(1, now=0.08)  # frame 2 was handed exactly 60 ms ago, 3 exactly 40 ms ago
    assert [label(f) for f in q.queued()] == [4]
    q.resume(1)
    q.hold(1, now=0.081)  # nothing handed since: nothing to rewind, nothing doubled
    assert [label(f) for f in q.queued()] == [4]


def test_rewind_takes_only_the_held_utterance() -> None:
    q = OutgoingQueue(hold_rewind_ms=100)
    fill(q, 1, 1, 2)
    fill(q, 2, 3, 2)
    assert play(q, 0.0, 3) == [1, 2, 3]
    q.hold(2, now=0.05)
    assert [label(f) for f in q.queued()] == [3, 4]


def test_a_second_hold_does_not_rewind_again() -> None:
    q = OutgoingQueue(hold_rewind_ms=40)
    fill(q, 1, 1, 3)
    assert play(q, 0.0, 1) == [1]
    q.hold(1, now=0.01)
    q.hold(1, now=0.015)
    assert [label(f) for f in q.queued()] == [1, 2, 3]


def test_interrupt_drops_its_frames_and_earlier_ones_and_fences_them() -> None:
    q = OutgoingQueue()
    fill(q, 1, 1, 2)
    fill(q, 2, 3, 2)
    fill(q, 3, 5, 2)
    assert play(q, 0.0, 1) == [1]
    q.interrupt(2)
    assert [label(f) for f in q.queued()] == [5, 6]
    assert not q.push(2, pcm(9)) and not q.push(1, pcm(9))  # late frames: refused
    assert q.refused == 2 and q.fence == 2
    assert q.push(3, pcm(7)) and q.push(4, pcm(8))
    assert play(q, 1.0, 5) == [5, 6, 7, 8, None]


def test_interrupt_releases_a_hold_on_the_utterance_and_forgets_its_rewind() -> None:
    q = OutgoingQueue(hold_rewind_ms=40)
    fill(q, 1, 1, 3)
    assert play(q, 0.0, 2) == [1, 2]
    q.hold(1, now=0.03)
    q.interrupt(1)
    assert q.held is None and len(q) == 0
    fill(q, 2, 10, 1)  # the next reply plays at once
    assert play(q, 0.1, 2) == [10, None]
    q.hold(1, now=0.2)  # a hold of a fenced utterance is moot
    assert q.held is None


def test_an_older_interrupt_does_not_lower_the_fence() -> None:
    q = OutgoingQueue()
    q.interrupt(5)
    q.interrupt(3)
    assert q.fence == 5 and not q.push(4, pcm(1)) and q.push(6, pcm(1))


def test_resume_ends_any_hold() -> None:
    q = OutgoingQueue()
    fill(q, 2, 1, 1)
    q.hold(2, now=0.0)
    q.resume(1)  # whatever id: a hold left over would be silence for ever
    assert play(q, 0.1, 1) == [1]


def test_the_bound_drops_the_oldest_frames() -> None:
    q = OutgoingQueue(max_frames=3)
    fill(q, 1, 1, 5)
    assert len(q) == 3 and q.dropped == 2
    assert play(q, 0.0, 4) == [3, 4, 5, None]


def test_a_rewind_over_the_bound_is_trimmed_by_the_next_push() -> None:
    q = OutgoingQueue(max_frames=3, hold_rewind_ms=40)
    fill(q, 1, 1, 4)  # 1 dropped
    assert play(q, 0.0, 2) == [2, 3]
    fill(q, 1, 5, 1)
    q.hold(1, now=0.03)  # 2 and 3 back: 5 queued
    assert [label(f) for f in q.queued()] == [2, 3, 4, 5]
    fill(q, 1, 6, 1)
    assert [label(f) for f in q.queued()] == [4, 5, 6]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        OutgoingQueue(max_frames=0)
    with pytest.raises(ValueError):
        OutgoingQueue(hold_rewind_ms=-1)
    with pytest.raises(ValueError, match="1920"):
        OutgoingQueue().push(1, b"\x00" * 10)


# -- frames -------------------------------------------------------------------------


def test_pcm_frame_is_s16_mono_48k_with_its_pts() -> None:
    frame = pcm_frame(pcm(3), 960)
    assert frame.format.name == "s16" and frame.layout.name == "mono"
    assert frame.sample_rate == 48_000 and frame.samples == 960 and frame.pts == 960
    assert frame.time_base.denominator == 48_000
    assert frame_to_pcm16_mono(frame) == pcm(3)


def test_stereo_and_planar_float_frames_fold_to_mono() -> None:
    left, right = np.full(960, 1000, "<i2"), np.full(960, 3000, "<i2")
    packed = av.AudioFrame.from_ndarray(np.stack([left, right], 1).reshape(1, -1),
                                        format="s16", layout="stereo")
    assert set(np.frombuffer(frame_to_pcm16_mono(packed), "<i2")) == {2000}
    planar = av.AudioFrame.from_ndarray(
        np.stack([np.full(960, 0.5, np.float32), np.full(960, 0.25, np.float32)]),
        format="fltp", layout="stereo")
    mono = np.frombuffer(frame_to_pcm16_mono(planar), "<i2")
    assert len(mono) == 960 and abs(int(mono[0]) - round(0.375 * 32767)) <= 1


# -- the track (its own clock: real time, a few frames only) -------------------------


async def test_track_paces_frames_and_plays_silence_when_empty() -> None:
    track = OutgoingAudioTrack()
    track.push(1, pcm(5))
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = [await track.recv() for _ in range(4)]
    elapsed = loop.time() - start
    assert [f.pts for f in frames] == [0, 960, 1920, 2880]
    assert frame_to_pcm16_mono(frames[0]) == pcm(5)
    assert all(frame_to_pcm16_mono(f) == SILENCE for f in frames[1:])
    assert elapsed >= 0.059  # three frames after the first, each due 20 ms later
    assert track.frames_sent == 1
    track.stop()


# -- the receiving side's jitter buffer ---------------------------------------------------

def _packet(seq: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
    packet._data = bytes([seq % 256])  # type: ignore[attr-defined]  # as the receiver sets
    return packet


def test_each_audio_packet_is_handed_on_at_once() -> None:
    buffer = ImmediateAudioBuffer()
    for seq in (65534, 65535, 0, 1):  # across the wrap of the sequence number
        pli, frame = buffer.add(_packet(seq))
        assert not pli and frame is not None
        assert frame.timestamp == seq * 960 and frame.data == bytes([seq % 256])


def test_late_and_duplicate_packets_are_dropped() -> None:
    buffer = ImmediateAudioBuffer()
    assert buffer.add(_packet(10))[1] is not None
    assert buffer.add(_packet(12))[1] is not None  # 11 lost: the decoder conceals it
    assert buffer.add(_packet(11))[1] is None  # came after 12
    assert buffer.add(_packet(12))[1] is None  # duplicate


def test_the_receivers_buffer_is_replaced() -> None:
    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()),
                            [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("audio", dtls)
    assert hand_on_at_once(receiver)
    assert isinstance(receiver._RTCRtpReceiver__jitter_buffer,  # type: ignore[attr-defined]
                      ImmediateAudioBuffer)
    assert not hand_on_at_once(object())
