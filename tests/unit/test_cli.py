from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from duplexvoice.cli import BENCHMARKS, build_parser, main
from duplexvoice.client.paths import out_path_error
from duplexvoice.config import flag_name, iter_leaves, options, yaml_only
from duplexvoice.orchestrator.config import OrchestratorConfig
from duplexvoice.worker.config import WorkerConfig

pytestmark = pytest.mark.unit

SUBCOMMANDS = ("worker", "orchestrator", "brain", "synth", "say", "up", "bench")


def help_of(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_bench_refuses_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "worker,nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and all(name in err for name in BENCHMARKS)


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in SUBCOMMANDS:
        assert "usage: duplexvoice " + command in help_of(command, capsys=capsys)


def test_top_level_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys=capsys)
    assert "``" not in text
    assert all(command in text for command in SUBCOMMANDS)


# Python reprs a user would not type: quoted strings, lists, None.
_REPR_DEFAULT = re.compile(r"\(default: (?:'|\[|None\)|True\)|False\))")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_shows_types_and_defaults_as_typed(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(command, capsys=capsys)
    assert "``" not in text
    assert "VALUE" not in text  # every option says what kind of value it takes
    flat = " ".join(text.split())
    assert not _REPR_DEFAULT.search(flat), _REPR_DEFAULT.search(flat)


def test_worker_help_names_types(capsys: pytest.CaptureFixture[str]) -> None:
    flat = " ".join(help_of("worker", capsys=capsys).split())
    for fragment in ("--port PORT", "(default: 7001)", "--host HOST", "(default: 127.0.0.1)",
                     "--ttl-ms MS", "--shutdown-grace-s S", "--warmup-enabled BOOL",
                     "--redis-url URL", "--preload-model-ids ID,...", "--config FILE",
                     "--log-level {DEBUG,INFO,WARNING,ERROR}"):
        assert fragment in flat, fragment


def test_orchestrator_help_lists_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    flat = " ".join(help_of("orchestrator", capsys=capsys).split())
    assert "--workers ADDR,..." in flat and "(default: 127.0.0.1:7001)" in flat
    assert "--redis-url URL" in flat and "(default: none)" in flat


@pytest.mark.parametrize("command,model", [("worker", WorkerConfig),
                                           ("orchestrator", OrchestratorConfig)])
def test_every_option_is_a_flag_or_documented_as_yaml_only(
        command: str, model: type[BaseModel], capsys: pytest.CaptureFixture[str]) -> None:
    flat = " ".join(help_of(command, capsys=capsys).split())
    yaml_line = flat.split("YAML only:", 1)[1].split(".")[0] if "YAML only:" in flat else ""
    opts = options(model)
    assert sorted(opt.path for opt in opts.values()) == sorted(p for p, _ in iter_leaves(model))
    for name, opt in opts.items():
        if yaml_only(opt.info.annotation):
            assert name in yaml_line and flag_name(name) + " " not in flat
        else:
            assert flag_name(name) + " " in flat, name
        for old in opt.old_names:  # hidden, but named in the help of the new one
            assert f"[{flag_name(old)} " not in flat and f"old name: {flag_name(old)}" in flat


def test_up_refuses_an_unknown_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--log-level", "loud"]) == 2
    assert "loud" in capsys.readouterr().err.lower()


def test_out_path_checks(tmp_path: Path) -> None:
    assert out_path_error(tmp_path / "ok.wav") is None
    assert out_path_error(tmp_path) == f"{tmp_path} is a folder"
    assert out_path_error(tmp_path / "missing" / "x.wav") == \
        f"no such folder: {tmp_path / 'missing'}"


def test_synth_refuses_an_unwritable_out_before_calling_a_worker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No worker listens on port 9; the check comes first, so the answer is about --out.
    code = main(["synth", "hi", "--worker", "127.0.0.1:9", "--timeout", "1",
                 "--out", str(tmp_path / "missing" / "x.wav")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--out: no such folder" in err


def test_parser_is_built_from_the_models() -> None:
    parser = build_parser()
    args = parser.parse_args(["worker", "--resident-cap", "4"])
    assert isinstance(args, argparse.Namespace) and args.cfg__resident_cap == "4"
