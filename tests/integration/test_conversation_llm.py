"""Conversation mode with the OpenAI-compatible reply engine, end to end: a real
local server speaking the streaming format (``tests/support/fake_llm.py``), the
orchestrator, a Piper worker, Whisper, and speech fed in real time. An interruption
cuts the assistant's turn in the history to what the user heard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from tests.support.fake_llm import FakeLLM, Script
from tests.support.mic import MicClient
from tests.support.speech import SPEAKERS, say, silence

pytestmark = pytest.mark.integration

ANSWER = ("The weather today is mild and bright, with a light breeze from the west. "
          "In the afternoon some clouds come in from the sea, and by the evening there "
          "may be a little rain along the coast, so take a coat if you go out late.")


@pytest.fixture
async def llm_stack(real_worker: WorkerProcess) -> AsyncIterator[tuple[FakeLLM, str]]:
    async with FakeLLM() as llm:
        orch = OrchestratorProcess(
            "--workers", real_worker.addr, "--reply-engine", "openai",
            "--reply-base-url", llm.base_url, "--reply-model", "fake-model").start()
        try:
            yield llm, orch.ws_url
        finally:
            orch.terminate()


async def test_an_llm_reply_is_spoken_and_an_interruption_cuts_its_history(
        llm_stack: tuple[FakeLLM, str]) -> None:
    llm, url = llm_stack
    # Every request gets the long answer (a speculative request the user's pause
    # mid-sentence cancelled takes one too).
    llm.script(*[Script(ANSWER, delay_s=0.005) for _ in range(12)])
    question = say("What is the weather like today?", SPEAKERS[0])
    interruption = say("Wait, tell me about the trains instead.", SPEAKERS[3])
    track = np.concatenate([silence(0.3), question, silence(3.0), interruption])
    async with aiohttp.ClientSession() as http:
        mic = MicClient(await http.ws_connect(url))
        await mic.start()
        feeding = asyncio.create_task(mic.feed(track, then_silence_s=3.0))
        reply = await mic.until(lambda m: m["type"] == "reply")
        uid = reply.message["utterance_id"]
        assert ANSWER.startswith(reply.message["text"].strip())
        await mic.until(lambda m: m["type"] == "binary" and m["utterance_id"] == uid)
        interrupt = await mic.until(lambda m: m["type"] == "interrupt", timeout=20)
        assert interrupt.message["utterance_id"] == uid
        finals = [m for m in mic.messages("transcript") if m["final"]]
        await mic.until(lambda m: m["type"] == "transcript" and m["final"]
                        and m["turn"] > finals[0]["turn"], timeout=20)
        await feeding
        await mic.stop()
    # The request for the second turn carries the first answer cut where the user
    # stopped hearing it.
    last = llm.requests[-1].messages
    roles = [m["role"] for m in last]
    assert roles[0] == "system" and roles[-1] == "user" and "assistant" in roles
    assert "train" in last[-1]["content"].lower()
    heard = next(m["content"] for m in reversed(last) if m["role"] == "assistant")
    assert heard.endswith("…")
    assert 0 < len(heard.rstrip("…").strip()) < len(ANSWER) - 20
    assert ANSWER.startswith(heard.rstrip("…").strip())
