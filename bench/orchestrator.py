"""Benchmark the orchestrator (WebSocket) in front of one TTS worker, same run.

    .venv/bin/python bench/orchestrator.py [--quick] [--reps N] [--max-sessions N]

Figures (all at clients in this process, on the same machine as both services):
- Stack overhead: FAL at a WebSocket client (text sent -> first audio message) minus
  FAL at a gRPC client straight to the same worker (start_session / synthesize),
  interleaved A B A B, mock voice and Piper, text "short". WebSocket output is binary;
  once the first frame is in, the client sends STOP (so the paced audio does not have
  to play out) and waits for ``utterance_end``.
- STOP / PAUSE -> last audio message received (frames in flight count; the client
  keeps listening 300 ms), mock voice, long text, sent 0-20 ms (random) after the
  10th frame.
- Lead: audio held ahead of real time at the client over one long utterance,
  lead_i = (i+1) x 20 ms - (t_i - t_0), against the orchestrator's ``--lead-ms``.
- Second utterance (issue 17): a fresh session's first utterance against its second,
  mock voice, pairwise over N sessions (text sent -> first audio message). The second
  is sent once the client has played the first out (its first frame's arrival + 20 ms
  per frame, or ``utterance_end`` if later), as a conversational turn would be. Also
  reported: a third sent the moment the second's ``utterance_end`` arrives (the client
  still holds up to the lead of audio then, and the new audio queues behind it by
  design), and one sent right after a STOP (the client dropped its audio: no wait).
- Session lifecycle (``orchestrator_sessions.py``): idle sessions held, churn, a worker
  killed and restarted, first utterance with worker capacity taken on demand.
- Concurrency: N WebSocket sessions at once, each speaking a long mock text in real
  time; a session passes with zero sequence gaps, ``utterance_end completed`` and p99
  frame lateness (t_i - (t_0 + i x 20 ms)) <= 40 ms. N rises until a level fails;
  binary output and JSON output separately. The clients (one asyncio loop, minimal
  WebSocket clients from ``lean_ws.py``) run on the same cores as the orchestrator
  and the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lean_ws
import orchestrator_sessions
from texts import TEXTS
from worker import MOCK, PIPER, SETTLE_S, machine, rss_mb, summary

from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.wire.protocol import decode_binary_frame
from duplexvoice.worker.config import BUNDLED_VOICEPACKS

# The concurrency figure is about the orchestrator: its source is a mock pack that
# yields 200 ms chunks, so the single worker process spends less per frame than with
# the default 40 ms (same audio, five times fewer pipeline calls). Written at run time.
BULK_MOCK = "mock-en-us-bulk"


def bulk_mock_pack(root: Path) -> Path:
    pack = root / "mock" / BULK_MOCK
    pack.mkdir(parents=True, exist_ok=True)
    base = (BUNDLED_VOICEPACKS / "mock" / MOCK / "metadata.yaml").read_text()
    text = base.replace(f"model_id: {MOCK}", f"model_id: {BULK_MOCK}")
    text = text.replace("params:\n", "params:\n  chunk_ms: 200\n")
    (pack / "metadata.yaml").write_text(text)
    return root

SESSION_PARTS = "first,idle,churn,failover"  # orchestrator_sessions.py
FRAME_S = 0.02
LEAD_MS = 100  # the orchestrator's default --lead-ms, which this run uses
LATE_P99_MS = 40.0
LONG_TEXT = TEXTS["multi"]  # about 14 s of mock audio
LEVELS = (25, 50, 100, 150, 200, 300, 400, 500, 600, 800, 1000)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Conn:
    """One WebSocket session; a reader task records (arrival, sequence) of each audio
    frame and the other messages. Per-frame work is kept to the minimum."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.times: list[float] = []
        self.seqs: list[int] = []
        self.ends: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        self.errors: list[dict[str, object]] = []
        # Set on every audio message: waiting on it, not polling, keeps this client off
        # the cores while Piper synthesizes (polling slowed Piper by ~6 ms).
        self.arrived = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, voice: str,
                   fmt: str) -> Conn:
        ws = await http.ws_connect(url, heartbeat=None, max_msg_size=0)
        first = await ws.receive_json(timeout=30)
        assert first["type"] == "session_start", first
        await ws.send_str(json.dumps({"type": "config", "voice": voice, "output_format": fmt}))
        return cls(ws)

    async def _read(self) -> None:
        times, seqs = self.times, self.seqs
        clock = time.perf_counter
        binary, text = aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT
        async for msg in self.ws:
            t = clock()
            if msg.type == binary:
                times.append(t)
                seqs.append(decode_binary_frame(msg.data).sequence)
                self.arrived.set()
            elif msg.type == text:
                data = json.loads(msg.data)
                kind = data["type"]
                if kind == "audio":
                    times.append(t)
                    seqs.append(data["sequence"])
                    self.arrived.set()
                elif kind == "utterance_end":
                    self.ends.put_nowait(data)
                elif kind == "error":
                    self.errors.append(data)
            else:
                break

    async def say(self, text: str) -> float:
        await self.ws.send_str(json.dumps({"type": "text", "text": text}))
        return time.perf_counter()

    async def control(self, command: str) -> float:
        await self.ws.send_str(json.dumps({"type": "control", "command": command}))
        return time.perf_counter()

    async def utterance_end(self, within_s: float = 60.0) -> dict[str, object]:
        return await asyncio.wait_for(self.ends.get(), within_s)

    async def wait_frames(self, n: int, within_s: float = 30.0) -> None:
        try:
            async with asyncio.timeout(within_s):
                while len(self.times) < n:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise TimeoutError(f"{len(self.times)} frames of {n}; errors {self.errors}") from None

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def ws_fal(conn: Conn, text: str) -> float:
    """Text sent -> first audio message (ms); then STOP and wait for the end."""
    count = len(conn.times)
    sent = await conn.say(text)
    await conn.wait_frames(count + 1)
    first = (conn.times[count] - sent) * 1000
    await conn.control("STOP")
    await conn.utterance_end()
    return first


