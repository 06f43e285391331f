"""XTTS-v2: load time, memory, first chunk, RTF, and what is particular to XTTS.

    python bench/families/xtts.py [--pack DIR] [--device cpu] [--runs N] --json OUT

Run in the xtts environment (``make worker-env FAMILY=xtts``). Without ``--pack`` it
builds the tiny random-weight checkpoint (``tests/support/tiny/xtts.py``: the published
layout, same loader; ~17 audio tokens per utterance, so RTF and chunk figures describe
the code path and HiFi-GAN's fixed cost, not real XTTS speech). With ``--pack`` (a
voice pack folder whose ``metadata.yaml`` points at a real XTTS-v2 checkpoint) it
measures that.

Figures: load seconds; RSS delta of this process over the load (MB) and, on a GPU,
torch's peak allocated memory; in-process first chunk p50/p95; RTF (synthesis seconds
per audio second) over whole utterances; the worker's first frame over gRPC vs the
adapter's first chunk, interleaved in the same run (``common.grpc_vs_inproc``); and
XTTS extras: conditioning from the reference clip (ms, paid once per voice at load),
the cost of the first vs the last chunk of an utterance (coqui re-vocodes every
latent so far at each chunk, so later chunks cost more), and a second session's first
chunk while another session's utterance runs on the same model (the per-model lock).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    grpc_vs_inproc,
    inproc_first_chunk_ms,
    machine,
    rss_mb,
    summary,
)

from duplexvoice.worker.adapters.base import SynthesisOptions
from duplexvoice.worker.voicepacks import VoicePack, load_pack

TEXT = "Hello there, how are you doing today?"
LONG_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."


def tiny_pack(dest: Path) -> Path:
    from tests.support.tiny.xtts import build_checkpoint, write_pack

    checkpoint = build_checkpoint(dest / "checkpoint")
    # threads 1: on a small shared machine, 2 OpenMP threads stall each other (2-15x noise)
    return write_pack(dest / "packs", "xtts-en-us-tiny", checkpoint, stream_chunk_size=4, threads=1)


def chunk_times(adapter: Any, text: str) -> tuple[list[float], float]:
    """Milliseconds each chunk took, and the audio seconds of the utterance."""
    times: list[float] = []
    samples = 0
    start = time.perf_counter()
    for chunk in adapter.stream(text, SynthesisOptions(), threading.Event()):
        now = time.perf_counter()
        times.append((now - start) * 1000)
        samples += chunk.size
        start = now
    return times, samples / adapter.sample_rate


def second_session_first_chunk_ms(adapter: Any) -> float:
    """A session's first chunk while another one's utterance is running."""
    first_out = threading.Event()

    def other() -> None:
        for i, _ in enumerate(adapter.stream(LONG_TEXT, SynthesisOptions(), threading.Event())):
            if i == 0:
                first_out.set()

    runner = threading.Thread(target=other)
    runner.start()
    first_out.wait(600)
    try:
        return inproc_first_chunk_ms(adapter, TEXT)
    finally:
        runner.join(600)


def measure(pack: VoicePack, device: str, runs: int) -> dict[str, Any]:
    import torch

    from duplexvoice.worker.adapters.xtts import XttsAdapter
    from duplexvoice.worker.adapters.xtts_files import reference_conditioning

    rss_before = rss_mb(os.getpid(), "VmRSS")
    start = time.perf_counter()
    adapter = XttsAdapter.load(pack, device)
    load_s = time.perf_counter() - start
    rss_delta = rss_mb(os.getpid(), "VmRSS") - rss_before
    gpu_mb = 0.0
    if device != "cpu" and torch.cuda.is_available():
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20

    inproc_first_chunk_ms(adapter, TEXT)  # warm-up, dropped
    first = [inproc_first_chunk_ms(adapter, TEXT) for _ in range(runs)]
    rtfs: list[float] = []
    firsts: list[float] = []
    lasts: list[float] = []
    chunks: list[float] = []
    for _ in range(max(3, runs // 2)):
        times, audio_s = chunk_times(adapter, LONG_TEXT)
        rtfs.append(sum(times) / 1000 / audio_s)
        firsts.append(times[0])
        lasts.append(times[-1])
        chunks.append(len(times))
    clips = pack.metadata.params.get("reference") or ["ref/seed.wav"]
    conditioning: list[float] = []
    if (pack.root / clips[0]).is_file():
        for _ in range(3):
            start = time.perf_counter()
            reference_conditioning(pack, adapter.model, clips, torch.device(adapter.model.device))
            conditioning.append((time.perf_counter() - start) * 1000)
    contended = [second_session_first_chunk_ms(adapter) for _ in range(max(2, runs // 3))]
    grpc = grpc_vs_inproc(pack.root, pack.model_id, adapter, TEXT, runs, device)
    return {
        "family": "xtts",
        "checkpoint": "tiny" if "tiny" in pack.model_id else str(pack.root),
        "device": device,
        "load_s": load_s,
        "rss_mb": rss_delta,
        "gpu_mb": gpu_mb,
        "inproc_first_chunk_ms": summary(first),
        "rtf": summary(rtfs)["p50"],
        "rtf_summary": summary(rtfs),
        "grpc": grpc,
        "extra": {
            "conditioning_ms (once per voice)": summary(conditioning),
            "chunks per utterance": summary(chunks),
            "first chunk of an utterance ms": summary(firsts),
            "last chunk of an utterance ms": summary(lasts),
            "first chunk while another session runs ms": summary(contended),
            "stream_chunk_size": adapter.params.stream_chunk_size,
        },
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, help="an XTTS voice pack folder (real checkpoint)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xtts-bench-") as tmp:
        folder = args.pack.resolve() if args.pack else tiny_pack(Path(tmp))
        pack = load_pack(folder / "metadata.yaml", ["xtts"])
        result = measure(pack, args.device, args.runs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    g = result["grpc"]
    print("| figure | p50 | p95 | n |\n|---|---|---|---|")
    rows = {
        "in-process first chunk ms": result["inproc_first_chunk_ms"],
        "gRPC first frame ms (same run)": g["grpc_first_frame_ms"],
        "in-process first chunk ms (same run)": g["inproc_first_chunk_ms"],
        "RTF": result["rtf_summary"],
        **{k: v for k, v in result["extra"].items() if isinstance(v, dict)},
    }
    for name, s in rows.items():
        print(f"| {name} | {s['p50']:.2f} | {s['p95']:.2f} | {s['n']} |")
    print(f"load {result['load_s']:.2f} s, RSS +{result['rss_mb']:.0f} MB, "
          f"GPU {result['gpu_mb']:.0f} MB, gRPC/in-process ratio p50 {g['ratio_p50']:.2f} "
          f"p95 {g['ratio_p95']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
