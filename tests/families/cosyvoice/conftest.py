"""One tiny CosyVoice 2 checkpoint per test session (nothing heavy imported here)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cosy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny.cosyvoice import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("cosyvoice") / "CosyVoice2-tiny")


@pytest.fixture(scope="session")
def cosy_packs(tmp_path_factory: pytest.TempPathFactory, cosy_checkpoint: Path) -> Path:
    """Packs: the voice, a second voice (TTL), one with a file missing, one with wrong
    shapes (flow.pt swapped for hift.pt), one whose flow encoder is 256 wide."""
    import shutil

    from tests.support.tiny.cosyvoice import write_pack

    packs = tmp_path_factory.mktemp("cosy-packs")
    write_pack(packs, "cosyvoice-en-tiny", cosy_checkpoint, threads=1)
    write_pack(packs, "cosyvoice-en-second", cosy_checkpoint, threads=1)
    missing = packs.parent / "cosy-missing"
    shutil.copytree(cosy_checkpoint, missing)
    (missing / "campplus.onnx").unlink()
    write_pack(packs, "cosyvoice-en-missing", missing, threads=1)
    wrong = packs.parent / "cosy-wrong"
    shutil.copytree(cosy_checkpoint, wrong)
    shutil.copy(cosy_checkpoint / "hift.pt", wrong / "flow.pt")
    write_pack(packs, "cosyvoice-en-wrong", wrong, threads=1)
    narrow = packs.parent / "cosy-narrow"
    shutil.copytree(cosy_checkpoint, narrow)
    yaml_path = narrow / "cosyvoice2.yaml"
    text = yaml_path.read_text(encoding="utf-8")
    encoder_width = "\n        output_size: 512\n"  # the encoder's (the flow's is 80)
    assert text.count(encoder_width) == 1
    yaml_path.write_text(text.replace(encoder_width, "\n        output_size: 256\n"), "utf-8")
    write_pack(packs, "cosyvoice-en-narrow", narrow, threads=1)
    return packs
