"""``duplexvoice brain`` with the real packaged model (SmolLM2-135M) in a real process:
the orchestrator's OpenAI engine talks to it as to any server; bad requests get
OpenAI-shaped errors; a client that leaves frees its slot; a brain killed mid-answer
is a clear ReplyError. Synchronized on the service's output and on responses; every
wait has a deadline. Small token limits keep it fast."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from duplexvoice.brain.config import packaged_model_path
from duplexvoice.launcher import BrainProcess
from duplexvoice.replies import History, OpenAIEngine, ReplyError
from duplexvoice.replies.config import DEFAULT_SYSTEM_PROMPT

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # bounds a failure only (a loaded 2-core machine)
CAP = 48  # the fixture's --max-tokens
STORY = [{"role": "user", "content": "Tell me a very long story about a dragon who lives in "
          "a castle by the sea, with many details."}]


class Lines:
    """A service's output lines, and an event per pattern awaited."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in self.lines if (m := re.search(pattern, line))]
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(seen, timeout):
                raise AssertionError(f"no line matching {pattern!r} in {timeout:g} s:\n"
                                     + "".join(self.lines[-20:]))
        return found[0]


def start_brain(*args: str, lines: Lines | None = None) -> BrainProcess:
    return BrainProcess(*args, on_line=lines, env={"DUPLEXVOICE_BRAIN_LOG_LEVEL": "INFO"}
                        ).start(timeout=120)


@pytest.fixture(scope="module")
def brain_lines() -> Lines:
    return Lines()


@pytest.fixture(scope="module")
def brain(brain_lines: Lines) -> Iterator[BrainProcess]:
    """One slot and no queue: a second request while one runs is refused at once (503),
    so a slot that was not freed shows."""
    process = start_brain("--parallel", "1", "--max-queued", "0", "--max-tokens", str(CAP),
                          "--max-request-bytes", "16384", "--context-tokens", "1024",
                          "--threads", "2", lines=brain_lines)
    yield process
    assert process.terminate() == 0
    assert "duplexvoice brain stopped" in process.text()


def engine_for(brain: BrainProcess, max_tokens: int = 40) -> OpenAIEngine:
    return OpenAIEngine(base_url=brain.base_url, model="any-name",
                        system_prompt=DEFAULT_SYSTEM_PROMPT, temperature=0.0,
                        max_tokens=max_tokens, read_timeout_s=10.0, timeout_s=WAIT_S)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


async def test_a_question_gets_an_answer_through_the_openai_engine(
        brain: BrainProcess) -> None:
    engine = engine_for(brain)
    history = History(max_turns=10, max_chars=4000)
    question = "What is the capital of France?"
    try:
        stream = engine.reply(history, question)
        clauses = await asyncio.wait_for(_read(stream), WAIT_S)
    finally:
        await engine.close()
    answer = " ".join(clauses)
    assert clauses and words(answer), answer
    assert words(answer)[:len(words(question))] != words(question)  # not said back
    assert set(words(answer)) - set(words(question)), answer  # words of its own
    assert [m["role"] for m in history.messages("")] == ["user", "assistant"]
    assert history.messages("")[-1]["content"] == answer


async def _read(stream: object) -> list[str]:
    return [clause async for clause in stream]  # type: ignore[attr-defined]


