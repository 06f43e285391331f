"""The WebRTC outgoing track's queue as the transport drives it (the playback
controls by type; the queue itself is tested in test_frame_queue.py), the frame
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
    frame_to_pcm16_mono,
    hand_on_at_once,
    pcm_frame,
)
from duplexvoice.wire.messages import EndReason, Interrupt, Pause, Resume

pytestmark = pytest.mark.unit

def pcm(n: int) -> bytes:
    """A distinct frame: every sample is ``n``."""
    return np.full(960, n, "<i2").tobytes()


def queued(track: OutgoingAudioTrack) -> list[int]:
    """The ``n`` of each frame from :func:`pcm` waiting on the track."""
    return [int(np.frombuffer(f[1], "<i2")[0]) for f in track.queue.frames()]


# -- the outgoing track's queue (hold, rewind, fence, bound: test_frame_queue.py) -----


async def test_the_track_applies_the_playback_controls_by_type() -> None:
    track = OutgoingAudioTrack(max_frames=50, hold_rewind_ms=0)
    for uid, n in ((1, 1), (1, 2), (2, 3)):
        assert track.push(uid, pcm(n))
    track.control(Pause(1))
    assert track.queue.held and track.queue.held_id == 1
    track.control(Resume(1))
    assert not track.queue.held
    track.control(Interrupt(1, EndReason.INTERRUPTED))
    assert queued(track) == [3] and track.queue.fenced == 1
    assert not track.push(1, pcm(4))  # a late frame of the interrupted utterance
    track.control(Pause(2))
    track.control(Interrupt(2, EndReason.STOPPED))  # ends the hold on it too
    assert not track.queue.held and queued(track) == []
    track.stop()


async def test_a_pause_rewinds_what_the_track_just_handed_out() -> None:
    # A window far longer than the test: the frame handed out is always within it.
    track = OutgoingAudioTrack(hold_rewind_ms=60_000)
    for n in (1, 2, 3):
        track.push(1, pcm(n))
    first = await track.recv()
    assert frame_to_pcm16_mono(first) == pcm(1) and queued(track) == [2, 3]
    track.control(Pause(1))
    assert queued(track) == [1, 2, 3]  # the page gated it: it plays again on resume
    assert frame_to_pcm16_mono(await track.recv()) == SILENCE
    track.control(Resume(1))
    assert frame_to_pcm16_mono(await track.recv()) == pcm(1)
    track.stop()


async def test_the_track_bound_drops_the_oldest_frames() -> None:
    track = OutgoingAudioTrack(max_frames=2)
    for n in (1, 2, 3):
        assert track.push(1, pcm(n))
    assert queued(track) == [2, 3] and track.queue.dropped == 1
    track.stop()


async def test_a_frame_of_the_wrong_size_is_refused() -> None:
    track = OutgoingAudioTrack()
    with pytest.raises(ValueError, match="1920"):
        track.push(1, b"\x00" * 10)
    with pytest.raises(ValueError):
        OutgoingAudioTrack(max_frames=0)
    with pytest.raises(ValueError):
        OutgoingAudioTrack(hold_rewind_ms=-1)
    track.stop()


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
