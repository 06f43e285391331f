"""Family ``cosyvoice``: CosyVoice 2 (``CosyVoice2-0.5B`` layout), zero-shot, streaming.

Runtime: the ``cosyvoice`` modules of the ``cosyvoice2-eu`` package (LLM ``Qwen2LM``,
flow ``CausalMaskedDiffWithXvec``, vocoder ``HiFTGenerator``, and
``CosyVoice2Model.token2wav``), built from the checkpoint's own yaml
(:mod:`.cosyvoice_config`) and fed by a local front end (:mod:`.cosyvoice_frontend`).
The package's ``CosyVoice2`` class is never used: it may call modelscope's
``snapshot_download`` when a path is absent, and its front end imports text
normalisers that fetch or build resources. Nothing here touches a network.

Voice: zero-shot from ``ref/seed.wav`` (or ``params.prompt_wav``) and
``params.prompt_text`` (its transcript). The prompt's speech tokens, speaker embedding
and mel features are computed once at load and reused by every request.

Streaming: :meth:`CosyVoiceAdapter.stream` re-implements ``CosyVoice2Model.tts(...,
stream=True)`` with two changes. The package's generator polls with
``time.sleep(0.1)`` and, when closed early, never joins its LLM thread nor pops the
request's entries from its per-uuid dicts (the thread keeps generating up to 20
tokens per text token). Here the LLM thread appends tokens under a condition variable
(the consumer wakes on each token instead of every 100 ms), and a ``finally`` stops and
joins it and pops the request's ``hift_cache_dict`` entry, whether the request ends,
fails or is cancelled. The stop event is checked before EVERY forward step of the LLM
backbone (a forward pre-hook, which knows its request through a thread-local), not
only between yielded tokens: the package's loop runs steps that yield nothing (fill
tokens, up to ``max_len`` of them), so a per-token check alone could leave the join
waiting for many steps. With the hook the join waits for at most the step in flight.
The adapter keeps its live requests in ``_requests`` (uuid -> request and its thread),
emptied by the same ``finally``. The chunk
schedule (``token_hop_len`` 25, ``pre_lookahead_len`` lookahead, the first hop padded
to the prompt) and every ``token2wav`` call are the package's.

Concurrency: the model object holds no per-request state besides those uuid-keyed
dicts (guarded by ``model.lock``); the LLM passes its KV cache explicitly, the flow's
noise is a fixed buffer, HiFT's cache is passed in. So requests run concurrently
without a lock of ours (tested: two streams each yield a chunk before either ends, and
each gets the same speech tokens and mel as alone).
``speed != 1`` is only supported by the package without streaming (it stretches the
whole mel): such a request is rendered in one chunk.

Unload: :meth:`CosyVoiceAdapter.close` stops live requests, drops the model, front end
(ONNX sessions) and prompt features, then ``gc.collect()`` and, on CUDA,
``torch.cuda.empty_cache()`` so the memory goes back to the device for other workers.
A stream still running keeps its own references until it ends; a new stream raises
:class:`AdapterError`.

Unproven without the real files: see :mod:`.cosyvoice_frontend` (real ONNX front-end
I/O, text normalisation quality) and docs/voicepacks/cosyvoice/README.md.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
from duplexvoice.worker.adapters.cosyvoice_config import (
    BLANKEN,
    config_file,
    load_config,
    load_weights,
    missing_files,
)
from duplexvoice.worker.adapters.cosyvoice_frontend import (
    PromptFeatures,
    PromptFrontEnd,
    read_prompt_wav,
    split_text,
)
from duplexvoice.worker.adapters.torch_support import checkpoint_dir, torch_device

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

log = logging.getLogger(__name__)

# The join waits for the LLM step in flight (the stop hook refuses the next one); this
# bound only guards against a step that never returns (logged, not waited on further).
LLM_JOIN_S = 30.0

_current = threading.local()  # .req: the _Request whose LLM job runs on this thread


class _Stopped(Exception):
    """Raised by the stop hook in the LLM thread: the request was stopped."""


class CosyVoiceParams(BaseModel):
    """``params`` of a CosyVoice 2 pack."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_dir: str | None = Field(
        default=None, description="the CosyVoice2-0.5B folder; relative to the pack or absolute"
    )
    dtype: Literal["auto", "float32", "float16"] = Field(
        default="auto", description="auto: float16 on a GPU (the package's fp16), float32 on CPU"
    )
    threads: int = Field(default=0, ge=0, description="torch.set_num_threads; 0 = torch's default")
    prompt_text: str = Field(min_length=1, description="the transcript of the prompt clip")
    prompt_wav: str = Field(default="ref/seed.wav", description="the prompt clip, in the pack")
    speed: float = Field(default=1.0, gt=0.25, le=4.0, description="!= 1: no streaming")
    text_frontend: Literal["basic", "none"] = Field(
        default="basic", description="basic: sentence split only; none: text as is"
    )


