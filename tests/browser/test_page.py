"""The browser client in real headless Chromium, for both transports, against the
whole system (``duplexvoice up``: Piper, Whisper tiny.en, echo replies).

The microphone is scripted (``tests/support/browser.py``): a test says a sentence
when the page shows the state it needs (connected, the reply's audio playing, the
button held) and waits on what the page recorded (``window.duplexvoice``, and the
WebSocket's messages in arrival order) before the next step; never on time. Every
wait has a generous deadline that only bounds a failure. Tests check order and
absence, not figures: how fast the page goes silent is ``bench/browser.py``'s.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.wire.ports import free_port
from tests.browser.conftest import System
from tests.support.browser import DEADLINE_S, Page, browser_page, save_json, screenshot
from tests.support.eventually import eventually_sync
from tests.support.speech import SPEAKERS, say, silence

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TRANSPORTS = ["webrtc", "websocket"]
MOCK = "mock-en-us-tone"

FIRST = ("Please book a table for two people tomorrow evening "
         "at the little place by the old river bridge.")
SECOND = "Stop, I want to ask about the trains to the coast tomorrow morning."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def find(page: Page, kind: str, **fields: Any) -> list[dict[str, Any]]:
    return [e["msg"] for e in page.events() if e["dir"] == "in" and e["msg"]["type"] == kind
            and all(e["msg"].get(k) == v for k, v in fields.items())]


def index(events: list[dict[str, Any]], kind: str, **fields: Any) -> int:
    """Position of the first message from the server of ``kind`` with ``fields``."""
    for i, e in enumerate(events):
        msg = e["msg"]
        if e["dir"] == "in" and msg["type"] == kind and all(
                msg.get(k) == v for k, v in fields.items()):
            return i
    raise AssertionError(f"no {kind} {fields} among the page's events")


def controls(page: Page, uid: int) -> list[dict[str, Any]]:
    """The playback's pause/resume/interrupt records for ``uid``, in the order taken."""
    return list(page.eval(f"(dv.utterances[{uid}] || {{controls: []}}).controls"))


