"""Mistakes a user can make on the command line: each is one line on stderr naming the
option (and where its value came from), a non-zero exit, never a traceback.

Run as a user runs them: ``python -m duplexvoice ...`` in a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXVOICE_")}
    return subprocess.run([sys.executable, "-m", "duplexvoice", *args], capture_output=True,
                          text=True, timeout=120, env={**clean, **(env or {})})


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert a failure reported in one line holding every fragment; return that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listener on it (not a duplexvoice service)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_worker_on_a_busy_port(busy_port: int) -> None:
    result = run_cli("worker", "--port", str(busy_port), "--default-model-id", "mock-en-us-tone")
    one_line_error(result, "duplexvoice worker: port (from flag --port)",
                   f"127.0.0.1:{busy_port} is in use")


def test_worker_with_an_unknown_default_model() -> None:
    result = run_cli("worker", "--port", "0", "--default-model-id", "nope")
    one_line_error(result, "default_model_id (from flag --default-model-id)", "'nope'",
                   "mock-en-us-tone", "piper-en-us-joe-medium")


@pytest.mark.parametrize("family", ["csm", "xtts", "cosyvoice"])
def test_worker_on_a_gpu_family_this_environment_lacks(tmp_path: Path, family: str) -> None:
    from duplexvoice.worker.adapters import family_installed

    if family_installed(family):
        pytest.skip(f"{family} is installed in this environment")
    pack = tmp_path / family / f"{family}-en-test"
    pack.mkdir(parents=True)
    (pack / "metadata.yaml").write_text(
        f"model_id: {family}-en-test\nname: Test\nfamily: {family}\nversion: 1\n"
        "languages: [en]\n", encoding="utf-8")
    result = run_cli("worker", "--port", "0", "--voicepack-dirs", str(tmp_path),
                     "--default-model-id", f"{family}-en-test")
    one_line_error(result, "default_model_id (from flag --default-model-id)",
                   f"TTS family '{family}' needs packages this environment lacks",
                   f"make worker-env FAMILY={family}", f".venv-{family}/bin/duplexvoice worker")


def test_worker_with_a_missing_voicepack_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-packs"
    result = run_cli("worker", "--port", "0", "--voicepack-dirs", str(missing))
    one_line_error(result, "voicepack_dirs (from flag --voicepack-dirs)", str(missing))


def test_worker_with_a_bad_environment_variable() -> None:
    result = run_cli("worker", env={"DUPLEXVOICE_WORKER_PORT": "seven"})
    one_line_error(result, "port = 'seven'", "environment variable DUPLEXVOICE_WORKER_PORT")


def test_worker_with_a_bad_yaml_value(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("port: 7001\nmodels:\n  resident_cap: 0\n")
    result = run_cli("worker", "--config", str(config))
    one_line_error(result, f"models.resident_cap = 0 (from {config})")


def test_worker_with_a_broken_yaml_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("port: [7001\n")
    one_line_error(run_cli("worker", "--config", str(config)), f"cannot read {config}")


def test_orchestrator_on_a_busy_port(busy_port: int) -> None:
    result = run_cli("orchestrator", env={"DUPLEXVOICE_ORCH_PORT": str(busy_port)})
    one_line_error(result, "port (from environment variable DUPLEXVOICE_ORCH_PORT)", "in use")


@pytest.mark.parametrize("args,env,fragment", [
    (("--barge-in-min-speech-ms", "9000"), {},  # an old name of a nested option
     "conversation.turns.interrupt_after_ms = '9000' (from flag --barge-in-min-speech-ms)"),
    ((), {"DUPLEXVOICE_ORCH_VAD_THRESHOLD": "2"},
     "conversation.vad.threshold = '2' (from environment variable "
     "DUPLEXVOICE_ORCH_VAD_THRESHOLD)"),
    (("--end-of-turn-ms", "700", "--turns-end-of-turn-ms", "800"), {},
     "conversation.turns.end_of_turn_ms: given twice with different values"),
])
def test_orchestrator_with_a_bad_conversation_setting(
        args: tuple[str, ...], env: dict[str, str], fragment: str) -> None:
    result = run_cli("orchestrator", "--port", "0", *args, env=env)
    one_line_error(result, "duplexvoice orchestrator: ", fragment)
    assert result.returncode == 2


def test_synth_into_a_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "hello.wav"
    result = run_cli("synth", "Hello.", "--out", str(out))
    one_line_error(result, "duplexvoice synth: --out: no such folder")


def test_synth_onto_a_folder(tmp_path: Path) -> None:
    one_line_error(run_cli("synth", "Hello.", "--out", str(tmp_path)), "is a folder")


# -- up: every check before the worker starts, and no banner ----------------------------


def no_banner(result: subprocess.CompletedProcess[str]) -> None:
    assert "ws://" not in result.stdout and "starting the TTS worker" not in result.stdout


def test_up_on_a_busy_port(busy_port: int) -> None:
    result = run_cli("up", "--port", str(busy_port), "--worker-port", "0")
    one_line_error(result, f"duplexvoice up: --port {busy_port}", "in use")
    no_banner(result)


def test_up_on_a_busy_worker_port(busy_port: int) -> None:
    result = run_cli("up", "--port", "0", "--worker-port", str(busy_port))
    one_line_error(result, f"duplexvoice up: --worker-port {busy_port}", "in use")
    no_banner(result)


def test_up_with_both_on_one_port() -> None:
    with socket.socket() as sock:  # a port free now; nothing needs to listen on it
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    result = run_cli("up", "--port", port, "--worker-port", port)
    one_line_error(result, f"--port {port} and --worker-port {port}: both are port")
    no_banner(result)


def test_up_passes_worker_flags_to_its_worker() -> None:
    # Only the worker itself knows its voices: its own one-line error proves it got the flag.
    result = run_cli("up", "--port", "0", "--worker-port", "0",
                     "--worker-default-model-id", "no-such-voice")
    one_line_error(result, "duplexvoice up: the TTS worker did not start", "no-such-voice")


def test_up_refuses_what_it_cannot_pass() -> None:
    result = run_cli("up", "--port", "0", env={"DUPLEXVOICE_ORCH_WORKERS": "127.0.0.1:7002"})
    assert result.returncode == 2
    one_line_error(result, "DUPLEXVOICE_ORCH_WORKERS", "up runs its own worker")
    no_banner(result)


def test_up_with_no_redis_at_the_url() -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        result = run_cli("up", "--port", "0", "--worker-port", "0", "--redis", url)
    one_line_error(result, f"duplexvoice up: --redis {url}: no Redis answers there")
    no_banner(result)
