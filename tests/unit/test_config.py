from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
from pydantic import BaseModel

from duplexvoice.config import (
    ConfigError,
    add_flags,
    flag_name,
    iter_leaves,
    load_config,
    load_config_with_origins,
    metavar,
    options,
    show_value,
    yaml_only,
)
from duplexvoice.orchestrator.config import ENV_PREFIX as ORCH_PREFIX
from duplexvoice.orchestrator.config import OrchestratorConfig
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
    orchestrator = load_config(OrchestratorConfig, yaml_path=REPO / "configs/orchestrator.yaml",
                               env_prefix=ORCH_PREFIX, environ={})
    assert orchestrator == OrchestratorConfig()


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


# -- where a bad value came from ---------------------------------------------------------


def test_an_error_names_the_environment_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX,
                    environ={"DUPLEXVOICE_WORKER_PORT": "abc"})
    assert "port = 'abc' (from environment variable DUPLEXVOICE_WORKER_PORT)" in str(exc.value)


def test_an_error_names_the_flag_over_the_environment() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX,
                    environ={"DUPLEXVOICE_WORKER_PORT": "7002"}, flags=parse("--port", "-1"))
    assert "(from flag --port)" in str(exc.value)
    assert "DUPLEXVOICE_WORKER_PORT" not in str(exc.value)


def test_an_error_names_the_yaml_file_and_the_nested_key(tmp_path: Path) -> None:
    yaml_file = tmp_path / "w.yaml"
    yaml_file.write_text("models:\n  ttl_ms: -5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(WorkerConfig, yaml_path=yaml_file, env_prefix=ENV_PREFIX, environ={})
    assert f"models.ttl_ms = -5 (from {yaml_file})" in str(exc.value)


def test_an_unknown_yaml_key_names_the_file(tmp_path: Path) -> None:
    yaml_file = tmp_path / "w.yaml"
    yaml_file.write_text("prot: 7100\n")
    with pytest.raises(ConfigError, match=rf"prot \(in {re.escape(str(yaml_file))}\)"):
        load_config(WorkerConfig, yaml_path=yaml_file, env_prefix=ENV_PREFIX, environ={})


def test_a_check_across_options_names_each_source() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX,
                    environ={"DUPLEXVOICE_WORKER_HEARTBEAT_INTERVAL_S": "40"})
    message = str(exc.value)
    assert "heartbeat_interval_s from environment variable " \
           "DUPLEXVOICE_WORKER_HEARTBEAT_INTERVAL_S" in message
    assert "registry_ttl_s from default" in message


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 7001\nhost: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_config(WorkerConfig, yaml_path=bad, env_prefix=ENV_PREFIX, environ={})
    assert "\n" not in str(exc.value) and "line 3" in str(exc.value)


def test_origins_say_where_each_value_came_from(tmp_path: Path) -> None:
    yaml_file = tmp_path / "w.yaml"
    yaml_file.write_text("port: 7100\nmodels:\n  ttl_ms: 1000\n")
    _config, origins = load_config_with_origins(
        WorkerConfig, yaml_path=yaml_file, env_prefix=ENV_PREFIX,
        environ={"DUPLEXVOICE_WORKER_HOST": "0.0.0.0"}, flags=parse("--max-sessions", "3"))
    assert origins.of("port") == str(yaml_file) and origins.of("ttl_ms") == str(yaml_file)
    assert origins.of("host") == "environment variable DUPLEXVOICE_WORKER_HOST"
    assert origins.label("max_sessions") == "max_sessions (from flag --max-sessions)"
    assert origins.of("device") == "default"


def test_none_is_no_value_and_the_empty_list() -> None:
    config = load_config(
        WorkerConfig, yaml_path=None, env_prefix=ENV_PREFIX,
        environ={"DUPLEXVOICE_WORKER_REDIS_URL": "redis://h:1/0"},
        flags=parse("--redis-url", "none", "--preload-model-ids", "none"))
    assert config.redis_url is None and config.models.preload_model_ids == []


# -- flags: value names, defaults as typed -----------------------------------------------


@pytest.mark.parametrize("model,leaf,expected", [
    (WorkerConfig, "port", "PORT"),
    (WorkerConfig, "host", "HOST"),
    (WorkerConfig, "advertise_host", "HOST"),
    (WorkerConfig, "ttl_ms", "MS"),
    (WorkerConfig, "shutdown_grace_s", "S"),
    (WorkerConfig, "max_sessions", "N"),
    (WorkerConfig, "warmup_enabled", "BOOL"),
    (WorkerConfig, "redis_url", "URL"),
    (WorkerConfig, "voicepack_dirs", "DIR,..."),
    (WorkerConfig, "preload_model_ids", "ID,..."),
    (WorkerConfig, "default_model_id", "ID"),
    (WorkerConfig, "log_level", "{DEBUG,INFO,WARNING,ERROR}"),
    (OrchestratorConfig, "workers", "ADDR,..."),
    (OrchestratorConfig, "max_message_bytes", "BYTES"),
    (OrchestratorConfig, "rate_limit_per_s", "NUMBER"),  # a rate, not a duration
    (OrchestratorConfig, "api_keys", "KEY,..."),
    (OrchestratorConfig, "routing_mode", "MODE"),
])
def test_value_names_say_the_type(model: type[BaseModel], leaf: str, expected: str) -> None:
    info = dict((path[-1], i) for path, i in iter_leaves(model))[leaf]
    assert metavar(leaf, info) == expected


@pytest.mark.parametrize("value,shown", [
    ("127.0.0.1", "127.0.0.1"), (7001, "7001"), (30.0, "30"), (0.5, "0.5"), (True, "true"),
    (None, "none"), ([], "none"), (["a", "b"], "a,b"), ("", '""'), ("worker:", "worker:"),
    ("Hello, world.", '"Hello, world."'),
])
def test_defaults_are_shown_as_typed(value: object, shown: str) -> None:
    assert show_value(value) == shown


@pytest.mark.parametrize("model,prefix", [(WorkerConfig, ENV_PREFIX),
                                          (OrchestratorConfig, ORCH_PREFIX)])
def test_every_shown_default_typed_back_gives_the_default(
        model: type[BaseModel], prefix: str) -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, model)
    defaults = load_config(model, yaml_path=None, env_prefix=prefix, environ={})
    for name, opt in options(model).items():
        if yaml_only(opt.info.annotation):
            continue
        typed = shlex.split(show_value(opt.info.get_default(call_default_factory=True)))
        flags = parser.parse_args([flag_name(name), typed[0] if typed else ""])
        config = load_config(model, yaml_path=None, env_prefix=prefix, environ={}, flags=flags)
        assert config == defaults, name


def test_a_mapping_option_is_yaml_only() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, OrchestratorConfig)
    help_text = " ".join(parser.format_help().split())
    assert "--routing-modes" not in help_text and "YAML only: routing_modes" in help_text
    config = load_config(OrchestratorConfig, yaml_path=None, env_prefix=ORCH_PREFIX,
                         environ={"DUPLEXVOICE_ORCH_ROUTING_MODES": "edge"})
    assert config.routing_modes == OrchestratorConfig().routing_modes