class _Request:
    """One request's LLM thread and the tokens it has produced."""

    def __init__(self) -> None:
        self.uuid = str(uuid.uuid4())
        self.tokens: list[int] = []
        self.done = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


def _stop_hook(_module: Any, _args: Any) -> None:
    """Forward pre-hook of the LLM backbone: refuse the next step of a stopped request."""
    req: _Request | None = getattr(_current, "req", None)
    if req is not None and req.stop.is_set():
        raise _Stopped


class CosyVoiceAdapter(TTSAdapter):
    """A loaded CosyVoice 2 voice; one instance streams for many sessions at once."""

    family = "cosyvoice"

    def __init__(
        self,
        model: Any,
        frontend: PromptFrontEnd,
        prompt: PromptFeatures,
        sample_rate: int,
        capabilities: Capabilities,
        params: CosyVoiceParams,
        device: torch.device,
    ) -> None:
        super().__init__(sample_rate, capabilities)
        self.model: Any = model
        self.frontend: PromptFrontEnd | None = frontend
        self.prompt: PromptFeatures | None = prompt
        self.params = params
        self.device = device
        self._requests: dict[str, _Request] = {}  # live requests, by uuid
        self._requests_lock = threading.Lock()
        backbone = getattr(model.llm.llm, "model", model.llm.llm)  # called once per step
        self._hook: Any = backbone.register_forward_pre_hook(_stop_hook)

    @classmethod
    def load(cls, pack: VoicePack, device: str) -> CosyVoiceAdapter:
        from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params

        params = parse_params(pack, CosyVoiceParams)
        where = f"voice pack {pack.model_id}"
        folder = checkpoint_dir(pack, params.checkpoint_dir)
        missing = missing_files(folder)
        if missing:
            raise AdapterError(
                f"{where}: {folder} is missing {', '.join(missing)} "
                "(see docs/voicepacks/cosyvoice/README.md)"
            )
        prompt_wav = (pack.root / params.prompt_wav).resolve()
        if not prompt_wav.is_file():
            raise AdapterError(f"{where}: prompt clip {prompt_wav} does not exist")
        dev = torch_device(device)
        if params.dtype == "float16" and dev.type != "cuda":
            raise AdapterError(f"{where}: dtype float16 needs a CUDA device, got {dev}")
        fp16 = params.dtype == "float16" or (params.dtype == "auto" and dev.type == "cuda")
        if params.threads:
            torch.set_num_threads(params.threads)
        try:
            caps = capabilities_from_pack(pack)
            return cls._build(pack, params, folder, prompt_wav, dev, fp16, caps)
        except AdapterError as exc:
            raise AdapterError(f"{where}: {exc}") from exc

    @classmethod
    def _build(
        cls,
        pack: VoicePack,
        params: CosyVoiceParams,
        folder: Path,
        prompt_wav: Path,
        dev: torch.device,
        fp16: bool,
        caps: Capabilities,
    ) -> CosyVoiceAdapter:
        from cosyvoice.cli.model import CosyVoice2Model

        configs = load_config(config_file(folder), folder / BLANKEN)
        load_weights(configs["llm"], folder / "llm.pt", dev, hift=False)
        load_weights(configs["flow"], folder / "flow.pt", dev, hift=False)
        load_weights(configs["hift"], folder / "hift.pt", dev, hift=True)
        model = CosyVoice2Model(configs["llm"], configs["flow"], configs["hift"], fp16)
        model.device = dev  # its __init__ picks "cuda" or "cpu" itself: honour cuda:N / cpu
        if dev.type != "cuda":
            model.llm_context = contextlib.nullcontext()
        frontend = PromptFrontEnd(folder, configs["get_tokenizer"](), configs["feat_extractor"])
        text_rows = int(configs["llm"].llm.model.get_input_embeddings().num_embeddings)
        if len(frontend.tokenizer) > text_rows:
            raise AdapterError(
                f"{BLANKEN} tokenizer has {len(frontend.tokenizer)} tokens, the LLM embeds "
                f"only {text_rows}"
            )
        speech = read_prompt_wav(prompt_wav)
        sample_rate = int(configs["sample_rate"])
        prompt = frontend.prompt(params.prompt_text, speech, sample_rate)
        _check_prompt(prompt, model)
        return cls(model, frontend, prompt, sample_rate, caps, params, dev)

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        # Local references: a close() during the stream cannot pull them away mid-chunk.
        model, frontend, prompt = self.model, self.frontend, self.prompt
        if model is None or frontend is None or prompt is None:
            raise AdapterError("cosyvoice: voice is closed")
        if options.speed <= 0:
            raise AdapterError(f"cosyvoice: speed must be > 0, got {options.speed}")
        speed = self.params.speed * options.speed
        for segment in split_text(text, frontend.tokenizer.encode, self.params.text_frontend):
            if cancel.is_set():
                return
            if self.model is None:
                raise AdapterError("cosyvoice: voice was closed during the stream")
            text_token = frontend.text_token(segment)
            if text_token.shape[1] == 0:
                continue
            yield from self._segment(model, prompt, text_token, speed, cancel)

    def _segment(
        self,
        model: Any,
        prompt: PromptFeatures,
        text_token: torch.Tensor,
        speed: float,
        cancel: threading.Event,
    ) -> Iterator[FloatAudio]:
        req = _Request()
        with model.lock:
            model.hift_cache_dict[req.uuid] = None
        thread = threading.Thread(
            target=self._llm_job,
            args=(model, prompt, req, text_token),
            name="cosyvoice-llm",
            daemon=True,
        )
        req.thread = thread
        with self._requests_lock:
            self._requests[req.uuid] = req
        thread.start()
        flow_args = {
            "prompt_token": prompt.speech_token,
            "prompt_feat": prompt.speech_feat,
            "embedding": prompt.embedding,
            "uuid": req.uuid,
        }
        try:
            offset = 0
            streaming = abs(speed - 1.0) < 1e-6
            hop_len = int(model.token_hop_len)
            prompt_len = int(prompt.speech_token.shape[1])
            pad = int(np.ceil(prompt_len / hop_len) * hop_len - prompt_len)
            lookahead = int(model.flow.pre_lookahead_len)
            while streaming:
                hop = hop_len + pad if offset == 0 else hop_len
                need = offset + hop + lookahead
                tokens = self._wait(req, need, cancel)
                if tokens is None:
                    return
                if len(tokens) < need:
                    break  # the LLM ended: the rest goes out as the final chunk
                speech = _token2wav(
                    model, tokens[:need], offset, flow_args, stream=True, final=False
                )
                offset += hop
                if cancel.is_set():
                    return
                yield speech
            tokens = self._wait(req, None, cancel)
            if tokens is None:
                return
            yield _token2wav(
                model, tokens, offset, flow_args, stream=False, final=True, speed=speed
            )
        finally:
            req.stop.set()
            thread.join(LLM_JOIN_S)  # the step in flight: the hook refuses the next one
            if thread.is_alive():
                log.warning("cosyvoice: LLM thread of %s still running after stop", req.uuid)
            with model.lock:
                model.hift_cache_dict.pop(req.uuid, None)
            with self._requests_lock:
                self._requests.pop(req.uuid, None)

    def _wait(self, req: _Request, need: int | None, cancel: threading.Event) -> list[int] | None:
        """Tokens so far once ``need`` are there (None: all) or the LLM ended; None if
        cancelled. Woken per token; cancel (an Event we cannot wait on jointly) is
        checked every 20 ms."""
        with req.cond:
            while not cancel.is_set():
                if req.error is not None:
                    raise AdapterError(f"cosyvoice: LLM failed: {req.error!r}") from req.error
                if req.done or (need is not None and len(req.tokens) >= need):
                    return list(req.tokens)
                req.cond.wait(0.02)
        return None

    def _llm_job(
        self, model: Any, prompt: PromptFeatures, req: _Request, text_token: torch.Tensor
    ) -> None:
        dev = self.device
        _current.req = req  # for the stop hook, which runs on this thread
        try:
            autocast = torch.autocast(dev.type, enabled=bool(model.fp16) and dev.type == "cuda")
            with model.llm_context, autocast:
                gen = model.llm.inference(
                    text=text_token.to(dev),
                    text_len=torch.tensor([text_token.shape[1]], dtype=torch.int32, device=dev),
                    prompt_text=prompt.text_token.to(dev),
                    prompt_text_len=torch.tensor(
                        [prompt.text_token.shape[1]], dtype=torch.int32, device=dev
                    ),
                    prompt_speech_token=prompt.speech_token.to(dev),
                    prompt_speech_token_len=torch.tensor(
                        [prompt.speech_token.shape[1]], dtype=torch.int32, device=dev
                    ),
                    embedding=prompt.embedding.to(dev),
                    uuid=req.uuid,
                )
                try:
                    for token in gen:
                        if req.stop.is_set():
                            break
                        with req.cond:
                            req.tokens.append(int(token))
                            req.cond.notify_all()
                finally:
                    gen.close()
        except _Stopped:
            pass  # stopped by the hook before a step: the consumer has gone
        except BaseException as exc:  # reported to the consumer, never lost
            req.error = exc
        finally:
            _current.req = None
            with req.cond:
                req.done = True
                req.cond.notify_all()

    def close(self) -> None:
        """Stop live requests, drop the model and front end, give the memory back.
        Idempotent; a later stream raises AdapterError."""
        model = self.model
        if model is None:
            return
        with self._requests_lock:
            for req in self._requests.values():
                req.stop.set()  # their LLM threads end at the next step
        self._hook.remove()
        self.model = None
        self.frontend = None
        self.prompt = None
        del model
        gc.collect()  # the model graph has cycles: free it now, not at some later collection
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the cached blocks back to other processes


