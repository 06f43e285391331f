"""The tiny XTTS checkpoint, built once per test session (a few seconds).

Nothing heavy is imported at module level: in an environment without coqui-tts the
test modules skip (``pytest.importorskip``) before any fixture runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Settings that make a random-weight model deterministic and quick: top_k 1 leaves
# one token to sample, so every run of a text gives the same audio; 6 tokens a chunk
# gives 3 chunks per text chunk (17 tokens) and less of coqui's re-vocoding.
FAST = {"stream_chunk_size": 6, "top_k": 1, "threads": 1}


@pytest.fixture(scope="session")
def xtts_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny.xtts import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("xtts") / "checkpoint")


@pytest.fixture(scope="session")
def wrong_shapes_checkpoint(
    xtts_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny checkpoint's files, but config.json says 96 GPT channels (model.pth has 64)."""
    import json
    import shutil

    dest = tmp_path_factory.mktemp("xtts-shapes") / "checkpoint"
    shutil.copytree(xtts_checkpoint, dest)
    config = json.loads((dest / "config.json").read_text())
    config["model_args"]["gpt_n_model_channels"] = 96
    config["model_args"]["decoder_input_dim"] = 96
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="session")
def missing_file_checkpoint(
    xtts_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny checkpoint without model.pth (config, vocab and speakers only)."""
    import shutil

    dest = tmp_path_factory.mktemp("xtts-missing") / "checkpoint"
    shutil.copytree(xtts_checkpoint, dest, ignore=shutil.ignore_patterns("model.pth"))
    return dest


@pytest.fixture
def legacy_checkpoint(xtts_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint with its config pickled into model.pth as an ``XttsConfig``
    object under its old module path, as coqui's original XTTS checkpoints are."""
    import shutil

    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models import xtts

    dest = tmp_path / "legacy"
    shutil.copytree(xtts_checkpoint, dest)
    config = XttsConfig()
    config.load_json(str(dest / "config.json"))
    weights = torch.load(dest / "model.pth", weights_only=True)["model"]
    with xtts._legacy_safe_globals():
        torch.save({"model": weights, "config": config}, dest / "model.pth")
    return dest
