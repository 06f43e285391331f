"""`duplexvoice say` run as a user runs it (a subprocess, no sound card) against a real
orchestrator process and a real mock-voice worker process: what it prints, the WAVs
it writes, its exit code."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from tests.support.eventually import eventually_sync
from tests.support.redis_server import free_port

pytestmark = pytest.mark.integration

VOICE = "mock-en-us-tone"
LONG = ("This sentence is long enough to keep the mock voice busy for a few seconds, "
        "so that there is time to pause it, resume it, or interrupt it on the way.")
_SAY_TIMEOUT_S = 60  # the deadline of one say run; a passing one takes about a second


@pytest.fixture(scope="module")
def orchestrator(mock_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    proc = OrchestratorProcess("--workers", mock_worker.addr, "--registry-poll-s", "0.5").start()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def workerless() -> Iterator[OrchestratorProcess]:
    """An orchestrator whose only worker address has nothing behind it (so every
    session fails with WORKER_UNAVAILABLE), and that wants an API key."""
    proc = OrchestratorProcess("--workers", f"127.0.0.1:{free_port()}",
                               "--api-keys", "secret").start()
    yield proc
    proc.terminate()


def say(*args: str, stdin: str | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duplexvoice", "say", *args], input=stdin, cwd=cwd,
        env={**os.environ, "DUPLEXVOICE_NO_PLAYER": "1"}, capture_output=True, text=True,
        timeout=_SAY_TIMEOUT_S,
    )


def frames_sent(orch: OrchestratorProcess) -> int:
    with urllib.request.urlopen(f"http://{orch.addr}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^duplexvoice_frames_sent_total (\d+(?:\.\d+)?)$", text, re.M)
    assert match, text
    return int(float(match.group(1)))


def wav_frames(path: Path) -> int:
    """Length in 20 ms frames."""
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (48000, 1)
        return wav.getnframes() // 960


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


# -- one text ---------------------------------------------------------------------------


def test_refused_voice_stops_before_speaking(orchestrator: OrchestratorProcess,
                                             tmp_path: Path) -> None:
    before = frames_sent(orchestrator)
    out = tmp_path / "out.wav"
    result = say("Hi", "--voice", "no-such-voice", "--url", orchestrator.ws_url,
                 "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error INVALID_CONFIG: voice 'no-such-voice' is not available" in result.stderr
    no_traceback(result)
    # Nothing was spoken, not even with the default voice.
    assert not out.exists() and result.stdout == ""
    assert frames_sent(orchestrator) == before


def test_accepted_voice_speaks(orchestrator: OrchestratorProcess, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    result = say("Hello there.", "--voice", VOICE, "--url", orchestrator.ws_url,
                 "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # the config check's answer is not shown as an error
    match = re.search(r"wrote .*out\.wav \(.*, (\d+) frames\).*utterance_end: completed",
                      result.stdout)
    assert match, result.stdout
    assert wav_frames(out) == int(match.group(1)) > 0


def test_server_error_is_shown_as_the_server_sent_it(workerless: OrchestratorProcess,
                                                     tmp_path: Path) -> None:
    result = say("Hi", "--url", workerless.ws_url, "--api-key", "secret",
                 "--out", str(tmp_path / "out.wav"), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    # The utterance failed, not the session: no session_end, exit 1 all the same.
    assert lines[0].startswith("error WORKER_UNAVAILABLE: "), result.stderr
    assert lines[1:] == [], result.stderr
    no_traceback(result)


def test_refused_connection_is_explained(workerless: OrchestratorProcess,
                                         tmp_path: Path) -> None:
    result = say("Hi", "--url", workerless.ws_url, cwd=tmp_path)
    assert result.returncode == 1
    assert "refused the connection: HTTP 401" in result.stderr and "--api-key" in result.stderr
    no_traceback(result)


# -- interactive ------------------------------------------------------------------------


def utterance_lines(stdout: str) -> dict[int, tuple[str, int]]:
    """utterance id -> (reason, frames), from the console's utterance lines."""
    found = re.findall(r"^\[utterance (\d+) (\w+): (\d+) frames", stdout, re.M)
    return {int(uid): (reason, int(frames)) for uid, reason, frames in found}


