"""Audio in and out for ``duplexvoice talk``, 20 ms at a time, without a sound card.

- A :class:`Microphone` yields 20 ms of 16 kHz float audio per ``read()``, paced by a
  clock: the driver's loop runs at the microphone's pace, so playback, echo
  cancellation and sending all follow one clock. :class:`FileMicrophone` plays a WAV
  file (any rate, any channel count: downmixed, resampled with soxr, streamed from
  disk, never loaded whole) in real time, paced by the monotonic clock; after its
  end it goes on with silence (``exhausted``), because the server only hears the end
  of a turn, and a barge-in, in a microphone that keeps streaming.
- A :class:`Speaker` takes 20 ms of 48 kHz PCM16 per ``write()``: :class:`WavSpeaker`
  records exactly what would have been heard, silence included, so the file has the
  timing of a real session; :class:`NullSpeaker` discards.
- :class:`LoopbackDevice` simulates a room: its microphone hears the user (another
  microphone, e.g. a file) plus what its speaker played, delayed, attenuated, with a
  few reflections and a little noise. Tests use it to check that ``talk`` does not
  interrupt itself; ``--simulate-echo`` selects it from the command line.

The sound card versions are in :mod:`.sound_card`. Exceptions: ``InputError`` (the
input file cannot be used; the message is one line for a person).
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from duplexvoice.audio.resample import StreamResampler

FloatAudio = npt.NDArray[np.float32]

MIC_RATE: Final = 16_000
TICK_S: Final = 0.02
MIC_FRAME: Final = 320  # 20 ms at 16 kHz
OUT_RATE: Final = 48_000
_READ_FRAMES = 4096  # file frames read at a time
_ZERO: Final = np.zeros(MIC_FRAME, np.float32)


class InputError(Exception):
    """The ``--input`` file cannot be used; one line for a person."""


@dataclass(frozen=True)
class Captured:
    """One 20 ms read of the microphone. ``user`` is what the user said when it is
    known apart from the echo (a file), for the client's end-of-speech check; None
    means: only the microphone is known."""

    mic: FloatAudio
    user: FloatAudio | None = None


class Microphone(Protocol):
    @property
    def exhausted(self) -> bool:
        """The input ended (a file): silence from now on."""

    async def read(self) -> Captured: ...

    def close(self) -> None: ...


class Speaker(Protocol):
    @property
    def latency_ms(self) -> float:
        """From ``write()`` to the sound leaving the speaker (the AEC's hint)."""

    def write(self, pcm: bytes) -> None: ...

    def close(self) -> None: ...


# -- pacing --------------------------------------------------------------------------


class Pacer:
    """Tick ``i`` is due at ``start + (i + 1) * 20 ms``: a microphone delivers a block
    once it has been captured. A late loop catches up (the blocks are sent at once,
    as a real microphone's buffered blocks would be), up to ``MAX_BEHIND_S``; further
    behind (the process was stopped, the machine stalled) the clock is re-anchored
    instead, so a stall never becomes a flood the server would refuse."""

    MAX_BEHIND_S: Final = 1.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start: float | None = None
        self._ticks = 0

    async def wait(self) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        self._ticks += 1
        delay = self._start + self._ticks * TICK_S - now
        if delay < -self.MAX_BEHIND_S:
            self._start, delay = now - self._ticks * TICK_S, 0.0
        if delay > 0:
            await asyncio.sleep(delay)  # the microphone's clock, not a synchronization


class Reblocker:
    """Cuts a float stream into exact blocks; pads with zeros when short (only at the
    start, or the end of a file), so the stream keeps real time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = np.zeros(0, np.float32)

    def push(self, audio: FloatAudio) -> None:
        self._buf = np.concatenate([self._buf, audio.astype(np.float32, copy=False)])

    @property
    def available(self) -> int:
        return len(self._buf)

    def pop(self) -> FloatAudio:
        block, self._buf = self._buf[:self.size], self._buf[self.size:]
        if len(block) < self.size:
            block = np.concatenate([block, np.zeros(self.size - len(block), np.float32)])
        return block


# -- WAV files -----------------------------------------------------------------------


def _decode(raw: bytes, width: int, channels: int) -> FloatAudio:
    """Integer PCM frames (8-bit unsigned, 16/24/32-bit signed) to mono float."""
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    else:
        samples = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)  # downmix
    return samples.astype(np.float32, copy=False)


class WavReader:
    """A PCM WAV file as a stream of 16 kHz mono float audio (read as needed)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise InputError(f"no such file: {path}")
        if path.is_dir():
            raise InputError(f"{path} is a folder")
        try:
            self._wav = wave.open(str(path), "rb")  # noqa: SIM115 (closed in close())
        except (wave.Error, EOFError) as exc:
            raise InputError(f"{path} is not a PCM WAV file ({str(exc) or 'truncated'})"
                             ) from None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        w = self._wav
        self.rate, self.channels, self.width = (w.getframerate(), w.getnchannels(),
                                                w.getsampwidth())
        if self.width not in (1, 2, 3, 4) or self.channels < 1 or not (
                1000 <= self.rate <= 384_000):
            self._wav.close()
            raise InputError(f"{path}: unsupported WAV ({self.width * 8}-bit, "
                             f"{self.channels} channels, {self.rate} Hz)")
        self.duration_s = w.getnframes() / self.rate
        self._resampler = StreamResampler(self.rate, MIC_RATE, quality="HQ")
        self._blocks = Reblocker(MIC_FRAME)
        self.done = False  # no more audio in the file

    def read(self) -> FloatAudio | None:
        """The next 20 ms at 16 kHz (the last one padded), None after the end."""
        while self._blocks.available < MIC_FRAME and not self._resampler.finished:
            try:
                raw = self._wav.readframes(_READ_FRAMES)
            except (wave.Error, EOFError, OSError) as exc:  # a truncated data chunk
                raise InputError(f"cannot read the audio of the WAV file: {exc}") from None
            whole = len(raw) - len(raw) % (self.width * self.channels)
            if whole:
                self._blocks.push(self._resampler.process(
                    _decode(raw[:whole], self.width, self.channels)))
            if len(raw) == 0 or whole < len(raw):
                self._blocks.push(self._resampler.flush())
        if self._blocks.available == 0:
            self.done = True
            return None
        return self._blocks.pop()

    def close(self) -> None:
        self._wav.close()


class FileMicrophone:
    """A WAV file played in real time as the microphone, then silence."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._reader = WavReader(path)
        self._pacer = Pacer(clock)
        self.duration_s = self._reader.duration_s
        self.exhausted = False

    async def read(self) -> Captured:
        await self._pacer.wait()
        block = None if self.exhausted else self._reader.read()
        if block is None:
            self.exhausted = True
            block = _ZERO.copy()
        return Captured(block, block)

    def close(self) -> None:
        self._reader.close()


class TrackMicrophone:
    """16 kHz float audio in memory played in real time as the microphone, then
    silence (tests, and a session with nothing to say: an empty track)."""

    def __init__(self, track: FloatAudio | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._track = np.zeros(0, np.float32) if track is None else track.astype(np.float32)
        self._pacer = Pacer(clock)
        self._at = 0
        self.exhausted = len(self._track) == 0

    async def read(self) -> Captured:
        await self._pacer.wait()
        block = self._track[self._at:self._at + MIC_FRAME]
        self._at += MIC_FRAME
        if len(block) < MIC_FRAME:
            block = np.concatenate([block, np.zeros(MIC_FRAME - len(block), np.float32)])
        self.exhausted = self._at >= len(self._track)
        return Captured(block, block)

    def close(self) -> None:
        pass


class NullSpeaker:
    latency_ms = 0.0

    def write(self, pcm: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class WavSpeaker:
    """Everything played (silence included) into a 48 kHz mono PCM16 WAV."""

    latency_ms = 0.0

    def __init__(self, path: Path) -> None:
        try:
            self._wav = wave.open(str(path), "wb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(OUT_RATE)
        self.path = path
        self.frames = 0

    def write(self, pcm: bytes) -> None:
        self._wav.writeframesraw(pcm)
        self.frames += 1

    def close(self) -> None:
        self._wav.close()  # writes the final header sizes


# -- a room where the speaker leaks into the microphone ------------------------------

# (extra delay in ms, relative gain): first reflections of a small room, after the
# direct path. A linear echo path, as a loudspeaker at a sane level makes.
REFLECTIONS: Final = ((0.0, 1.0), (7.0, 0.3), (19.0, 0.15), (37.0, 0.07))


class Decimator:
    """48 kHz PCM16 -> 16 kHz float, streaming: a linear-phase FIR low-pass (state
    kept across blocks) then every third sample. Exactly a third as many samples out
    as in, and almost no delay (``taps`` / 2 samples at 48 kHz): the echo canceller's
    far end must never lag the echo it explains."""

    def __init__(self, taps: int = 31, cutoff_hz: float = 7000.0) -> None:
        from scipy.signal import firwin, lfilter_zi

        self._b = firwin(taps, cutoff_hz, fs=OUT_RATE).astype(np.float64)
        self._zi = lfilter_zi(self._b, [1.0]) * 0.0

    def process(self, pcm: bytes) -> FloatAudio:
        from scipy.signal import lfilter

        if len(pcm) % 6:
            raise ValueError("48 kHz PCM16 blocks must be a multiple of 3 samples")
        x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768.0
        y, self._zi = lfilter(self._b, [1.0], x, zi=self._zi)
        out: FloatAudio = np.asarray(y[::3], dtype=np.float32)
        return out


class LoopbackDevice:
    """A simulated room: ``microphone`` hears ``user`` plus the echo of what
    ``speaker`` played (``gain_db``, ``delay_ms`` >= 20, reflections, noise at
    ``noise_db`` dBFS); ``speaker`` also passes what it plays on to ``sink``.

    The driver reads the microphone, then writes the speaker, once per tick, so an
    echo delayed by 20 ms or more only ever needs audio already played; a shorter
    delay would need the future and is refused.
    """

    def __init__(self, user: Microphone, sink: Speaker | None = None, *,
                 gain_db: float = -9.0, delay_ms: float = 50.0, noise_db: float = -60.0,
                 seed: int = 0) -> None:
        if delay_ms < TICK_S * 1000:
            raise ValueError("the echo delay must be at least 20 ms (one tick)")
        self._user = user
        self._sink = sink or NullSpeaker()
        self._gain = 10.0 ** (gain_db / 20.0)
        self._taps = [(round((delay_ms + extra) * MIC_RATE / 1000), g)
                      for extra, g in REFLECTIONS]
        self._history = max(t for t, _ in self._taps)  # samples of the past we need
        self._played = np.zeros(self._history, np.float32)  # ends at sample _written
        self._heard = 0  # microphone samples produced so far
        self._written = 0  # speaker samples (16 kHz) written so far
        self._noise = 10.0 ** (noise_db / 20.0)
        self._rng = np.random.default_rng(seed)
        self.gain_db, self.delay_ms = gain_db, delay_ms
        # The room's microphone has its own anti-alias filter, not the client's.
        self._adc = Decimator(taps=95, cutoff_hz=7600.0)
        self.microphone = _LoopbackMic(self)
        self.speaker = _LoopbackSpeaker(self)
        self.echo_level: list[float] = []  # per tick: the echo's mean power (linear)

    def _echo(self) -> FloatAudio:
        """The echo in the next 20 ms of the microphone."""
        out = np.zeros(MIC_FRAME, np.float32)
        base = self._written - len(self._played)  # absolute index of _played[0]
        for delay, g in self._taps:
            first = self._heard - delay - base  # index into _played of the first sample
            lo, hi = max(first, 0), min(first + MIC_FRAME, len(self._played))
            if hi > lo:
                out[lo - first:hi - first] += g * self._played[lo:hi]
        self._heard += MIC_FRAME
        echo = out * np.float32(self._gain)
        self.echo_level.append(float(np.mean(np.square(echo))))
        return echo.astype(np.float32)

    def _play(self, pcm: bytes) -> None:
        self._sink.write(pcm)
        audio = self._adc.process(pcm)
        self._written += len(audio)
        keep = self._history + MIC_FRAME
        self._played = np.concatenate([self._played, audio])[-keep:]


class _LoopbackMic:
    def __init__(self, room: LoopbackDevice) -> None:
        self._room = room

    @property
    def exhausted(self) -> bool:
        return self._room._user.exhausted

    async def read(self) -> Captured:
        room = self._room
        heard = await room._user.read()
        noise = room._rng.standard_normal(MIC_FRAME).astype(np.float32) * room._noise
        mic = (heard.mic + room._echo() + noise).astype(np.float32)
        return Captured(mic, heard.user if heard.user is not None else heard.mic)

    def close(self) -> None:
        self._room._user.close()


class _LoopbackSpeaker:
    def __init__(self, room: LoopbackDevice) -> None:
        self._room = room
        self.latency_ms = room._sink.latency_ms

    def write(self, pcm: bytes) -> None:
        self._room._play(pcm)

    def close(self) -> None:
        self._room._sink.close()


__all__ = [
    "MIC_FRAME",
    "MIC_RATE",
    "OUT_RATE",
    "TICK_S",
    "Captured",
    "Decimator",
    "FileMicrophone",
    "InputError",
    "LoopbackDevice",
    "Microphone",
    "NullSpeaker",
    "Pacer",
    "Reblocker",
    "Speaker",
    "TrackMicrophone",
    "WavReader",
    "WavSpeaker",
]
