"""Session lifecycle figures of the orchestrator (issue 7), run by bench/orchestrator.py
(``--only idle,churn,failover,first``) or alone:

    .venv/bin/python bench/orchestrator_sessions.py [--quick] [--reps N] [--idle N]

- idle: N connected WebSocket sessions held by one orchestrator with one worker of
  32 sessions, the worker sessions they hold while silent, then every one of them
  answering a ``text`` with audio (16 at a time).
- churn: 500 clients that connect and leave at once, after one ``text``, or after a
  bad message (a third each, 50 at a time); then the time from the last one gone to
  every worker session free (polled every 10 ms with GetCapabilities).
- failover: the worker is killed (SIGKILL) mid-utterance: kill -> ``error`` at the
  client; the worker is restarted on its port: its ready line -> first audio of the
  next utterance on the same socket.
- first: first-audio latency (text sent -> first audio message) of a fresh session's
  first utterance, which takes a worker session on demand; with ``--baseline DIR``
  (a checkout from before, with its .venv) against that orchestrator's first utterance
  (worker session opened at connect) on the same worker, interleaved, pairwise.

Clients run in this process on the same cores as the orchestrator and the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lean_ws
from worker import MOCK, machine, rss_mb, summary

from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.rpc import tts_pb2
from duplexvoice.wire.ports import free_port

WORKER_SESSIONS = 32  # the worker's default max_sessions
SHORT = "Hello there."
LONG = "[[slow:20]] " + "The weather is nice today. Shall we go for a walk? " * 6


def raise_fd_limit() -> int:
    """Thousands of sockets on both ends: lift the soft limit to the hard one (the
    services started from here inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def worker_sessions(client: WorkerClient) -> int:
    reply = await client.stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest(), timeout=5)
    return int(reply.metrics["queue_depth"])


