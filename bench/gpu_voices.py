"""The GPU voice families (CSM with LoRA voices, XTTS-v2, CosyVoice 2) in one command.

    python3 bench/gpu_voices.py [--device cpu|cuda|cuda:N] [--families csm,xtts,cosyvoice]
                                [--runs N] [--csm DIR] [--csm-lora DIR] [--xtts DIR]
                                [--cosyvoice DIR] [--no-install]

Each family runs in its own environment (`make worker-env FAMILY=...`, created here
when missing unless --no-install) through ``bench/families/<family>.py``. Without a
checkpoint path, each family builds its tiny random-weight checkpoint (the published
layout, loaded through the same code path); with a path (a voice pack folder whose
``metadata.yaml`` points at the real checkpoint), it measures that.

Figures per family (same run, interleaved where two things are compared):
- load time and resident memory (process RSS; GPU memory on a GPU);
- first audio: the adapter's own first chunk in-process vs the first 20 ms frame at a
  gRPC client of a worker process (target: ratio <= 1.15);
- real-time factor;
- CSM: the incremental Mimi decoder's cost per frame at frame 10 vs frame 200
  (target: flat, <= 1.2x), and its difference from one-shot decoding;
- CSM LoRA: the adapter switch between sessions (target: p95 <= 10 ms).

Writes bench/results/gpu_voices-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("csm", "xtts", "cosyvoice")


def ensure_env(family: str, install: bool) -> Path | None:
    python = REPO / f".venv-{family}" / "bin" / "python"
    if python.exists() and (REPO / f".venv-{family}" / ".installed").exists():
        return python
    if not install:
        return None
    subprocess.run([str(REPO / "scripts" / "worker-env"), family], check=True)
    return python


def run_family(family: str, python: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [str(python), str(REPO / "bench" / "families" / f"{family}.py"),
               "--device", args.device, "--runs", str(args.runs), "--json", str(out)]
    pack = getattr(args, family.replace("-", "_"))
    if pack:
        command += ["--pack", str(Path(pack).resolve())]
    if family == "csm" and args.csm_lora:
        command += ["--lora-pack", str(Path(args.csm_lora).resolve())]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        return {"family": family, "error": f"exit {result.returncode}:\n{tail}"}
    data: dict[str, Any] = json.loads(out.read_text())
    data["bench_wall_s"] = round(time.perf_counter() - started, 1)
    return data


def fmt(summary: dict[str, float] | None, key: str = "p50") -> str:
    if not summary or summary.get("n", 0) == 0:
        return "-"
    return f"{summary[key]:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| family | checkpoint | load s | RSS MB | GPU MB | first chunk in-process p50/p95 ms "
        "| first frame gRPC p50/p95 ms | ratio p50/p95 (<= 1.15) | RTF |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    extras: list[str] = []
    for r in results:
        if "error" in r:
            lines.append(f"| {r['family']} | failed: see JSON | | | | | | | |")
            continue
        g = r.get("grpc", {})
        lines.append(
            f"| {r['family']} | {r.get('checkpoint', '?')} | {r.get('load_s', float('nan')):.2f} "
            f"| {r.get('rss_mb', float('nan')):.0f} | {r.get('gpu_mb', 0):.0f} "
            f"| {fmt(g.get('inproc_first_chunk_ms'))}/{fmt(g.get('inproc_first_chunk_ms'), 'p95')} "
            f"| {fmt(g.get('grpc_first_frame_ms'))}/{fmt(g.get('grpc_first_frame_ms'), 'p95')} "
            f"| {g.get('ratio_p50', float('nan')):.2f}/{g.get('ratio_p95', float('nan')):.2f} "
            f"| {r.get('rtf', float('nan')):.2f} |"
        )
        for name, value in sorted(r.get("extra", {}).items()):
            extras.append(f"- {r['family']} {name}: {json.dumps(value)}")
    return "\n".join(lines + (["", *extras] if extras else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-install", action="store_true",
                        help="skip families whose environment is missing")
    for family in FAMILIES:
        parser.add_argument(f"--{family}", metavar="PACK_DIR",
                            help=f"a {family} voice pack folder (real checkpoint)")
    parser.add_argument("--csm-lora", metavar="PACK_DIR", help="a CSM LoRA voice pack folder")
    args = parser.parse_args()
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        if family not in FAMILIES:
            sys.exit(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
        python = ensure_env(family, install=not args.no_install)
        if python is None:
            print(f"== {family}: skipped (no .venv-{family}: make worker-env FAMILY={family})")
            continue
        print(f"== {family}: measuring ({args.device}, {args.runs} runs)", flush=True)
        results.append(run_family(family, python, args,
                                  results_dir / f"gpu_voices-{family}-{stamp}.json"))
    sys.path.insert(0, str(REPO / "bench"))
    from worker import machine

    report = {"machine": machine(), "device": args.device, "results": results}
    out = results_dir / f"gpu_voices-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(results))
    for r in results:
        if "error" in r:
            print(f"\n{r['family']} failed: {r['error']}")
    print(f"\nmachine: {report['machine']}\nJSON: {out}")


if __name__ == "__main__":
    main()
