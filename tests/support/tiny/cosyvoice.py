"""A tiny CosyVoice 2 checkpoint in the published ``CosyVoice2-0.5B`` layout.

Random weights from small configs, saved as the real files are::

    cosyvoice2.yaml   the real file's structure (training keys included), small sizes
    llm.pt flow.pt hift.pt   state dicts of the modules the yaml builds
    campplus.onnx            [B, T, 80] fbank -> [B, 192] embedding (mean + linear)
    speech_tokenizer_v2.onnx [1, 128, T] log-mel, [1] int32 length -> [1, T/4] ids < 6561
    CosyVoice-BlankEN/       a 1-layer Qwen2 (safetensors) + a byte-level BPE tokenizer
                             trained offline on a few sentences (Qwen2TokenizerFast)

The flow encoder keeps its published width (512): about 60 MB in all, built in a few
seconds. ``python -m tests.support.tiny.cosyvoice DEST`` builds one and writes a pack.
Needs torch, transformers, tokenizers and onnx (torch.onnx export).
"""

from __future__ import annotations

import sys
import warnings
import wave
from pathlib import Path
from typing import Any

import numpy as np

FAMILY = "cosyvoice"
SPEECH_TOKENS = 6561
SENTENCES = [
    "Hello there, how are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "A tiny model speaks random sounds, one chunk at a time.",
    "Streaming speech arrives before the sentence ends.",
    "Numbers like 42 and words like voice, pack and worker.",
]
PROMPT_TEXT = "Hello there, this is the prompt voice."

YAML = """# tiny CosyVoice 2 (structure of the published cosyvoice2.yaml)
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]

# fixed params
sample_rate: 24000
llm_input_size: 64
llm_output_size: 64
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2

# stream related params
chunk_size: 25
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: 512
        attention_heads: 2
        linear_units: 64
        num_blocks: 1
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 512
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [32]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 1
            num_heads: 2
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 32
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3]
    resblock_dilation_sizes: [[1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 32

# gan related module (training only: needs matplotlib, not installed at run time)
mel_spec_transform1: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: null
    center: False
hifigan: !new:cosyvoice.hifigan.hifigan.HiFiGan
    generator: !ref <hift>
    discriminator: !new:cosyvoice.hifigan.discriminator.MultipleDiscriminator
        mpd: !new:matcha.hifigan.models.MultiPeriodDiscriminator
        mrd: !new:cosyvoice.hifigan.discriminator.MultiResSpecDiscriminator
    mel_spec_transform: [
        !ref <mel_spec_transform1>
    ]

# processor functions
parquet_opener: !name:cosyvoice.dataset.processor.parquet_opener
get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
tokenize: !name:cosyvoice.dataset.processor.tokenize
    get_tokenizer: !ref <get_tokenizer>
    allowed_special: !ref <allowed_special>
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: 8000
    center: False
compute_fbank: !name:cosyvoice.dataset.processor.compute_fbank
    feat_extractor: !ref <feat_extractor>
    token_mel_ratio: 2

data_pipeline: [
    !ref <parquet_opener>,
    !ref <tokenize>,
    !ref <compute_fbank>,
]

train_conf:
    optim: adam
    optim_conf:
        lr: 1e-5
    max_epoch: 200
"""


def _tokenizer(dest: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*SENTENCES, PROMPT_TEXT], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(str(dest))
    return len(fast)


