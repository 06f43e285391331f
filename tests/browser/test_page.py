"""The browser client in real headless Chromium, for both transports, against the
whole system (``duplexvoice up``: Piper, Whisper tiny.en, echo replies).

The fake microphone plays speech made at test time, from the moment the page opens
the microphone, on one timeline per test: the gaps leave room for the server's
latency on a loaded machine (the reply to a 4 s sentence lasts about as long, so a
second sentence 2.4 s after the first lands in the middle of it). Tests wait on what
the page recorded (``window.duplexvoice``), never on time.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duplexvoice.launcher import OrchestratorProcess
from tests.browser.conftest import System
from tests.support.browser import Page, browser_page, mic_wav, save_json, screenshot
from tests.support.speech import SPEAKERS, say, silence

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TRANSPORTS = ["webrtc", "websocket"]

FIRST = ("Please book a table for two people tomorrow evening "
         "at the little place by the old river bridge.")
SECOND = "Stop, I want to ask about the trains to the coast tomorrow morning."
# Bound on "silent after pause/interrupt" in a test on a shared 2-core machine: the
# benchmark measures the real figure (target p95 <= 30 ms); this catches a page that
# keeps playing a buffer or a gate that does not close.
SILENT_WITHIN_MS = 120


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def find(page: Page, kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [e["msg"] for e in page.events() if e["dir"] == "in" and e["msg"]["type"] == kind
            and all(e["msg"].get(k) == v for k, v in fields.items())]


@pytest.fixture
def conversation_wav(tmp_path: Path) -> Path:
    track = np.concatenate([
        silence(2.0),  # connecting (WebRTC takes longer)
        say(FIRST, SPEAKERS[0]),
        silence(2.4),  # the reply to FIRST starts here and lasts about 4 s
        say(SECOND, SPEAKERS[3]),  # over that reply: pause, then interrupt
        silence(2.0),  # the reply to SECOND starts here (about 3.5 s long)
        say("Uh.", SPEAKERS[3])[:1600],  # 100 ms over it (too short for words): pause, resume
    ])
    return mic_wav(tmp_path / "mic.wav", track)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_talk_reply_interrupt_pause_resume(playwright: Any, system: System,
                                           conversation_wav: Path, transport: str) -> None:
    with browser_page(playwright, f"conversation-{transport}", conversation_wav) as page:
        page.open(system.url, transport)
        page.connect()
        assert page.eval("dv.transport") == transport, page.summary()

        # 1. The transcript appears in the page, in place of its partials.
        first = page.message("transcript", 30, "the first final transcript", final=True, turn=1)
        assert len(set(words(FIRST)) & set(words(first["text"]))) >= 10, first
        assert page.eval("dv.micEnergy") > 1.0  # the fake microphone delivered
        user = page.page.locator('#log .msg.user[data-key$=":u1"]')
        assert "table" in user.inner_text().lower()
        assert "partial" not in (user.get_attribute("class") or "")

        # 2. Its reply plays: energy measured on the page's output.
        reply = page.message("reply", 20, "the first reply", turn=1)
        uid = reply["utterance_id"]
        page.wait(f"(dv.utterances[{uid}] || {{}}).energy > 5", 20, "the reply's audio")
        page.measured("voice_to_voice", uid, 10, "voice-to-voice measured in the page")
        screenshot(page.page, f"conversation-{transport}-1-reply")

        # 3. The second sentence over it: pause, interrupt, silence, nothing old after.
        page.message("interrupt", 20, "the interrupt of the first reply", utterance_id=uid)
        stop = page.measured("interrupt", uid, 5, "silence after the interrupt")
        assert stop["ms"] <= SILENT_WITHIN_MS, stop
        assert find(page, "pause", utterance_id=uid), page.summary()
        page.wait(f"dv.utterances[{uid}].ended === 'interrupted'", 10, "the reply's end")
        page.wait("document.querySelector(`[data-utterance=\"${arg}\"]`).classList"
                  ".contains('interrupted')", 5, "the reply marked interrupted", uid)
        screenshot(page.page, f"conversation-{transport}-2-interrupted")

        # 4. The second turn is answered; a short sound over that answer pauses and
        #    resumes it, and it plays to its end.
        second = page.message("reply", 30, "the second reply", turn=2)
        uid2 = second["utterance_id"]
        assert uid2 > uid
        page.message("pause", 20, "the pause of the second reply", utterance_id=uid2)
        page.message("resume", 10, "its resume", utterance_id=uid2)
        hold = page.measured("hold", uid2, 5, "silence after the pause")
        assert hold["ms"] <= SILENT_WITHIN_MS, hold
        page.wait(f"dv.utterances[{uid2}] && dv.utterances[{uid2}].ended", 30,
                  "the end of the second reply")
        u2 = page.eval(f"dv.utterances[{uid2}]")
        assert u2["ended"] == "completed" and u2["energy"] > 5, u2
        assert not find(page, "interrupt", utterance_id=uid2)
        # Nothing of the interrupted reply was heard after its interrupt.
        assert page.eval(f"dv.utterances[{uid}].energy_after_interrupt") == 0, page.summary()
        screenshot(page.page, f"conversation-{transport}-3-done")
        save_json(f"conversation-{transport}", page.eval(
            "({measurements: dv.measurements, turns: dv.turns,"
            " output_latency_ms: dv.outputLatencyMs})"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_text_box_is_a_user_turn(playwright: Any, system: System, tmp_path: Path,
                                     transport: str) -> None:
    wav = mic_wav(tmp_path / "quiet.wav", silence(1.0))
    with browser_page(playwright, f"text-{transport}", wav) as page:
        page.open(system.url, transport)
        page.connect()
        page.page.fill("#text-input", "What time does the museum open")
        page.page.press("#text-input", "Enter")
        got = page.wait("dv.events.find(e => e.msg.type === 'reply' || e.msg.type === 'error')",
                        20, "a reply")["msg"]
        assert got["type"] == "reply", f"the server refused the typed turn: {got}"
        reply = got
        assert "museum" in reply["text"].lower(), reply
        page.wait(f"(dv.utterances[{reply['utterance_id']}] || {{}}).energy > 5", 20,
                  "the reply's audio")
        assert "museum" in page.page.locator("#log .msg.bot").first.inner_text().lower()
        assert page.page.locator("#log .msg.user").count() == 1  # not shown twice
        screenshot(page.page, f"text-{transport}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_microphone_is_explained_and_the_session_still_works(
        playwright: Any, system: System, transport: str) -> None:
    with browser_page(playwright, f"mic-denied-{transport}", None, mic="denied",
                      width=360, height=780) as page:  # phone width
        page.open(system.url, transport)
        page.connect()
        assert page.eval("dv.micState") == "denied"
        notice = page.page.locator('[data-notice="mic"]')
        assert "refused" in notice.inner_text() and "type" in notice.inner_text()
        assert page.eval("dv.transport") == transport  # connected without a microphone
        # Push to talk by keyboard: choose it, hold the space bar, let go.
        page.page.focus('input[name="mode"][value="ptt"]')
        page.page.keyboard.press("Space")
        assert page.page.is_checked('input[name="mode"][value="ptt"]')
        page.page.keyboard.down("Space")
        assert page.page.get_attribute("#ptt", "aria-pressed") == "true"
        page.page.keyboard.up("Space")
        assert page.page.get_attribute("#ptt", "aria-pressed") == "false"
        screenshot(page.page, f"mic-denied-{transport}-360px")
        # Readable at 360 px: nothing wider than the viewport.
        assert page.eval("document.documentElement.scrollWidth") <= 360


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_that_needs_a_key_gets_a_key_field(playwright: Any, system: System,
                                                   tmp_path: Path, transport: str) -> None:
    orch = OrchestratorProcess("--workers", system.worker_addr,
                               env={"DUPLEXVOICE_ORCH_API_KEYS": "sekrit"}).start()
    wav = mic_wav(tmp_path / "quiet.wav", silence(1.0))
    try:
        with browser_page(playwright, f"key-{transport}", wav) as page:
            page.open(f"http://{orch.addr}/", transport)
            page.wait("!document.getElementById('key-row').hidden", 5, "the key field")
            assert page.page.get_attribute("#api-key", "type") == "password"
            page.page.fill("#api-key", "wrong")
            page.page.click("#connect")
            page.wait("dv.notices.auth", 10, "the refusal")
            assert "refused the API key" in page.eval("dv.notices.auth")
            assert page.eval("dv.connection") == "disconnected"
            assert page.eval("dv.transport") is None  # no fallback on a refused key
            page.page.fill("#api-key", "sekrit")
            page.page.press("#api-key", "Enter")  # Enter in the key field connects
            page.wait("dv.connection === 'connected' && dv.state === 'LISTENING'", 20,
                      "connected with the key")
            assert page.eval("dv.transport") == transport
            assert page.eval("sessionStorage.getItem('duplexvoice.apiKey')") == "sekrit"
    finally:
        orch.terminate()


@pytest.fixture
def two_pages(playwright: Any, system: System, tmp_path: Path) -> Iterator[dict[str, Page]]:
    wav = mic_wav(tmp_path / "quiet.wav", silence(1.0))
    with browser_page(playwright, "drop-webrtc", wav) as rtc, \
            browser_page(playwright, "drop-websocket", wav) as ws:
        yield {"webrtc": rtc, "websocket": ws}


def test_a_dropped_connection_is_shown_and_reconnects(system: System,
                                                      two_pages: dict[str, Page]) -> None:
    # Both transports in one test: one restart of the system serves both.
    for transport, page in two_pages.items():
        page.open(system.url, transport)
        page.connect()
        assert page.eval("dv.transport") == transport
    system.stop()
    for transport, page in two_pages.items():
        page.wait("dv.connection === 'reconnecting'", 10, f"{transport}: reconnecting")
        text = page.page.locator('[data-notice="conn"]').inner_text()
        assert "Reconnecting" in text, text
        screenshot(page.page, f"drop-{transport}-reconnecting")
    system.start()
    for transport, page in two_pages.items():
        page.wait("dv.connection === 'connected' && dv.state === 'LISTENING'", 30,
                  f"{transport}: reconnected")
        assert page.eval("dv.transport") == transport and page.eval("dv.reconnects") == 1
        assert "Reconnected" in page.page.locator('[data-notice="conn"]').inner_text()
        screenshot(page.page, f"drop-{transport}-reconnected")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_push_to_talk_sends_only_what_is_said_while_held(playwright: Any, system: System,
                                                         tmp_path: Path, transport: str) -> None:
    unheard, heard = "The secret code is banana.", "Please call the front desk."
    wav = mic_wav(tmp_path / "ptt.wav", np.concatenate([
        silence(2.0), say(unheard, SPEAKERS[0]), silence(3.0), say(heard, SPEAKERS[0])]))
    with browser_page(playwright, f"ptt-{transport}", wav) as page:
        page.open(system.url, transport)
        page.page.check('input[name="mode"][value="ptt"]')
        page.connect()
        # The first sentence plays while the button is up: the server must not hear it.
        page.wait("dv.micQuietMs !== null && dv.micQuietMs > 1000", 20,
                  "the first sentence, said with the button up")
        page.page.hover("#ptt")
        page.page.mouse.down()  # held through the second sentence
        assert page.page.get_attribute("#ptt", "aria-pressed") == "true"
        page.wait("dv.micQuietMs !== null && dv.micQuietMs > 500 && dv.micQuietMs < 1000"
                  " || dv.events.some(e => e.msg.type === 'transcript' && e.msg.final)", 20,
                  "the second sentence")
        page.wait("dv.micQuietMs > 600", 10, "silence after the second sentence")
        page.page.mouse.up()
        final = page.wait("dv.events.find(e => e.msg.type === 'transcript' && e.msg.final)",
                          20, "the final transcript")["msg"]
        assert "desk" in words(final["text"]), final
        assert not set(words(final["text"])) & {"secret", "banana"}, final
        assert len(find(page, "transcript", final=True)) == 1
        assert not any("banana" in words(m["text"]) for m in find(page, "transcript"))


def test_webrtc_falls_back_to_websocket_by_itself(playwright: Any, system: System,
                                                  tmp_path: Path) -> None:
    wav = mic_wav(tmp_path / "quiet.wav", silence(1.0))
    with browser_page(playwright, "fallback", wav) as page:
        page.page.route("**/webrtc/offer", lambda route: route.abort())  # WebRTC fails
        page.open(system.url, "webrtc")
        page.connect()
        assert page.eval("dv.transport") == "websocket"
        assert "WebSocket" in page.eval("dv.notices.transport || ''")
        page.page.fill("#text-input", "Are you there")
        page.page.press("#text-input", "Enter")
        reply = page.wait("dv.events.find(e => e.msg.type === 'reply')", 20, "a reply")["msg"]
        page.wait(f"(dv.utterances[{reply['utterance_id']}] || {{}}).energy > 5", 20,
                  "the reply's audio over the fallback")
        screenshot(page.page, "fallback-websocket")


def test_no_worker_is_explained(playwright: Any, system: System, tmp_path: Path) -> None:
    # An orchestrator whose only worker address answers nothing.
    orch = OrchestratorProcess("--workers", "127.0.0.1:9").start()
    wav = mic_wav(tmp_path / "quiet.wav", silence(1.0))
    try:
        with browser_page(playwright, "no-worker", wav) as page:
            page.open(f"http://{orch.addr}/", "webrtc")
            page.connect()  # the session itself needs no worker
            page.page.fill("#text-input", "Hello")
            page.page.press("#text-input", "Enter")
            page.wait("dv.notices.worker", 30, "the no-worker message")
            assert "worker" in page.eval("dv.notices.worker").lower()
            assert page.eval("dv.connection") == "connected"  # the session goes on
            screenshot(page.page, "no-worker")
    finally:
        orch.terminate()


def _metric(base_url: str, name: str) -> float:
    with urllib.request.urlopen(base_url + "metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _until_no_peers(base_url: str) -> None:
    deadline = time.monotonic() + 30
    while _metric(base_url, "duplexvoice_webrtc_peers_active") != 0:
        assert time.monotonic() < deadline, "peer connections were not freed within 30 s"
        time.sleep(0.1)  # polling an observable figure, with a deadline


def test_a_page_that_goes_away_frees_its_peer_connection(playwright: Any, system: System,
                                                         tmp_path: Path) -> None:
    wav = mic_wav(tmp_path / "quiet.wav", silence(1.0))
    _until_no_peers(system.url)  # pages of earlier tests have gone too
    with browser_page(playwright, "leaves", wav) as page:
        page.open(system.url, "webrtc")
        page.connect()
        assert page.eval("dv.transport") == "webrtc"
        assert _metric(system.url, "duplexvoice_webrtc_peers_active") == 1
        page.page.close()  # the tab goes away without a word
    _until_no_peers(system.url)
    assert _metric(system.url, "duplexvoice_sessions_active") == 0
