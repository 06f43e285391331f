"""XTTS-v2 checkpoint folder and voice conditioning: checked loading, clear errors.

Split from :mod:`.xtts` so the adapter file stays about streaming. Every failure here
is an :class:`AdapterError` of one line naming the pack and the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from duplexvoice.worker.adapters.base import AdapterError
from duplexvoice.worker.adapters.torch_support import checkpoint_dir, require_files

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

# What inference reads from a published XTTS-v2 folder; speakers_xtts.pth is
# needed only for a built-in speaker (fine-tuned checkpoints often lack it).
REQUIRED_FILES = ["config.json", "model.pth", "vocab.json"]
SPEAKERS_FILE = "speakers_xtts.pth"
CLONE_RATE = 22050  # coqui computes conditioning at 22.05 kHz


@dataclass(frozen=True)
class Conditioning:
    """A voice for XTTS: the GPT's conditioning latents and HiFi-GAN's speaker vector."""

    gpt_cond_latent: Any  # torch.Tensor [1, 32, gpt channels]
    speaker_embedding: Any  # torch.Tensor [1, d_vector, 1]


def supported_language(asked: str, languages: list[str]) -> str | None:
    """The checkpoint's spelling of ``asked`` (``zh`` -> ``zh-cn``), or None."""
    if asked in languages:
        return asked
    base = asked.split("-")[0].lower()
    for language in languages:
        if language.split("-")[0].lower() == base:
            return language
    return None


