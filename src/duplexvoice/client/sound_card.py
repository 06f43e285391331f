"""The sound card for ``duplexvoice talk``, through ``sounddevice`` (PortAudio).

``open_sounddevice()`` imports the library or says in one line why it cannot: the
``sounddevice`` wheel needs the PortAudio shared library, which on Debian is the
package ``libportaudio2``; without it ``import sounddevice`` raises ``OSError``.
Without a sound card ``talk`` still works from a file (``--input``, ``--out``).

Both streams run on PortAudio's threads and hand audio to the event loop through
bounded buffers, so a stalled loop drops audio instead of growing memory:

- :class:`SoundCardMicrophone`: the default input at its own rate, resampled to
  16 kHz (soxr, state kept) and cut into 20 ms blocks. Its ``read()`` waits for the
  card: the card's clock paces the whole client.
- :class:`SoundCardSpeaker`: the default output at 48 kHz; ``write()`` queues a
  frame, the card's callback takes one per 20 ms (silence when none is queued).

Their ``latency_ms`` (PortAudio's reported latency plus what is queued) is the echo
canceller's delay hint. Not exercised by the tests here (no PortAudio on the test
machine): the callbacks are plain methods so that they can be driven by hand.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from types import ModuleType
from typing import Any, Final

import numpy as np

from duplexvoice.audio.resample import StreamResampler
from duplexvoice.client.audio_io import MIC_FRAME, MIC_RATE, OUT_RATE, Captured, Reblocker

_MIC_QUEUE: Final = 50  # blocks (1 s) between the card's thread and the loop
_SPEAKER_QUEUE: Final = 25  # frames (0.5 s) queued for the card


class SoundCardUnavailable(Exception):
    """No usable sound card; the message is one line for a person."""


def open_sounddevice() -> ModuleType:
    """The ``sounddevice`` module, or ``SoundCardUnavailable``."""
    try:
        import sounddevice
    except OSError as exc:  # the wheel is there, PortAudio is not
        raise SoundCardUnavailable(
            f"no sound card support ({exc}; Debian/Ubuntu: apt install libportaudio2)"
        ) from None
    except ImportError:
        raise SoundCardUnavailable(
            "no sound card support (the sounddevice package is missing: "
            "pip install sounddevice)") from None
    module: ModuleType = sounddevice
    return module


def _device(sd: ModuleType, kind: str) -> dict[str, Any]:
    try:
        info: dict[str, Any] = sd.query_devices(kind=kind)
    except Exception as exc:  # sd.PortAudioError, ValueError: no such device
        what = "microphone" if kind == "input" else "speaker"
        raise SoundCardUnavailable(f"no {what} found ({exc})") from None
    return info


class SoundCardMicrophone:
    exhausted = False  # a live microphone never ends

    def __init__(self, sd: ModuleType) -> None:
        info = _device(sd, "input")
        self.rate = int(info.get("default_samplerate") or MIC_RATE)
        self.name = str(info.get("name", "default"))
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(_MIC_QUEUE)
        self._resampler = StreamResampler(self.rate, MIC_RATE, quality="LQ")
        self._blocks = Reblocker(MIC_FRAME)
        self.overruns = 0
        try:
            self._stream = sd.RawInputStream(
                samplerate=self.rate, blocksize=self.rate // 50, channels=1, dtype="int16",
                latency="low", callback=self.on_audio)
            self._stream.start()
        except Exception as exc:
            raise SoundCardUnavailable(
                f"cannot open the microphone {self.name}: {exc}") from None
        self.latency_ms = float(self._stream.latency) * 1000.0

    def on_audio(self, indata: Any, frames: int, time: Any, status: Any) -> None:
        """PortAudio's thread: hand the block to the loop."""
        data = bytes(indata)
        self._loop.call_soon_threadsafe(self._put, data)

    def _put(self, data: bytes) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # the loop fell behind: drop the oldest
            self.overruns += 1
        self._queue.put_nowait(data)

    async def read(self) -> Captured:
        while self._blocks.available < MIC_FRAME:
            data = await self._queue.get()
            audio = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
            self._blocks.push(self._resampler.process(audio))
        return Captured(self._blocks.pop())

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class SoundCardSpeaker:
    def __init__(self, sd: ModuleType) -> None:
        info = _device(sd, "output")
        self.name = str(info.get("name", "default"))
        self._frames: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()
        self.dropped = 0
        try:
            self._stream = sd.RawOutputStream(
                samplerate=OUT_RATE, blocksize=OUT_RATE // 50, channels=1, dtype="int16",
                latency="low", callback=self.on_output)
            self._stream.start()
        except Exception as exc:
            raise SoundCardUnavailable(
                f"cannot open the speaker {self.name} at 48 kHz: {exc}") from None
        self._device_ms = float(self._stream.latency) * 1000.0

    @property
    def latency_ms(self) -> float:
        with self._lock:
            queued = len(self._frames)
        return self._device_ms + queued * 20.0

    def write(self, pcm: bytes) -> None:
        with self._lock:
            if len(self._frames) >= _SPEAKER_QUEUE:
                self._frames.popleft()  # the card is slower than our clock: stay bounded
                self.dropped += 1
            self._frames.append(pcm)

    def on_output(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        """PortAudio's thread: one frame, or silence."""
        need = frames * 2
        with self._lock:
            data = self._frames.popleft() if self._frames else b""
        if len(data) != need:
            data = (data + bytes(need))[:need]
        outdata[:] = data

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


__all__ = ["SoundCardMicrophone", "SoundCardSpeaker", "SoundCardUnavailable",
           "open_sounddevice"]
