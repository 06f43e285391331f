from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from duplexvoice.config import ConfigError, add_flags, load_config
from duplexvoice.worker.config import ENV_PREFIX, WorkerConfig

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, WorkerConfig)
    return parser.parse_args(list(argv))


def test_defaults_match_the_documented_contract() -> None:
    config = load_config(WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX, environ={})
    assert config.port == 7001 and config.host == "127.0.0.1" and config.device == "cpu"
    models = config.models
    assert models.default_model_id == "piper-en-us-joe-medium"
    assert (models.ttl_ms, models.min_residency_ms, models.evict_check_interval_ms) == (
        600_000, 120_000, 30_000)
    assert (models.resident_cap, models.max_parallel_loads, models.warmup_enabled) == (3, 1, True)
    assert models.preload_model_ids == []


def test_shipped_yaml_validates_and_equals_defaults_where_set() -> None:
    config = load_config(WorkerConfig, yaml_path=REPO / "configs/worker.yaml",
                         env_prefix=ENV_PREFIX, environ={})
    assert config.port == 7001 and config.models.ttl_ms == 600_000


def test_precedence_yaml_then_env_then_flags(tmp_path: Path) -> None:
    yaml_file = tmp_path / "w.yaml"
    yaml_file.write_text("port: 7100\nmax_sessions: 5\nmodels:\n  ttl_ms: 1000\n")
    env = {"DUPLEXVOICE_WORKER_PORT": "7200", "DUPLEXVOICE_WORKER_RESIDENT_CAP": "4"}
    config = load_config(WorkerConfig, yaml_path=yaml_file, env_prefix=ENV_PREFIX,
                         environ=env, flags=parse("--port", "7300"))
    assert config.port == 7300  # flag beats env beats YAML
    assert config.max_sessions == 5  # YAML only
    assert config.models.ttl_ms == 1000 and config.models.resident_cap == 4  # nested leaves


def test_lists_are_comma_separated() -> None:
    config = load_config(
        WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX, environ={},
        flags=parse("--preload-model-ids", "espeak-en-us-default, mock-en-us-tone",
                    "--voicepack-dirs", "/a,/b"),
    )
    assert config.models.preload_model_ids == ["espeak-en-us-default", "mock-en-us-tone"]
    assert config.voicepack_dirs == [Path("/a"), Path("/b")]


@pytest.mark.parametrize("flag,value,fragment", [
    ("--port", "70000", "port"),
    ("--port", "abc", "port"),
    ("--device", "tpu", "device"),
    ("--max-sessions", "0", "max_sessions"),
    ("--resident-cap", "0", "resident_cap"),
    ("--registry-ttl-s", "5", "registry_ttl_s"),  # not above the 10 s heartbeat
    ("--max-chunk-chars", "40", "max_chunk_chars"),  # below first_max_chars (60)
])
def test_invalid_values_name_the_option(flag: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX, environ={},
                    flags=parse(flag, value))


def test_unknown_yaml_key_is_rejected(tmp_path: Path) -> None:
    yaml_file = tmp_path / "w.yaml"
    yaml_file.write_text("prot: 7100\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(WorkerConfig, yaml_path=yaml_file, env_prefix=ENV_PREFIX, environ={})


def test_unreadable_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(WorkerConfig, yaml_path=bad, env_prefix=ENV_PREFIX, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(WorkerConfig, yaml_path=tmp_path / "missing.yaml", env_prefix=ENV_PREFIX,
                    environ={})


def test_device_options_for_gpu_users() -> None:
    for device in ("cuda", "cuda:1", "auto"):
        config = load_config(WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX,
                             environ={"DUPLEXVOICE_WORKER_DEVICE": device})
        assert config.device == device


def test_advertised_address() -> None:
    config = WorkerConfig(host="0.0.0.0", advertise_host="tts-a")
    assert config.advertised_addr(7002) == "grpc://tts-a:7002"
    assert WorkerConfig(host="127.0.0.1").advertised_addr(7001) == "grpc://127.0.0.1:7001"
