"""Pure parts of the orchestrator WebSocket client: audio collection, sequence check,
command parsing, player detection and WAV writing (no server)."""

from __future__ import annotations

import base64
import stat
import wave
from pathlib import Path

import pytest

from duplexvoice.client.console import find_player, parse_command
from duplexvoice.client.worker_client import write_wav
from duplexvoice.client.ws_client import (
    AudioCollector,
    SequenceCheck,
    auth_headers,
    config_message,
    parse_audio,
)
from duplexvoice.orchestrator.protocol import (
    FLAG_LAST,
    FRAME_BYTES,
    audio_message,
    encode_binary_frame,
)


def pcm(n: int) -> bytes:
    return bytes([n % 256]) * FRAME_BYTES


# -- parse_audio ------------------------------------------------------------------


def test_parse_binary_and_json_audio() -> None:
    frame = parse_audio(encode_binary_frame(pcm(1), 7, 2, FLAG_LAST))
    assert (frame.utterance_id, frame.sequence, frame.pcm) == (2, 7, pcm(1))
    frame = parse_audio(audio_message(pcm(3), 9, 4))
    assert (frame.utterance_id, frame.sequence, frame.pcm) == (4, 9, pcm(3))
    # Without the utterance_id extension field
    plain = {"type": "audio", "pcm": base64.b64encode(pcm(0)).decode(), "sequence": 1}
    assert parse_audio(plain).utterance_id is None


@pytest.mark.parametrize("bad", [
    b"XX" + bytes(1930),
    encode_binary_frame(pcm(0), 1, 1)[:-1],
    {"type": "audio", "pcm": base64.b64encode(b"\0" * 10).decode(), "sequence": 1},
    {"type": "audio", "pcm": "not base64!", "sequence": 1},
    {"type": "audio", "pcm": base64.b64encode(pcm(0)).decode(), "sequence": 0},
    {"type": "audio", "pcm": base64.b64encode(pcm(0)).decode(), "sequence": True},
    {"type": "audio", "sequence": 1},
])
def test_parse_audio_refuses_malformed(bad: bytes | dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_audio(bad)


# -- sequence check ---------------------------------------------------------------


def test_sequence_check() -> None:
    check = SequenceCheck()
    for seq in (1, 2, 3):
        assert check.add(seq)
    assert check.ok
    assert not check.add(5)
    assert check.gaps == [(4, 5)]
    check.add(6)
    assert not check.ok  # a gap stays a gap


# -- collector --------------------------------------------------------------------


def test_collect_binary_utterance() -> None:
    c = AudioCollector(sent_at=10.0)
    c.on_json({"type": "state", "state": "SPEAKING"}, 10.01)
    for i in range(1, 4):
        c.on_binary(encode_binary_frame(pcm(i), i, 1, FLAG_LAST if i == 3 else 0), 10.1 + i)
    assert not c.done
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "completed",
               "frames": 3}, 14.0)
    assert c.done
    r = c.result()
    assert r.pcm == pcm(1) + pcm(2) + pcm(3)
    assert r.frames == 3 and r.sequence_ok and r.errors == []
    assert r.first_audio_ms == pytest.approx(1100.0)
    assert r.total_ms == pytest.approx(4000.0)
    assert r.utterance_id == 1 and r.end_reason == "completed" and r.ok
    assert r.audio_ms == pytest.approx(60.0)
    assert r.summary()["frames"] == 3


def test_collect_json_audio_and_gap() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json(audio_message(pcm(1), 1, 1), 0.2)
    c.on_json(audio_message(pcm(2), 3, 1), 0.3)  # sequence 2 missing
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "completed"}, 0.4)
    r = c.result()
    assert r.frames == 2 and not r.sequence_ok and r.first_audio_ms == pytest.approx(200.0)


def test_mixed_formats_share_sequences() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json(audio_message(pcm(1), 1, 1), 0.1)
    c.on_binary(encode_binary_frame(pcm(2), 2, 1), 0.2)
    assert c.result().sequence_ok and c.result().frames == 2