async def test_a_completion_not_streamed(brain: BrainProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{brain.base_url}/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8, "temperature": 0}) as response:
            assert response.status == 200
            body = await response.json()
        async with http.get(f"{brain.base_url}/models") as response:
            models = await response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "SmolLM2-135M-Instruct.Q4_1" == models["data"][0]["id"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert 1 <= body["usage"]["completion_tokens"] <= 8


async def test_bad_requests_get_openai_errors_and_the_server_goes_on(
        brain: BrainProcess) -> None:
    url = f"{brain.base_url}/chat/completions"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=b'{"messages": [', headers={
                "Content-Type": "application/json"}) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert "not valid JSON" in error["message"]
        assert error["type"] == "invalid_request_error"
        async with http.post(url, json={"model": "x"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "messages"
        async with http.post(url, data=b"x" * 20_000) as response:
            assert response.status == 413
            assert "larger than 16384 bytes" in (await response.json())["error"]["message"]
        async with http.get(f"{brain.base_url}/nowhere") as response:
            assert response.status == 404 and "error" in await response.json()
        # A prompt beyond the slot's context: the model's own error, as a plain 400.
        long = [{"role": "user", "content": "word " * 1500}]  # ~1500 tokens, 7.5 kB
        async with http.post(url, json={"messages": long, "stream": True}) as response:
            assert response.status == 400
            assert "context" in (await response.json())["error"]["message"]
        async with http.get(f"http://{brain.addr}/health") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"


async def test_a_client_that_leaves_mid_stream_frees_its_slot(
        brain: BrainProcess, brain_lines: Lines) -> None:
    url = f"{brain.base_url}/chat/completions"
    async with aiohttp.ClientSession() as http:
        response = await http.post(url, json={"messages": STORY, "stream": True,
                                              "temperature": 0, "max_tokens": CAP})
        assert response.status == 200
        contents = 0
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content":"' in line:
                contents += 1
            if contents == 2:
                break
        response.close()  # the client goes away mid-answer (drops the connection)
        gone = await asyncio.to_thread(
            brain_lines.wait_for, r"stopped after (\d+) tokens \(the client went away\)")
        assert 2 <= int(gone.group(1)) < CAP
        # The only slot is free again (a busy one refuses at once: no queue).
        async with http.post(url, json={"messages": [{"role": "user", "content": "Hi"}],
                                        "max_tokens": 4}) as again:
            assert again.status == 200, await again.text()


async def test_a_brain_killed_mid_answer_is_a_clear_reply_error() -> None:
    lines = Lines()
    doomed = start_brain("--max-tokens", "256", lines=lines)
    engine = engine_for(doomed, max_tokens=256)
    history = History(max_turns=10, max_chars=4000)
    try:
        stream = engine.reply(history, STORY[0]["content"])
        first = await asyncio.wait_for(stream.__anext__(), WAIT_S)
        assert first.strip()
        doomed.kill()  # SIGKILL: the connection drops mid-answer
        with pytest.raises(ReplyError) as caught:
            await asyncio.wait_for(_read(stream), WAIT_S)
    finally:
        doomed.kill()
        await engine.close()
    message = str(caught.value)
    assert "lost" in message or "before the reply was complete" in message, message
    assert caught.value.retryable
    # What was said before the failure stays the assistant's turn.
    assert history.messages("")[-1]["content"].startswith(first.strip())


async def test_sigterm_lets_the_answer_in_progress_finish() -> None:
    lines = Lines()
    before = set(Path(tempfile.gettempdir()).glob("duplexvoice-brain-*"))
    brain = start_brain("--max-tokens", "24", "--shutdown-grace-s", "20", lines=lines)
    own = set(Path(tempfile.gettempdir()).glob("duplexvoice-brain-*")) - before
    assert len(own) == 1  # llama.cpp's private socket folder
    try:
        async with aiohttp.ClientSession() as http, http.post(
                f"{brain.base_url}/chat/completions",
                json={"messages": STORY, "stream": True, "temperature": 0}) as response:
            first = await response.content.readline()
            assert first.startswith(b"data: {")
            os.kill(brain.pid, 15)
            rest = (await asyncio.wait_for(response.content.read(), WAIT_S)).decode()
        code = await asyncio.to_thread(brain.wait, WAIT_S)
    finally:
        brain.kill()
    assert rest.rstrip().endswith("data: [DONE]")  # the whole answer, then the end
    last_chunk = json.loads(rest.rstrip().splitlines()[-3].removeprefix("data: "))
    assert last_chunk["choices"][0]["finish_reason"] in ("stop", "length")
    assert code == 0
    lines.wait_for("duplexvoice brain stopped")
    assert not own.pop().exists()  # removed on the way out


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXVOICE_")}
    return subprocess.run([sys.executable, "-m", "duplexvoice", "brain", *args],
                          capture_output=True, text=True, timeout=120, env=clean)


@pytest.mark.parametrize(("name", "fragment"), [
    ("missing.gguf", "no such file"), ("", "is a folder"), ("text.gguf", "is not a GGUF"),
    ("cut.gguf", "llama.cpp refused it"),
])
def test_a_model_file_that_cannot_be_used_is_one_line(tmp_path: Path, name: str,
                                                     fragment: str) -> None:
    (tmp_path / "text.gguf").write_text("not a model")
    packaged = packaged_model_path()
    assert packaged is not None
    with packaged.open("rb") as whole:  # a download cut short: the header, no weights
        (tmp_path / "cut.gguf").write_bytes(whole.read(1 << 20))
    path = tmp_path / name
    result = run_cli("--port", "0", "--llm-model", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("duplexvoice brain: llm_model (from flag --llm-model): ")
    assert fragment in result.stderr


def test_a_busy_port_is_one_line(brain: BrainProcess) -> None:
    port = brain.addr.rsplit(":", 1)[1]
    result = run_cli("--port", port)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"duplexvoice brain: port (from flag --port): "
                                     f"127.0.0.1:{port} is in use (another process listens "
                                     "there)")