async def grpc_fal(client: WorkerClient, sid: str, text: str) -> float:
    start = time.perf_counter()
    first = None
    async for frame in client.synthesize(sid, text):
        if frame.audio_data and first is None:
            first = (time.perf_counter() - start) * 1000
    return first if first is not None else float("nan")


async def bench_overhead(http: aiohttp.ClientSession, url: str, client: WorkerClient,
                         reps: int) -> dict[str, object]:
    out: dict[str, object] = {}
    text = TEXTS["short"]
    for voice in (MOCK, PIPER):
        conn = await Conn.open(http, url, voice, "binary")
        sid = f"b-{uuid.uuid4().hex[:8]}"
        await client.start_session(sid, voice)
        for _ in range(2):  # warm-up: model loaded, worker session opened, both paths
            await ws_fal(conn, text)
            await grpc_fal(client, sid, text)
        ws_v, grpc_v, diff = [], [], []
        for _ in range(reps):  # interleaved: WebSocket, gRPC, WebSocket, gRPC ...
            await asyncio.sleep(SETTLE_S)
            a = await ws_fal(conn, text)
            await asyncio.sleep(SETTLE_S)
            b = await grpc_fal(client, sid, text)
            ws_v.append(a)
            grpc_v.append(b)
            diff.append(a - b)
        await client.end_session(sid)
        await conn.close()
        out[voice] = {"websocket": summary(ws_v), "grpc": summary(grpc_v),
                      "overhead": summary(diff)}
    return out


SECOND_TEXT = "Sure, go on."  # under a second of mock audio: 30 sessions in ~1 min


async def _say_once(conn: Conn, text: str, *, stop: bool = False) -> tuple[float, float]:
    """(first-audio ms, when the client has played it all: perf_counter)."""
    count = len(conn.times)
    sent = await conn.say(text)
    await conn.wait_frames(count + 1)
    first_at = conn.times[count]
    if stop:
        await conn.control("STOP")
    end = await conn.utterance_end()
    frames = int(end.get("frames", 0))  # type: ignore[call-overload]
    return (first_at - sent) * 1000, max(time.perf_counter(), first_at + frames * FRAME_S)


async def bench_second(http: aiohttp.ClientSession, url: str, sessions: int
                       ) -> dict[str, object]:
    first, played, back, stopped = [], [], [], []
    for rep in range(sessions + 2):
        conn = await Conn.open(http, url, MOCK, "binary")
        a, done = await _say_once(conn, SECOND_TEXT)
        await asyncio.sleep(max(0.0, done - time.perf_counter()))
        b, _ = await _say_once(conn, SECOND_TEXT)
        c, _ = await _say_once(conn, SECOND_TEXT)  # sent as the previous one's end arrives
        await _say_once(conn, LONG_TEXT, stop=True)
        d, _ = await _say_once(conn, SECOND_TEXT, stop=True)  # right after a STOP
        await conn.close()
        if rep >= 2:  # warm-up
            first.append(a)
            played.append(b)
            back.append(c)
            stopped.append(d)
    return {
        "first_ms": summary(first), "second_ms": summary(played),
        "second_minus_first_ms": summary([b - a for a, b in zip(first, played, strict=True)]),
        "back_to_back_ms": summary(back),
        "back_to_back_minus_first_ms": summary([c - a for a, c in zip(first, back, strict=True)]),
        "after_stop_ms": summary(stopped),
        "after_stop_minus_first_ms": summary([d - a for a, d in zip(first, stopped,
                                                                   strict=True)]),
        "text": SECOND_TEXT,
    }