def test_stale_and_foreign_audio_dropped() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_binary(encode_binary_frame(pcm(1), 1, 2), 0.1)
    c.on_binary(encode_binary_frame(pcm(9), 2, 3), 0.2)  # another utterance: not ours
    c.on_json({"type": "utterance_end", "utterance_id": 2, "reason": "stopped"}, 0.3)
    c.on_binary(encode_binary_frame(pcm(9), 3, 2), 0.4)  # after its end: stale
    r = c.result()
    assert r.pcm == pcm(1) and r.end_reason == "stopped" and not r.ok
    assert r.sequence_ok  # the sequence counts every frame on the connection


def test_other_utterance_end_does_not_finish() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_binary(encode_binary_frame(pcm(1), 1, 2), 0.1)
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "interrupted"}, 0.2)
    assert not c.done


def test_bad_binary_frame_is_reported() -> None:
    c = AudioCollector(sent_at=0.0)
    assert c.on_binary(b"junk", 0.1) is None
    assert c.errors[0]["code"] == "CLIENT_BAD_FRAME" and not c.done


def test_non_fatal_error_is_collected_and_wait_goes_on() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json({"type": "error", "code": "INVALID_CONFIG", "message": "no such voice"}, 0.1)
    assert not c.done
    c.on_binary(encode_binary_frame(pcm(1), 1, 1), 0.2)
    c.on_json({"type": "utterance_end", "utterance_id": 1, "reason": "completed"}, 0.3)
    r = c.result()
    assert r.frames == 1 and r.errors[0]["code"] == "INVALID_CONFIG" and not r.ok


@pytest.mark.parametrize("code", ["WORKER_UNAVAILABLE", "TEXT_TOO_LONG", "QUEUE_FULL"])
def test_fatal_or_refusing_error_ends_wait(code: str) -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json({"type": "error", "code": code, "message": "x"}, 0.1)
    assert c.done
    r = c.result()
    assert r.frames == 0 and r.end_reason is None and r.errors[0]["code"] == code


def test_session_end_ends_wait() -> None:
    c = AudioCollector(sent_at=0.0)
    c.on_json({"type": "session_end", "session_id": "s", "reason": "error"}, 0.5)
    assert c.done and c.result().session_end == {"type": "session_end", "session_id": "s",
                                                 "reason": "error"}


def test_give_up() -> None:
    c = AudioCollector(sent_at=0.0)
    c.give_up(30.0, "timeout")
    r = c.result()
    assert c.done and r.errors[0]["code"] == "CLIENT_TIMEOUT" and r.first_audio_ms is None


# -- messages and commands --------------------------------------------------------


def test_config_message_and_auth() -> None:
    assert config_message("", binary=False) is None
    assert config_message("v1", binary=True) == {"type": "config", "voice": "v1",
                                                 "output_format": "binary"}
    assert config_message("", binary=True) == {"type": "config", "output_format": "binary"}
    assert auth_headers("") == {}
    assert auth_headers("k") == {"Authorization": "Bearer k"}


def test_parse_command() -> None:
    assert parse_command("  hello world \n") == {"type": "text", "text": "hello world"}
    assert parse_command("") is None
    assert parse_command("/pause") == {"type": "control", "command": "PAUSE"}
    assert parse_command("/RESUME") == {"type": "control", "command": "RESUME"}
    assert parse_command("/stop") == {"type": "control", "command": "STOP"}
    assert parse_command("/voice piper-x") == {"type": "config", "voice": "piper-x"}
    assert parse_command("/quit") == "quit"
    with pytest.raises(ValueError):
        parse_command("/voice")
    with pytest.raises(ValueError):
        parse_command("/dance")


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


# -- WAV --------------------------------------------------------------------------


def test_collected_audio_writes_a_wav(tmp_path: Path) -> None:
    c = AudioCollector(sent_at=0.0)
    for i in range(1, 6):
        c.on_binary(encode_binary_frame(pcm(i), i, 1), 0.1 * i)
    out = tmp_path / "utterance-1.wav"
    write_wav(out, c.result().pcm)
    with wave.open(str(out), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 48000)
        assert wav.getnframes() == 5 * 960
        assert wav.readframes(960) == pcm(1)
