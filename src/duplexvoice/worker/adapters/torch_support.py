"""What the PyTorch families (``csm``, ``xtts``, ``cosyvoice``) share.

Imported only inside a family's own environment (``make worker-env FAMILY=...``):
the base install never has torch. Device strings are the worker's ``--device``:
``cpu``, ``cuda``, ``cuda:N`` or ``auto``; ``CUDA_VISIBLE_DEVICES`` picks which
physical GPUs a worker sees, so ``cuda:0`` is the first GPU *it* sees.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from duplexvoice.worker.adapters.base import AdapterError

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

DType = Literal["auto", "float32", "bfloat16", "float16"]

# Checkpoints are local folders: a worker never fetches from a model hub, even when a
# config names a hub repository (set before any family imports transformers).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def quiet_progress_bars() -> None:
    """transformers draws a progress bar per checkpoint load: noise in a worker's log."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()

_CUDA = re.compile(r"cuda(?::(\d+))?")


def torch_device(device: str) -> torch.device:
    """The torch device for a worker ``--device``; a clear error when it is absent."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(device)
    if match is None:
        raise AdapterError(f"unknown device {device!r}: expected cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise AdapterError(
            f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA "
            "GPU (a CPU build, no driver, or CUDA_VISIBLE_DEVICES hides them all)"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise AdapterError(
            f"device {device!r} asked for, but only {count} CUDA device(s) are visible "
            "(CUDA_VISIBLE_DEVICES renumbers them from 0)"
        )
    return torch.device(f"cuda:{index}")


def torch_dtype(device: torch.device, requested: DType) -> torch.dtype:
    """``auto``: float32 on CPU; bfloat16 on a GPU that has it, else float16."""
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if requested == "float16":
        return torch.float16
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def checkpoint_dir(pack: VoicePack, configured: str | None) -> Path:
    """The checkpoint folder of a pack: ``params.checkpoint_dir`` (absolute, or relative
    to the pack folder), or the pack folder itself."""
    path = pack.root if configured is None else (pack.root / Path(configured).expanduser())
    path = path.resolve()
    if not path.is_dir():
        raise AdapterError(f"voice pack {pack.model_id}: checkpoint folder {path} does not exist")
    return path


def require_files(pack: VoicePack, folder: Path, names: list[str]) -> None:
    """Fail with the list of missing files of a published layout, before loading."""
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        raise AdapterError(
            f"voice pack {pack.model_id}: {folder} is missing {', '.join(missing)} "
            "(see the family's voice pack README for the files a checkpoint holds)"
        )