def _qwen(dest: Path, vocab: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        tie_word_embeddings=True,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(str(dest))


def _onnx_front_end(dest: Path) -> None:
    import torch

    class CamPlus(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(80, 192)

        def forward(self, feat: torch.Tensor) -> torch.Tensor:
            return self.proj(feat.mean(dim=1))

    class SpeechTokenizer(torch.nn.Module):
        """FSQ-like: 4 mel frames -> 8 dims -> 3 levels each -> one id < 3**8."""

        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(128 * 4, 8)
            self.register_buffer("powers", 3 ** torch.arange(8, dtype=torch.float32))

        def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
            frames = feats.shape[2] // 4
            x = feats[:, :, : frames * 4].reshape(1, 128, frames, 4)
            x = x.permute(0, 2, 1, 3).reshape(1, frames, 128 * 4)
            levels = torch.round(torch.tanh(self.proj(x)) + 1.0)  # 0, 1 or 2
            ids = (levels * self.powers).sum(-1).to(torch.int64)
            return ids + feats_length.to(torch.int64).sum() * 0

    torch.manual_seed(0)
    export: Any = torch.onnx.export
    export(
        CamPlus(), (torch.randn(1, 50, 80),), str(dest / "campplus.onnx"),
        input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "B", 1: "T"}, "output": {0: "B"}},
        dynamo=False, opset_version=17,
    )  # fmt: skip
    export(
        SpeechTokenizer(),
        (torch.randn(1, 128, 100), torch.tensor([100], dtype=torch.int32)),
        str(dest / "speech_tokenizer_v2.onnx"),
        input_names=["feats", "feats_length"], output_names=["indices"],
        dynamic_axes={"feats": {2: "T"}, "indices": {1: "T4"}},
        dynamo=False, opset_version=17,
    )  # fmt: skip


def build_checkpoint(dest: Path) -> Path:
    """Build the tiny checkpoint folder ``dest`` (created) and return it."""
    import torch

    from duplexvoice.worker.adapters.cosyvoice_config import BLANKEN, load_config

    dest.mkdir(parents=True, exist_ok=True)
    blank = dest / BLANKEN
    blank.mkdir(exist_ok=True)
    vocab = _tokenizer(blank)
    # room for the package's 19 extra specials, as the real 151936 rows have
    _qwen(blank, vocab + 64)
    (dest / "cosyvoice2.yaml").write_text(YAML, encoding="utf-8")
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the package's deprecations (diffusers, torch.amp)
        warnings.simplefilter("ignore")
        configs = load_config(dest / "cosyvoice2.yaml", blank)
    torch.save(configs["llm"].state_dict(), dest / "llm.pt")
    torch.save(configs["flow"].state_dict(), dest / "flow.pt")
    torch.save(configs["hift"].state_dict(), dest / "hift.pt")
    with warnings.catch_warnings():  # torch's legacy-exporter notice
        warnings.simplefilter("ignore")
        _onnx_front_end(dest)
    return dest


def write_prompt(path: Path, seconds: float = 1.6, rate: int = 16000) -> None:
    """A synthetic voiced clip (glottal-like pulses through two formants), PCM16."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 20 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    audio = 0.3 * voice * envelope / np.max(np.abs(voice))
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((audio * 32767).astype("<i2").tobytes())


def write_pack(packs_dir: Path, model_id: str, checkpoint: Path, **params: Any) -> Path:
    """A voice pack ``packs_dir/cosyvoice/<model_id>`` over ``checkpoint``."""
    import yaml

    root = packs_dir / FAMILY / model_id
    root.mkdir(parents=True, exist_ok=True)
    write_prompt(root / "ref" / "seed.wav")
    merged: dict[str, Any] = {"checkpoint_dir": str(checkpoint), "prompt_text": PROMPT_TEXT}
    merged.update(params)
    metadata = {
        "model_id": model_id,
        "name": "Tiny CosyVoice 2 (random weights)",
        "family": FAMILY,
        "version": "0.0.1",
        "languages": ["en"],
        "capabilities": {"streaming": True, "zero_shot": True, "cpu_ok": True},
        "params": merged,
    }
    (root / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False), "utf-8")
    return root


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.tiny.cosyvoice DEST", file=sys.stderr)
        return 2
    dest = Path(argv[0]).resolve()
    checkpoint = build_checkpoint(dest / "checkpoint")
    print(write_pack(dest / "packs", "cosyvoice-en-tiny", checkpoint, threads=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
