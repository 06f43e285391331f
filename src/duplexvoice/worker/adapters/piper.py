"""Family ``piper``: neural TTS (VITS) with piper-tts on onnxruntime.

Piper renders a whole sentence per model run, so :meth:`PiperAdapter.stream` yields
one chunk per sentence, each as soon as it is ready; ``cancel`` is checked between
sentences.

Model files: ``files.model`` and ``files.config`` of the pack, or, if the pack names
none, the single ``*.onnx`` in the pack folder and the ``<name>.onnx.json`` beside it,
so any Piper voice dropped into a pack folder works.

``params`` (all optional, see :class:`PiperParams`): ``intra_op_threads``,
``allow_spinning``, ``normalize_audio``, ``speaker_id``.

One adapter serves many sessions at once: onnxruntime's ``Run`` is thread-safe and
piper serializes its own phonemizer (a private copy of espeak-ng inside
``piper/espeakbridge.so``, separate from the libespeak-ng of the ``espeak`` family).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped, unused-ignore]
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig
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

_CUDA_DEVICE = re.compile(r"cuda(?::(\d+))?")
Provider = str | tuple[str, dict[str, Any]]


class PiperParams(BaseModel):
    """``params`` of a Piper pack.

    Defaults chosen by measurement on a 2-core CPU (joe-medium; figures noisy):

    * ``allow_spinning: false``: spinning never helped a lone stream and cost
      10-25 % of throughput once two or more streams ran (spinning threads burn the
      cores the other runs need).
    * ``intra_op_threads: 0`` (onnxruntime's default, one per core): a lone 80-char
      sentence takes ~220 ms to its first chunk against ~310 ms with 1 thread. With
      1 thread, concurrent throughput is ~15 % higher (~24x real time in total
      against ~21x at 2-8 streams). Speech is bursty, so the latency of the one or
      two replies in flight matters more than the capacity at saturation; a worker
      packed with sessions (or a many-core machine, where 0 means many threads per
      run) should set 1-2.
    * ``normalize_audio: false``: piper's per-sentence peak normalization puts every
      sentence's peak at full scale and spreads loudness more (-15 to -24 LUFS over
      seven sentences) than the raw output (-21 to -27 LUFS, peaks ~0.5); loudness
      is set downstream, per voice or utterance.
    """

    model_config = ConfigDict(extra="forbid")

    intra_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads per run; 0 = one per core"
    )
    allow_spinning: bool = Field(
        default=False, description="let idle intra-op threads spin (busy CPU, no gain measured)"
    )
    normalize_audio: bool = Field(
        default=False, description="piper's per-sentence peak normalization (off: raw level)"
    )
    speaker_id: int | None = Field(default=None, ge=0, description="multi-speaker voices")


def model_files(pack: VoicePack) -> tuple[Path, Path]:
    """The ``.onnx`` model and its ``.onnx.json`` config for a pack."""
    from duplexvoice.worker.voicepacks import VoicePackError

    where = f"voice pack {pack.model_id}"
    try:
        model, config = pack.file("model"), pack.file("config")
    except VoicePackError as exc:
        raise AdapterError(f"{where}: {exc}") from exc
    if model is None:
        found = sorted(pack.root.glob("*.onnx"))
        if not found:
            raise AdapterError(
                f"{where}: metadata.yaml names no files.model and {pack.root} holds no *.onnx"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise AdapterError(
                f"{where}: several *.onnx files in {pack.root} ({names}): "
                "name one with files.model in metadata.yaml"
            )
        model = found[0]
    if config is None:
        config = model.with_name(model.name + ".json")
        if not config.is_file():
            raise AdapterError(
                f"{where}: no config for {model.name}: expected {config.name} beside it, "
                "or files.config in metadata.yaml"
            )
    return model, config


def providers_for(device: str) -> list[Provider]:
    """onnxruntime execution providers for ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    match = _CUDA_DEVICE.fullmatch(device)
    if match is None:
        raise AdapterError(f"unknown device {device!r}: expected cpu, cuda or cuda:N")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise AdapterError(
            f"device {device!r} asked for, but this onnxruntime has no "
            "CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    cuda_options = {
        "device_id": int(match.group(1) or 0),
        "cudnn_conv_algo_search": "HEURISTIC",  # piper's choice: fast start-up
    }
    # CPU stays listed for the few ops the CUDA provider lacks.
    return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]


def session_options(params: PiperParams) -> Any:
    """onnxruntime ``SessionOptions`` from pack params."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = params.intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if params.allow_spinning else "0"
    )
    return options


class PiperAdapter(TTSAdapter):
    """A loaded Piper voice; one instance streams for many sessions at once."""

    family = "piper"

    def __init__(self, voice: PiperVoice, capabilities: Capabilities, params: PiperParams) -> None:
        super().__init__(int(voice.config.sample_rate), capabilities)
        self._voice: PiperVoice | None = voice
        self._params = params
        self._length_scale = float(voice.config.length_scale)

    @classmethod
    def load(cls, pack: VoicePack, device: str) -> PiperAdapter:
        from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params

        params = parse_params(pack, PiperParams)
        model, config_path = model_files(pack)
        providers = providers_for(device)
        try:
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterError(
                f"voice pack {pack.model_id}: bad Piper config {config_path}: {exc!r}"
            ) from exc
        try:
            # Our own session (not PiperVoice.load's) so SessionOptions are ours, and
            # the model is read once.
            session = onnxruntime.InferenceSession(
                str(model), sess_options=session_options(params), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise AdapterError(f"voice pack {pack.model_id}: cannot load {model}: {exc}") from exc
        voice = PiperVoice(session=session, config=config)
        return cls(voice, capabilities_from_pack(pack), params)

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        voice = self._voice
        if voice is None:
            raise AdapterError("piper: voice is closed")
        if options.speed <= 0:
            raise AdapterError(f"piper: speed must be > 0, got {options.speed}")
        syn_config = SynthesisConfig(
            speaker_id=self._params.speaker_id,
            length_scale=self._length_scale / options.speed,
            normalize_audio=self._params.normalize_audio,
        )
        # Piper's generator phonemizes all the text, then runs the model once per
        # sentence on each next(): check cancel before asking for the next sentence.
        # Piper reads "[[ ... ]]" as raw phonemes: user text must not reach the model
        # as phoneme codes, so the double brackets are broken up.
        text = text.replace("[[", "[ [").replace("]]", "] ]")
        sentences = iter(voice.synthesize(text, syn_config))
        try:
            while not cancel.is_set():
                try:
                    chunk = next(sentences)
                except StopIteration:
                    return
                except Exception as exc:  # phonemizer or onnxruntime failure
                    raise AdapterError(f"piper: synthesis failed: {exc!r}") from exc
                audio = np.asarray(chunk.audio_float_array, dtype=np.float32).reshape(-1)
                if audio.size and not cancel.is_set():
                    yield audio
        finally:
            close = getattr(sentences, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        self._voice = None  # drops the session (and its memory) with the last reference
