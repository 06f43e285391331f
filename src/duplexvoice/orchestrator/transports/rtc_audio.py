"""The WebRTC transport's audio: the session's output as a paced outgoing track, and
the remote microphone track read as PCM16 mono.

Outgoing. The driver paces its output itself (about ``lead_ms`` ahead of real time)
and hands 20 ms frames to the transport; here they wait in a
:class:`~duplexvoice.orchestrator.sessions.frame_queue.FrameQueue` (the session's
playout keeps its own frames in the same pure object) until aiortc's sender asks for
the next frame. :class:`OutgoingAudioTrack` answers that ask in real time (a start
time plus the frame's pts, as aiortc's own ``AudioStreamTrack``), with silence when
nothing is queued, so the RTP stream never stops between utterances (no
jitter-buffer restarts in the browser).

The queue obeys the session's playback controls, the typed ``Pause`` / ``Resume`` /
``Interrupt`` the driver hands the transport (a WebSocket client does the same in
its own player), through :meth:`OutgoingAudioTrack.control`:

- ``pause`` holds: silence goes out, the queue is kept. Frames of the held utterance
  handed to aiortc in the last ``hold_rewind_ms`` go back to the front of the queue:
  the page gates its output at once on ``pause``, so those frames, still in flight
  (RTP, the browser's jitter buffer), would be lost. 40 ms is an estimate for a LAN;
  with it a resume loses at most about a frame.
- ``resume`` goes on from the front of the queue (any hold ends: a hold left over
  would be silence for ever).
- ``interrupt`` drops every queued frame of that utterance and of any earlier one at
  once, and fences: later frames with an id at or below it are refused.

Bound: at most ``max_frames`` frames wait (1 s by default, ten times the driver's
lead). A frame pushed onto a full queue drops the oldest one (counted in the queue's
``dropped``): the track is not being read (a stalled sender), and audio that late is
worth less than the audio after it. Only a held queue gets near the bound, and the
driver holds its own output on ``pause`` too.

Incoming. aiortc's receiver holds audio in a jitter buffer that releases a packet
only once four later ones have come (``prefetch=4``): 80 ms added to everything the
user says, before the VAD hears it (the end of a turn, a barge-in). Each Opus packet
is a whole 20 ms frame, and the session's own audio path absorbs jitter, so
:func:`hand_on_at_once` replaces it with :class:`ImmediateAudioBuffer`: each packet
goes to the decoder on arrival; one older than the newest seen (reordered, or a
duplicate) is dropped, which on a LAN is rare. aiortc's decoder conceals a gap.
aiortc's Opus decoder yields ``av.AudioFrame`` s16 stereo (packed) at
48 kHz; :func:`frame_to_pcm16_mono` folds any PyAV audio frame (packed or planar,
integer or float, any channel count) into PCM16LE mono bytes at the frame's rate.
"""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from duplexvoice.audio import FRAME_BYTES, FRAME_MS
from duplexvoice.orchestrator.sessions.frame_queue import FrameQueue
from duplexvoice.wire.messages import Interrupt, Pause, Resume
from duplexvoice.wire.protocol import OUTPUT_SAMPLE_RATE

SAMPLES_PER_FRAME = OUTPUT_SAMPLE_RATE * FRAME_MS // 1000  # 960
SILENCE = bytes(FRAME_BYTES)
TIME_BASE = fractions.Fraction(1, OUTPUT_SAMPLE_RATE)
# Behind real time by more than this (a stalled loop), the track re-anchors its clock
# instead of sending the missed frames in one burst.
_MAX_BEHIND_S = 1.0


def pcm_frame(pcm: bytes, pts: int) -> av.AudioFrame:
    """An ``av.AudioFrame``: s16 mono 48 kHz, ``pts`` in samples."""
    samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = OUTPUT_SAMPLE_RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class OutgoingAudioTrack(MediaStreamTrack):
    """The session's voice: one 20 ms frame per ``recv``, paced to real time."""

    kind = "audio"

    def __init__(self, *, max_frames: int = 50, hold_rewind_ms: float = 40.0) -> None:
        super().__init__()
        self.queue = FrameQueue(max_frames=max_frames, rewind_ms=hold_rewind_ms)
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0  # frames of audio (not silence) handed to aiortc

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def push(self, utterance_id: int, pcm: bytes) -> bool:
        """Queue one frame; ``False`` if the fence refuses it."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"an audio frame is {FRAME_BYTES} bytes, got {len(pcm)}")
        return self.queue.push(utterance_id, pcm)

    def control(self, message: Pause | Resume | Interrupt) -> None:
        """A playback control the client is sent, applied to the queue (the loop's clock)."""
        if isinstance(message, Pause):
            self.queue.hold(self._now(), message.utterance_id)
        elif isinstance(message, Resume):
            self.queue.unhold()
        else:
            self.queue.fence(message.utterance_id)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._now()
        if self._start is None:
            self._start = now
        else:
            self._pts += SAMPLES_PER_FRAME
            due = self._start + self._pts / OUTPUT_SAMPLE_RATE
            if due - now < -_MAX_BEHIND_S:
                self._start = now - self._pts / OUTPUT_SAMPLE_RATE  # re-anchor
            elif due > now:
                await asyncio.sleep(due - now)  # pacing to the clock: this is playback
                now = self._now()
        frame = self.queue.take(now)
        if frame is not None:
            self.frames_sent += 1
        return pcm_frame(SILENCE if frame is None else frame[1], self._pts)


def frame_to_pcm16_mono(frame: av.AudioFrame) -> bytes:
    """PCM16LE mono bytes of ``frame`` (channels averaged), at ``frame.sample_rate``."""
    data = frame.to_ndarray()
    channels = max(1, len(frame.layout.channels))
    # Planar: (channels, n); packed: (1, n * channels), interleaved. Both to (n, channels).
    samples = data.T if frame.format.is_planar else data.reshape(-1, channels)
    if samples.dtype.kind == "f":
        mono = np.clip(samples.mean(axis=1), -1.0, 1.0) * 32767.0
    elif samples.dtype == np.int16 and channels == 1:
        return bytes(samples.astype("<i2", copy=False).tobytes())
    elif samples.dtype == np.int16:
        mono = samples.astype(np.int32).sum(axis=1) / channels
    else:  # s32
        mono = samples.astype(np.float64).mean(axis=1) / 65536.0
    return bytes(np.round(mono).astype("<i2").tobytes())


async def read_pcm(track: MediaStreamTrack) -> tuple[bytes, int] | None:
    """The next frame of a remote audio track as (PCM16 mono, rate); ``None`` at its end."""
    try:
        frame = await track.recv()
    except MediaStreamError:
        return None
    if not isinstance(frame, av.AudioFrame):
        return None
    return frame_to_pcm16_mono(frame), int(frame.sample_rate)


class ImmediateAudioBuffer(JitterBuffer):
    """aiortc's audio jitter buffer, without the wait: each packet is handed on at once."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._newest: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        newest = self._newest
        if newest is not None and not 0 < uint16_add(packet.sequence_number, -newest) < 0x8000:
            return False, None  # older than what went on already, or a duplicate
        self._newest = packet.sequence_number
        data: bytes = packet._data  # type: ignore[attr-defined]  # set by the receiver
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def hand_on_at_once(receiver: object) -> bool:
    """Give an aiortc ``RTCRtpReceiver`` of audio an :class:`ImmediateAudioBuffer`.
    False (and the receiver unchanged) if this aiortc keeps its buffer elsewhere."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        return False
    setattr(receiver, name, ImmediateAudioBuffer())
    return True
