"""What every family's benchmark shares (run inside that family's environment).

``grpc_vs_inproc``: the first audio frame at a gRPC client of a worker process vs the
adapter's own first chunk in this process, interleaved (A B A B) in one run so that
machine noise hits both alike. The text is one short sentence, so the worker's text
chunking hands the model the same text as the in-process call.

The gRPC client runs in its own process (``grpc_probe.py``): in the measuring process
its threads slowed the in-process model. Each utterance runs to its end on both sides
(no STOP): a stopped model may still be
finishing its current chunk while the other side is measured. The worker's model
threads run at the bench's own CPU priority (``--synthesis-niceness 0``): the figure
compares the paths (gRPC, 48 kHz pipeline, framing), not a scheduling choice that
only matters when other programs load the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
for folder in (BENCH, REPO):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from worker import machine, rss_mb, summary  # noqa: E402  (bench/worker.py)

from duplexvoice.launcher import WorkerProcess  # noqa: E402
from duplexvoice.worker.adapters.base import SynthesisOptions, TTSAdapter  # noqa: E402

__all__ = ["grpc_vs_inproc", "inproc_first_chunk_ms", "machine", "rss_mb", "summary"]

SHORT_TEXT = "Hello there, how are you doing today?"
SETTLE_S = 0.05  # idle before each measured run, both sides alike (bench/worker.py)


def inproc_first_chunk_ms(
    adapter: TTSAdapter, text: str, options: SynthesisOptions | None = None
) -> float:
    """Milliseconds from ``stream()`` to its first chunk (the utterance runs to its end)."""
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    first: float | None = None
    for _chunk in adapter.stream(text, options or SynthesisOptions(), threading.Event()):
        if first is None:
            first = (time.perf_counter() - start) * 1000.0
    if first is None:
        raise RuntimeError("the adapter yielded no audio")
    return first


class _Probe:
    """``grpc_probe.py`` in a child process: one first-frame figure per text sent."""

    def __init__(self, addr: str, model_id: str, options: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("grpc_probe.py")), addr, model_id,
             json.dumps(dict(options))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        if self._line() != "ready":
            raise RuntimeError("the gRPC probe did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the gRPC probe ended ({self.proc.wait()})")
        return line.strip()

    def first_frame_ms(self, text: str) -> float:
        assert self.proc.stdin is not None
        time.sleep(SETTLE_S)
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        ms = float(self._line())
        if ms < 0:
            raise RuntimeError("the gRPC probe failed (see its stderr)")
        return ms

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


def grpc_vs_inproc(pack_root: Path, model_id: str, adapter: TTSAdapter, text: str = SHORT_TEXT,
                   runs: int = 10, device: str = "cpu",
                   options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start a worker on ``pack_root`` (a voice pack folder tree) serving ``model_id``
    and compare its first frame over gRPC with ``adapter``'s first chunk here."""
    worker = WorkerProcess(
        "--voicepack-dirs", str(pack_root), "--default-model-id", model_id,
        "--device", device, "--synthesis-niceness", "0", name=f"bench-{model_id}",
    ).start(timeout=600.0)
    try:
        probe = _Probe(worker.addr, model_id, options or {})
        inproc: list[float] = []
        remote: list[float] = []
        local_options = SynthesisOptions(extra=dict(options or {}))
        try:
            for i in range(runs + 1):  # run 0 warms both paths and is dropped
                a = inproc_first_chunk_ms(adapter, text, local_options)
                b = probe.first_frame_ms(text)
                if i:
                    inproc.append(a)
                    remote.append(b)
        finally:
            probe.close()
        a_sum, b_sum = summary(inproc), summary(remote)
        assert worker.proc is not None
        return {
            "text": text,
            "inproc_first_chunk_ms": a_sum,
            "grpc_first_frame_ms": b_sum,
            "ratio_p50": b_sum["p50"] / a_sum["p50"],
            "ratio_p95": b_sum["p95"] / a_sum["p95"],
            "worker_peak_rss_mb": rss_mb(worker.proc.pid),
        }
    finally:
        worker.terminate()
