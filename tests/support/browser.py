"""Headless Chromium (Debian's package) driven by Playwright, for the browser client.

One browser per test. Its microphone is one of:

- ``"script"`` (tests): a microphone the test speaks into when the page shows what it
  waits for (``Page.say``), silent otherwise. An init script (``scripted_mic.js``)
  gives the page's ``getUserMedia`` a WebAudio stream that plays what the test queues;
  from there on the page's own path carries it (capture worklet or WebRTC track).
  ``wire_log.js`` records what arrives on the page's WebSockets, audio frames
  included, in order (``Page.wire``). Both are test-only: the page is served as is.
- ``"file"`` (``bench/browser.py``): Chromium's fake device playing a WAV on its own
  timeline, looped (a wrong WAV path gives silence and no error).
- ``"denied"``: the browser refuses the microphone.

Waits are ``wait_for_function`` on the page's ``window.duplexvoice`` with deadlines;
screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.speech import RATE, FloatAudio, pcm16

CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
INIT_SCRIPTS = tuple(Path(__file__).with_name(name) for name in ("scripted_mic.js", "wire_log.js"))
MICS = ("script", "file", "denied")
# A wait's deadline only bounds a failure (a loaded 2-core machine): a passing test
# moves on as soon as the page shows what it waits for.
DEADLINE_S = 60.0

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


def flags(wav: Path | None, mic: str = "script") -> list[str]:
    """Chromium's flags for ``mic`` (see the module's doc; ``wav`` for "file" only)."""
    if mic not in MICS:
        raise ValueError(f"mic must be one of {MICS}, not {mic!r}")
    if (wav is not None) != (mic == "file"):
        raise ValueError("a WAV goes with mic='file', and only with it")
    args = list(BASE_FLAGS)
    if mic == "denied":
        args += ["--use-fake-device-for-media-stream", "--deny-permission-prompts"]
    else:  # the scripted microphone never asks for a device; the flags keep it fake
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}")
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
        self.page.wait_for_function("() => window.duplexvoice !== undefined",
                                    timeout=DEADLINE_S * 1000)
        self.page.select_option("#transport", transport)

    def connect(self, timeout_s: float = DEADLINE_S) -> None:
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

    # -- the scripted microphone (mic="script") --------------------------------------

    def say(self, audio: FloatAudio, rate: int = RATE) -> int:
        """Queue ``audio`` on the microphone (after anything still playing); returns the
        saying's number for ``said``."""
        b64 = base64.b64encode(pcm16(audio)).decode()
        n: int = self.page.evaluate("([b64, rate]) => window.__mic.say(b64, rate)", [b64, rate])
        return n

    def said(self, n: int, timeout_s: float, what: str) -> None:
        """Wait until the microphone has played all of saying ``n``."""
        self.wait("window.__mic.said[arg] && window.__mic.said[arg].ended", timeout_s, what, n)

    def heard(self, n: int, energy_before: float, quiet_ms: float, timeout_s: float,
              what: str) -> None:
        """Wait until the page's own capture has heard saying ``n`` through: the
        microphone played all of it, the capture's energy rose past ``energy_before``
        (its value before the saying) and the capture has since heard ``quiet_ms`` of
        quiet (longer than any pause inside the speech, shorter than the silence the
        saying ends with)."""
        self.said(n, timeout_s, what)
        self.wait("dv.micEnergy > arg.before && dv.micQuietMs !== null"
                  " && dv.micQuietMs >= arg.quiet", timeout_s, what,
                  {"before": energy_before, "quiet": quiet_ms})

    def wire(self) -> list[dict[str, Any]]:
        """What arrived on the page's WebSockets, in order (``wire_log.js``)."""
        return list(self.page.evaluate("() => window.__wire"))

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
def browser_page(playwright: Any, name: str, wav: Path | None = None, mic: str = "script",
                 width: int = 1000, height: int = 900) -> Iterator[Page]:
    """A page in a fresh browser; ``mic`` as in the module's doc (a ``wav`` means
    "file")."""
    executable = find_chromium()
    assert executable, "chromium not found"
    if wav is not None:
        mic = "file"
    browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                         args=flags(wav, mic))
    try:
        context = browser.new_context(viewport={"width": width, "height": height})
        if mic == "script":
            for script in INIT_SCRIPTS:
                context.add_init_script(path=str(script))
        yield Page(context.new_page(), name)
    finally:
        browser.close()
