"""Benchmark the brain (``duplexvoice brain``, the packaged SmolLM2-135M): thread
counts, alone and beside a busy core, over its real HTTP API.

    .venv/bin/python bench/brain.py [--threads 1,2] [--niceness N] [--reps N] [--quick]
                                    [--json]

For each thread count a fresh brain process (default settings otherwise) answers
spoken-style questions with the orchestrator's system prompt, streamed, one at a
time, then 4 at once. Figures, measured at the client:

- first token: from the request to the first content chunk (p50/p95);
- 10th token, and decode tokens/s of one answer (tokens after the first / time);
- 4 at once: combined tokens/s, and the first token of each;
- the same single-request figures with a busy competitor: one process spinning at
  normal priority (standing in for Whisper or the voice), and how much work that
  competitor got done meanwhile relative to the same with the brain idle (1.0: the
  brain took nothing from it; the effect of the brain's lower priority).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # worker.py's helpers

from worker import machine, rss_mb, summary

from duplexvoice.launcher import BrainProcess
from duplexvoice.replies.config import DEFAULT_SYSTEM_PROMPT

QUESTIONS = [
    "What is a good way to start the morning?",
    "Can you recommend a book for a long train ride?",
    "How do I keep basil alive on a windowsill?",
    "What should I cook tonight with rice and eggs?",
    "Why is the sky blue?",
    "Tell me something interesting about octopuses.",
    "How far is the moon?",
    "What is a fun thing to do on a rainy weekend?",
]
MAX_TOKENS = 64
TIMEOUT = aiohttp.ClientTimeout(total=120)  # a starved brain fails the run, not hangs it
T = TypeVar("T")


async def one_answer(http: aiohttp.ClientSession, base_url: str, question: str
                     ) -> dict[str, float]:
    body = {"messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                         {"role": "user", "content": question}],
            "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0.7}
    started = time.perf_counter()
    times: list[float] = []
    async with http.post(f"{base_url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                times.append(time.perf_counter() - started)
    first = times[0] if times else float("nan")
    decode = (len(times) - 1) / (times[-1] - first) if len(times) > 2 else float("nan")
    return {"first_ms": first * 1000,
            "tenth_ms": times[9] * 1000 if len(times) >= 10 else float("nan"),
            "tokens": len(times), "tokens_per_s": decode, "total_s": times[-1] if times else 0}


def spin(stop: Any, count: Any, elapsed: Any) -> None:
    """A competitor at normal priority: count loop iterations until ``stop``."""
    started = time.perf_counter()
    n = 0
    while not stop.is_set():
        for _ in range(10_000):
            n += 1
    count.value = n
    elapsed.value = time.perf_counter() - started


def beside_a_spinner(action: Callable[[], T]) -> tuple[T, float]:
    """``action()``'s result while a competitor spins, and the competitor's rate."""
    stop = multiprocessing.Event()
    count, elapsed = multiprocessing.Value("q", 0), multiprocessing.Value("d", 0.0)
    proc = multiprocessing.Process(target=spin, args=(stop, count, elapsed))
    proc.start()
    try:
        result = action()
    finally:
        stop.set()
        proc.join()
    return result, count.value / max(elapsed.value, 1e-9)


FAILED = {"first_ms": float("nan"), "tenth_ms": float("nan"), "tokens": 0,
          "tokens_per_s": float("nan"), "total_s": 0.0}


async def answer_or_nothing(http: aiohttp.ClientSession, base_url: str, question: str
                            ) -> dict[str, float]:
    """One answer's figures; a starved brain (timeout) counts as a failure, not a crash."""
    try:
        return await one_answer(http, base_url, question)
    except TimeoutError:
        return FAILED


async def sequential(base_url: str, reps: int) -> list[dict[str, float]]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        return [await answer_or_nothing(http, base_url, QUESTIONS[i % len(QUESTIONS)])
                for i in range(reps)]


async def concurrent(base_url: str, n: int) -> tuple[list[dict[str, float]], float]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(answer_or_nothing(http, base_url, q)
                                         for q in QUESTIONS[:n]))
        wall = time.perf_counter() - started
    return list(results), sum(r["tokens"] for r in results) / wall


def measure(threads: int, niceness: int, reps: int) -> dict[str, Any]:
    brain = BrainProcess("--threads", str(threads), "--niceness", str(niceness),
                         "--log-level", "WARNING").start()
    try:
        base = brain.base_url
        alone = asyncio.run(sequential(base, reps))
        four, combined = asyncio.run(concurrent(base, 4))
        _, idle_rate = beside_a_spinner(lambda: time.sleep(2.0))  # the brain idle
        busy, rate = beside_a_spinner(lambda: asyncio.run(sequential(base, reps)))
        share = rate / idle_rate
        peak = rss_mb(brain.pid)
    finally:
        brain.terminate()

    def figures(rows: list[dict[str, float]]) -> dict[str, Any]:
        return {"failed": sum(1 for r in rows if r is FAILED),
                "first_ms": summary([r["first_ms"] for r in rows if r is not FAILED]),
                "tenth_ms": summary([r["tenth_ms"] for r in rows
                                     if r["tenth_ms"] == r["tenth_ms"]]),
                "tokens_per_s": summary([r["tokens_per_s"] for r in rows
                                         if r["tokens_per_s"] == r["tokens_per_s"]])}

    return {"threads": threads, "niceness": niceness, "alone": figures(alone),
            "four_at_once": {"combined_tokens_per_s": combined,
                             "first_ms": summary([r["first_ms"] for r in four
                                                  if r is not FAILED])},
            "beside_a_busy_core": figures(busy), "competitor_share": share,
            "peak_rss_mb": peak}


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'threads':>7} {'case':<20}{'first p50':>10}{'p95':>7}{'10th p50':>10}"
             f"{'tok/s p50':>10}"]
    for r in results:
        for case in ("alone", "beside_a_busy_core"):
            f = r[case]
            lines.append(f"{r['threads']:>7} {case:<20}{f['first_ms']['p50']:>10.0f}"
                         f"{f['first_ms']['p95']:>7.0f}{f['tenth_ms']['p50']:>10.0f}"
                         f"{f['tokens_per_s']['p50']:>10.1f}"
                         + (f"  ({f['failed']} timed out)" if f["failed"] else ""))
        four = r["four_at_once"]
        lines.append(f"{r['threads']:>7} {'4 at once':<20}{four['first_ms']['p50']:>10.0f}"
                     f"{four['first_ms']['p95']:>7.0f}{'':>10}"
                     f"{four['combined_tokens_per_s']:>10.1f}  (combined)")
        lines.append(f"{r['threads']:>7} competitor's share of a core beside the brain: "
                     f"{r['competitor_share']:.2f}; brain peak RSS {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="thread counts (default: 1,2)")
    parser.add_argument("--niceness", type=int, default=10,
                        help="the brain's niceness (default: 10, as deployed; 0 on a machine "
                        "busy with other work, or the brain starves)")
    parser.add_argument("--reps", type=int, default=16, help="answers per case (default: 16)")
    parser.add_argument("--quick", action="store_true", help="4 answers per case")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    reps = 4 if args.quick else args.reps
    results = [measure(int(t), args.niceness, reps) for t in args.threads.split(",")]
    if args.json:
        print(json.dumps({"machine": machine(), "results": results}, indent=2))
    else:
        print(f"machine: {machine()}")
        print(table(results))


if __name__ == "__main__":
    main()