def test_piped_lines_are_all_spoken_before_exit(orchestrator: OrchestratorProcess,
                                                tmp_path: Path) -> None:
    result = say("-i", "--url", orchestrator.ws_url, "--out", str(tmp_path / "wavs"),
                 stdin="one\ntwo\n\nthree, the last line.\n", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    no_traceback(result)
    ended = utterance_lines(result.stdout)
    assert sorted(ended) == [1, 2, 3], result.stdout
    for uid, (reason, frames) in ended.items():
        assert reason == "completed" and frames > 0, result.stdout
        assert wav_frames(tmp_path / "wavs" / f"utterance-{uid}.wav") == frames


def test_pause_and_resume_are_confirmed(orchestrator: OrchestratorProcess,
                                        tmp_path: Path) -> None:
    # Input is read once the server is ready, so the text is speaking when PAUSE comes.
    result = say("-i", "--url", orchestrator.ws_url, "--out", str(tmp_path),
                 stdin=f"{LONG}\n/pause\n/resume\n", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "[paused]" in lines and "[resumed]" in lines, result.stdout
    assert lines.index("[paused]") < lines.index("[resumed]")
    assert utterance_lines(result.stdout)[1][0] == "completed"  # nothing lost on the way


def test_commands_answer_or_show_the_servers_refusal(orchestrator: OrchestratorProcess,
                                                     tmp_path: Path) -> None:
    result = say("-i", "--url", orchestrator.ws_url, "--out", str(tmp_path),
                 stdin="/voice\n/pause\n/voice no-such-voice\n/resume\n", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    voices = next(line for line in out.splitlines() if line.startswith("voices: "))
    assert "usage: /voice MODEL_ID" in out and VOICE in voices.split(": ")[1].split(", "), out
    assert "[error INVALID_STATE: nothing to pause in state LISTENING]" in out
    assert "[error INVALID_STATE: nothing to resume in state LISTENING]" in out
    assert "[error INVALID_CONFIG: voice 'no-such-voice' is not available" in out
    no_traceback(result)


def test_interactive_refused_voice_exits_without_speaking(orchestrator: OrchestratorProcess,
                                                          tmp_path: Path) -> None:
    result = say("-i", "--voice", "no-such-voice", "--url", orchestrator.ws_url,
                 "--out", str(tmp_path), stdin="one\n", cwd=tmp_path)
    assert result.returncode == 1
    assert "[error INVALID_CONFIG: voice 'no-such-voice'" in result.stdout
    assert "INVALID_STATE" not in result.stdout  # the config check's own answer
    assert not list(tmp_path.glob("*.wav")) and "Type a line" not in result.stdout
    no_traceback(result)


def test_interactive_server_error(workerless: OrchestratorProcess, tmp_path: Path) -> None:
    result = say("-i", "--url", workerless.ws_url, "--api-key", "secret",
                 "--out", str(tmp_path), stdin="one\n", cwd=tmp_path)
    assert result.returncode == 1
    assert "[error WORKER_UNAVAILABLE: " in result.stdout
    assert "[utterance 1 error: 0 frames]" in result.stdout
    no_traceback(result)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Console:
    """``say -i`` with its standard input kept open, as on a terminal."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duplexvoice", "say", "-i", *args], cwd=cwd,
            env={**os.environ, "DUPLEXVOICE_NO_PLAYER": "1"}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            # As a terminal runs it: a suite started in the background of a shell
            # inherits SIGINT ignored, and so would the console (Ctrl-C then does nothing).
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} in {self.seen}"
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Exit code and standard error, once it has exited."""
        code = self.proc.wait(timeout)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_ctrl_c_while_speaking_ends_cleanly(orchestrator: OrchestratorProcess,
                                            tmp_path: Path) -> None:
    console = Console("--url", orchestrator.ws_url, "--out", str(tmp_path), cwd=tmp_path)
    try:
        console.wait_for("Type a line")
        before = frames_sent(orchestrator)
        console.type(LONG)
        eventually_sync(lambda: frames_sent(orchestrator) > before,
                        what="the server sends audio to the console")
        console.proc.send_signal(signal.SIGINT)
        code, err = console.finish()
    finally:
        console.kill()
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err, err


def test_end_of_input_on_an_idle_console_ends_it(orchestrator: OrchestratorProcess,
                                                 tmp_path: Path) -> None:
    """Ctrl-D on a terminal: standard input ends while nothing is being said."""
    console = Console("--url", orchestrator.ws_url, "--out", str(tmp_path), cwd=tmp_path)
    try:
        console.wait_for("Type a line")
        assert console.proc.stdin is not None
        console.proc.stdin.close()
        code, err = console.finish()
    finally:
        console.kill()
    assert code == 0 and err == "", err
