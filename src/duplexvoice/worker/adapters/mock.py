"""Family ``mock``: deterministic speech-like tones, no model. For tests and demos only.

Never a stand-in for a real voice in a test that claims speech: it has the rhythm of
speech (voiced words with a pitch contour and syllable-rate loudness, pauses between
words, longer ones after punctuation) so VAD, framing, pacing and barge-in have
something realistic to chew on, and nothing else.

Duration: ``params.ms_per_char`` (default 60) per letter or digit of each word, plus
pauses (60 ms between words, 180 ms after ``,;:``, 350 ms after ``.!?``), all divided
by ``options.speed``. The same text, speed and pack always give the same samples.
Chunks are ``params.chunk_ms`` (default 40 ms), computed on demand, so the first one
comes at once.

Failure knobs, as markers anywhere in the text (removed before synthesis):

``[[fail]]``
    raise :class:`AdapterError` before any audio.
``[[fail-after:N]]``
    yield N chunks, then raise :class:`AdapterError` (at the end if there are fewer).
``[[slow:MS]]``
    wait MS milliseconds before each chunk (returning early once ``cancel`` is set),
    to make a slow model.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from duplexvoice.worker.adapters.base import (
    AdapterError,
    Capabilities,
    FloatAudio,
    SynthesisOptions,
    TTSAdapter,
)

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

DEFAULT_SAMPLE_RATE = 24000
CHUNK_MS = 40
_MARKER = re.compile(r"\[\[(fail|fail-after:(\d+)|slow:(\d+))\]\]")
_WORD = re.compile(r"\S+")
_VOWELS = re.compile(r"[aeiouy]+")
_HARMONICS = np.arange(1, 9, dtype=np.float64)
_HARMONIC_GAINS = (1.0 / _HARMONICS) / np.sum(1.0 / _HARMONICS)
_PEAK = 0.5  # leaves headroom, and reads like speech to an energy VAD
_EDGE_S = 0.01  # fade in and out of each word
# One period of the harmonic sum, looked up by phase: one table read per sample instead
# of eight sines (the mock must stay cheap: it stands in for hundreds of sessions).
_TABLE_SIZE = 1 << 12
_WAVETABLE = (
    np.sin(np.outer(np.arange(_TABLE_SIZE) * (2 * math.pi / _TABLE_SIZE), _HARMONICS))
    @ _HARMONIC_GAINS
).astype(np.float32)


class MockParams(BaseModel):
    """``params`` of a mock pack."""

    model_config = ConfigDict(extra="forbid")

    ms_per_char: float = Field(default=60.0, gt=0, description="voiced ms per letter")
    base_pitch_hz: float = Field(default=120.0, gt=20, lt=1000, description="mean f0")
    chunk_ms: int = Field(
        default=CHUNK_MS, ge=10, le=1000, description="audio per yielded chunk (and per slow wait)"
    )


@dataclass(frozen=True)
class _Word:
    """One voiced segment: samples [start, start + length)."""

    start: int
    length: int
    f0_start: float
    f0_end: float
    syllables: int


@dataclass(frozen=True)
class _Knobs:
    fail: bool = False
    fail_after: int | None = None
    slow_s: float = 0.0


def _parse_knobs(text: str) -> tuple[str, _Knobs]:
    fail, fail_after, slow_s = False, None, 0.0
    for match in _MARKER.finditer(text):
        if match.group(1) == "fail":
            fail = True
        elif match.group(2) is not None:
            fail_after = int(match.group(2))
        elif match.group(3) is not None:
            slow_s = int(match.group(3)) / 1000.0
    return _MARKER.sub(" ", text), _Knobs(fail, fail_after, slow_s)


def plan_words(
    text: str, sample_rate: int, ms_per_char: float, speed: float, base_f0: float
) -> tuple[list[_Word], int]:
    """Lay the words of ``text`` out in time: voiced segments and the total length."""
    tokens = _WORD.findall(text)
    words: list[_Word] = []
    pos = int(0.02 * sample_rate)  # a short lead-in, like a real engine's
    ms_to_samples = sample_rate / 1000.0 / speed
    for i, token in enumerate(tokens):
        letters = sum(ch.isalnum() for ch in token)
        if letters:
            length = int(letters * ms_per_char * ms_to_samples)
            # Declination over the utterance, a per-word offset from the word itself
            # (deterministic), and a rise on the last word of a question.
            progress = i / max(1, len(tokens) - 1)
            jitter = (zlib.crc32(token.lower().encode()) % 1000) / 1000.0 - 0.5
            f0 = base_f0 * (1.1 - 0.2 * progress + 0.15 * jitter)
            f0_end = f0 * (1.3 if token.endswith("?") else 0.92)
            syllables = max(1, len(_VOWELS.findall(token.lower())))
            words.append(_Word(pos, length, f0, f0_end, syllables))
            pos += length
        if token[-1] in ".!?":
            pos += int(350 * ms_to_samples)
        elif token[-1] in ",;:":
            pos += int(180 * ms_to_samples)
        else:
            pos += int(60 * ms_to_samples)
    return words, pos if words else 0


def _word_end(word: _Word) -> int:
    return word.start + word.length


def render(words: list[_Word], start: int, stop: int, sample_rate: int) -> FloatAudio:
    """Samples [start, stop) of the planned utterance; independent of chunking."""
    out = np.zeros(stop - start, dtype=np.float32)
    edge_samples = _EDGE_S * sample_rate
    edge = math.ceil(edge_samples)
    # Words are sorted and disjoint: start at the first one that ends after ``start``.
    for i in range(bisect.bisect_right(words, start, key=_word_end), len(words)):
        word = words[i]
        if word.start >= stop:
            break
        n = word.length
        k0, k1 = max(start, word.start) - word.start, min(stop, word.start + n) - word.start
        # Everything per sample is float32 (numpy's float64 cos is ~10x slower) and a
        # function of k, the sample's index in the word, so chunking cannot change it.
        k = np.arange(k0, k1, dtype=np.float32)
        # f0(u) = a + b*u + c*sin(pi*u) with u = k/n (a glide plus a rise-fall); its
        # integral in closed form gives the phase at any sample, here in table steps.
        a, b, c = word.f0_start, word.f0_end - word.f0_start, 0.08 * word.f0_start
        steps = _TABLE_SIZE / sample_rate  # table steps per sample at 1 Hz
        rise = steps * c * n / math.pi
        phase = k * (steps * b / (2 * n))
        phase += steps * a
        phase *= k
        phase += rise
        phase -= rise * np.cos(k * (math.pi / n))
        voiced = _WAVETABLE.take(phase.astype(np.int32), mode="wrap")
        # Syllable-rate loudness, never fully silent inside a word: _PEAK times
        # 0.3 + 0.7*sin^2(pi*syllables*u), written as a cosine.
        loud = np.cos(k * (2 * math.pi * word.syllables / n))
        loud *= -0.35 * _PEAK
        loud += 0.65 * _PEAK
        dst = out[k0 + word.start - start : k1 + word.start - start]
        np.multiply(voiced, loud, out=dst)
        # 10 ms tapers: only samples that close to an end of the word need one, and the
        # two windows must not overlap (a word can be shorter than 20 ms at high speed).
        head = min(edge, n)
        for w0, w1 in ((0, head), (max(n - edge, head), n)):
            i0, i1 = max(w0, k0), min(w1, k1)
            if i0 < i1:
                kk = k[i0 - k0 : i1 - k0]
                dst[i0 - k0 : i1 - k0] *= np.minimum(np.minimum(kk, n - kk) / edge_samples, 1.0)
    return out


class MockAdapter(TTSAdapter):
    """Speech-like synthetic audio; stateless per stream, so safe from any thread."""

    family = "mock"

    def __init__(self, sample_rate: int, capabilities: Capabilities, params: MockParams) -> None:
        super().__init__(sample_rate, capabilities)
        self.params = params

    @classmethod
    def load(cls, pack: VoicePack, device: str) -> MockAdapter:
        from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params

        rate = pack.metadata.audio.get("sample_rate", DEFAULT_SAMPLE_RATE)
        if not isinstance(rate, int) or rate < 8000:
            raise AdapterError(f"voice pack {pack.model_id}: audio.sample_rate {rate!r} invalid")
        return cls(rate, capabilities_from_pack(pack), parse_params(pack, MockParams))

    def runs_inline(self, text: str) -> bool:
        # A few numpy calls per chunk; only the [[slow:MS]] knob blocks (on purpose).
        return _parse_knobs(text)[1].slow_s == 0

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        clean, knobs = _parse_knobs(text)
        if knobs.fail:
            raise AdapterError("mock: failure requested by [[fail]]")
        if options.speed <= 0:
            raise AdapterError(f"mock: speed must be > 0, got {options.speed}")
        words, total = plan_words(
            clean,
            self.sample_rate,
            self.params.ms_per_char,
            options.speed,
            self.params.base_pitch_hz,
        )
        chunk = self.sample_rate * self.params.chunk_ms // 1000
        for index, start in enumerate(range(0, total, chunk)):
            if knobs.fail_after is not None and index >= knobs.fail_after:
                raise AdapterError(f"mock: failure requested after {index} chunks")
            if knobs.slow_s and cancel.wait(knobs.slow_s):
                return
            if cancel.is_set():
                return
            yield render(words, start, min(start + chunk, total), self.sample_rate)
        if knobs.fail_after is not None:
            # The text was shorter than N chunks: the failure was asked for, so it comes.
            raise AdapterError("mock: failure requested at the end of the audio")
