"""A tiny random-weight XTTS-v2 checkpoint in the published layout, built offline.

``build_checkpoint(dest)`` writes what a user drops in from ``coqui/XTTS-v2``:
``config.json``, ``model.pth`` (``{"model": state_dict}``), ``vocab.json`` (a
``tokenizers`` BPE trained here on a few sentences) and ``speakers_xtts.pth`` (one
built-in speaker). The GPT is one layer of 64 channels; HiFi-GAN and the speaker
encoder have fixed sizes in coqui (~23 M parameters, ~88 MB), so a build takes a few
seconds. ``gpt_max_audio_tokens`` is small so random weights (which rarely sample the
stop token) end an utterance after 17 audio tokens (~0.8 s of audio: 5 chunks of 4 tokens).

``write_pack(packs_dir, model_id, checkpoint, **params)`` writes a voice pack with a
reference clip (a synthetic voiced signal made with numpy: no audio is committed).

Run ``python -m tests.support.tiny.xtts DEST`` to build both and print the pack folder.
"""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SPECIALS = ["[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]", "[de]"]
SPEAKER = "Tiny Speaker"
REF_RATE = 22050

_SENTENCES = [
    "hello, this is a warm-up.",
    "the quick brown fox jumps over the lazy dog.",
    "streaming speech one chunk at a time, please.",
    "stop, pause and resume work on every voice.",
    "guten tag, wie geht es dir heute?",
    "numbers like one two three and four five six.",
]


def _vocab(dest: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=256, special_tokens=SPECIALS, min_frequency=1)
    # The model sees text as VoiceBpeTokenizer.encode makes it: "[en]words[SPACE]words".
    lines = [s.replace(" ", "[SPACE]") for s in _SENTENCES]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.save(str(dest / "vocab.json"))


def _config(dest: Path) -> Any:
    from TTS.tts.configs.xtts_config import XttsConfig

    config = XttsConfig()
    args = config.model_args
    args.gpt_layers = 1
    args.gpt_n_model_channels = 64
    args.gpt_n_heads = 2
    args.decoder_input_dim = 64  # HiFi-GAN reads the GPT's latents
    args.gpt_use_perceiver_resampler = True  # as XTTS-v2
    args.gpt_max_audio_tokens = 20
    args.gpt_max_text_tokens = 402
    config.languages = ["en", "de"]
    (dest / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    return config


def build_checkpoint(dest: Path) -> Path:
    """Build the tiny checkpoint folder ``dest`` (created) and return it."""
    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    dest.mkdir(parents=True, exist_ok=True)
    _vocab(dest)
    _config(dest)
    torch.manual_seed(0)
    config = XttsConfig()
    config.load_json(str(dest / "config.json"))
    model = Xtts(config)
    model.tokenizer = VoiceBpeTokenizer(vocab_file=str(dest / "vocab.json"))
    model.init_models()
    torch.save({"model": model.state_dict()}, dest / "model.pth")
    channels = config.model_args.gpt_n_model_channels
    d_vector = config.model_args.d_vector_dim
    speakers = {
        SPEAKER: {
            "gpt_cond_latent": torch.randn(1, 32, channels) * 0.1,
            "speaker_embedding": torch.nn.functional.normalize(torch.randn(1, d_vector, 1), dim=1),
        }
    }
    torch.save(speakers, dest / "speakers_xtts.pth")
    return dest


def reference_clip(seconds: float = 3.0, f0: float = 120.0) -> np.ndarray:
    """A voiced-like signal: harmonics of a wavering pitch, syllable-rate envelope."""
    t = np.arange(int(seconds * REF_RATE)) / REF_RATE
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / REF_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    noise = np.random.default_rng(0).normal(0, 0.01, t.size)
    audio = 0.3 * signal * envelope / 3 + noise
    return np.clip(audio, -1, 1).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int = REF_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def write_pack(packs_dir: Path, model_id: str, checkpoint: Path, **params: Any) -> Path:
    """A voice pack ``packs_dir/xtts/<model_id>`` over ``checkpoint`` (with ``ref/seed.wav``)."""
    root = packs_dir / "xtts" / model_id
    root.mkdir(parents=True, exist_ok=True)
    write_wav(root / "ref" / "seed.wav", reference_clip())
    metadata = {
        "model_id": model_id,
        "name": f"Tiny XTTS ({model_id})",
        "family": "xtts",
        "version": "0.1",
        "languages": ["en", "de"],
        "capabilities": {"streaming": True, "zero_shot": True, "cpu_ok": True},
        "params": {"checkpoint_dir": str(checkpoint.resolve()), **params},
    }
    (root / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False), "utf-8")
    return root


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.tiny.xtts DEST", file=sys.stderr)
        return 2
    dest = Path(argv[0])
    checkpoint = build_checkpoint(dest / "checkpoint")
    print(write_pack(dest / "packs", "xtts-en-us-tiny", checkpoint, stream_chunk_size=4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
