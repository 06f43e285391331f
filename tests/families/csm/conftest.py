"""Tiny CSM checkpoints, built once per test session (nothing heavy imported here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

BASE = "csm-en-tiny"
LORA_A = "csm-en-lora-a"
LORA_B = "csm-en-lora-b"


@dataclass(frozen=True)
class TinyCsm:
    root: Path
    checkpoint: Path
    packs: Path  # packs/csm/<model_id>/metadata.yaml for BASE, LORA_A, LORA_B


@pytest.fixture(scope="session")
def tiny_csm(tmp_path_factory: pytest.TempPathFactory) -> TinyCsm:
    from tests.support.tiny import csm as tiny

    root = tmp_path_factory.mktemp("tiny-csm")
    checkpoint = tiny.build_checkpoint(root / "checkpoint")
    packs = root / "packs"
    # Short utterances keep CPU runs fast: ~1 frame (80 ms) per character.
    tiny.write_pack(packs, BASE, checkpoint, threads=1, frames_per_char=1.0)
    for model_id, seed in ((LORA_A, 1), (LORA_B, 2)):
        adapter = tiny.build_lora(root / f"lora-{seed}", checkpoint, seed)
        tiny.write_lora_pack(packs, model_id, adapter, BASE)
    return TinyCsm(root, checkpoint, packs)


@pytest.fixture(scope="session")
def bad_codes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint whose backbone and depth decoder emit codes 0..127 while its
    Mimi codec has 64 entries: a code the codec cannot decode comes within a frame."""
    from tests.support.tiny import csm as tiny

    root = tmp_path_factory.mktemp("tiny-csm-bad-codes")
    return tiny.build_checkpoint(root / "checkpoint", vocab_size=2 * tiny.CODEBOOK_SIZE)