def _token2wav(
    model: Any,
    tokens: list[int],
    offset: int,
    flow_args: dict[str, Any],
    stream: bool,
    final: bool,
    speed: float = 1.0,
) -> FloatAudio:
    try:
        with torch.inference_mode():
            speech = model.token2wav(
                token=torch.tensor([tokens], dtype=torch.int32),
                token_offset=offset,
                stream=stream,
                finalize=final,
                speed=speed,
                **flow_args,
            )
    except Exception as exc:  # torch raises many kinds
        raise AdapterError(f"cosyvoice: token2wav failed: {exc!r}") from exc
    audio: FloatAudio = speech.detach().float().cpu().numpy().reshape(-1).astype(np.float32)
    return audio


def _check_prompt(prompt: PromptFeatures, model: Any) -> None:
    """The front end's outputs against the model's sizes (a wrong ONNX model fails here)."""
    spk_dim = int(model.flow.spk_embed_affine_layer.in_features)
    if prompt.embedding.shape[1] != spk_dim:
        raise AdapterError(
            f"campplus.onnx gives a {prompt.embedding.shape[1]}-dim speaker embedding, "
            f"flow.pt expects {spk_dim}"
        )
    tokens = prompt.speech_token
    if tokens.shape[1] == 0:
        raise AdapterError("speech_tokenizer_v2.onnx gave no tokens for the prompt clip")
    vocab = int(model.flow.input_embedding.num_embeddings)
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise AdapterError(
            f"speech_tokenizer_v2.onnx gives token ids in [{int(tokens.min())}, "
            f"{int(tokens.max())}], flow.pt has {vocab} speech tokens"
        )