async def bench_stop(http: aiohttp.ClientSession, url: str, reps: int) -> dict[str, object]:
    """STOP / PAUSE sent after 10 frames -> last audio message received (ms)."""
    conn = await Conn.open(http, url, MOCK, "binary")
    res: dict[str, list[float]] = {"STOP": [], "PAUSE": []}
    in_flight: dict[str, list[float]] = {"STOP": [], "PAUSE": []}
    for _ in range(reps):
        for command in ("STOP", "PAUSE"):
            await asyncio.sleep(SETTLE_S)
            count = len(conn.times)
            await conn.say(LONG_TEXT)
            await conn.wait_frames(count + 10)
            # At a random point between two frames: right after an arrival would
            # favour the figure (the next frame is a whole frame period away).
            await asyncio.sleep(random.uniform(0, FRAME_S))
            sent = await conn.control(command)
            await asyncio.sleep(0.3)
            after = [t for t in conn.times[count:] if t > sent]
            res[command].append(max(0.0, ((after[-1] if after else sent) - sent) * 1000))
            in_flight[command].append(len(after))
            if command == "PAUSE":
                await conn.control("STOP")
            end = await conn.utterance_end()
            assert end.get("reason") == "stopped", end
    await conn.close()
    return {f"{c.lower()}_to_last_frame": summary(v) for c, v in res.items()} | {
        f"{c.lower()}_frames_after": summary(v) for c, v in in_flight.items()}


