"""Family ``espeak``: eSpeak NG formant synthesis, libespeak-ng through ctypes.

libespeak-ng (from the ``espeakng-loader`` package) is one process-wide engine with
global state and is not thread-safe, so this module owns it: initialized once, on the
first load, and used only under :data:`_LOCK`. Voice and rate are set before each
synthesis, since packs and sessions may want different ones.

Streaming: the text is synthesized one sentence per ``espeak_Synth`` call; each
sentence's ~60 ms chunks are collected by the callback under the lock, then yielded
after it is released. The lock is thus held only for compute (eSpeak runs several
hundred times faster than real time: ~2 ms per second of audio), never while a slow
consumer holds a chunk, so one paced session cannot stall the others. The first chunk
comes after the first sentence is synthesized: a few milliseconds. ``cancel`` aborts
a running synthesis from the callback and is checked between chunks.

piper-tts carries its own static copy of espeak-ng (``piper/espeakbridge.so``) for
phonemes; the two copies have separate state and work side by side, from several
threads too.

``params``: ``voice`` (default ``en-us``), ``words_per_minute`` (default 175,
multiplied by ``options.speed`` and kept within eSpeak's 80-450).
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import espeakng_loader
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

# From speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when data is missing
_ESPEAK_RATE = 1
_CHARS_UTF8 = 1
_EE_OK = 0
RATE_MIN, RATE_MAX = 80, 450

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_LOCK = threading.Lock()  # guards _engine and every call into libespeak-ng


class EspeakParams(BaseModel):
    """``params`` of an eSpeak pack."""

    model_config = ConfigDict(extra="forbid")

    voice: str = Field(default="en-us", min_length=1, description="eSpeak voice name")
    words_per_minute: int = Field(default=175, ge=RATE_MIN, le=RATE_MAX)


class _Engine:
    """The process's libespeak-ng. Every method must be called with ``_LOCK`` held."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path().encode()
        except (OSError, RuntimeError) as exc:
            raise AdapterError(f"espeak: cannot load libespeak-ng: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise AdapterError(f"espeak: espeak_Initialize failed ({rate}) with data {data_path!r}")
        self.lib = lib
        self.sample_rate = int(rate)
        self._voice: str | None = None
        self._sink: list[FloatAudio] | None = None
        self._cancel: threading.Event | None = None
        # libespeak-ng keeps only a raw pointer: this reference keeps the thunk alive.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int) -> int:
        # Called from inside espeak_Synth on the synthesizing thread; 1 aborts it.
        # Never raise here: ctypes would only print the exception.
        try:
            if self._cancel is not None and self._cancel.is_set():
                return 1
            if wav and count > 0 and self._sink is not None:
                pcm = np.ctypeslib.as_array(wav, shape=(count,))
                self._sink.append((pcm.astype(np.float32) / 32768.0).astype(np.float32))
            return 0
        except Exception:
            return 1

    def set_voice(self, name: str) -> None:
        if name == self._voice:
            return  # SetVoiceByName reloads voice files: skip it when unchanged
        result = self.lib.espeak_SetVoiceByName(name.encode())
        if result != _EE_OK:
            self._voice = None
            raise AdapterError(f"espeak: unknown voice {name!r} (error {result})")
        self._voice = name

    def synthesize(
        self, text: str, voice: str, wpm: int, cancel: threading.Event
    ) -> list[FloatAudio]:
        """All chunks of ``text`` (one sentence, ideally), or fewer if cancelled."""
        self.set_voice(voice)
        self.lib.espeak_SetParameter(_ESPEAK_RATE, wpm, 0)
        sink: list[FloatAudio] = []
        self._sink, self._cancel = sink, cancel
        try:
            data = text.encode("utf-8") + b"\0"
            result = self.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
        finally:
            self._sink, self._cancel = None, None
        if result != _EE_OK and not cancel.is_set():
            raise AdapterError(f"espeak: espeak_Synth failed ({result})")
        return sink


_engine: _Engine | None = None


def _get_engine() -> _Engine:
    """The engine, initialized on first use. Call with ``_LOCK`` held."""
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def split_sentences(text: str) -> list[str]:
    """Sentences (split after ``.!?``), the unit of one ``espeak_Synth`` call."""
    return [part for part in (p.strip() for p in _SENTENCE_END.split(text)) if part]


class EspeakAdapter(TTSAdapter):
    """An eSpeak voice; many may exist, all sharing the one engine under the lock."""

    family = "espeak"

    def __init__(self, sample_rate: int, capabilities: Capabilities, params: EspeakParams) -> None:
        super().__init__(sample_rate, capabilities)
        self.params = params

    @classmethod
    def load(cls, pack: VoicePack, device: str) -> EspeakAdapter:
        from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params

        # eSpeak runs on the CPU whatever ``device`` says: it has no GPU path.
        params = parse_params(pack, EspeakParams)
        with _LOCK:
            engine = _get_engine()
            try:
                engine.set_voice(params.voice)  # an unknown voice fails here, not mid-session
            except AdapterError as exc:
                raise AdapterError(f"voice pack {pack.model_id}: {exc}") from exc
            rate = engine.sample_rate
        return cls(rate, capabilities_from_pack(pack), params)

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        if options.speed <= 0:
            raise AdapterError(f"espeak: speed must be > 0, got {options.speed}")
        wpm = round(self.params.words_per_minute * options.speed)
        wpm = min(RATE_MAX, max(RATE_MIN, wpm))
        for sentence in split_sentences(text):
            if cancel.is_set():
                return
            with _LOCK:
                chunks = _get_engine().synthesize(sentence, self.params.voice, wpm, cancel)
            for chunk in chunks:
                if cancel.is_set():
                    return
                yield chunk
