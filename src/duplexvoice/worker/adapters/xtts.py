"""Family ``xtts``: Coqui XTTS-v2 (``coqui-tts``), zero-shot from a reference clip.

Loading reads the PUBLISHED checkpoint folder (``coqui/XTTS-v2``: ``config.json``,
``model.pth``, ``vocab.json``, ``speakers_xtts.pth``) with ``XttsConfig`` +
``load_checkpoint(..., eval=True)`` (strict), after
checking the files (:mod:`.xtts_files`): a missing file or a checkpoint whose tensor
shapes do not match its ``config.json`` is an :class:`AdapterError` of one line.
``dvae.pth`` and ``mel_stats.pth`` of the published repo are for training only
(``model.pth`` carries the ``mel_stats`` buffer) and are not read.

The voice: a pack is one voice. Its conditioning (``gpt_cond_latent``,
``speaker_embedding``) is computed ONCE at load, from the pack's reference clip(s)
(``params.reference``, default ``ref/seed.wav``) or taken from a built-in speaker of
``speakers_xtts.pth`` (``params.speaker``), and kept in memory on the device. It is
not cached on disk: computing it is one pass of the speaker encoder and the GPT's
conditioning encoder over ≤ 30 s of audio, small beside the model load, and a disk
cache would need invalidation when a clip changes. Clips are read with
``soundfile`` (WAV/FLAC/OGG) rather than coqui's ``torchaudio.load``, which needs
FFmpeg libraries through torchcodec.

Streaming: ``Xtts.inference_stream`` is a plain generator (no thread, no streamer):
each ``next()`` samples ``stream_chunk_size`` GPT tokens and vocodes them with
HiFi-GAN. :meth:`XttsAdapter.stream` yields each chunk as it comes and checks
``cancel`` between chunks; on cancel or early close it closes the generator, which
only unwinds Python frames, so nothing keeps computing after a STOP. Note coqui
re-vocodes all latents of the utterance at every chunk (for its cross-fade), so the
cost of a chunk grows with the utterance; the worker's text chunking (≤ 300 chars)
bounds it.

Concurrency (checked in coqui-tts 0.28.0): the GPT keeps ONE mutable piece of
per-request state, ``gpt.gpt_inference.cached_prefix_emb`` (conditioning + text
embeddings), written by ``compute_embeddings`` at the start of each request and read
at EVERY generation step (first step: as the prefix; later steps: its length sets
the audio position embedding). Two interleaved streams on one model would each
generate from the other's text. Everything else (KV cache, logits processors,
HiFi-GAN) is per call. So each adapter holds a lock around each chunk's work, not
around the whole utterance, and puts its own stream's prefix back before resuming
it. The lock is FIFO (``FairLock``, a ticket lock, from :mod:`.csm_sched`): a plain
``threading.Lock`` hands no turn over, so a stream that releases and re-acquires at
once could run chunk after chunk while another waits. With tickets, a session that
asks while another computes waits at most for that one chunk (~``stream_chunk_size``
tokens, not its whole text); total throughput is that of one stream. A STOPped
session leaves the queue (its wait polls ``cancel``), and one cancelled while waiting
gets no chunk computed. A paused session holds no lock. Sampling draws from torch's
global RNG, so concurrent sampling sessions are as random as sequential ones but not
reproducible per session; with ``top_k: 1`` output is deterministic.

Precision: float32 on every device (``dtype: auto`` or ``float32``). coqui has no
half-precision path for XTTS (only DeepSpeed's kernel injection of the GPT): its
cloning code feeds float32 audio features into the modules, and HiFi-GAN and the
speaker encoder are not validated in fp16/bf16 by coqui. The model is ~470 M
parameters (~1.9 GB in float32), small for a GPU, so ``float16`` / ``bfloat16`` are
refused with a clear error rather than risk degraded audio.

Unload: :meth:`XttsAdapter.close` drops the model and the conditioning, then runs
``gc.collect()`` and, on CUDA, ``torch.cuda.empty_cache()`` so the memory goes back to
the device (other families' workers may share it). A stream running at that moment
keeps its own references until it ends; a new stream raises :class:`AdapterError`.

``params`` (:class:`XttsParams`); session option ``language`` (any of the
checkpoint's ``config.json`` languages) overrides ``params.language``.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from duplexvoice.worker.adapters.base import (
    AdapterError,
    Capabilities,
    FloatAudio,
    SynthesisOptions,
    TTSAdapter,
)
from duplexvoice.worker.adapters.csm_sched import Cancelled, FairLock
from duplexvoice.worker.adapters.torch_support import DType, torch_device
from duplexvoice.worker.adapters.xtts_files import (
    Conditioning,
    builtin_speaker,
    load_model,
    reference_conditioning,
    supported_language,
)

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

DEFAULT_REFERENCE = "ref/seed.wav"


class XttsParams(BaseModel):
    """``params`` of an XTTS pack. Sampling settings left unset come from the
    checkpoint's ``config.json`` (as coqui's own ``synthesize`` does)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_dir: str | None = Field(
        default=None, description="published XTTS-v2 folder (relative to the pack or absolute)"
    )
    dtype: DType = Field(default="auto", description="auto/float32 only (see module docs)")
    threads: int = Field(default=0, ge=0, description="torch.set_num_threads; 0 = torch's")
    language: str = Field(default="en", min_length=2, description="default text language")
    reference: list[str] | None = Field(
        default=None, min_length=1, description="reference clips, relative to the pack"
    )
    speaker: str | None = Field(
        default=None, description="built-in speaker of speakers_xtts.pth (when no reference)"
    )
    stream_chunk_size: int = Field(default=20, ge=1, le=400, description="GPT tokens per chunk")
    overlap_wav_len: int = Field(default=1024, ge=0, le=24000, description="cross-fade samples")
    temperature: float | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    length_penalty: float | None = None
    enable_text_splitting: bool = Field(
        default=False, description="coqui's sentence splitting (the worker already chunks)"
    )


