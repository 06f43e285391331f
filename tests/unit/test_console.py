"""The console side of ``say`` without a server: typed commands, the console view
(server messages in, lines / audio / WAVs out), player detection, and the reader of
standard input (over a real pipe)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from duplexvoice.audio import FRAME_BYTES
from duplexvoice.client.console import find_player, stdin_lines
from duplexvoice.client.console_view import ConsoleView, Output, Play, Print, WriteWav
from duplexvoice.client.interactive import parse_command
from duplexvoice.wire.protocol import encode_binary_frame

pytestmark = pytest.mark.unit


def pcm(n: int) -> bytes:
    return bytes([n % 256]) * FRAME_BYTES


def lines(outputs: list[Output]) -> list[str]:
    return [o.text for o in outputs if isinstance(o, Print)]


# -- commands -----------------------------------------------------------------------


def test_parse_command() -> None:
    assert parse_command("  hello world \n") == {"type": "text", "text": "hello world"}
    assert parse_command("") is None
    assert parse_command("/pause") == {"type": "control", "command": "PAUSE"}
    assert parse_command("/RESUME") == {"type": "control", "command": "RESUME"}
    assert parse_command("/stop") == {"type": "control", "command": "STOP"}
    assert parse_command("/voice piper-x") == {"type": "config", "voice": "piper-x"}
    assert parse_command("/voice") == "voices"  # usage and the list, nothing sent
    assert parse_command("/voice   ") == "voices"
    assert parse_command("/quit") == "quit"
    assert parse_command("/help") == "help"
    with pytest.raises(ValueError, match="/dance"):
        parse_command("/dance")


# -- the console view -----------------------------------------------------------------


def ready_view(out_dir: Path | None = None, **kwargs: Any) -> ConsoleView:
    view = ConsoleView(out_dir, **kwargs)
    view.on_message({"type": "session_start", "session_id": "s"})
    view.on_message({"type": "state", "state": "LISTENING"})
    return view


def test_ready_waits_for_the_first_state_and_the_voice_check() -> None:
    view = ConsoleView(None, probing=True)
    assert lines(view.on_message({"type": "session_start", "session_id": "s"})) == ["[session s]"]
    assert not view.ready
    view.on_message({"type": "state", "state": "LISTENING"})
    assert not view.ready  # the voice is not checked yet
    # The probe's answer is taken out of the conversation.
    assert view.on_message({"type": "error", "code": "INVALID_STATE", "message": "x"}) == []
    assert view.ready and not view.refused


def test_refused_voice_is_shown_and_the_probe_answer_still_hidden() -> None:
    view = ConsoleView(None, probing=True)
    out = view.on_message({"type": "error", "code": "INVALID_CONFIG", "message": "no voice"})
    assert lines(out) == ["[error INVALID_CONFIG: no voice]"]
    assert view.refused and not view.ready
    assert view.on_message({"type": "error", "code": "INVALID_STATE", "message": "x"}) == []


def test_utterance_written_with_the_servers_first_audio_latency(tmp_path: Path) -> None:
    view = ready_view(tmp_path)
    send, _ = view.command({"type": "text", "text": "Hi"})
    assert send and view.outstanding == 1 and view.drained is False
    view.on_message({"type": "state", "state": "SPEAKING"})
    assert view.on_binary(encode_binary_frame(pcm(1), 1, 1)) == []  # kept for the WAV
    assert view.on_binary(encode_binary_frame(pcm(2), 2, 1)) == []
    out = view.on_message({"type": "utterance_end", "utterance_id": 1, "reason": "completed",
                           "frames": 2})
    path = tmp_path / "utterance-1.wav"
    assert out == [WriteWav(path, pcm(1) + pcm(2))]
    out = view.on_message({"type": "metrics", "utterance_id": 1, "first_audio_ms": 12.4})
    assert lines(out) == [f"[utterance 1 completed: 2 frames, first audio after 12 ms, "
                          f"wrote {path} (0.04 s)]"]
    assert view.outstanding == 0 and not view.drained  # the server still says SPEAKING
    view.on_message({"type": "state", "state": "LISTENING"})
    assert view.drained and view.sequence.ok


def test_utterance_line_without_metrics_comes_with_the_next_message() -> None:
    view = ready_view()
    view.command({"type": "text", "text": "Hi"})
    assert view.on_message({"type": "utterance_end", "utterance_id": 1, "reason": "stopped",
                            "frames": 0}) == []
    out = view.on_message({"type": "state", "state": "LISTENING"})
    assert lines(out) == ["[utterance 1 stopped: 0 frames]"]


def test_played_audio_and_stale_frames() -> None:
    view = ready_view()  # no out_dir: played
    assert view.on_binary(encode_binary_frame(pcm(1), 1, 1)) == [Play(pcm(1))]
    view.on_message({"type": "utterance_end", "utterance_id": 1, "reason": "stopped",
                     "frames": 1})
    out = view.on_binary(encode_binary_frame(pcm(9), 2, 1))  # its utterance is over
    assert out == [Print("[utterance 1 stopped: 1 frames]")]  # the held line, no Play
    assert lines(view.on_binary(b"junk"))[-1].startswith("[bad audio frame")


def test_pause_and_resume_are_confirmed_by_the_servers_state() -> None:
    view = ready_view()
    view.command({"type": "text", "text": "Hi"})
    view.on_message({"type": "state", "state": "SPEAKING"})
    assert view.command({"type": "control", "command": "PAUSE"}) == (True, [])
    assert view.control_due == "user"  # the next line waits for its answer
    assert lines(view.on_message({"type": "state", "state": "PAUSED"})) == ["[paused]"]
    assert view.paused and view.control_due is None
    assert view.command({"type": "control", "command": "RESUME"}) == (True, [])
    assert lines(view.on_message({"type": "state", "state": "SPEAKING"})) == ["[resumed]"]
    assert view.control_due is None
    # A server that never answers does not hold the input forever.
    view.command({"type": "control", "command": "PAUSE"})
    assert lines(view.no_answer()) and view.control_due is None


def test_no_op_controls_are_answered_here_not_sent() -> None:
    """The server says nothing to these, so they would never be answered."""
    view = ready_view()
    view.command({"type": "text", "text": "Hi"})
    # The text is on its way (no SPEAKING seen yet): it will be speaking.
    assert view.command({"type": "control", "command": "RESUME"}) == (False, [Print(
        "[not paused]")])
    view.on_message({"type": "state", "state": "SPEAKING"})
    assert view.command({"type": "control", "command": "RESUME"}) == (False, [Print(
        "[not paused]")])
    view.command({"type": "control", "command": "PAUSE"})
    view.on_message({"type": "state", "state": "PAUSED"})
    assert view.command({"type": "control", "command": "PAUSE"}) == (False, [Print(
        "[already paused]")])
    assert view.control_due is None


def test_server_refusals_are_shown_as_sent_and_settle_what_was_sent() -> None:
    view = ready_view()
    assert view.command({"type": "control", "command": "PAUSE"}) == (True, [])
    out = view.on_message({"type": "error", "code": "INVALID_STATE",
                           "message": "nothing to pause in state LISTENING"})
    assert lines(out) == ["[error INVALID_STATE: nothing to pause in state LISTENING]"]
    assert view.control_due is None
    view.command({"type": "text", "text": "x" * 9000})
    assert not view.finished
    out = view.on_message({"type": "error", "code": "TEXT_TOO_LONG", "message": "too long"})
    assert lines(out) == ["[error TEXT_TOO_LONG: too long]"] and view.finished


def test_voice_change_is_announced_its_refusal_shown_and_checked_at_the_end() -> None:
    view = ready_view()
    send, out = view.command({"type": "config", "voice": "v2"})
    assert send and "v2" in lines(out)[0]
    # Only a refusal would answer it: at the end of input, the probe checks it.
    assert not view.finished
    assert view.at_end_of_input() == ({"type": "control", "command": "PAUSE"}, [])
    assert view.control_due == "sync" and view.at_end_of_input() == (None, [])
    out = view.on_message({"type": "error", "code": "INVALID_CONFIG", "message": "no v2"})
    assert lines(out) == ["[error INVALID_CONFIG: no v2]"] and not view.refused
    assert not view.finished
    assert view.on_message({"type": "error", "code": "INVALID_STATE", "message": "x"}) == []
    assert view.finished


def test_a_text_after_a_voice_change_answers_for_it() -> None:
    view = ready_view()
    view.command({"type": "config", "voice": "v2"})
    view.command({"type": "text", "text": "Hi"})
    view.on_message({"type": "utterance_end", "utterance_id": 1, "reason": "completed",
                     "frames": 0})
    view.on_message({"type": "state", "state": "LISTENING"})
    assert view.finished and view.at_end_of_input() == (None, [])


def test_a_pause_met_after_the_end_of_input_is_resumed() -> None:
    view = ready_view()
    view.command({"type": "text", "text": "Hi"})
    view.on_message({"type": "state", "state": "SPEAKING"})
    view.command({"type": "control", "command": "PAUSE"})
    assert view.at_end_of_input() == (None, [])  # the PAUSE is not answered yet
    view.on_message({"type": "state", "state": "PAUSED"})
    message, out = view.at_end_of_input()
    assert message == {"type": "control", "command": "RESUME"} and lines(out)
    assert not view.finished
    view.on_message({"type": "state", "state": "SPEAKING"})
    view.on_message({"type": "utterance_end", "utterance_id": 1, "reason": "completed",
                     "frames": 9})
    view.on_message({"type": "state", "state": "LISTENING"})
    assert view.finished


def test_session_end_and_close() -> None:
    view = ready_view()
    out = view.on_message({"type": "session_end", "session_id": "s", "reason": "error"})
    assert lines(out) == ["[session ended: error]"] and view.over
    assert view.on_closed(1011) == []  # the session_end said it
    closed = ready_view()
    assert lines(closed.on_closed(1006)) == ["[connection closed (code 1006)]"]
    leaving = ready_view()
    leaving.leave()
    assert leaving.on_closed(1000) == [] and leaving.over


# -- standard input -------------------------------------------------------------------


async def test_stdin_lines_from_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        queue = stdin_lines(asyncio.get_running_loop(), read_fd)
        # A UTF-8 character split across two writes, a last line without a newline.
        os.write(write_fd, "one\nçà".encode()[:-1])
        assert await asyncio.wait_for(queue.get(), 10) == "one"
        os.write(write_fd, "çà".encode()[-1:] + b"\nlast")
        os.close(write_fd)
        write_fd = -1
        got = [await asyncio.wait_for(queue.get(), 10) for _ in range(3)]
        assert got == ["çà", "last", None]
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)


def _blocked_signals(thread_id: int) -> int:
    """The signal mask of one of this process's threads (Linux)."""
    status = Path(f"/proc/self/task/{thread_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("SigBlk:")), 16)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
async def test_ctrl_c_goes_to_the_main_thread_not_to_the_reader() -> None:
    """The kernel gives a signal to any thread that does not block it; the reader
    blocks Ctrl-C and SIGTERM, so they reach the event loop's thread and wake it."""
    before = _blocked_signals(threading.get_native_id())
    read_fd, write_fd = os.pipe()
    try:
        stdin_lines(asyncio.get_running_loop(), read_fd)
        reader = next(t for t in threading.enumerate() if t.name == "stdin-reader"
                      and t.is_alive())
        assert reader.native_id is not None
        mask = _blocked_signals(reader.native_id)
        for sig in (signal.SIGINT, signal.SIGTERM):
            assert mask & (1 << (sig - 1)), sig
        assert _blocked_signals(threading.get_native_id()) == before  # ours untouched
    finally:
        os.close(write_fd)  # the reader ends
        os.close(read_fd)


# -- player detection -------------------------------------------------------------


def fake_bin(tmp_path: Path, *names: str) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name in names:
        exe = bindir / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(bindir)


def fake_snd(tmp_path: Path, present: bool) -> Path:
    snd = tmp_path / "snd"
    if present:
        snd.mkdir()
        (snd / "pcmC0D0p").write_text("")
    return snd


def test_no_player_without_programs(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path / "empty"), "PULSE_SERVER": "unix:/x"}
    assert find_player(env, dev_snd=fake_snd(tmp_path, True)) is None


