from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from duplexvoice.client.worker_client import WorkerClient
from duplexvoice.launcher import WorkerProcess


@pytest.fixture(scope="module")
def mock_worker() -> Iterator[WorkerProcess]:
    """A worker whose default voice is the mock, with small limits for bad-input tests."""
    worker = WorkerProcess(
        "--default-model-id", "mock-en-us-tone", "--max-text-chars", "400",
        "--max-sessions", "6", name="tts-worker-mock",
    ).start()
    yield worker
    worker.terminate()


@pytest.fixture(scope="module")
def real_worker() -> Iterator[WorkerProcess]:
    """A worker with the real voices: Piper by default, eSpeak preloaded, and the mock."""
    worker = WorkerProcess(
        "--preload-model-ids", "espeak-en-us-default", name="tts-worker-real"
    ).start()
    yield worker
    worker.terminate()


@pytest.fixture
async def mock_client(mock_worker: WorkerProcess) -> AsyncIterator[WorkerClient]:
    async with WorkerClient(mock_worker.addr) as client:
        await client.wait_ready()
        yield client


@pytest.fixture
async def real_client(real_worker: WorkerProcess) -> AsyncIterator[WorkerClient]:
    async with WorkerClient(real_worker.addr) as client:
        await client.wait_ready()
        yield client