def control(records: list[dict[str, Any]], kind: str,
            after: int = -1) -> tuple[int, dict[str, Any]]:
    """The first record of ``kind`` after position ``after``, with its position."""
    for i, r in enumerate(records):
        if i > after and r["kind"] == kind:
            return i, r
    raise AssertionError(f"the page's playback took no {kind} (after #{after}): {records}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_talk_reply_interrupt_pause_resume(playwright: Any, system: System,
                                           transport: str) -> None:
    with browser_page(playwright, f"conversation-{transport}") as page:
        page.open(system.url, transport)
        page.connect()
        assert page.eval("dv.transport") == transport, page.summary()

        # 1. The user speaks; the transcript appears in the page, in place of its partials.
        page.say(say(FIRST, SPEAKERS[0]))
        first = page.message("transcript", DEADLINE_S, "the first final transcript",
                             final=True, turn=1)
        assert len(set(words(FIRST)) & set(words(first["text"]))) >= 10, first
        assert page.eval("dv.micEnergy") > 1.0  # the page's capture heard the microphone
        user = page.page.locator('#log .msg.user[data-key$=":u1"]')
        assert "table" in user.inner_text().lower()
        assert "partial" not in (user.get_attribute("class") or "")

        # 2. Its reply plays: energy measured on the page's output.
        reply = page.message("reply", DEADLINE_S, "the first reply", turn=1)
        uid = reply["utterance_id"]
        page.wait(f"(dv.utterances[{uid}] || {{}}).energy > 5", DEADLINE_S, "the reply's audio")
        page.measured("voice_to_voice", uid, DEADLINE_S, "voice-to-voice measured in the page")
        screenshot(page.page, f"conversation-{transport}-1-reply")

        # 3. The user speaks over it (it is playing): it pauses, then is interrupted.
        page.say(say(SECOND, SPEAKERS[3]))
        page.message("interrupt", DEADLINE_S, "the interrupt of the first reply",
                     utterance_id=uid)
        page.wait(f"dv.utterances[{uid}].ended === 'interrupted'", DEADLINE_S,
                  "the reply's end")
        page.wait("document.querySelector(`[data-utterance=\"${arg}\"]`).classList"
                  ".contains('interrupted')", DEADLINE_S, "the reply marked interrupted", uid)
        screenshot(page.page, f"conversation-{transport}-2-interrupted")

        # 4. The second turn is answered; once its answer plays, a short sound over it
        #    (100 ms, too short for words) pauses and resumes it, and it plays to its end.
        second = page.message("transcript", DEADLINE_S, "the second final transcript",
                              final=True, turn=2)
        assert len(set(words(SECOND)) & set(words(second["text"]))) >= 6, second
        uid2 = page.message("reply", DEADLINE_S, "the second reply", turn=2)["utterance_id"]
        assert uid2 > uid
        page.wait(f"(dv.utterances[{uid2}] || {{}}).energy > 5", DEADLINE_S,
                  "the second reply's audio")
        page.say(say("Uh.", SPEAKERS[3])[:1600])
        page.message("pause", DEADLINE_S, "the pause of the second reply", utterance_id=uid2)
        page.message("resume", DEADLINE_S, "its resume", utterance_id=uid2)
        page.message("utterance_end", DEADLINE_S, "the end of the second reply",
                     utterance_id=uid2)
        page.wait(f"dv.utterances[{uid2}].controls.some(c => c.kind === 'resume')",
                  DEADLINE_S, "the page's playback resumed the second reply")
        screenshot(page.page, f"conversation-{transport}-3-done")

        # Order, as the page got it: the first reply paused before its interrupt, and
        # interrupted before the second reply began; the second paused, then resumed,
        # then ended, completed, never interrupted.
        events = page.events()
        assert (index(events, "pause", utterance_id=uid)
                < index(events, "interrupt", utterance_id=uid)
                < index(events, "reply", utterance_id=uid2)), page.summary()
        assert (index(events, "pause", utterance_id=uid2)
                < index(events, "resume", utterance_id=uid2)
                < index(events, "utterance_end", utterance_id=uid2)), page.summary()
        end1 = events[index(events, "utterance_end", utterance_id=uid)]["msg"]
        end2 = events[index(events, "utterance_end", utterance_id=uid2)]["msg"]
        assert end1["reason"] == "interrupted" and end2["reason"] == "completed", (end1, end2)
        assert not find(page, "interrupt", utterance_id=uid2)
        u2 = page.eval(f"dv.utterances[{uid2}]")
        interrupted_at = events[index(events, "interrupt", utterance_id=uid)]["t"]
        assert u2["onset_at"] is not None and u2["onset_at"] > interrupted_at, u2

        # The first reply, as the page played it: paused, then interrupted, and nothing
        # of it written to the output after its interrupt.
        c1 = controls(page, uid)
        paused_at, _ = control(c1, "pause")
        _, stopped = control(c1, "interrupt", after=paused_at)
        u1 = page.eval(f"dv.utterances[{uid}]")
        assert u1["energy"] == stopped["energy"], (u1, stopped)
        assert u1["energy_after_interrupt"] == 0, u1
        # What was heard of it went to the server (over the data channel with WebRTC),
        # as the page's playback stood at the interrupt: the history keeps that much.
        reported = [e["msg"]["played_ms"] for e in page.events() if e["dir"] == "out"
                    and e["msg"]["type"] == "playback" and e["msg"]["utterance_id"] == uid]
        heard_ms = int(stopped["played_ms"] + 0.5)  # Math.round, as the page sends it
        assert stopped["played_ms"] > 0 and heard_ms in reported, (
            stopped, reported)

        # The second reply: nothing played while held, and it went on after the resume.
        c2 = controls(page, uid2)
        held_at, held = control(c2, "pause")
        _, resumed = control(c2, "resume", after=held_at)
        assert resumed["energy"] == held["energy"], c2  # silent while held
        page.wait(f"dv.utterances[{uid2}].energy > arg", DEADLINE_S,
                  "the second reply heard again after its resume", resumed["energy"])

        if transport == "websocket":
            # Frame by frame, in the order the page got them: no frame of the first
            # reply after its interrupt, none of the second before it; the second
            # reply's frames all there (one sequence, no gap, as many as the server
            # says it sent) and every one of them played, none while held.
            got = page.wire()
            wire = [m for m in got if m["socket"] == got[-1]["socket"]]  # this session's
            cut = next(m["i"] for m in wire
                       if m["type"] == "interrupt" and m["utterance_id"] == uid)
            frames1 = [m for m in wire if m["type"] == "audio" and m["utterance_id"] == uid]
            frames2 = [m for m in wire if m["type"] == "audio" and m["utterance_id"] == uid2]
            assert frames1 and not [m for m in frames1 if m["i"] > cut], (cut, frames1[-3:])
            assert frames2 and all(m["i"] > cut for m in frames2), (cut, frames2[:3])
            seq = [m["sequence"] for m in frames2]
            assert seq == list(range(seq[0], seq[0] + len(seq))), seq
            assert len(seq) == end2["frames"], (len(seq), end2)
            assert resumed["played_ms"] == held["played_ms"], c2
            page.wait(f"dv.utterances[{uid2}].played_ms === arg", DEADLINE_S,
                      "every frame of the second reply played", 20.0 * len(seq))
            assert page.eval(f"dv.utterances[{uid}].played_ms") == stopped["played_ms"]

        save_json(f"conversation-{transport}", page.eval(
            "({measurements: dv.measurements, turns: dv.turns, utterances: dv.utterances,"
            " output_latency_ms: dv.outputLatencyMs})"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_text_box_is_a_user_turn(playwright: Any, system: System, transport: str) -> None:
    with browser_page(playwright, f"text-{transport}") as page:
        page.open(system.url, transport)
        page.connect()
        page.page.fill("#text-input", "What time does the museum open")
        page.page.press("#text-input", "Enter")
        got = page.wait("dv.events.find(e => e.msg.type === 'reply' || e.msg.type === 'error')",
                        20, "a reply")["msg"]
        assert got["type"] == "reply", f"the server refused the typed turn: {got}"
        reply = got
        assert "museum" in reply["text"].lower(), reply
        page.wait(f"(dv.utterances[{reply['utterance_id']}] || {{}}).energy > 5", DEADLINE_S,
                  "the reply's audio")
        assert "museum" in page.page.locator("#log .msg.bot").first.inner_text().lower()
        assert page.page.locator("#log .msg.user").count() == 1  # not shown twice
        uid, turn = reply["utterance_id"], reply["turn"]
        # The pill showed the assistant thinking, then speaking (as its audio played).
        page.wait("dv.activities.includes('speaking')", DEADLINE_S, "the speaking state")
        shown = page.eval("dv.activities")
        assert shown.index("thinking") < shown.index("speaking"), shown
        # A typed turn has no voice to voice: text to voice, the server's and the page's.
        row = page.wait("dv.turns.find(r => r.turn === arg && r.text_to_voice_ms !== undefined"
                        " && r.page_text_to_voice_ms !== undefined)", DEADLINE_S,
                        "the typed turn's text-to-voice figures", turn)
        assert "voice_to_voice_ms" not in row and "page_voice_to_voice_ms" not in row, row
        cells = page.page.locator(f'#latency-body tr[data-key$=":t{turn}"] td').all_inner_texts()
        # voice to voice (server, page): none; text to voice: a figure
        assert cells[1] == cells[2] == "—" and cells[3].endswith(" ms"), cells
        # What was heard goes back to the server, over the data channel with WebRTC,
        # and is taken there as over a WebSocket (no error).
        page.wait("dv.events.some(e => e.dir === 'out' && e.msg.type === 'playback'"
                  " && e.msg.utterance_id === arg && e.msg.played_ms > 0)", DEADLINE_S,
                  "a playback report of the reply", uid)
        page.message("utterance_end", DEADLINE_S, "the reply's end", utterance_id=uid)
        assert not find(page, "error"), find(page, "error")
        screenshot(page.page, f"text-{transport}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_microphone_is_explained_and_the_session_still_works(
        playwright: Any, system: System, transport: str) -> None:
    with browser_page(playwright, f"mic-denied-{transport}", mic="denied",
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
                                                   transport: str) -> None:
    orch = OrchestratorProcess("--workers", system.worker_addr,
                               env={"DUPLEXVOICE_ORCH_API_KEYS": "sekrit"}).start()
    try:
        with browser_page(playwright, f"key-{transport}") as page:
            page.open(f"http://{orch.addr}/", transport)
            page.wait("!document.getElementById('key-row').hidden", DEADLINE_S, "the key field")
            assert page.page.get_attribute("#api-key", "type") == "password"
            page.page.fill("#api-key", "wrong")
            page.page.click("#connect")
            page.wait("dv.notices.auth", DEADLINE_S, "the refusal")
            assert "refused the API key" in page.eval("dv.notices.auth")
            assert page.eval("dv.connection") == "disconnected"
            assert page.eval("dv.transport") is None  # no fallback on a refused key
            page.page.fill("#api-key", "sekrit")
            page.page.press("#api-key", "Enter")  # Enter in the key field connects
            page.wait("dv.connection === 'connected' && dv.state === 'LISTENING'", DEADLINE_S,
                      "connected with the key")
            assert page.eval("dv.transport") == transport
            assert page.eval("sessionStorage.getItem('duplexvoice.apiKey')") == "sekrit"
    finally:
        orch.terminate()


@pytest.fixture
def two_pages(playwright: Any, system: System) -> Iterator[dict[str, Page]]:
    with browser_page(playwright, "drop-webrtc") as rtc, \
            browser_page(playwright, "drop-websocket") as ws:
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
        page.wait("dv.connection === 'reconnecting'", DEADLINE_S, f"{transport}: reconnecting")
        text = page.page.locator('[data-notice="conn"]').inner_text()
        assert "Reconnecting" in text, text
        screenshot(page.page, f"drop-{transport}-reconnecting")
    system.start()
    for transport, page in two_pages.items():
        page.wait("dv.connection === 'connected' && dv.state === 'LISTENING'", DEADLINE_S,
                  f"{transport}: reconnected")
        assert page.eval("dv.transport") == transport and page.eval("dv.reconnects") == 1
        assert "Reconnected" in page.page.locator('[data-notice="conn"]').inner_text()
        screenshot(page.page, f"drop-{transport}-reconnected")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_push_to_talk_sends_only_what_is_said_while_held(playwright: Any, system: System,
                                                         transport: str) -> None:
    # Said with the button up, held (mouse), up, held (space bar): only the held ones
    # may reach the server. A turn said while held is a barrier: its transcript comes
    # after anything said before it would have been transcribed.
    up1, held1 = "The secret code is banana.", "Please call the front desk."
    up2, held2 = "My password is orange juice.", "Open the kitchen window."
    unheard = {"secret", "code", "banana", "password", "orange", "juice"}

    with browser_page(playwright, f"ptt-{transport}") as page:
        page.open(system.url, transport)
        page.page.check('input[name="mode"][value="ptt"]')
        page.connect()

        def speak_up(text: str, what: str) -> None:
            """Say ``text`` with the button up; return once the page's capture has
            heard it through (it ends in 1 s of quiet; its inner pauses are shorter
            than 600 ms), so that pressing next cannot catch its end."""
            before = page.eval("dv.micEnergy")
            n = page.say(np.concatenate([say(text, SPEAKERS[0]), silence(1.0)]))
            page.heard(n, before, 600, DEADLINE_S, what)

        def finals(count: int, what: str) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = page.wait(
                "(() => { const f = dv.events.filter(e => e.dir === 'in' &&"
                " e.msg.type === 'transcript' && e.msg.final).map(e => e.msg);"
                " return f.length >= arg ? f : null; })()", DEADLINE_S, what, count)
            return found

        speak_up(up1, "the first sentence, said with the button up")
        page.page.hover("#ptt")
        page.page.mouse.down()
        assert page.page.get_attribute("#ptt", "aria-pressed") == "true"
        page.say(say(held1, SPEAKERS[0]))
        first = finals(1, "the transcript of the sentence said while held")[0]
        page.page.mouse.up()
        assert page.page.get_attribute("#ptt", "aria-pressed") == "false"
        assert "desk" in words(first["text"]), first

        speak_up(up2, "the third sentence, said with the button up again")
        page.page.keyboard.down("Space")
        assert page.page.get_attribute("#ptt", "aria-pressed") == "true"
        page.say(say(held2, SPEAKERS[0]))
        got = finals(2, "the transcript of the sentence said while held by the space bar")
        page.page.keyboard.up("Space")
        assert page.page.get_attribute("#ptt", "aria-pressed") == "false"

        assert len(got) == 2 and got[0] == first, got
        assert {"kitchen", "window"} & set(words(got[1]["text"])), got
        said = [w for m in find(page, "transcript") for w in words(m["text"])]
        assert not unheard & set(said), find(page, "transcript")


def test_webrtc_falls_back_to_websocket_by_itself(playwright: Any, system: System) -> None:
    with browser_page(playwright, "fallback") as page:
        page.page.route("**/webrtc/offer", lambda route: route.abort())  # WebRTC fails
        page.open(system.url, "webrtc")
        page.connect()
        assert page.eval("dv.transport") == "websocket"
        assert "WebSocket" in page.eval("dv.notices.transport || ''")
        page.page.fill("#text-input", "Are you there")
        page.page.press("#text-input", "Enter")
        reply = page.wait("dv.events.find(e => e.msg.type === 'reply')", DEADLINE_S,
                          "a reply")["msg"]
        page.wait(f"(dv.utterances[{reply['utterance_id']}] || {{}}).energy > 5", DEADLINE_S,
                  "the reply's audio over the fallback")
        screenshot(page.page, "fallback-websocket")


def test_no_worker_is_explained(playwright: Any, system: System) -> None:
    # An orchestrator whose only worker address answers nothing, until a worker starts
    # there.
    port = free_port("127.0.0.1")
    orch = OrchestratorProcess("--workers", f"127.0.0.1:{port}").start()
    worker: WorkerProcess | None = None
    try:
        with browser_page(playwright, "no-worker") as page:
            page.open(f"http://{orch.addr}/", "webrtc")
            page.connect()  # the session itself needs no worker
            page.page.fill("#text-input", "Hello")
            page.page.press("#text-input", "Enter")
            page.wait("dv.notices.worker", DEADLINE_S, "the no-worker message")
            assert "worker" in page.eval("dv.notices.worker").lower()
            assert page.eval("dv.connection") == "connected"  # the session goes on
            screenshot(page.page, "no-worker")
            # The worker comes back: once the next reply is heard, the notice goes.
            worker = WorkerProcess("--port", str(port),
                                   env={"DUPLEXVOICE_WORKER_DEFAULT_MODEL_ID": MOCK}).start()
            eventually_sync(lambda: _ready(f"http://{orch.addr}/"), timeout=DEADLINE_S,
                            what="the orchestrator sees the worker")
            page.page.fill("#text-input", "Hello again")
            page.page.press("#text-input", "Enter")
            reply = page.message("reply", DEADLINE_S, "the reply", turn=2)
            page.wait(f"(dv.utterances[{reply['utterance_id']}] || {{}}).energy > 5",
                      DEADLINE_S, "the reply's audio")
            page.wait("dv.notices.worker === undefined", DEADLINE_S, "the notice gone")
    finally:
        if worker is not None:
            worker.terminate()
        orch.terminate()


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:  # 503 (HTTPError) or not yet answering
        return False


def _metric(base_url: str, name: str) -> float:
    with urllib.request.urlopen(base_url + "metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _until_no_peers(base_url: str) -> None:
    eventually_sync(lambda: _metric(base_url, "duplexvoice_webrtc_peers_active") == 0,
                    timeout=DEADLINE_S, what="every peer connection freed")


def test_a_page_that_goes_away_frees_its_peer_connection(playwright: Any,
                                                         system: System) -> None:
    _until_no_peers(system.url)  # pages of earlier tests have gone too
    with browser_page(playwright, "leaves") as page:
        page.open(system.url, "webrtc")
        page.connect()
        assert page.eval("dv.transport") == "webrtc"
        assert _metric(system.url, "duplexvoice_webrtc_peers_active") == 1
        page.page.close()  # the tab goes away without a word
    _until_no_peers(system.url)
    assert _metric(system.url, "duplexvoice_sessions_active") == 0