class XttsAdapter(TTSAdapter):
    """A loaded XTTS-v2 voice; one instance streams for many sessions (see module docs)."""

    family = "xtts"

    def __init__(
        self,
        model: Any,
        conditioning: Conditioning,
        capabilities: Capabilities,
        params: XttsParams,
    ) -> None:
        super().__init__(int(model.args.output_sample_rate), capabilities)
        self.model: Any = model
        self.conditioning: Conditioning | None = conditioning
        self.device: torch.device = conditioning.speaker_embedding.device
        self.params = params
        self.languages: tuple[str, ...] = tuple(model.config.languages)
        # One FIFO lock per model: coqui's GPT holds the current request's prefix embedding.
        self._lock = FairLock()
        config = model.config
        self._sampling: dict[str, float | int] = {
            "temperature": _pick(params.temperature, config.temperature),
            "top_k": int(_pick(params.top_k, config.top_k)),
            "top_p": _pick(params.top_p, config.top_p),
            "repetition_penalty": _pick(params.repetition_penalty, config.repetition_penalty),
            "length_penalty": _pick(params.length_penalty, config.length_penalty),
        }

    @classmethod
    def load(cls, pack: VoicePack, device: str) -> XttsAdapter:
        from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params

        params = parse_params(pack, XttsParams)
        where = f"voice pack {pack.model_id}"
        if params.dtype not in ("auto", "float32"):
            raise AdapterError(
                f"{where}: dtype {params.dtype} is not supported for XTTS (coqui runs it in "
                "float32 only); use auto or float32"
            )
        if params.threads:
            torch.set_num_threads(params.threads)
        if params.reference is not None and params.speaker is not None:
            raise AdapterError(f"{where}: params.reference and params.speaker: pick one")
        clips = params.reference or ([] if params.speaker is not None else [DEFAULT_REFERENCE])
        for clip in clips:  # before the slow model load
            if not (pack.root / clip).is_file():
                raise AdapterError(
                    f"{where}: no reference clip {pack.root / clip} (put one at "
                    f"{DEFAULT_REFERENCE}, name clips in params.reference, or use a built-in "
                    "params.speaker)"
                )
        dev = torch_device(device)
        model = load_model(pack, params.checkpoint_dir, dev)
        languages = list(model.config.languages)
        for language in [params.language, *pack.metadata.languages]:
            if supported_language(language, languages) is None:
                raise AdapterError(
                    f"{where}: language {language!r} is not one of the checkpoint's "
                    f"({', '.join(languages)})"
                )
        if clips:
            conditioning = reference_conditioning(pack, model, clips, dev)
        else:
            conditioning = builtin_speaker(pack, model, cast(str, params.speaker), dev)
        return cls(model, conditioning, capabilities_from_pack(pack), params)

    def check_options(self, options: SynthesisOptions) -> None:
        self.language_for(options)

    def language_for(self, options: SynthesisOptions) -> str:
        """The session's ``language`` option, else the pack's; AdapterError if unknown."""
        asked = options.extra.get("language") or self.params.language
        language = supported_language(asked, list(self.languages))
        if language is None:
            raise AdapterError(
                f"xtts: language {asked!r} is not supported by this model "
                f"({', '.join(self.languages)})"
            )
        return language

    def _check_length(self, text: str, language: str) -> None:
        # coqui asserts on over-long text inside the generator; say it clearly first.
        try:
            tokens = len(self.model.tokenizer.encode(text.lower(), lang=language))
        except Exception as exc:  # coqui's text cleaners (num2words, etc.)
            raise AdapterError(f"xtts: cannot tokenize text for {language!r}: {exc!r}") from exc
        limit = int(self.model.args.gpt_max_text_tokens)
        if tokens >= limit:
            raise AdapterError(
                f"xtts: text is {tokens} tokens, XTTS takes fewer than {limit} "
                "(lower the worker's --max-chunk-chars)"
            )

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        model, conditioning = self.model, self.conditioning  # close() may drop them meanwhile
        if model is None or conditioning is None:
            raise AdapterError("xtts: voice is closed")
        if options.speed <= 0:
            raise AdapterError(f"xtts: speed must be > 0, got {options.speed}")
        language = self.language_for(options)
        text = text.strip()
        if not text:
            return
        if not self.params.enable_text_splitting:
            self._check_length(text, language)
        chunks = model.inference_stream(
            text,
            language,
            conditioning.gpt_cond_latent,
            conditioning.speaker_embedding,
            stream_chunk_size=self.params.stream_chunk_size,
            overlap_wav_len=self.params.overlap_wav_len,
            speed=options.speed,
            enable_text_splitting=self.params.enable_text_splitting,
            **self._sampling,
        )
        gpt_inference = model.gpt.gpt_inference
        prefix: Any = None  # this stream's prefix embedding, once coqui has made it
        try:
            while not cancel.is_set():
                try:
                    self._lock.acquire(cancel.is_set)  # FIFO; gives up its place on STOP
                except Cancelled:
                    return
                try:
                    if cancel.is_set():
                        return  # stopped while waiting for the turn: compute nothing
                    if prefix is not None:
                        gpt_inference.cached_prefix_emb = prefix
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        return
                    except Exception as exc:  # torch / coqui failure mid-utterance
                        raise AdapterError(f"xtts: synthesis failed: {exc!r}") from exc
                    prefix = gpt_inference.cached_prefix_emb
                finally:
                    self._lock.release()
                audio = chunk.detach().to(torch.float32).cpu().numpy().reshape(-1)
                if audio.size and not cancel.is_set():
                    yield np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
        finally:
            # Unwinds coqui's generator frames (no thread to stop): nothing keeps running.
            chunks.close()

    def close(self) -> None:
        """Drop the model and the voice, give the memory back. Idempotent; a later
        stream raises AdapterError."""
        if self.model is None:
            return
        self.model = None
        self.conditioning = None
        gc.collect()  # the model graph has cycles: free it now, not at some later collection
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the cached blocks back to other processes


def _pick(value: float | int | None, default: Any) -> float:
    return float(value) if value is not None else float(cast(float, default))
