"""Family ``csm``: Sesame CSM (transformers ``CsmForConditionalGeneration`` + Mimi).

Checkpoint: a folder in the published transformers layout (``sesame/csm-1b`` after
conversion): ``config.json``, ``model*.safetensors``, tokenizer files, the processor's
config and chat template, ``generation_config.json``. Loaded with ``from_pretrained``
(strict shapes: a mismatch is an :class:`AdapterError`, never silently re-initialised
weights).

Streaming: ``generate`` runs on a thread per utterance with a ``BaseStreamer`` that
receives one ``[1, num_codebooks]`` frame per step; frames cross to the consumer
through a bounded queue and are decoded by :class:`IncrementalMimiDecoder` (bounded
left context: flat cost per frame). The first chunk leaves after the first frame, then
every ``frames_per_chunk`` frames. CSM's ``generate`` drops custom stopping criteria,
so STOP is the streamer raising :class:`Cancelled` inside ``put()``: generation ends
within one frame and the model (whose KV cache belongs to that one call) stays usable.

Sessions share the model through :class:`ModelScheduler` (fair lock given up after
every frame; adapter and RNG restored per session): see :mod:`.csm_sched`. LoRA voices
(:class:`CsmLoraVoice`, from :meth:`CsmAdapter.load_lora`) are PEFT adapters in that
same model; adapters trained with PEFT or Unsloth are the same PEFT format
(``adapter_config.json`` + ``adapter_model.safetensors``).

Loading a LoRA voice is all or nothing (:meth:`ModelScheduler.add_adapter`): a corrupt,
mismatched or Mimi-wrapping adapter is an :class:`AdapterError` and leaves the base
model as it was. ``close`` drops the voice's references to the model (a LoRA voice's
close deletes only its adapter), collects, and empties the CUDA cache.

Seeded reproducibility holds per model: each model's scheduler restores torch's global
RNG per turn under its own lock, so two CSM base models generating at once in one
worker interleave their draws (see :mod:`.csm_sched`).

Session options: :mod:`.csm_options`. ``options.speed`` is ignored (CSM has no rate
control).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import queue
import secrets
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from duplexvoice.worker.adapters import torch_support as ts
from duplexvoice.worker.adapters.base import (
    AdapterError,
    Capabilities,
    FloatAudio,
    SynthesisOptions,
    TTSAdapter,
)
from duplexvoice.worker.adapters.csm_decode import IncrementalMimiDecoder
from duplexvoice.worker.adapters.csm_options import (
    MAX_SPEAKER,
    ContextTurn,
    bounded,
    own_turns,
    parse_int,
    remember,
    render_prompt,
    session_context,
)
from duplexvoice.worker.adapters.csm_sched import Cancelled, ModelScheduler, Turn

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

SAMPLE_RATE = 24000
QUEUE_FRAMES = 64  # frames a generating thread may run ahead of its consumer
WAIT_S = 0.05
WARMUP_SEED = 0
_END = object()

# CSM's generate logs "does not support EosTokenCriteria" on every call: it drops the
# text EOS criterion by design (audio ends with an all-zero frame). Not news per utterance.
logging.getLogger("transformers.models.csm.generation_csm").setLevel(logging.ERROR)


class CsmParams(BaseModel):
    """``params`` of a CSM pack."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_dir: str | None = Field(default=None, description="default: the pack folder")
    dtype: ts.DType = "auto"
    threads: int = Field(default=0, ge=0, description="torch.set_num_threads; 0 = torch's")
    speaker: int = Field(default=0, ge=0, le=MAX_SPEAKER)
    max_audio_frames: int = Field(default=750, ge=1, le=4000, description="cap per text chunk")
    frames_per_char: float = Field(default=1.5, gt=0, description="frame budget per character")
    temperature: float | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, ge=1)
    do_sample: bool | None = None
    context_turns: int = Field(default=2, ge=0, le=8, description="own previous turns fed back")
    decode_context_frames: int = Field(default=12, ge=0, le=250)
    frames_per_chunk: int = Field(default=2, ge=1, le=50)


class CsmLoraParams(BaseModel):
    """``params`` of a CSM LoRA voice pack."""

    model_config = ConfigDict(extra="forbid")

    adapter_dir: str | None = Field(default=None, description="default: the pack folder")
    speaker: int | None = Field(default=None, ge=0, le=MAX_SPEAKER)