def test_no_player_without_sound_device(tmp_path: Path) -> None:
    env = {"PATH": fake_bin(tmp_path, "aplay", "paplay", "ffplay")}
    assert find_player(env, dev_snd=fake_snd(tmp_path, False)) is None


def test_aplay_with_dev_snd(tmp_path: Path) -> None:
    env = {"PATH": fake_bin(tmp_path, "aplay", "paplay")}
    cmd = find_player(env, dev_snd=fake_snd(tmp_path, True))
    assert cmd is not None and Path(cmd[0]).name == "aplay"
    assert cmd[1:] == ["-q", "-t", "raw", "-f", "S16_LE", "-r", "48000", "-c", "1"]


def test_empty_dev_snd_is_no_device(tmp_path: Path) -> None:
    (tmp_path / "snd").mkdir()
    env = {"PATH": fake_bin(tmp_path, "aplay")}
    assert find_player(env, dev_snd=tmp_path / "snd") is None


def test_paplay_with_pulse_server_or_socket(tmp_path: Path) -> None:
    path = fake_bin(tmp_path, "aplay", "paplay")
    no_snd = fake_snd(tmp_path, False)
    cmd = find_player({"PATH": path, "PULSE_SERVER": "tcp:host"}, dev_snd=no_snd)
    assert cmd is not None and Path(cmd[0]).name == "paplay"
    assert cmd[1:] == ["--raw", "--rate=48000", "--channels=1", "--format=s16le"]
    runtime = tmp_path / "run"
    assert find_player({"PATH": path, "XDG_RUNTIME_DIR": str(runtime)}, dev_snd=no_snd) is None
    (runtime / "pulse").mkdir(parents=True)
    (runtime / "pulse" / "native").write_text("")
    cmd = find_player({"PATH": path, "XDG_RUNTIME_DIR": str(runtime)}, dev_snd=no_snd)
    assert cmd is not None and Path(cmd[0]).name == "paplay"


def test_ffplay_fallback_and_opt_out(tmp_path: Path) -> None:
    env = {"PATH": fake_bin(tmp_path, "ffplay"), "PULSE_SERVER": "x"}
    cmd = find_player(env, dev_snd=fake_snd(tmp_path, False))
    assert cmd is not None and Path(cmd[0]).name == "ffplay" and cmd[-1] == "-"
    assert find_player({**env, "DUPLEXVOICE_NO_PLAYER": "1"}) is None