def _state_dict_problem(exc: Exception) -> str:
    """One line from torch's multi-line ``load_state_dict`` error: the first size
    mismatch if any (the telling one), else the first problem, cut short."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    problems = lines[1:] or lines or [repr(exc)]
    mismatches = [line for line in problems if line.startswith("size mismatch")]
    first = (mismatches or problems)[0]
    if len(first) > 240:
        first = first[:240] + "..."
    more = len(mismatches or problems) - 1
    return first + (f" (and {more} more)" if more else "")


def load_model(pack: VoicePack, configured: str | None, device: torch.device) -> Any:
    """``Xtts`` from a published checkpoint folder, strict, in eval mode, on ``device``."""
    from tokenizers import Tokenizer
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    folder = checkpoint_dir(pack, configured)
    where = f"voice pack {pack.model_id}"
    require_files(pack, folder, REQUIRED_FILES)
    config_file = folder / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
        if raw.get("model") != "xtts":
            raise ValueError(f"model is {raw.get('model')!r}, expected 'xtts'")
        config = XttsConfig()
        config.load_json(str(config_file))
    except Exception as exc:  # JSON, coqpit validation
        raise AdapterError(f"{where}: bad XTTS config {config_file}: {exc}") from exc
    try:
        vocab = Tokenizer.from_file(str(folder / "vocab.json"))
    except Exception as exc:
        raise AdapterError(f"{where}: bad vocab.json in {folder}: {exc}") from exc
    missing = [t for t in ("[START]", "[STOP]", "[SPACE]") if vocab.token_to_id(t) is None]
    if missing:
        raise AdapterError(f"{where}: vocab.json lacks {', '.join(missing)}: not an XTTS vocab")
    try:
        model = Xtts(config)
    except Exception as exc:
        raise AdapterError(f"{where}: cannot build XTTS from {config_file}: {exc}") from exc
    try:
        model.load_checkpoint(config, checkpoint_dir=str(folder), eval=True, strict=True)
    except RuntimeError as exc:  # size mismatch, missing or unexpected keys
        raise AdapterError(
            f"{where}: {folder / 'model.pth'} does not match its config.json: "
            f"{_state_dict_problem(exc)}"
        ) from exc
    except OSError as exc:
        # coqui rewrites a legacy model.pth (pickled XttsConfig) in place on first load.
        raise AdapterError(
            f"{where}: cannot load {folder}: {exc!r} (coqui converts a legacy model.pth "
            "in place on its first load: the folder must be writable once)"
        ) from exc
    except Exception as exc:  # unreadable pickle, not a {"model": ...} dict, bad speakers
        raise AdapterError(f"{where}: cannot load {folder}: {exc!r}") from exc
    try:
        model.to(device)
    except Exception as exc:  # out of GPU memory
        raise AdapterError(f"{where}: cannot move XTTS to {device}: {exc}") from exc
    return model


def builtin_speaker(pack: VoicePack, model: Any, name: str, device: torch.device) -> Conditioning:
    """A speaker of ``speakers_xtts.pth``, checked against the model's sizes."""
    where = f"voice pack {pack.model_id}"
    manager = model.speaker_manager
    if manager is None:
        raise AdapterError(f"{where}: params.speaker needs {SPEAKERS_FILE} in the checkpoint")
    speakers: dict[str, Any] = manager.speakers
    if name not in speakers:
        known = ", ".join(sorted(speakers)[:10])
        raise AdapterError(f"{where}: no built-in speaker {name!r} (e.g. {known})")
    entry = speakers[name]
    try:
        latent = torch.as_tensor(entry["gpt_cond_latent"], dtype=torch.float32)
        embedding = torch.as_tensor(entry["speaker_embedding"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{where}: speaker {name!r} in {SPEAKERS_FILE} is malformed") from exc
    channels = int(model.args.gpt_n_model_channels)
    d_vector = int(model.args.d_vector_dim)
    if latent.dim() != 3 or latent.shape[-1] != channels or embedding.numel() != d_vector:
        raise AdapterError(
            f"{where}: speaker {name!r} has shapes {tuple(latent.shape)} / "
            f"{tuple(embedding.shape)}, the model wants [1, N, {channels}] / [1, {d_vector}, 1]"
        )
    return Conditioning(latent.to(device), embedding.reshape(1, d_vector, 1).to(device))


def _read_clip(path: Path, max_seconds: float) -> torch.Tensor:
    """A clip as float32 mono [1, n] at 22.05 kHz, at most ``max_seconds`` long."""
    import soundfile  # type: ignore[import-not-found, unused-ignore]
    import torchaudio

    info = soundfile.info(str(path))
    frames = int(min(info.frames, max_seconds * info.samplerate))
    data, rate = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.mean(axis=1)).unsqueeze(0)
    if rate != CLONE_RATE:
        audio = torchaudio.functional.resample(audio, rate, CLONE_RATE)
    return audio.clamp_(-1.0, 1.0)


def reference_conditioning(
    pack: VoicePack, model: Any, clips: list[str], device: torch.device
) -> Conditioning:
    """Conditioning from reference clips, as coqui's ``get_conditioning_latents`` makes
    it with the checkpoint's settings (``max_ref_len``, ``gpt_cond_len``, ...)."""
    where = f"voice pack {pack.model_id}"
    config = model.config
    audios: list[torch.Tensor] = []
    embeddings: list[torch.Tensor] = []
    for clip in clips:
        path = (pack.root / clip).resolve()
        if not path.is_file():
            raise AdapterError(f"{where}: reference clip {path} does not exist")
        try:
            audio = _read_clip(path, float(config.max_ref_len))
        except Exception as exc:  # soundfile: unknown format, truncated file
            raise AdapterError(f"{where}: cannot read reference clip {path}: {exc}") from exc
        if audio.shape[-1] < CLONE_RATE // 2:
            raise AdapterError(f"{where}: reference clip {path} is shorter than 0.5 s")
        if config.sound_norm_refs:
            audio = audio / audio.abs().max().clamp(min=1e-6) * 0.75
        audio = audio.to(device)
        try:
            embeddings.append(model.get_speaker_embedding(audio, CLONE_RATE))
        except Exception as exc:
            raise AdapterError(f"{where}: speaker encoder failed on {path}: {exc}") from exc
        audios.append(audio)
    try:
        latent = model.get_gpt_cond_latents(
            torch.cat(audios, dim=-1),
            CLONE_RATE,
            length=int(config.gpt_cond_len),
            chunk_length=int(config.gpt_cond_chunk_len),
        )
    except Exception as exc:  # e.g. "reference audio too short"
        raise AdapterError(f"{where}: cannot condition on {', '.join(clips)}: {exc}") from exc
    embedding = torch.stack(embeddings).mean(dim=0)
    return Conditioning(latent.detach().clone(), embedding.detach().clone())