REQUIRED = ["config.json", "tokenizer_config.json"]
# transformers 5 saves processor_config.json; older conversions preprocessor_config.json.
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _first_line(exc: BaseException) -> str:
    """One line of reason; a heading ending in ':' ("Error(s) in loading state_dict
    for PeftModel:") takes its first detail along ("size mismatch for ...")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1][:300]}"
    return f"{type(exc).__name__}: {text}"


def _validate_checkpoint(pack: VoicePack, folder: Path) -> None:
    ts.require_files(pack, folder, REQUIRED)
    missing = []
    if not list(folder.glob("model*.safetensors")):
        missing.append("model*.safetensors")
    if not (folder / "tokenizer.json").exists():
        missing.append("tokenizer.json")
    if not any((folder / n).exists() for n in PROCESSOR_CONFIGS):
        missing.append("preprocessor_config.json")
    if missing:
        raise AdapterError(
            f"voice pack {pack.model_id}: {folder} is missing {', '.join(missing)} "
            "(see docs/voicepacks/csm/README.md for the files a checkpoint holds)"
        )


class CsmAdapter(TTSAdapter):
    """A loaded CSM model; serves its base voice and its LoRA voices."""

    family = "csm"

    def __init__(
        self, model: Any, processor: Any, device: torch.device,
        capabilities: Capabilities, params: CsmParams, adapter: str | None = None,
        scheduler: ModelScheduler | None = None,
    ) -> None:
        super().__init__(SAMPLE_RATE, capabilities)
        self.model = model
        self.processor = processor
        self.device = device
        self.params = params
        self.adapter_name = adapter
        self.scheduler = scheduler or ModelScheduler(device)
        self.num_codebooks = int(model.config.num_codebooks)
        self.codebook_size = int(model.config.codec_config.codebook_size)
        self._eos_code = int(model.config.codebook_eos_token_id)
        self._closed = False

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, pack: VoicePack, device: str) -> CsmAdapter:
        from transformers import AutoProcessor, CsmForConditionalGeneration

        from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params

        params = parse_params(pack, CsmParams)
        ts.quiet_progress_bars()
        dev = ts.torch_device(device)
        dtype = ts.torch_dtype(dev, params.dtype)
        folder = ts.checkpoint_dir(pack, params.checkpoint_dir)
        _validate_checkpoint(pack, folder)
        if params.threads:
            torch.set_num_threads(params.threads)
        try:
            model = CsmForConditionalGeneration.from_pretrained(
                folder, dtype=dtype, ignore_mismatched_sizes=False
            )
            processor = AutoProcessor.from_pretrained(folder)
        except Exception as exc:  # shape mismatch, corrupt file, bad config
            raise AdapterError(
                f"voice pack {pack.model_id}: cannot load CSM checkpoint {folder}: "
                f"{_first_line(exc)}"
            ) from exc
        try:
            model.to(dev)
        except Exception as exc:
            raise AdapterError(f"voice pack {pack.model_id}: cannot move to {dev}: {exc}") from exc
        model.eval()
        return cls(model, processor, dev, capabilities_from_pack(pack), params)

    def load_lora(self, pack: VoicePack) -> CsmLoraVoice:
        from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params

        if self.adapter_name is not None:
            raise AdapterError(f"voice pack {pack.model_id}: a LoRA voice cannot be a base")
        params = parse_params(pack, CsmLoraParams)
        folder = ts.checkpoint_dir(pack, params.adapter_dir)
        ts.require_files(pack, folder, ["adapter_config.json"])
        if not any((folder / n).exists() for n in ADAPTER_WEIGHTS):
            raise AdapterError(
                f"voice pack {pack.model_id}: {folder} is missing adapter_model.safetensors "
                "(a PEFT adapter: save_pretrained of a PEFT or Unsloth LoRA)"
            )
        name = pack.model_id
        model, processor = self._parts()
        with self.scheduler.exclusive() as sched, warnings.catch_warnings():
            # PEFT and transformers warn about deprecations inside their own calls.
            warnings.simplefilter("ignore")
            if sched.peft is not None and name in sched.peft.peft_config:
                raise AdapterError(f"voice pack {pack.model_id}: adapter already loaded")
            try:
                sched.add_adapter(model, folder, name)  # all or nothing
            except Exception as exc:
                raise AdapterError(
                    f"voice pack {pack.model_id}: cannot load LoRA adapter {folder}: "
                    f"{_first_line(exc)}"
                ) from exc
        speaker = self.params.speaker if params.speaker is None else params.speaker
        lora_params = self.params.model_copy(update={"speaker": speaker})
        return CsmLoraVoice(
            model, processor, self.device, capabilities_from_pack(pack),
            lora_params, adapter=name, scheduler=self.scheduler,
        )

    def _parts(self) -> tuple[Any, Any]:
        """The model and processor; taken once per call so ``close`` cannot pull them
        from under a running utterance."""
        model, processor = self.model, self.processor
        if self._closed or model is None:
            raise AdapterError(f"csm: voice {self.adapter_name or 'base'} is closed")
        return model, processor

    # -- synthesis ---------------------------------------------------------------------
    def warmup_options(self) -> SynthesisOptions:
        # Seeded: an unseeded warm-up would calibrate a different loudness gain on
        # every load, and seeded sessions would not repeat across loads.
        return SynthesisOptions(extra={"seed": str(WARMUP_SEED)})

    def check_options(self, options: SynthesisOptions) -> None:
        extra = dict(options.extra)
        parse_int(extra, "speaker", 0, MAX_SPEAKER)
        parse_int(extra, "seed", 0, 2**63 - 1)
        session_context(extra, options.memory)

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        model, processor = self._parts()
        if not text.strip():
            return
        extra = dict(options.extra)
        speaker = parse_int(extra, "speaker", 0, MAX_SPEAKER)
        speaker = self.params.speaker if speaker is None else speaker
        seed = parse_int(extra, "seed", 0, 2**63 - 1)
        context = bounded([*session_context(extra, options.memory), *own_turns(options.memory)])
        inputs = self._prompt(model, processor, context, speaker, text)
        max_frames = min(
            self.params.max_audio_frames, 10 + math.ceil(len(text) * self.params.frames_per_char)
        )
        codes: list[FloatAudio] = []
        for chunk in self._generate(model, inputs, max_frames, seed, cancel):
            codes.append(chunk)
            yield chunk
        if codes and not cancel.is_set() and self.params.context_turns > 0:
            audio = np.concatenate(codes)
            remember(options.memory, ContextTurn(speaker, text, audio), self.params.context_turns)

    def _inputs(self, context: list[ContextTurn], speaker: int, text: str) -> dict[str, Any]:
        return self._prompt(*self._parts(), context, speaker, text)

    def _prompt(
        self, model: Any, processor: Any, context: list[ContextTurn], speaker: int, text: str
    ) -> dict[str, Any]:
        tok = processor.tokenizer
        audio_token = getattr(processor, "audio_token", "<|AUDIO|>")
        prompt, audios = render_prompt(
            tok.bos_token, tok.eos_token, audio_token, "<|audio_eos|>", context, speaker, text
        )
        try:
            kwargs: dict[str, Any] = {
                "text": prompt, "add_special_tokens": False, "return_tensors": "pt"
            }
            if audios:
                kwargs["audio"] = audios
                kwargs["sampling_rate"] = SAMPLE_RATE
            batch = processor(**kwargs)
        except Exception as exc:
            raise AdapterError(f"csm: cannot build the prompt: {exc}") from exc
        out: dict[str, Any] = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(model.dtype)
            out[key] = value
        return out

    def _generate(
        self, model: Any, inputs: dict[str, Any], max_frames: int, seed: int | None,
        cancel: threading.Event,
    ) -> Iterator[FloatAudio]:
        stop = threading.Event()  # also set when the consumer goes away

        def stopped() -> bool:
            return cancel.is_set() or stop.is_set()

        turn = Turn(
            adapter=self.adapter_name,
            seed=secrets.randbits(63) if seed is None else seed,
            stop=stopped,
        )
        frames: queue.Queue[object] = queue.Queue(maxsize=QUEUE_FRAMES)
        streamer = _FrameStreamer(self.scheduler, turn, frames, stopped)
        kwargs: dict[str, Any] = {"max_new_tokens": max_frames, "streamer": streamer}
        for name in ("temperature", "top_k", "do_sample"):
            value = getattr(self.params, name)
            if value is not None:
                kwargs[name] = value

        def run() -> None:
            try:
                self.scheduler.acquire(turn)
                try:
                    with torch.inference_mode():
                        model.generate(**inputs, **kwargs)
                finally:
                    self.scheduler.release(turn)
            except Cancelled:
                pass
            except Exception as exc:  # handed to the consumer
                _offer(frames, exc, stop)
            finally:
                _offer(frames, _END, stop)

        thread = threading.Thread(target=run, name="csm-generate", daemon=True)
        codec = model.codec_model
        decoder = IncrementalMimiDecoder(
            lambda codes: self._decode_with(codec, codes), self.num_codebooks,
            self.params.decode_context_frames,
        )
        thread.start()
        pending: list[np.ndarray[Any, Any]] = []
        first = True
        try:
            while not cancel.is_set():
                try:
                    item = frames.get(timeout=WAIT_S)
                except queue.Empty:
                    if not thread.is_alive() and frames.empty():
                        break
                    continue
                if item is _END:
                    break
                if isinstance(item, Exception):
                    raise AdapterError(f"csm: generation failed: {item!r}") from item
                frame = cast("np.ndarray[Any, Any]", item)
                if (frame[:-1] == self._eos_code).all():
                    continue  # CSM's end-of-audio frame: not audio
                self._check_codes(model, frame)
                pending.append(frame)
                if first or len(pending) >= self.params.frames_per_chunk:
                    first = False
                    yield self._push(decoder, pending)
                    pending = []
            if pending and not cancel.is_set():
                yield self._push(decoder, pending)
        finally:
            stop.set()
            while thread.is_alive():  # drain so a blocked put() sees stop
                with contextlib.suppress(queue.Empty):
                    frames.get(timeout=WAIT_S)
            thread.join()

    def _check_codes(self, model: Any, frame: np.ndarray[Any, Any]) -> None:
        """Refuse a code Mimi has no entry for: its embedding lookup would fail with a
        bare ``IndexError: index out of range in self``, naming nothing."""
        bad = frame[(frame < 0) | (frame >= self.codebook_size)]
        if bad.size:
            raise AdapterError(
                f"csm: the checkpoint emitted audio code {int(bad[0])} outside the codec's "
                f"0..{self.codebook_size - 1} range: its backbone/depth decoder do not match "
                f"its codec (config.json: vocab_size {model.config.vocab_size}, "
                f"codec_config.codebook_size {self.codebook_size})"
            )

    def _push(self, decoder: IncrementalMimiDecoder, pending: list[Any]) -> FloatAudio:
        audio = decoder.push(np.stack(pending, axis=1))
        return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)

    def _decode(self, codes: np.ndarray[Any, Any]) -> FloatAudio:
        return self._decode_with(self._parts()[0].codec_model, codes)

    def _decode_with(self, codec: Any, codes: np.ndarray[Any, Any]) -> FloatAudio:
        # Outside the model lock: no adapter may wrap Mimi (ModelScheduler.add_adapter).
        tensor = torch.from_numpy(codes).to(self.device).unsqueeze(0)
        with torch.inference_mode():
            audio = codec.decode(tensor).audio_values
        return cast(FloatAudio, audio[0, 0].float().cpu().numpy())

    def close(self) -> None:
        """Drop this voice's references to the model so its memory can go back (a
        base's LoRA voices are closed before it: the manager refuses otherwise)."""
        if self._closed:
            return
        self._closed = True
        self._release_model()

    def _release_model(self) -> None:
        self.model = None
        self.processor = None
        gc.collect()  # the model's modules hold reference cycles
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand cached blocks back to the driver


