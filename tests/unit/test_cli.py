from __future__ import annotations

import pytest

from duplexvoice.cli import BENCHMARKS, main

pytestmark = pytest.mark.unit


def test_bench_refuses_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "worker,nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and all(name in err for name in BENCHMARKS)


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("worker", "orchestrator", "synth", "say", "up", "bench"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert "usage: duplexvoice " + command in capsys.readouterr().out
