"""CosyVoice 2 figures: load time, memory, first chunk latency and RTF, in-process.

    python bench/families/cosyvoice.py [--pack DIR] [--device cpu] [--runs N] --json OUT

Run in the family's environment (.venv-cosyvoice). Without ``--pack`` it builds the
tiny random-weight checkpoint (tests/support/tiny/cosyvoice.py). Random weights never
emit the end token, so an utterance is max length (20 speech tokens per text token):
RTF and first chunk are the runtime's cost, not a real voice's. Family figure: the
time from the first chunk to the second (the 25-token hop).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# This file is named like the package it measures: drop its folder from the path so
# `import cosyvoice` finds the runtime, not this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parents[1]))

TEXT = "Hello there."


def common() -> Any:
    """bench/families/common.py, by path (this folder is off sys.path, see above)."""
    spec = importlib.util.spec_from_file_location("bench_families_common", _HERE / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pack", type=Path, help="a cosyvoice voice pack folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from duplexvoice.worker.adapters.base import SynthesisOptions
    from duplexvoice.worker.adapters.cosyvoice import CosyVoiceAdapter
    from duplexvoice.worker.voicepacks import load_pack

    pack_dir = args.pack
    if pack_dir is None:
        from tests.support.tiny.cosyvoice import build_checkpoint, write_pack

        tmp = Path(tempfile.mkdtemp(prefix="cosy-bench-"))
        checkpoint = build_checkpoint(tmp / "ckpt")
        pack_dir = write_pack(tmp / "packs", "cosyvoice-en-tiny", checkpoint, threads=1)
    pack = load_pack(pack_dir / "metadata.yaml", ["cosyvoice"])
    bench = common()
    before = bench.rss_mb(os.getpid(), "VmRSS")
    start = time.perf_counter()
    adapter = CosyVoiceAdapter.load(pack, args.device)
    load_s = time.perf_counter() - start
    list(adapter.stream("Hi.", SynthesisOptions(), threading.Event()))  # warm-up
    first: list[float] = []
    hop: list[float] = []
    rtf: list[float] = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        stamps: list[float] = []
        samples = 0
        for chunk in adapter.stream(TEXT, SynthesisOptions(), threading.Event()):
            stamps.append(time.perf_counter() - t0)
            samples += chunk.size
        first.append(stamps[0] * 1000)
        if len(stamps) > 1:
            hop.append((stamps[1] - stamps[0]) * 1000)
        rtf.append(stamps[-1] / (samples / adapter.sample_rate))
    grpc = bench.grpc_vs_inproc(
        pack_dir.parents[1], pack.model_id, adapter, TEXT, args.runs, args.device
    )
    result: dict[str, Any] = {
        "family": "cosyvoice",
        "checkpoint": "tiny (random weights)" if args.pack is None else str(pack_dir),
        "device": args.device,
        "runs": args.runs,
        "load_s": round(load_s, 2),
        "rss_mb": round(bench.rss_mb(os.getpid(), "VmRSS") - before, 1),
        "gpu_mb": (
            round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device != "cpu" else 0.0
        ),
        "first_chunk_ms": bench.summary(first),
        "rtf": bench.summary(rtf)["p50"],
        "rtf_summary": bench.summary(rtf),
        "grpc": grpc,
        "extra": {
            "second_chunk_gap_ms": (
                bench.summary(hop) if hop else None
            ),
        },
    }
    print(f"{'figure':<22} {'p50':>9} {'p95':>9}")
    print(f"{'load s':<22} {load_s:>9.2f}")
    first_sum, rtf_sum = bench.summary(first), bench.summary(rtf)
    print(f"{'first chunk ms':<22} {first_sum['p50']:>9.0f} {first_sum['p95']:>9.0f}")
    print(f"{'rtf':<22} {rtf_sum['p50']:>9.2f} {rtf_sum['p95']:>9.2f}")
    print(json.dumps(result))
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    adapter.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