async def bench_lead(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    conn = await Conn.open(http, url, MOCK, "binary")
    await conn.say(LONG_TEXT)
    end = await conn.utterance_end()
    await conn.close()
    t0 = conn.times[0]
    lead = [((i + 1) * FRAME_S - (t - t0)) * 1000 for i, t in enumerate(conn.times)]
    return {"lead_ms": summary(lead), "frames": len(lead), "reason": end.get("reason"),
            "configured_lead_ms": LEAD_MS}


async def _one_session(url: str, fmt: str, text: str, go: asyncio.Event) -> dict[str, object]:
    try:
        conn = await lean_ws.connect(url)
        await conn.next_message("session_start", 30)
        conn.send_json({"type": "config", "voice": BULK_MOCK, "output_format": fmt})
    except Exception as exc:  # a refused session is a failed one
        return {"ok": False, "why": f"connect: {exc!r}"}
    try:
        await go.wait()
        conn.send_json({"type": "text", "text": text})
        end = await conn.next_message("utterance_end", 120)
    except Exception as exc:
        await conn.close()
        return {"ok": False, "why": f"no utterance_end: {exc!r}", "frames": len(conn.times)}
    await conn.close()
    times, seqs = np.asarray(conn.times), np.asarray(conn.seqs)
    if len(times) == 0:
        return {"ok": False, "why": "no audio"}
    gaps = int(np.count_nonzero(np.diff(seqs) != 1))
    late = (times - (times[0] + np.arange(len(times)) * FRAME_S)) * 1000
    p99 = float(np.percentile(late, 99))
    ok = gaps == 0 and p99 <= LATE_P99_MS and end.get("reason") == "completed" \
        and not conn.errors and not conn.bad
    return {"ok": ok, "gaps": gaps, "p99_late_ms": p99, "max_late_ms": float(late.max()),
            "frames": len(times), "reason": end.get("reason"), "errors": len(conn.errors)}


async def run_level(http: aiohttp.ClientSession, url: str, fmt: str, n: int, text: str,
                    orch_pid: int, worker_pid: int) -> dict[str, object]:
    go = asyncio.Event()
    tasks = [asyncio.create_task(_one_session(url, fmt, text, go)) for _ in range(n)]
    await asyncio.sleep(0.5 + n * 0.005)  # all connected and configured
    cpu0 = (cpu_s(orch_pid), cpu_s(worker_pid), sum(os.times()[:2]))
    wall0 = time.perf_counter()
    go.set()
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - wall0
    cpu1 = (cpu_s(orch_pid), cpu_s(worker_pid), sum(os.times()[:2]))
    passed = sum(1 for r in results if r["ok"])
    p99s = [float(r["p99_late_ms"]) for r in results if "p99_late_ms" in r]
    whys = sorted({str(r["why"]) for r in results if "why" in r})[:3]
    return {
        "n": n, "passed": passed, "ok": passed == n, "wall_s": wall,
        "gaps": sum(int(r.get("gaps", 0)) for r in results),  # type: ignore[call-overload]
        "p99_late_ms": summary(p99s),
        "worst_max_late_ms": max((float(r["max_late_ms"]) for r in results
                                  if "max_late_ms" in r), default=float("nan")),
        "audio_s_per_session": max((int(r["frames"]) for r in results if "frames" in r),  # type: ignore[call-overload]
                                   default=0) * FRAME_S,
        "orchestrator_cpu_pct": 100 * (cpu1[0] - cpu0[0]) / wall,
        "worker_cpu_pct": 100 * (cpu1[1] - cpu0[1]) / wall,
        "client_cpu_pct": 100 * (cpu1[2] - cpu0[2]) / wall,
        "orchestrator_peak_rss_mb": rss_mb(orch_pid),
        "failures": whys,
    }


async def bench_concurrency(http: aiohttp.ClientSession, url: str, levels: list[int],
                            text: str, orch_pid: int, worker_pid: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for fmt in ("binary", "json"):
        best = 0
        runs = []
        for n in levels:
            await asyncio.sleep(1.0)  # the previous level's sessions are gone
            r = await run_level(http, url, fmt, n, text, orch_pid, worker_pid)
            runs.append(r)
            print(f"  {fmt:6s} N={n:4d}: {r['passed']}/{n} passed, p99 lateness p95 "
                  f"{r['p99_late_ms']['p95']:.1f} ms, orchestrator CPU "  # type: ignore[index]
                  f"{r['orchestrator_cpu_pct']:.0f}%, client CPU {r['client_cpu_pct']:.0f}%",
                  file=sys.stderr, flush=True)
            if not r["ok"]:
                break
            best = n
        out[fmt] = {"most_passing": best, "levels": runs,
                    "all_passed": bool(runs) and bool(runs[-1]["ok"])}
    return out


def print_table(r: dict[str, object]) -> None:
    m = r["machine"]
    print(f"\nOrchestrator benchmark - {m['cpu']} ({m['cores']} cores), "  # type: ignore[index]
          f"Python {m['python']}")
    print(f"one worker + one orchestrator (--lead-ms {LEAD_MS}); reps {r['reps']}; "
          "figures in ms unless noted\n")
    rows = [("figure", "p50", "p95", "max", "n", "target")]

    def add(name: str, s: dict[str, float], target: str, fmt: str = ".2f") -> None:
        rows.append((name, f"{s['p50']:{fmt}}", f"{s['p95']:{fmt}}", f"{s['max']:{fmt}}",
                     str(s["n"]), target))

    ov = r.get("overhead")
    if isinstance(ov, dict):
        for voice, v in ov.items():
            add(f"FAL WebSocket ({voice})", v["websocket"], "-")
            add(f"FAL gRPC direct ({voice})", v["grpc"], "-")
            add(f"overhead WS - gRPC ({voice})", v["overhead"], "p50 <= 3, p95 <= 10")
    st = r.get("stop")
    if isinstance(st, dict):
        add("STOP -> last frame (mock)", st["stop_to_last_frame"], "p95 <= 10")
        add("  frames after STOP", st["stop_frames_after"], "-", ".0f")
        add("PAUSE -> last frame (mock)", st["pause_to_last_frame"], "p95 <= 10")
        add("  frames after PAUSE", st["pause_frames_after"], "-", ".0f")
    sc = r.get("second")
    if isinstance(sc, dict):
        add("FAL 1st utterance of a session (mock)", sc["first_ms"], "-")
        add("FAL 2nd, after the 1st played out", sc["second_ms"], "-")
        add("  2nd - 1st (pairwise)", sc["second_minus_first_ms"], "p50 <= +3")
        add("FAL sent at the previous utterance_end", sc["back_to_back_ms"], "-")
        add("  that - 1st (waits behind the lead)", sc["back_to_back_minus_first_ms"], "-")
        add("FAL right after a STOP", sc["after_stop_ms"], "-")
        add("  that - 1st (pairwise)", sc["after_stop_minus_first_ms"], "-")
    ld = r.get("lead")
    if isinstance(ld, dict):
        add(f"lead ahead of real time ({ld['frames']} frames)", ld["lead_ms"],
            f"p95 <= {LEAD_MS + 20}", ".1f")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    conc = r.get("concurrency")
    if isinstance(conc, dict):
        print(f"\nconcurrent sessions (mock voice, text {r['concurrency_text']!r}; "
              "pass: zero gaps, "
              f"p99 lateness <= {LATE_P99_MS:.0f} ms, utterance completed).")
        print("Clients run in this process (one asyncio loop) on the same "
              f"{m['cores']} cores as the orchestrator and the worker.")  # type: ignore[index]
        rows = [("format", "N", "passed", "p99 late p50", "p99 late max", "max late",
                 "orch CPU %", "worker CPU %", "client CPU %", "orch RSS MB")]
        for fmt, v in conc.items():
            for lv in v["levels"]:
                rows.append((fmt, str(lv["n"]), str(lv["passed"]),
                             f"{lv['p99_late_ms']['p50']:.1f}", f"{lv['p99_late_ms']['max']:.1f}",
                             f"{lv['worst_max_late_ms']:.1f}", f"{lv['orchestrator_cpu_pct']:.0f}",
                             f"{lv['worker_cpu_pct']:.0f}", f"{lv['client_cpu_pct']:.0f}",
                             f"{lv['orchestrator_peak_rss_mb']:.0f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        for fmt, target in (("binary", 200), ("json", 100)):
            v = conc[fmt]
            more = "" if not v["all_passed"] else " (every level tried passed)"
            print(f"most passing N, {fmt}: {v['most_passing']}{more} (target >= {target})")
    print(f"\norchestrator peak RSS over the run: {r['orchestrator_peak_rss_mb']:.0f} MB; "
          f"CPU over the run: {r['orchestrator_cpu_s']:.1f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--max-sessions", type=int, default=300,
                        help="highest concurrency level tried")
    parser.add_argument("--only", default="overhead,second,stop,lead,concurrency,"
                        + SESSION_PARTS,
                        help="comma-separated parts to run (default: all)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="a checkout from before (with .venv): its first utterance is "
                        "measured in the same run (orchestrator_sessions.py)")
    args = parser.parse_args()
    reps = 5 if args.quick else args.reps
    levels = [n for n in LEVELS if n <= args.max_sessions] or [args.max_sessions]
    if args.quick:
        levels = levels[:2]
    conc_text = "medium" if args.quick else "multi"
    parts = set(args.only.split(","))
    packs = bulk_mock_pack(Path(tempfile.mkdtemp(prefix="dv-bench-packs-")))
    worker = WorkerProcess("--preload-model-ids", f"{MOCK},{BULK_MOCK}", "--max-sessions", "400",
                           "--voicepack-dirs", f"{BUNDLED_VOICEPACKS},{packs}",
                           "--log-level", "WARNING", name="tts-worker-bench").start()
    orch = None
    try:
        orch = OrchestratorProcess(
            "--workers", worker.addr, "--max-sessions", "1000", "--log-level", "WARNING",
            "--rate-limit-per-s", "1000", "--rate-limit-burst", "1000").start()
        orch_cpu0 = cpu_s(orch.pid)
        result: dict[str, object] = {"machine": machine(), "reps": reps, "lead_ms": LEAD_MS,
                                     "clients_share_cores": True,
                                     "concurrency_text": conc_text}
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http, \
                WorkerClient(worker.addr) as client:
            await client.wait_ready()
            if "overhead" in parts:
                result["overhead"] = await bench_overhead(http, orch.ws_url, client, reps)
            if "second" in parts:
                result["second"] = await bench_second(
                    http, orch.ws_url, reps if args.quick else max(reps, 30))
            if "stop" in parts:
                result["stop"] = await bench_stop(http, orch.ws_url, reps)
            if "lead" in parts:
                result["lead"] = await bench_lead(http, orch.ws_url)
            if "concurrency" in parts:
                result["concurrency"] = await bench_concurrency(
                    http, orch.ws_url, levels, TEXTS[conc_text], orch.pid, worker.pid)
        result["orchestrator_cpu_s"] = cpu_s(orch.pid) - orch_cpu0
        result["orchestrator_peak_rss_mb"] = rss_mb(orch.pid)
        result["worker_peak_rss_mb"] = rss_mb(worker.pid)
    finally:
        if orch is not None and orch.proc is not None:
            orch.terminate()
        worker.terminate()
    session_parts = parts & set(SESSION_PARTS.split(","))
    if session_parts:
        result["sessions"] = await orchestrator_sessions.run(
            session_parts, reps, 100 if args.quick else 1000, 60 if args.quick else 500,
            args.baseline)
    print_table(result)
    if session_parts:
        orchestrator_sessions.print_table(result["sessions"])  # type: ignore[arg-type]
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"orchestrator-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
