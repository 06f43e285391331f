"""Echo cancellation for ``duplexvoice talk``: keep the client from hearing itself.

With a loudspeaker and a microphone in one room, what the client plays comes back
into its microphone a few tens of milliseconds later (gain typically -6 to -20 dB).
The server hears the microphone, not the speaker: without help it takes the echo of
its own reply for a user talking over it, pauses (``pause``), and after
``turns.interrupt_after_ms`` of it interrupts itself. Two defences, in this order:

1. **A real echo canceller in the client** (this module): WebRTC's audio processing
   module (AEC3, through the ``aec-audio-processing`` package). It is given the *far
   end*, the exact samples handed to the speaker, and the *near end*, the
   microphone; an adaptive filter learns the echo path (delay, gain, room
   reflections) and subtracts the predicted echo, and a residual echo suppressor
   removes what the linear filter misses. The user's own voice passes through
   (double talk), so a barge-in is still heard. Only the cleaned microphone is sent.
2. **The server's knowledge**: while it speaks, the server's VAD uses a stricter
   onset threshold (``vad_speaking_threshold``), so a faint residual does not count.

The library's API, as found (``aec_audio_processing.AudioProcessor``, version 1.0.x,
webrtc-audio-processing 2.x):

- ``AudioProcessor(enable_aec, enable_ns, ns_level, enable_agc, agc_mode,
  enable_vad)``; ``set_stream_format(rate, channels)`` for the microphone and
  ``set_reverse_stream_format(rate, channels)`` for the speaker signal. Rates 8, 16,
  32 or 48 kHz.
- ``process_reverse_stream(pcm)`` (far end) and ``process_stream(pcm)`` (near end,
  returns the cleaned PCM) take exactly one 10 ms frame of PCM16 bytes
  (``get_frame_size()`` samples, set by the *microphone's* rate: the reverse frame
  must have the same sample count, so both streams run at one rate here, 16 kHz).
  A wrong size raises ``ValueError``.
- ``set_stream_delay(ms)``: a hint of the delay from a far-end frame to its echo in
  the near end; AEC3 estimates the real delay itself (it converged the same with a
  hint of 0 ms and of the true 50 ms), so the hint only needs to be plausible.
- ``has_voice()`` is unusable in 1.0.1 (its VAD is never created); not used.
- The cleaned microphone comes out 8 ms late (128 samples at 16 kHz, measured with
  and without echo): AEC3's own block delay, added to the barge-in latency.
- Cost: about 2-3 % of one core for 16 kHz mono (both streams).

Settings: echo cancellation on; noise suppression and gain control off, because
the server's VAD and Whisper want the user's voice as it is (noise suppression and
automatic gain change the level and the spectrum of speech; AEC3's own residual echo
suppression is enough). Measured in the simulated room of :mod:`.audio_io` (Piper
speech, echo at -6 dB after 50 ms with reflections, -60 dBFS noise): 28 dB of echo
removed (-26.5 dBFS at the microphone, -55 dBFS sent; 25 dB at -12 dB, 32 dB at 0
dB); already in the first half second of echo no 20 ms tick came out louder than
-51 dBFS; the user's voice over the echo keeps its level within 1-2 dB (double
talk). The orchestrator never paused for the residual, from 0 dB to -12 dB and
delays of 30-80 ms; without the canceller it paused within 0.2 s at -6, -12 and
-20 dB.

Far end and near end are fed in lockstep, one 20 ms tick at a time, far end first:
the echo of what is played in a tick can only reach the microphone later, so the
canceller always has the far end before its echo arrives (it cannot cancel an echo
of audio it has not seen yet).
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

FloatAudio = npt.NDArray[np.float32]

AEC_RATE: Final = 16_000
AEC_FRAME: Final = AEC_RATE // 100  # 10 ms: the library's frame


def to_pcm16(audio: FloatAudio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def from_pcm16(pcm: bytes) -> FloatAudio:
    out: FloatAudio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
    return out


class EchoCanceller(Protocol):
    """Per tick: what the speaker played and what the microphone heard, both at 16 kHz
    and of the same length; returns the microphone without the echo."""

    name: str

    def process(self, far: FloatAudio, near: FloatAudio) -> FloatAudio: ...


class NoEchoCanceller:
    """The microphone as it is (``--no-aec``, or no acoustic path: a file input)."""

    name = "off"

    def process(self, far: FloatAudio, near: FloatAudio) -> FloatAudio:
        return near


class AecUnavailable(Exception):
    """The echo canceller's library cannot be loaded; the message says why."""


class WebRtcEchoCanceller:
    """WebRTC AEC3 on 16 kHz mono, 10 ms at a time (module docstring)."""

    name = "webrtc-aec3"

    def __init__(self, delay_ms: int = 0, *, noise_suppression: bool = False) -> None:
        try:
            from aec_audio_processing import AudioProcessor
        except (ImportError, OSError) as exc:  # OSError: its shared library failed
            raise AecUnavailable(f"the echo canceller (aec-audio-processing) cannot be "
                                 f"loaded: {exc}") from None
        self._apm = AudioProcessor(enable_aec=True, enable_ns=noise_suppression,
                                   enable_agc=False, enable_vad=False)
        self._apm.set_stream_format(AEC_RATE, 1)
        self._apm.set_reverse_stream_format(AEC_RATE, 1)
        self.delay_ms = max(0, int(delay_ms))

    def process(self, far: FloatAudio, near: FloatAudio) -> FloatAudio:
        if len(far) != len(near) or len(near) % AEC_FRAME:
            raise ValueError(f"far and near must be the same whole number of 10 ms frames "
                             f"({AEC_FRAME} samples), got {len(far)} and {len(near)}")
        far_pcm, near_pcm = to_pcm16(far), to_pcm16(near)
        step = AEC_FRAME * 2
        out = []
        for at in range(0, len(near_pcm), step):
            self._apm.process_reverse_stream(far_pcm[at:at + step])
            self._apm.set_stream_delay(self.delay_ms)  # WebRTC wants it before each frame
            out.append(self._apm.process_stream(near_pcm[at:at + step]))
        return from_pcm16(b"".join(out))


def make_echo_canceller(enabled: bool, delay_ms: int = 0) -> EchoCanceller:
    """The WebRTC canceller, or the pass-through when disabled. ``AecUnavailable``
    when it is wanted but cannot load."""
    return WebRtcEchoCanceller(delay_ms) if enabled else NoEchoCanceller()


def level_db(audio: FloatAudio) -> float:
    """Mean power in dBFS (full-scale sine: -3 dB); -120 for silence."""
    if not len(audio):
        return -120.0
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    return max(-120.0, 10.0 * float(np.log10(power + 1e-12)))


__all__ = ["AEC_FRAME", "AEC_RATE", "AecUnavailable", "EchoCanceller", "NoEchoCanceller",
           "WebRtcEchoCanceller", "from_pcm16", "level_db", "make_echo_canceller",
           "to_pcm16"]
