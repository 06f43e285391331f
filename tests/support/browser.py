"""Headless Chromium (Debian's package) driven by Playwright, for the browser client.

One browser per test: the fake microphone is a launch flag (a WAV per browser, made at
test time from ``tests/support/speech.py``; Chromium starts it when the page opens the
microphone and loops it). A wrong WAV path gives silence and no error, so tests
assert that the page's microphone saw energy. Waits are ``wait_for_function`` on the
page's ``window.duplexvoice`` with deadlines; screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.speech import FloatAudio, write_wav

CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

BASE_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
)


def find_chromium() -> str | None:
    for path in CHROMIUM:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium")
    return found


def mic_wav(path: Path, audio: FloatAudio, rate: int = 16000) -> Path:
    """The fake microphone's WAV, with a long silence after so its loop never matters."""
    return write_wav(path, np.concatenate([audio, np.zeros(rate * 60, np.float32)]), rate)


def flags(wav: Path | None, mic: str = "fake") -> list[str]:
    """``mic``: "fake" (the WAV, granted without a prompt) or "denied" (refused)."""
    args = list(BASE_FLAGS)
    if mic == "fake":
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        if wav is not None:
            args.append(f"--use-file-for-fake-audio-capture={wav}")
    elif mic == "denied":
        args += ["--use-fake-device-for-media-stream", "--deny-permission-prompts"]
    else:
        raise ValueError(f"mic must be 'fake' or 'denied', not {mic!r}")
    return args


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


def save_json(name: str, data: Any) -> Path:
    """What a test measured, next to its screenshots (for a reader, not asserted)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", name) + ".json")
    path.write_text(json.dumps(data, indent=1))
    return path


class Page:
    """The client page, read through ``window.duplexvoice``."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open(self, url: str, transport: str) -> None:
        self.page.goto(url)
        self.page.wait_for_function("() => window.duplexvoice !== undefined", timeout=10_000)
        self.page.select_option("#transport", transport)

    def connect(self, timeout_s: float = 20.0) -> None:
        self.page.click("#connect")
        self.wait("dv.connection === 'connected' && dv.state === 'LISTENING'", timeout_s,
                  "connected")

    def wait(self, condition: str, timeout_s: float, what: str, arg: Any = None) -> Any:
        """Wait until ``condition`` (a JS expression over ``dv`` = window.duplexvoice and
        ``arg``) is truthy; return its value. On the deadline, fail with the page's log."""
        script = f"(arg) => {{ const dv = window.duplexvoice; return ({condition}); }}"
        try:
            handle = self.page.wait_for_function(script, arg=arg, timeout=timeout_s * 1000,
                                                 polling=50)
        except Exception as exc:  # Playwright's TimeoutError: say what the page saw
            shot = screenshot(self.page, f"{self.name}-timeout")
            raise AssertionError(f"{what}: not within {timeout_s} s ({exc.__class__.__name__})"
                                 f"; screenshot {shot}\n{self.summary()}") from None
        return handle.json_value()

    def eval(self, expression: str) -> Any:
        script = f"() => {{ const dv = window.duplexvoice; return ({expression}); }}"
        return self.page.evaluate(script)

    def message(self, kind: str, timeout_s: float, what: str, **fields: Any) -> dict[str, Any]:
        """The first message of type ``kind`` from the server with these ``fields``."""
        found: dict[str, Any] = self.wait(
            "dv.events.find(e => e.dir === 'in' && e.msg.type === arg.kind &&"
            " Object.entries(arg.fields).every(([k, v]) => e.msg[k] === v))",
            timeout_s, what, {"kind": kind, "fields": fields})["msg"]
        return found

    def measured(self, kind: str, utterance_id: int, timeout_s: float,
                 what: str) -> dict[str, Any]:
        """The page's measurement record of ``kind`` for that utterance."""
        found: dict[str, Any] = self.wait(
            "dv.measurements.find(m => m.kind === arg.kind && m.utterance_id === arg.uid)",
            timeout_s, what, {"kind": kind, "uid": utterance_id})
        return found

    def events(self) -> list[dict[str, Any]]:
        return list(self.eval("dv.events"))

    def summary(self) -> str:
        try:
            events = self.eval("dv.events.map(e => [Math.round(e.t), e.dir, e.msg])")
            extra = self.eval("({state: dv.state, connection: dv.connection,"
                              " transport: dv.transport, mic: dv.micState,"
                              " micEnergy: dv.micEnergy, frames: dv.frames, notices: dv.notices,"
                              " utterances: dv.utterances, measurements: dv.measurements})")
        except Exception as exc:
            return f"(page not readable: {exc})\n" + "\n".join(self.console[-30:])
        lines = [json.dumps(e)[:300] for e in events
                 if e[2].get("type") not in ("playback",)][-80:]
        return (json.dumps(extra)[:4000] + "\n" + "\n".join(lines) + "\n-- console --\n"
                + "\n".join(self.console[-30:]))


@contextmanager
def browser_page(playwright: Any, name: str, wav: Path | None, mic: str = "fake",
                 width: int = 1000, height: int = 900) -> Iterator[Page]:
    executable = find_chromium()
    assert executable, "chromium not found"
    browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                         args=flags(wav, mic))
    try:
        context = browser.new_context(viewport={"width": width, "height": height})
        yield Page(context.new_page(), name)
    finally:
        browser.close()