class CsmLoraVoice(CsmAdapter):
    """A LoRA voice: a PEFT adapter inside its base's model. ``close`` deletes it."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        name = self.adapter_name
        try:
            with self.scheduler.exclusive() as sched, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PEFT warns that it re-activates another one
                if name is not None:
                    # Only its adapter: the base model stays (the last one leaves it plain).
                    sched.remove_adapter(name)
        finally:
            self._release_model()


class _FrameStreamer:
    """transformers streamer: hands each generated frame over and yields the model."""

    def __init__(
        self, scheduler: ModelScheduler, turn: Turn, frames: queue.Queue[object],
        stopped: Any,
    ) -> None:
        self._scheduler = scheduler
        self._turn = turn
        self._frames = frames
        self._stopped = stopped
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # the first call is the prompt
            return
        frame = value.reshape(-1).numpy().astype(np.int64)
        self._scheduler.release(self._turn)  # others run while we hand over
        if self._stopped():
            raise Cancelled
        while True:
            try:
                self._frames.put(frame, timeout=WAIT_S)
                break
            except queue.Full:
                if self._stopped():
                    raise Cancelled from None
        self._scheduler.acquire(self._turn)

    def end(self) -> None:
        pass


def _offer(q: queue.Queue[object], item: object, stop: threading.Event) -> None:
    """Put ``item`` unless the consumer has gone (then nobody reads it)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=WAIT_S)
            return
        except queue.Full:
            continue
