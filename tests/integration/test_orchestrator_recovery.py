"""Reliability of the spine, each found by a new user with an independent client
(issue 7): worker sessions never leak whatever moment a client leaves; a connected,
silent client holds no worker capacity; a session recovers when its worker comes
back; a client leaving right after an error leaves no traceback; every model a worker
can load is offered; a dead worker is routed around by every session at once.

Real orchestrator and worker processes (the mock voice), real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.rpc import tts_pb2
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer, free_port
from tests.support.ws import Client

pytestmark = pytest.mark.integration

MOCK = ("--default-model-id", "mock-en-us-tone")
LONG = "[[slow:40]] " + "The weather is nice today. Shall we go for a walk? " * 4


async def active_sessions(worker: WorkerProcess) -> int:
    async with WorkerClient(worker.addr) as client:
        reply = await client.stub.GetCapabilities(tts_pb2.GetCapabilitiesRequest(), timeout=5)
    return int(reply.metrics["queue_depth"])


@pytest.fixture(scope="module")
def small_worker() -> Iterator[WorkerProcess]:
    """Four worker sessions only: any leak shows at once."""
    worker = WorkerProcess(*MOCK, "--max-sessions", "4", name="tts-worker-small").start()
    yield worker
    worker.terminate()


@pytest.fixture(scope="module")
def orchestrator(small_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    proc = OrchestratorProcess("--workers", small_worker.addr, "--registry-poll-s", "0.3",
                               "--worker-linger-s", "0.2").start()
    yield proc
    proc.terminate()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def speaks(client: Client, text: str = "Hello there.") -> int:
    """Send a text; the number of audio frames of its utterance (0: it failed)."""
    await client.send(type="text", text=text)
    while True:
        item = await client.next()
        if item["type"] == "utterance_end":
            return int(item["frames"]) if item["reason"] == "completed" else 0
        if item["type"] == "closed":
            raise AssertionError(f"closed: {client.messages[-5:]}")


async def leave(ws: aiohttp.ClientWebSocketResponse, abort: bool) -> None:
    if abort:  # no close handshake: the TCP connection just goes away
        transport = ws._response.connection.transport if ws._response.connection else None
        if transport is not None:
            transport.abort()
    await ws.close()


@pytest.mark.parametrize("how", ["at_once", "after_config", "after_bad_message",
                                 "after_text", "mid_utterance"])
async def test_clients_leaving_at_any_moment_leak_no_worker_session(
    how: str, orchestrator: OrchestratorProcess, small_worker: WorkerProcess,
    http: aiohttp.ClientSession,
) -> None:
    # Three times the worker's capacity: one leaked session each would exhaust it.
    for i in range(12):
        ws = await http.ws_connect(orchestrator.ws_url)
        client = Client(ws)
        if how != "at_once":
            await client.next("session_start")
        if how == "after_config":
            await client.send(type="config", output_format="binary")
        elif how == "after_bad_message":
            await ws.send_str("{not json")
        elif how == "after_text":  # StartSession may still be in flight when it leaves
            await client.send(type="text", text="Hello there.")
        elif how == "mid_utterance":
            await client.send(type="text", text=LONG)
            await client.next("audio")
        await leave(ws, abort=i % 2 == 1)
    await eventually(no_sessions(small_worker), what="worker sessions all ended")
    client = Client(await http.ws_connect(orchestrator.ws_url))
    await client.next("session_start")
    assert await speaks(client) > 0


def no_sessions(worker: WorkerProcess) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await active_sessions(worker) == 0
    return check


async def test_connected_silent_clients_hold_no_worker_capacity(
    orchestrator: OrchestratorProcess, small_worker: WorkerProcess, http: aiohttp.ClientSession,
) -> None:
    idle = [Client(await http.ws_connect(orchestrator.ws_url)) for _ in range(20)]
    for client in idle:
        await client.next("session_start")
    assert await active_sessions(small_worker) == 0  # 20 connected, none costs a worker
    # Every one of them can still speak, a few at a time (the worker has four).
    for start in range(0, len(idle), 4):
        batch = idle[start:start + 4]
        frames = await asyncio.gather(*(speaks(c) for c in batch))
        assert all(n > 0 for n in frames), [m for c in batch for m in c.messages
                                            if m["type"] == "error"]
    await eventually(no_sessions(small_worker), what="given back after the linger")
    async def all_free() -> bool:
        async with http.get(f"http://{orchestrator.addr}/ready") as reply:
            body = await reply.json()
        return reply.status == 200 and body["free_sessions"] == {small_worker.addr: 4}

    await eventually(all_free, what="/ready shows the worker's 4 sessions free")
    for client in idle:
        await client.ws.close()


async def test_a_client_leaving_right_after_an_error_leaves_no_traceback(
    small_worker: WorkerProcess, http: aiohttp.ClientSession,
) -> None:
    proc = OrchestratorProcess("--workers", small_worker.addr).start()
    try:
        for i in range(30):
            ws = await http.ws_connect(proc.ws_url)
            await ws.send_str("{not json")
            await ws.send_str('{"type": "bogus"}')
            await leave(ws, abort=i % 2 == 0)
        # The server is still fine: a new session speaks.
        client = Client(await http.ws_connect(proc.ws_url))
        await client.next("session_start")
        assert await speaks(client) > 0
    finally:
        proc.terminate()
    output = proc.text()
    assert "Traceback" not in output and "ConnectionResetError" not in output, output


async def test_a_session_speaks_again_once_its_worker_is_back(
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    worker = WorkerProcess(*MOCK, "--port", str(port), name="w-phoenix").start()
    proc = OrchestratorProcess("--workers", f"w-phoenix=127.0.0.1:{port}",
                               "--registry-poll-s", "0.3").start()
    try:
        client = Client(await http.ws_connect(proc.ws_url))
        await client.next("session_start")
        await client.send(type="text", text=LONG)
        await client.next("audio")
        worker.kill()
        assert (await client.next("error"))["code"] == "SYNTHESIS_FAILED"
        assert (await client.until_end(1))[-1]["reason"] == "error"
        # While it is gone, utterances fail alone and the session stays open.
        assert await speaks(client) == 0
        worker = WorkerProcess(*MOCK, "--port", str(port), name="w-phoenix").start()
        # The same socket speaks again as soon as the worker answers.
        assert await eventually(lambda: speaks(client), what="speaks after the restart")
        assert not [m for m in client.messages if m["type"] == "session_end"]
    finally:
        proc.terminate()
        worker.terminate()


async def test_every_loadable_model_is_offered_and_speaks(
    small_worker: WorkerProcess, orchestrator: OrchestratorProcess, http: aiohttp.ClientSession,
) -> None:
    async with http.get(f"http://{orchestrator.addr}/models") as reply:
        models = {m["model_id"]: m for m in (await reply.json())["models"]}
    assert {"mock-en-us-tone", "espeak-en-us-default", "piper-en-us-joe-medium"} <= set(models)
    assert models["espeak-en-us-default"]["resident_on"] == []  # offered, loaded on demand
    client = Client(await http.ws_connect(orchestrator.ws_url))
    await client.next("session_start")
    await client.send(type="config", voice="espeak-en-us-default")
    assert await speaks(client, "Speaking with eSpeak.") > 0
    assert not [m for m in client.messages if m["type"] == "error"]
    await client.send(type="config", voice="no-such-voice")
    error = await client.next("error")
    assert error["code"] == "INVALID_CONFIG" and "espeak-en-us-default" in error["message"]


async def test_text_with_nothing_to_speak_is_an_invalid_message(
    orchestrator: OrchestratorProcess, http: aiohttp.ClientSession,
) -> None:
    client = Client(await http.ws_connect(orchestrator.ws_url))
    await client.next("session_start")
    for text in ["...", "  ", "\U0001f600"]:
        await client.send(type="text", text=text)
        assert (await client.next("error"))["code"] == "INVALID_MESSAGE"
    assert await speaks(client) > 0
    ends = [m for m in client.messages if m["type"] == "utterance_end"]
    assert [m["utterance_id"] for m in ends] == [1]  # the refused texts took no id


async def test_oversize_beyond_the_hard_limit_closes_with_1009(
    small_worker: WorkerProcess, http: aiohttp.ClientSession,
) -> None:
    # A small limit: the whole frame is in the server's hands at once. (A client still
    # sending megabytes when the server closes may see a reset instead: protocol.md.)
    proc = OrchestratorProcess("--workers", small_worker.addr, "--max-message-bytes",
                               "1024").start()
    try:
        other = Client(await http.ws_connect(proc.ws_url))
        await other.next("session_start")
        client = Client(await http.ws_connect(proc.ws_url))
        await client.next("session_start")
        await client.ws.send_str("x" * 1500)  # over the limit, under twice it: an error
        assert (await client.next("error"))["code"] == "MESSAGE_TOO_LARGE"
        with contextlib.suppress(ConnectionError):
            await client.ws.send_str("x" * (2 * 1024 + 1))  # over twice the limit
        closed = await client.next("closed")
        assert closed["code"] == 1009
        assert await speaks(other) > 0  # the other session never noticed
    finally:
        proc.terminate()


async def test_redis_discovery_routes_around_a_dead_worker_at_once(
    redis_server: RedisServer, http: aiohttp.ClientSession,
) -> None:
    url = redis_server.url
    # Names sort "w-a" < "w-b": with both idle the router picks w-a first.
    doomed = WorkerProcess(*MOCK, "--redis-url", url, name="w-a").start()
    spare = WorkerProcess(*MOCK, "--redis-url", url, name="w-b").start()
    proc = OrchestratorProcess("--redis-url", url, "--registry-poll-s", "0.3").start()
    try:
        async with aioredis.Redis.from_url(url) as r:
            await eventually(lambda: r.exists("worker:w-a", "worker:w-b"), what="registered")
        first = Client(await http.ws_connect(proc.ws_url))
        await first.next("session_start")
        await first.send(type="text", text=LONG)
        await first.next("audio")
        doomed.kill()  # its record stays in Redis for up to 30 s
        assert (await first.next("error"))["code"] == "SYNTHESIS_FAILED"
        await first.until_end(1)
        # Every session, new ones included, now goes to w-b: no failed utterances.
        for _ in range(3):
            client = Client(await http.ws_connect(proc.ws_url))
            await client.next("session_start")
            assert await speaks(client) > 0
            await client.ws.close()
        assert await speaks(first) > 0, first.messages[-4:]
    finally:
        proc.terminate()
        doomed.kill()
        spare.terminate()
