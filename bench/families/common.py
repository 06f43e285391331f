"""What every family's benchmark shares (run inside that family's environment).

``grpc_vs_inproc``: the first audio frame at a gRPC client of a worker process vs the
adapter's own first chunk in this process, interleaved (A B A B) in one run so that
machine noise hits both alike. The text is one short sentence, so the worker's text
chunking hands the model the same text as the in-process call.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
for folder in (BENCH, REPO):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from worker import machine, rss_mb, summary  # noqa: E402  (bench/worker.py)

from duplexvoice.client.worker_client import WorkerClient  # noqa: E402
from duplexvoice.launcher import WorkerProcess  # noqa: E402
from duplexvoice.rpc import tts_pb2  # noqa: E402
from duplexvoice.worker.adapters.base import SynthesisOptions, TTSAdapter  # noqa: E402

__all__ = ["grpc_vs_inproc", "inproc_first_chunk_ms", "machine", "rss_mb", "summary"]

SHORT_TEXT = "Hello there, how are you doing today?"


def inproc_first_chunk_ms(
    adapter: TTSAdapter, text: str, options: SynthesisOptions | None = None
) -> float:
    """Milliseconds from ``stream()`` to its first chunk; the rest is cancelled."""
    cancel = threading.Event()
    start = time.perf_counter()
    chunks = adapter.stream(text, options or SynthesisOptions(), cancel)
    try:
        next(chunks)
        return (time.perf_counter() - start) * 1000.0
    finally:
        cancel.set()
        for _ in chunks:  # let the generator stop its engine and clean up
            pass


async def _grpc_first_frame_ms(client: WorkerClient, session_id: str, text: str) -> float:
    call = client.synthesize(session_id, text)
    start = time.perf_counter()
    first: float | None = None
    async for _frame in call:
        if first is None:
            first = (time.perf_counter() - start) * 1000.0
            await client.control(session_id, tts_pb2.STOP)
    if first is None:
        raise RuntimeError("the worker sent no audio")
    return first


async def _compare(addr: str, model_id: str, adapter: TTSAdapter, text: str, runs: int,
                   options: Mapping[str, str]) -> dict[str, Any]:
    inproc: list[float] = []
    remote: list[float] = []
    async with WorkerClient(addr) as client:
        await client.wait_ready(60.0)
        session_id = f"bench-{uuid.uuid4().hex[:8]}"
        reply = await client.start_session(session_id, model_id, options)
        if not reply.success:
            raise RuntimeError(f"StartSession refused: {reply.message}")
        local_options = SynthesisOptions(extra=dict(options))
        for i in range(runs + 1):  # run 0 warms both paths and is dropped
            a = await asyncio.to_thread(inproc_first_chunk_ms, adapter, text, local_options)
            b = await _grpc_first_frame_ms(client, session_id, text)
            if i:
                inproc.append(a)
                remote.append(b)
        await client.end_session(session_id)
    a_sum, b_sum = summary(inproc), summary(remote)
    return {
        "text": text,
        "inproc_first_chunk_ms": a_sum,
        "grpc_first_frame_ms": b_sum,
        "ratio_p50": b_sum["p50"] / a_sum["p50"],
        "ratio_p95": b_sum["p95"] / a_sum["p95"],
    }


def grpc_vs_inproc(pack_root: Path, model_id: str, adapter: TTSAdapter, text: str = SHORT_TEXT,
                   runs: int = 10, device: str = "cpu",
                   options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start a worker on ``pack_root`` (a voice pack folder tree) serving ``model_id``
    and compare its first frame over gRPC with ``adapter``'s first chunk here."""
    worker = WorkerProcess(
        "--voicepack-dirs", str(pack_root), "--default-model-id", model_id,
        "--device", device, name=f"bench-{model_id}",
    ).start(timeout=600.0)
    try:
        result = asyncio.run(_compare(worker.addr, model_id, adapter, text, runs,
                                      dict(options or {})))
        assert worker.proc is not None
        result["worker_peak_rss_mb"] = rss_mb(worker.proc.pid)
        return result
    finally:
        worker.terminate()
