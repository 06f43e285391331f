"""A tiny Sesame CSM checkpoint in the published transformers layout, built offline.

Random weights from small configs (a ~0.3 M parameter backbone, depth decoder and
Mimi codec), a byte-level BPE trained on a few sentences with CSM's specials, the
Encodec feature extractor and the conversion script's chat template, all written with
``save_pretrained``: the same files ``sesame/csm-1b`` holds after conversion, so the
adapter loads it through the same ``from_pretrained`` path as the real model.

Facts that shape the configs (TOOLCHAIN.md, "GPU voice families"): Mimi keeps
``upsampling_ratios=[8, 6, 5, 4]`` (the processor hard-codes its strides, 1920 samples
per frame at 24 kHz) and the CSM ``vocab_size`` equals Mimi's codebook size, so random
weights never emit a code Mimi cannot decode (``vocab_size`` larger builds one that does).

``build_lora`` writes a PEFT LoRA adapter over a tiny base with non-zero random B
matrices (PEFT initialises B to zero, which would make an adapter a no-op).

Run ``python -m tests.support.tiny.csm DEST``: builds a checkpoint and a pack, prints
the pack folder.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

FAMILY = "csm"
NUM_CODEBOOKS = 4
CODEBOOK_SIZE = 64

_SENTENCES = [
    "Hello there, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech starts before the sentence ends.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "Please say that again, a little slower this time.",
]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- bos_token }}{{- '[' + message['role'] + ']' }}{{- message['content'][0]['text'] }}"
    "{{- eos_token }}"
    "{%- if message['content']|length > 1 %}{{- '<|AUDIO|><|audio_eos|>' }}{%- endif %}"
    "{%- endfor %}"
)


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
    )


def build_checkpoint(dest: Path, seed: int = 0, vocab_size: int = CODEBOOK_SIZE) -> Path:
    """Write a tiny random CSM checkpoint (transformers layout) into ``dest``; a
    ``vocab_size`` above :data:`CODEBOOK_SIZE` makes its backbone and depth decoder emit
    codes the codec has no entry for."""
    import torch
    from transformers import (
        CsmConfig,
        CsmForConditionalGeneration,
        CsmProcessor,
        EncodecFeatureExtractor,
        MimiConfig,
    )

    torch.manual_seed(seed)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    audio_eos_id = tokenizer.convert_tokens_to_ids("<|audio_eos|>")
    bos_id, eos_id = ids["<|begin_of_text|>"], ids["<|end_of_text|>"]
    codec = MimiConfig(
        hidden_size=32,
        num_filters=4,
        upsampling_ratios=[8, 6, 5, 4],
        codebook_size=CODEBOOK_SIZE,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=NUM_CODEBOOKS,
        num_semantic_quantizers=1,
        upsample_groups=32,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=250,
    )
    depth = {
        "num_codebooks": NUM_CODEBOOKS,
        "backbone_hidden_size": 64,
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": NUM_CODEBOOKS + 1,
    }
    config = CsmConfig(
        num_codebooks=NUM_CODEBOOKS,
        vocab_size=vocab_size,
        text_vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=eos_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        audio_token_id=audio_id,
        audio_eos_token_id=audio_eos_id,
        codebook_pad_token_id=CODEBOOK_SIZE - 1,
        codebook_eos_token_id=0,
        depth_decoder_config=depth,
        codec_config=codec.to_dict(),
    )
    model = CsmForConditionalGeneration(config)
    model.eval()
    # Mimi's codebooks start as zeros (their real values are trained buffers): random
    # centroids, or the decoded audio would not depend on the codes at all.
    with torch.no_grad():
        for name, buffer in model.codec_model.named_buffers():
            if name.endswith("embed_sum"):
                buffer.copy_(torch.randn(buffer.shape))
    model.generation_config.max_new_tokens = 40
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.9
    model.generation_config.top_k = 50
    model.save_pretrained(dest)
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24000)
    processor = CsmProcessor(
        feature_extractor=extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(dest)
    return dest


def build_lora(
    dest: Path, base_checkpoint: Path, seed: int, rank: int = 4,
    targets: str | list[str] | None = None,
) -> Path:
    """A PEFT LoRA adapter over the tiny base, with random non-zero B so it changes
    the output; saved with ``save_pretrained`` (adapter_config.json +
    adapter_model.safetensors), as PEFT or Unsloth training leaves it. ``targets``:
    PEFT ``target_modules`` (default: the adapter's ``LORA_TARGETS``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import CsmForConditionalGeneration

    from duplexvoice.worker.adapters.csm_sched import LORA_TARGETS

    base = CsmForConditionalGeneration.from_pretrained(base_checkpoint)
    target_modules = LORA_TARGETS if targets is None else targets
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers deprecations inside PEFT
        peft_model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    dest.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(dest)
    return dest


def _write(packs_dir: Path, model_id: str, name: str, params: dict[str, Any],
           base_model: str | None = None) -> Path:
    folder = packs_dir / FAMILY / model_id
    folder.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {
        "model_id": model_id,
        "name": name,
        "family": FAMILY,
        "version": "0.0.1",
        "languages": ["en"],
        "capabilities": {"streaming": True, "lora": base_model is not None, "cpu_ok": True},
        "description": "random-weight test checkpoint",
        "params": params,
    }
    if base_model is not None:
        metadata["base_model"] = base_model
    (folder / "metadata.yaml").write_text(yaml.safe_dump(metadata), encoding="utf-8")
    return folder


def write_pack(packs_dir: Path, model_id: str, checkpoint: Path, **params: Any) -> Path:
    """A voice pack folder ``packs_dir/csm/<model_id>/`` whose checkpoint is ``checkpoint``."""
    return _write(packs_dir, model_id, f"Tiny CSM ({model_id})",
                  {"checkpoint_dir": str(checkpoint), **params})


def write_lora_pack(
    packs_dir: Path, model_id: str, adapter_dir: Path, base_model_id: str, **params: Any
) -> Path:
    """A LoRA voice pack ``packs_dir/csm/<model_id>/`` over ``base_model_id``."""
    return _write(packs_dir, model_id, f"Tiny CSM LoRA ({model_id})",
                  {"adapter_dir": str(adapter_dir), **params}, base_model=base_model_id)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.tiny.csm DEST", file=sys.stderr)
        return 2
    dest = Path(argv[0]).resolve()
    checkpoint = build_checkpoint(dest / "checkpoint")
    print(write_pack(dest / "packs", "csm-en-tiny", checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
