"""CSM family benchmark (run in .venv-csm): load, memory, first chunk, RTF, incremental
Mimi decoding cost per frame, LoRA adapter switch time, gRPC vs in-process first audio.

    python bench/families/csm.py [--pack DIR] [--lora-pack DIR] [--device cpu]
                                 [--runs N] [--json OUT]

Without ``--pack`` a tiny random-weight checkpoint is built (tests/support/tiny/csm.py)
with two LoRA adapters over it; ``--pack`` is a voice pack folder whose metadata.yaml
points at a real checkpoint, ``--lora-pack`` a LoRA pack over it (with one adapter the
switch measured is adapter <-> base voice).

Decoder figures: the cost of one more frame at frame 10 and at frame 200 of an
utterance, for the incremental decoder (bounded left context) and, as the baseline in
the same run (interleaved), for a naive full re-decode of everything so far; plus the
incremental output's max abs difference and SNR against a one-shot decode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
for folder in (BENCH / "families", BENCH, REPO, REPO / "src"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from common import (  # noqa: E402
    grpc_vs_inproc,
    inproc_first_chunk_ms,
    machine,
    rss_mb,
    summary,
)

from duplexvoice.worker.adapters.base import SynthesisOptions  # noqa: E402
from duplexvoice.worker.adapters.csm import CsmAdapter  # noqa: E402
from duplexvoice.worker.adapters.csm_decode import IncrementalMimiDecoder  # noqa: E402
from duplexvoice.worker.voicepacks import VoicePack, scan_voicepacks  # noqa: E402

TEXT = "Hello there, how are you doing today?"


def one_pack(folder: Path) -> VoicePack:
    found = list(scan_voicepacks([folder], ["csm"]).packs.values())
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one csm voice pack, found {len(found)}")
    return found[0]


def tiny_packs(root: Path) -> tuple[Path, list[Path]]:
    from tests.support.tiny import csm as tiny

    checkpoint = tiny.build_checkpoint(root / "checkpoint")
    base = tiny.write_pack(root / "packs", "csm-en-tiny", checkpoint)
    loras = []
    for seed in (1, 2):
        adapter = tiny.build_lora(root / f"lora-{seed}", checkpoint, seed)
        loras.append(tiny.write_lora_pack(root / f"lora-packs-{seed}", f"csm-en-lora-{seed}",
                                          adapter, "csm-en-tiny"))
    return base, loras


def decoder_figures(adapter: CsmAdapter, runs: int) -> dict[str, Any]:
    k = adapter.num_codebooks
    size = int(adapter.model.config.codec_config.codebook_size)
    codes = np.random.default_rng(0).integers(1, size, size=(k, 201))
    ctx = adapter.params.decode_context_frames
    inc: dict[int, list[float]] = {10: [], 200: []}
    naive: dict[int, list[float]] = {10: [], 200: []}
    for _ in range(max(3, runs)):
        decoder = IncrementalMimiDecoder(adapter._decode, k, ctx)
        for i in range(201):
            started = time.perf_counter()
            decoder.push(codes[:, i : i + 1])
            if i in inc:
                inc[i].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()  # the baseline, interleaved
                adapter._decode(codes[:, : i + 1])
                naive[i].append((time.perf_counter() - started) * 1000)
    one_shot = adapter._decode(codes)
    decoder = IncrementalMimiDecoder(adapter._decode, k, ctx)
    incremental = np.concatenate([decoder.push(codes[:, i : i + 1]) for i in range(201)])
    err = incremental - one_shot
    per_frame = np.abs(err).reshape(201, -1).max(axis=1)
    med = {n: statistics.median(v) for n, v in inc.items()}
    nmed = {n: statistics.median(v) for n, v in naive.items()}
    return {
        "context_frames": ctx,
        "incremental_ms_per_frame": {"frame_10": med[10], "frame_200": med[200],
                                     "ratio_200_vs_10": med[200] / med[10]},
        "naive_full_redecode_ms": {"frame_10": nmed[10], "frame_200": nmed[200],
                                   "ratio_200_vs_10": nmed[200] / nmed[10]},
        "vs_one_shot": {
            "max_abs_diff": float(np.abs(err).max()),
            "max_abs_diff_first_ctx_frames": float(per_frame[: ctx + 1].max()),
            "peak": float(np.abs(one_shot).max()),
            "snr_db": float(10 * np.log10(np.sum(one_shot**2) / max(np.sum(err**2), 1e-30))),
        },
        "runs": max(3, runs),
    }


def lora_figures(base: CsmAdapter, lora_packs: list[VoicePack]) -> dict[str, Any]:
    voices, load_ms = [], []
    for p in lora_packs:
        started = time.perf_counter()
        voices.append(base.load_lora(p))
        load_ms.append((time.perf_counter() - started) * 1000)
    names: list[str | None] = [v.adapter_name for v in voices]
    if len(names) == 1:
        names.append(None)  # adapter <-> base voice
    sched = base.scheduler
    sched.switch_ms.clear()
    with sched.exclusive():
        for i in range(50):
            sched._activate(names[i % 2])
    direct = list(sched.switch_ms)
    # The same switch as it happens: two seeded sessions at once, interleaving per frame.
    sched.switch_ms.clear()
    speakers = [voices[0], voices[1] if len(voices) > 1 else base]
    threads = [
        threading.Thread(target=lambda v=v: list(v.stream(
            TEXT, SynthesisOptions(extra={"seed": "1"}), threading.Event())))
        for v in speakers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sessions = list(sched.switch_ms)
    for v in voices:
        v.close()
    return {"adapter_load_ms": load_ms, "switch_ms_direct": summary(direct),
            "switch_ms_between_sessions": summary(sessions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path)
    parser.add_argument("--lora-pack", type=Path, action="append", default=[])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench-csm-")
    if args.pack is None:
        base_folder, lora_folders = tiny_packs(Path(tmp.name))
        checkpoint = "tiny (random weights)"
    else:
        base_folder, lora_folders, checkpoint = args.pack, args.lora_pack, str(args.pack)
    pack = one_pack(base_folder)
    lora_packs = [one_pack(f) for f in lora_folders]

    import torch

    rss0 = rss_mb(os.getpid(), "VmRSS")
    started = time.perf_counter()
    adapter = CsmAdapter.load(pack, args.device)
    load_s = time.perf_counter() - started
    rss = rss_mb(os.getpid(), "VmRSS") - rss0
    def fresh() -> SynthesisOptions:  # a new session: no turns of its own as context yet
        return SynthesisOptions(extra={"seed": "1"})

    inproc_first_chunk_ms(adapter, TEXT, fresh())  # warm-up
    firsts, rtfs, with_context = [], [], []
    conversation = fresh()
    for _ in range(2):  # two turns of its own: the context the session feeds back (default 2)
        list(adapter.stream(TEXT, conversation, threading.Event()))
    for _ in range(args.runs):
        firsts.append(inproc_first_chunk_ms(adapter, TEXT, fresh()))
        # Cancelled before the end, so not remembered: the context stays two turns.
        with_context.append(inproc_first_chunk_ms(adapter, TEXT, conversation))
        started = time.perf_counter()
        audio = np.concatenate(list(adapter.stream(TEXT, fresh(), threading.Event())))
        rtfs.append((time.perf_counter() - started) / (audio.size / adapter.sample_rate))
    result: dict[str, Any] = {
        "family": "csm", "checkpoint": checkpoint, "device": args.device,
        "load_s": load_s, "rss_mb": rss,
        "gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                   if torch.cuda.is_available() and args.device != "cpu" else 0.0),
        "first_chunk_ms": summary(firsts),
        "first_chunk_ms_with_2_own_turns_as_context": summary(with_context),
        "rtf": statistics.median(rtfs),
        "rtf_summary": summary(rtfs), "machine": machine(),
        "extra": {"decoder": decoder_figures(adapter, args.runs)},
    }
    if lora_packs:
        result["extra"]["lora"] = lora_figures(adapter, lora_packs)
    grpc_root = base_folder if args.pack is None else args.pack
    if lora_packs and args.pack is None:
        grpc_root = base_folder.parents[1]  # the base pack's packs/ folder
    result["grpc"] = grpc_vs_inproc(grpc_root, pack.model_id, adapter, TEXT,
                                    runs=args.runs, device=args.device,
                                    options={"seed": "1"})
    adapter.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
