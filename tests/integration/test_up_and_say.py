"""`duplexvoice up` started as a user would, spoken to with `duplexvoice say`."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import wave
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_URL = re.compile(r"(ws://[\d.]+:\d+/ws)")


def test_up_then_say_writes_speech(tmp_path: Path) -> None:
    up = subprocess.Popen(
        [sys.executable, "-m", "duplexvoice", "up", "--port", "0", "--worker-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True,  # a signal for the test, not for pytest's group
    )
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            match = _URL.search(line)
            if match and not url:
                url.append(match.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert found.wait(180) and url, "".join(lines)
        out = tmp_path / "hello.wav"
        said = subprocess.run(
            [sys.executable, "-m", "duplexvoice", "say", "Hello from the whole stack.",
             "--url", url[0], "--out", str(out)],
            capture_output=True, text=True, timeout=60,
        )
        assert said.returncode == 0, said.stdout + said.stderr
        assert "first audio after" in said.stdout
        with wave.open(str(out)) as wav:
            assert wav.getframerate() == 48000 and wav.getnchannels() == 1
            assert wav.getnframes() / 48000 > 0.8  # Piper speaking six words
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(30)
        reader.join(5)
    assert code == 0, "".join(lines)
    text = "".join(lines)
    assert "orchestrator stopped" in text and "worker stopped" in text