class Listener:
    """An aiohttp WebSocket client that timestamps every message (binary: audio)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self._sending: set[asyncio.Future[None]] = set()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str) -> Listener:
        listener = cls(await http.ws_connect(url, heartbeat=None))
        await listener.wait_for("state", 0)  # LISTENING: ready
        listener.ws_send({"type": "config", "output_format": "binary"})
        return listener

    def ws_send(self, message: dict[str, Any]) -> float:
        task = asyncio.ensure_future(self.ws.send_str(json.dumps(message)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return time.perf_counter()

    async def _read(self) -> None:
        async for msg in self.ws:
            t = time.perf_counter()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.log.append((t, {"type": "audio"}))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.log.append((t, json.loads(msg.data)))
            self.changed.set()
        self.changed.set()

    async def wait_for(self, kind: str, start: int, within_s: float = 30.0) -> tuple[float, int]:
        """(time, index) of the first ``kind`` message at or after index ``start``."""
        async with asyncio.timeout(within_s):
            while True:
                for i in range(start, len(self.log)):
                    if self.log[i][1]["type"] == kind:
                        return self.log[i][0], i
                if self.task.done():
                    raise ConnectionError(f"closed while waiting for {kind}")
                self.changed.clear()
                await self.changed.wait()

    async def say(self, text: str) -> tuple[float, float | None, str]:
        """Send ``text``; (first-audio latency in ms or nan, the first audio's arrival
        time, the utterance's end reason)."""
        start = len(self.log)
        sent = self.ws_send({"type": "text", "text": text})
        _, i_end = await self.wait_for("utterance_end", start)
        first = next((t for t, m in self.log[start:i_end] if m["type"] == "audio"), None)
        reason = str(self.log[i_end][1]["reason"])
        return ((first - sent) * 1000 if first else float("nan")), first, reason

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def bench_idle(url: str, client: WorkerClient, n: int, orch_pid: int) -> dict[str, Any]:
    conns: list[lean_ws.LeanWS] = []
    t0 = time.perf_counter()
    for start in range(0, n, 50):
        count = min(n, start + 50) - start
        batch = await asyncio.gather(*(lean_ws.connect(url) for _ in range(count)))
        await asyncio.gather(*(c.next_message("session_start", 60) for c in batch))
        conns.extend(batch)
    connect_s = time.perf_counter() - t0
    held_idle = await worker_sessions(client)
    rss_idle = rss_mb(orch_pid, "VmRSS")
    spoke, failed, peak = 0, 0, 0
    failures: list[str] = []

    async def speak(conn: lean_ws.LeanWS) -> bool:
        frames = len(conn.times)
        try:
            conn.send_json({"type": "text", "text": SHORT})
            end = await conn.next_message("utterance_end", 60)
        except (ConnectionError, TimeoutError, AssertionError) as exc:
            failures.append(repr(exc))
            return False
        if end.get("reason") != "completed":
            failures.append(f"{end} {conn.errors[-1:]}")
        return end.get("reason") == "completed" and len(conn.times) > frames

    t1 = time.perf_counter()
    for start in range(0, n, 16):
        results = await asyncio.gather(*(speak(c) for c in conns[start:start + 16]))
        spoke += sum(results)
        failed += len(results) - sum(results)
        peak = max(peak, await worker_sessions(client))
    speak_s = time.perf_counter() - t1
    for conn in conns:
        await conn.close()
    return {"connected": len(conns), "worker_sessions_while_idle": held_idle,
            "spoke": spoke, "failed": failed, "failures": sorted(set(failures))[:5],
            "worker_sessions_peak_sampled": peak,
            "connect_s": connect_s, "speak_s": speak_s,
            "orchestrator_rss_mb_idle": rss_idle, "orchestrator_peak_rss_mb": rss_mb(orch_pid)}


async def _leave(url: str, how: str) -> None:
    conn = await lean_ws.connect(url)
    if how == "after_text":
        await conn.next_message("session_start", 60)
        conn.send_json({"type": "text", "text": SHORT})
    elif how == "after_error":
        await conn.next_message("session_start", 60)
        assert conn.transport is not None
        conn.transport.write(lean_ws.client_frame(b"{not json", 0x1))
    assert conn.transport is not None
    conn.transport.abort()  # gone, no close handshake


async def bench_churn(url: str, client: WorkerClient, total: int) -> dict[str, Any]:
    kinds = ["at_once", "after_text", "after_error"]
    peak = 0
    t0 = time.perf_counter()
    for start in range(0, total, 50):
        await asyncio.gather(*(_leave(url, kinds[i % 3]) for i in range(start, start + 50)))
        peak = max(peak, await worker_sessions(client))
    gone = time.perf_counter()
    held = await worker_sessions(client)
    while held:
        await asyncio.sleep(0.01)
        held = await worker_sessions(client)
        if time.perf_counter() - gone > 30:
            break
    free_s = time.perf_counter() - gone
    return {"clients": total, "churn_s": gone - t0, "worker_sessions_peak_sampled": peak,
            "all_free_after_s": free_s, "left_held": held}


async def bench_failover(http: aiohttp.ClientSession, reps: int) -> dict[str, Any]:
    port = free_port()
    args = ("--default-model-id", MOCK, "--port", str(port), "--log-level", "WARNING")
    worker = WorkerProcess(*args, name="w-failover").start()
    orch = OrchestratorProcess("--workers", f"w-failover=127.0.0.1:{port}",
                               "--log-level", "WARNING").start()
    to_error, to_audio, attempts, restart_s = [], [], [], []
    try:
        conn = await Listener.open(http, orch.ws_url)
        await conn.say(SHORT)  # warm
        for _ in range(reps):
            start = len(conn.log)
            conn.ws_send({"type": "text", "text": LONG})
            _, i = await conn.wait_for("audio", start)
            for _ in range(4):  # a few frames in: mid-utterance
                _, i = await conn.wait_for("audio", i + 1)
            killed = time.perf_counter()
            worker.kill()
            t_err, i_err = await conn.wait_for("error", start)
            to_error.append((t_err - killed) * 1000)
            await conn.wait_for("utterance_end", i_err)
            t_start = time.perf_counter()
            worker = WorkerProcess(*args, name="w-failover").start()
            ready = time.perf_counter()
            restart_s.append(ready - t_start)
            n = 0
            while True:  # the same socket, as soon as the worker is ready
                n += 1
                _, first_at, reason = await conn.say(SHORT)
                if reason == "completed" and first_at is not None:
                    break
                assert time.perf_counter() - ready < 30, f"never spoke again: {conn.log[-3:]}"
                await asyncio.sleep(0.05)  # as a client would retry, not in a tight loop
            to_audio.append((first_at - ready) * 1000)
            attempts.append(n)
        await conn.close()
    finally:
        orch.terminate()
        worker.kill()
    return {"kill_to_error_ms": summary(to_error),
            "ready_to_first_audio_ms": summary(to_audio),
            "utterances_until_speaking": summary([float(a) for a in attempts]),
            "worker_restart_s": summary(restart_s)}


class BaselineOrchestrator(OrchestratorProcess):
    """The orchestrator of another checkout (``--baseline DIR``, with its own .venv),
    started exactly as ours: the same run measures before and after."""

    def __init__(self, checkout: Path, *args: str) -> None:
        super().__init__(*args, cwd=checkout)
        self.python = str(checkout / ".venv" / "bin" / "python")

    def command(self) -> list[str]:
        return [self.python, *super().command()[1:]]


async def bench_first(http: aiohttp.ClientSession, url: str, reps: int,
                      baseline_url: str | None) -> dict[str, Any]:
    """First utterance of a fresh session, ours (capacity taken on demand) against the
    baseline orchestrator's (its worker session opened at connect), interleaved."""
    ours, theirs, diff = [], [], []
    for rep in range(reps + 2):
        row = []
        for target in (url, baseline_url):
            if target is None:
                continue
            conn = await Listener.open(http, target)
            first_ms, _, reason = await conn.say(SHORT)
            await conn.close()
            assert reason == "completed", reason
            row.append(first_ms)
        if rep < 2:
            continue  # warm-up
        ours.append(row[0])
        if len(row) == 2:
            theirs.append(row[1])
            diff.append(row[0] - row[1])
    out = {"first_utterance_ms": summary(ours)}
    if theirs:
        out |= {"baseline_first_utterance_ms": summary(theirs), "difference_ms": summary(diff)}
    return out


async def run(parts: set[str], reps: int, idle_n: int, churn_n: int,
              baseline: Path | None = None) -> dict[str, Any]:
    raise_fd_limit()
    result: dict[str, Any] = {"machine": machine(), "reps": reps}
    worker = WorkerProcess("--default-model-id", MOCK, "--log-level", "WARNING",
                           name="tts-worker-sessions").start()
    orch = OrchestratorProcess("--workers", worker.addr, "--max-sessions", str(idle_n + 200),
                               "--log-level", "WARNING", "--rate-limit-per-s", "1000",
                               "--rate-limit-burst", "1000").start()
    old = (BaselineOrchestrator(baseline, "--workers", worker.addr, "--log-level", "WARNING")
           .start() if baseline is not None and "first" in parts else None)
    result["baseline"] = str(baseline) if old is not None else None
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, \
                WorkerClient(worker.addr) as client:
            await client.wait_ready()
            if "first" in parts:
                result["first"] = await bench_first(http, orch.ws_url, reps,
                                                    old.ws_url if old is not None else None)
                if old is not None:
                    old.terminate()
                    old = None
            if "idle" in parts:
                result["idle"] = await bench_idle(orch.ws_url, client, idle_n, orch.pid)
            if "churn" in parts:
                result["churn"] = await bench_churn(orch.ws_url, client, churn_n)
            if "failover" in parts:
                result["failover"] = await bench_failover(http, reps)
    finally:
        if old is not None:
            old.terminate()
        orch.terminate()
        worker.terminate()
    return result


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\nSession lifecycle - {m['cpu']} ({m['cores']} cores), Python {m['python']}; "
          f"reps {r['reps']}; ms unless noted")
    if "first" in r:
        f = r["first"]
        for name, key in (("FAL first utterance (worker taken on demand)", "first_utterance_ms"),
                          (f"FAL first utterance, baseline {r['baseline']}",
                           "baseline_first_utterance_ms"),
                          ("difference, pairwise (target p50 <= +5)", "difference_ms")):
            if key not in f:
                continue
            s = f[key]
            print(f"  {name}: p50 {s['p50']:.2f}  p95 {s['p95']:.2f}  max {s['max']:.2f}  "
                  f"n {s['n']}")
    if "idle" in r:
        i = r["idle"]
        print(f"  idle: {i['connected']} connected (target >= 1000), worker sessions held "
              f"while silent: {i['worker_sessions_while_idle']}; {i['spoke']} answered a "
              f"text with audio, {i['failed']} failed (16 at a time, {i['speak_s']:.1f} s); "
              f"orchestrator RSS {i['orchestrator_rss_mb_idle']:.0f} MB idle, peak "
              f"{i['orchestrator_peak_rss_mb']:.0f} MB")
    if "churn" in r:
        c = r["churn"]
        print(f"  churn: {c['clients']} clients left at once / after a text / after an "
              f"error in {c['churn_s']:.1f} s; all worker sessions free "
              f"{c['all_free_after_s'] * 1000:.0f} ms after the last (target <= 1000); "
              f"left held: {c['left_held']}")
    if "failover" in r:
        f = r["failover"]
        for name, key in (("worker killed -> error (target p95 <= 1000)", "kill_to_error_ms"),
                          ("worker ready again -> first audio on the same socket",
                           "ready_to_first_audio_ms"),
                          ("utterances sent until one spoke", "utterances_until_speaking"),
                          ("worker restart, s", "worker_restart_s")):
            s = f[key]
            print(f"  {name}: p50 {s['p50']:.2f}  p95 {s['p95']:.2f}  max {s['max']:.2f}  "
                  f"n {s['n']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--idle", type=int, default=1000, help="idle sessions")
    parser.add_argument("--churn", type=int, default=500, help="clients that leave")
    parser.add_argument("--only", default="first,idle,churn,failover")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="another checkout (with .venv) whose orchestrator's first "
                        "utterance is measured in the same run, interleaved")
    args = parser.parse_args()
    reps = 5 if args.quick else args.reps
    idle_n = 100 if args.quick else args.idle
    churn_n = 60 if args.quick else args.churn
    result = asyncio.run(run(set(args.only.split(",")), reps, idle_n, churn_n, args.baseline))
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
