"""A fake TTS adapter for unit tests of the worker's synthesis path: small, deliberate,
with failure knobs. Never used by integration tests (they run the real voices).

Audio: one 20 ms chunk at 48 kHz (960 samples, so exactly one wire frame, no
resampling) per word of each text segment. Every chunk carries a serial number in
the signs of its samples (16 blocks of 60 samples, one bit each). The loudness gain
and the peak limiter only scale samples by positive factors, so :func:`tag_of` reads
the serial back from the frame the chunk became: a test compares the frames a client
got with the chunks the adapter yielded, and sees any frame lost, repeated or out of
order.

Knobs, per segment containing a given word (sessions may share one adapter):

- ``fail_on(word, after=N)``: yield N chunks, then raise :class:`AdapterError`
  (or the exception given, e.g. a ``RuntimeError`` for a crashing engine);
- ``hold_on(word, after=N)``: yield N chunks, then block until the stream is
  cancelled (STOP), with :attr:`FakeAdapter.holding` set meanwhile. Blocking is only
  allowed on a synthesis thread: use it with ``inline=False``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duplexvoice.audio import FRAME_SAMPLES, SAMPLE_RATE
from duplexvoice.worker.adapters.base import (
    AdapterError,
    Capabilities,
    FloatAudio,
    SynthesisOptions,
    TTSAdapter,
)
from duplexvoice.worker.voicepacks import VoicePack, VoicePackMetadata

FAMILY = "fake"
MODEL_ID = "fake-en-us-test"

# Upper bound for a held stream to wait for its cancel; never reached when tests pass.
HOLD_LIMIT_S = 10.0

_BITS = 16
_BLOCK = FRAME_SAMPLES // _BITS
_AMPLITUDE = 0.25


def chunk_for(tag: int) -> FloatAudio:
    """The 960 samples that carry ``tag`` (0 < tag < 2**16) in their signs."""
    if not 0 < tag < 1 << _BITS:
        raise ValueError(f"tag {tag} out of range")
    bits = (tag >> np.arange(_BITS)) & 1
    return np.repeat(np.where(bits == 1, _AMPLITUDE, -_AMPLITUDE), _BLOCK).astype(np.float32)


def tag_of(frame: bytes) -> int:
    """The serial number a fake chunk carried, read from the wire frame it became."""
    samples = np.frombuffer(frame, dtype="<i2").astype(np.int64)
    if samples.size != FRAME_SAMPLES:
        raise ValueError(f"not a whole frame: {len(frame)} bytes")
    sums = samples.reshape(_BITS, _BLOCK).sum(axis=1)
    if (sums == 0).any():
        raise ValueError("not a frame of the fake adapter (a silent block)")
    return int(sum(1 << i for i, s in enumerate(sums) if s > 0))


@dataclass
class Call:
    """One ``stream()`` call: the text segment and the tags of the chunks it yielded."""

    text: str
    tags: list[int] = field(default_factory=list)
    completed: bool = False  # yielded every chunk and returned normally
    cancelled: bool = False  # returned early because cancel was set


@dataclass(frozen=True)
class _Knob:
    word: str
    after: int
    error: Exception | None  # None: hold until cancelled


class FakeAdapter(TTSAdapter):
    """See the module docstring. Thread-safe like a real adapter must be."""

    family = FAMILY

    def __init__(self, *, inline: bool = True) -> None:
        super().__init__(SAMPLE_RATE, Capabilities(languages=("en",)))
        self.inline = inline
        self.calls: list[Call] = []
        self.holding = threading.Event()
        self.closed = False
        self._knobs: list[_Knob] = []
        self._serial = itertools.count(1)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, pack: VoicePack, device: str) -> FakeAdapter:
        return cls(inline=bool(pack.metadata.params.get("inline", True)))

    # -- knobs -------------------------------------------------------------------------

    def fail_on(self, word: str, *, after: int = 0, error: Exception | None = None) -> None:
        self._knobs.append(_Knob(word, after, error or AdapterError(f"fake: fails on {word!r}")))

    def hold_on(self, word: str, *, after: int = 0) -> None:
        if self.inline:
            raise ValueError("hold_on blocks: only on a synthesis thread (inline=False)")
        self._knobs.append(_Knob(word, after, None))

    # -- what it was asked --------------------------------------------------------------

    def texts(self) -> list[str]:
        with self._lock:
            return [call.text for call in self.calls]

    def tags(self, *words: str) -> list[int]:
        """Tags yielded, in order, for the segments containing any of ``words`` (all: none)."""
        with self._lock:
            return [
                tag for call in self.calls
                if not words or any(w in _words(call.text) for w in words)
                for tag in call.tags
            ]

    # -- TTSAdapter ---------------------------------------------------------------------

    def runs_inline(self, text: str) -> bool:
        return self.inline

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        call = Call(text)
        with self._lock:
            self.calls.append(call)
        words = _words(text)
        knob = next((k for k in self._knobs if k.word in words), None)
        for index in range(len(words)):
            if knob is not None and index == knob.after:
                yield from self._trip(knob, call, cancel)
                return
            if cancel.is_set():
                call.cancelled = True
                return
            with self._lock:
                tag = next(self._serial)
                call.tags.append(tag)
            yield chunk_for(tag)
        if knob is not None and knob.after >= len(words):
            yield from self._trip(knob, call, cancel)
            return
        call.completed = True

    def _trip(self, knob: _Knob, call: Call, cancel: threading.Event) -> Iterator[FloatAudio]:
        if knob.error is not None:
            raise knob.error
        self.holding.set()
        if not cancel.wait(HOLD_LIMIT_S):
            raise AdapterError(f"fake: held on {knob.word!r} for {HOLD_LIMIT_S} s, never cancelled")
        call.cancelled = True
        yield from ()

    def close(self) -> None:
        self.closed = True


def _words(text: str) -> list[str]:
    return [word.strip(".,;:!?") for word in text.split()]


def fake_pack(model_id: str = MODEL_ID, root: Path | None = None) -> VoicePack:
    """A voice pack of the fake family, in memory."""
    meta = VoicePackMetadata(
        model_id=model_id, name="Fake (tagged chunks)", family=FAMILY, version="1",
        languages=["en"],
    )
    return VoicePack(meta, root or Path("."))


def write_fake_pack(packs_dir: Path, model_id: str = MODEL_ID, *, inline: bool = True,
                    base_model: str | None = None) -> Path:
    """A voice pack of the fake family on disk, for a real WorkerRuntime to scan;
    with ``base_model``, a LoRA voice over that model."""
    folder = packs_dir / FAMILY / model_id
    folder.mkdir(parents=True)
    lora = f"base_model: {base_model}\ncapabilities: {{lora: true}}\n" if base_model else ""
    (folder / "metadata.yaml").write_text(
        f"model_id: {model_id}\nname: Fake\nfamily: {FAMILY}\nversion: '1'\n"
        f"languages: [en]\n{lora}params:\n  inline: {'true' if inline else 'false'}\n",
        encoding="utf-8",
    )
    return folder
