"""``duplexvoice up``'s options: every option of the orchestrator and the worker, by flag
and environment, from their config models; what up cannot pass is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplexvoice.cli import build_parser, main
from duplexvoice.config import flag_name, options, yaml_only
from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.up_config import UpError, UpPlan, plan_from_args
from duplexvoice.worker.config import WorkerConfig

pytestmark = pytest.mark.unit


def plan(*argv: str, env: dict[str, str] | None = None) -> UpPlan:
    return plan_from_args(build_parser().parse_args(["up", *argv]), env or {})


def refused(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(UpError) as exc:
        plan(*argv, env=env)
    assert exc.value.code == 2 and "\n" not in str(exc.value)
    return str(exc.value)


def test_every_orchestrator_and_worker_option_is_a_flag_of_up() -> None:
    up = build_parser()._subparsers._group_actions[0].choices["up"]  # type: ignore[union-attr]
    flags = {s for action in up._actions for s in action.option_strings}
    for model, prefix in ((OrchestratorConfig, ""), (WorkerConfig, "worker_")):
        for name, opt in options(model).items():
            if not yaml_only(opt.info.annotation):
                assert flag_name(prefix + name) in flags, (prefix, name)


def test_the_orchestrators_environment_reaches_up() -> None:
    # The issue: DUPLEXVOICE_ORCH_API_KEYS=secret duplexvoice up served with no key.
    got = plan(env={"DUPLEXVOICE_ORCH_API_KEYS": "secret",
                    "DUPLEXVOICE_ORCH_REPLY_READ_TIMEOUT_S": "4"})
    assert got.orchestrator.api_keys == ["secret"]
    assert got.orchestrator.conversation.reply.read_timeout_s == 4.0


def test_orchestrator_flags_keep_their_names_and_flags_beat_the_environment() -> None:
    got = plan("--api-keys", "a,b", "--allowed-origins", "http://x", "--reply-engine",
               "openai", "--reply-model", "m", "--turns-end-of-turn-ms", "700",
               env={"DUPLEXVOICE_ORCH_API_KEYS": "env"})
    orch = got.orchestrator
    assert orch.api_keys == ["a", "b"] and orch.allowed_origins == ["http://x"]
    assert orch.conversation.reply.engine == "openai"
    assert orch.conversation.turns.end_of_turn_ms == 700


def test_worker_options_carry_its_name_and_go_to_the_child_as_its_own_flags() -> None:
    got = plan("--worker-default-model-id", "mock-en-us-tone", "--worker-max-sessions", "4",
               env={"DUPLEXVOICE_WORKER_RESIDENT_CAP": "2"})
    worker = got.children["worker"]
    assert got.worker.models.default_model_id == "mock-en-us-tone"
    assert got.worker.max_sessions == 4 and got.worker.models.resident_cap == 2
    # flags as the worker's own; the environment is inherited, not repeated
    assert "--default-model-id=mock-en-us-tone" in worker.args
    assert "--max-sessions=4" in worker.args
    assert not any(arg.startswith("--resident-cap") for arg in worker.args)


def test_up_defaults_where_they_differ_from_the_services() -> None:
    got = plan()
    assert got.orchestrator.log_level == "WARNING" and got.worker.log_level == "WARNING"
    assert got.worker.name == "tts-worker-0"
    assert got.children["worker"].args == ["--name=tts-worker-0", "--log-level=WARNING"]
    # the worker's log level follows the orchestrator's unless given; any case
    assert plan("--log-level", "info").worker.log_level == "INFO"
    assert plan("--log-level", "info", "--worker-log-level", "error").worker.log_level == "ERROR"


def test_old_spellings_voice_and_redis() -> None:
    got = plan("--voice", "mock-en-us-tone", "--redis", "redis://127.0.0.1:1/0")
    assert got.orchestrator.default_voice == "mock-en-us-tone"
    assert got.label("default_voice") == "--voice mock-en-us-tone"
    assert got.orchestrator.redis_url == got.worker.redis_url == "redis://127.0.0.1:1/0"
    assert "--redis-url=redis://127.0.0.1:1/0" in got.children["worker"].args
    assert "give one" in refused("--voice", "a", "--default-voice", "b")


def test_what_up_decides_is_refused() -> None:
    assert refused("--workers", "127.0.0.1:7002").startswith("--workers 127.0.0.1:7002: up runs")
    line = refused(env={"DUPLEXVOICE_ORCH_WORKERS": "127.0.0.1:7002"})
    assert "environment variable DUPLEXVOICE_ORCH_WORKERS" in line
    line = refused("--worker-redis-url", "redis://127.0.0.1:1/0")
    assert line.startswith("--worker-redis-url redis://127.0.0.1:1/0: ") and "--redis-url" in line
    # the same Redis for both is what up does anyway
    same = plan("--redis-url", "redis://h/0", "--worker-redis-url", "redis://h/0")
    assert same.worker.redis_url == "redis://h/0"


def test_bad_values_name_the_option_and_its_source() -> None:
    assert "port = 'x' (from flag --worker-port)" in refused("--worker-port", "x")
    assert "DUPLEXVOICE_ORCH_LEAD_MS" in refused(env={"DUPLEXVOICE_ORCH_LEAD_MS": "1"})
    assert "LOUD" in refused("--log-level", "loud")


def test_yaml_files_of_both(tmp_path: Path) -> None:
    orch, worker = tmp_path / "o.yaml", tmp_path / "w.yaml"
    orch.write_text("api_keys: [k]\n")
    worker.write_text("max_sessions: 3\n")
    got = plan("--config", str(orch), "--worker-config", str(worker))
    assert got.orchestrator.api_keys == ["k"] and got.worker.max_sessions == 3
    assert f"--config={worker}" in got.children["worker"].args
    # the shipped file works with up (it leaves workers to the default)
    repo = Path(__file__).resolve().parents[2]
    assert plan("--config", str(repo / "configs/orchestrator.yaml")).orchestrator.port == 8080


def test_up_exits_2_on_a_bad_option_before_starting_anything(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--workers", "127.0.0.1:7002"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("duplexvoice up: --workers") and err.count("\n") == 1
