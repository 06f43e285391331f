"""A gRPC client in its own process, for ``common.grpc_vs_inproc``.

    python bench/families/grpc_probe.py ADDR MODEL_ID OPTIONS_JSON

Reads one text per line on stdin, speaks it in one session and prints the
milliseconds to its first audio frame (the utterance runs to its end), one line per
text; ``-1`` on a failure (its reason on stderr). Keeping the client out of the
measuring process matters: a gRPC client's threads in the process that runs the
in-process model measurably slowed that model (tiny XTTS: ~170 -> ~300 ms first
chunk, still after the client closed).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from duplexvoice.client.worker_client import WorkerClient


async def first_frame_ms(client: WorkerClient, session_id: str, text: str) -> float:
    call = client.synthesize(session_id, text)
    start = time.perf_counter()
    first: float | None = None
    async for frame in call:
        if first is None and frame.audio_data:
            first = (time.perf_counter() - start) * 1000.0
    if first is None:
        raise RuntimeError("the worker sent no audio")
    return first


async def main(addr: str, model_id: str, options: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    async with WorkerClient(addr) as client:
        await client.wait_ready(60.0)
        session_id = f"probe-{uuid.uuid4().hex[:8]}"
        reply = await client.start_session(session_id, model_id, options)
        if not reply.success:
            raise SystemExit(f"StartSession refused: {reply.message}")
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                ms = await first_frame_ms(client, session_id, line.rstrip("\n"))
            except Exception as exc:
                print(f"probe: {exc!r}", file=sys.stderr, flush=True)
                ms = -1.0
            print(f"{ms:.3f}", flush=True)
        await client.end_session(session_id)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
