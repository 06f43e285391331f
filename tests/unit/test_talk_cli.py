"""``duplexvoice talk`` as a command: one-line errors, exit codes, which devices it
picks, and the sound card adapters driven by hand through a fake ``sounddevice``
(PortAudio is not installed on the test machine)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duplexvoice import cli
from duplexvoice.client import sound_card, talk_command
from duplexvoice.client.audio_io import FileMicrophone, NullSpeaker, WavSpeaker
from duplexvoice.client.sound_card import (
    SoundCardMicrophone,
    SoundCardSpeaker,
    SoundCardUnavailable,
)
from tests.support.speech import silence, write_wav

pytestmark = pytest.mark.unit


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["talk", *argv])
    return code, capsys.readouterr().err


def no_sound_card() -> types.ModuleType:
    raise SoundCardUnavailable("no sound card support (PortAudio library not found; "
                               "Debian/Ubuntu: apt install libportaudio2)")


def test_a_missing_input_file_is_one_line(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    code, err = run(capsys, "--input", str(tmp_path / "nope.wav"))
    assert code == 1 and err == f"duplexvoice talk: --input: no such file: {tmp_path}/nope.wav\n"


def test_a_bad_wav_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    code, err = run(capsys, "--input", str(tmp_path / "bad.wav"))
    assert code == 1 and err.count("\n") == 1 and "not a PCM WAV file" in err


def test_an_unwritable_out_is_one_line(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "in.wav", silence(0.1))
    code, err = run(capsys, "--input", str(wav), "--out", str(tmp_path / "no" / "x.wav"))
    assert code == 1 and err.count("\n") == 1 and "--out: no such folder" in err


def test_a_negative_linger_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--linger", "-1")
    assert code == 1 and "--linger" in err


def test_without_a_sound_card_or_input_it_names_the_package_and_input(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sound_card, "open_sounddevice", no_sound_card)
    code, err = run(capsys)
    assert code == 1 and err.count("\n") == 1
    assert "libportaudio2" in err and "--input" in err


def test_ctrl_c_is_exit_130(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(talk_command, "_talk", interrupted)
    wav = write_wav(tmp_path / "in.wav", silence(0.1))
    code, err = run(capsys, "--input", str(wav))
    assert code == 130 and err == "duplexvoice talk: interrupted\n"


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["talk", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for option in ("--url", "--api-key", "--voice", "--reply", "--input", "--out",
                   "--no-aec", "--linger", "--say"):
        assert option in out
    assert "--simulate-echo" not in out  # a test option


def args(**values: Any) -> argparse.Namespace:
    defaults = {"input": None, "out": None, "simulate_echo": "", "no_aec": False}
    return argparse.Namespace(**{**defaults, **values})


class FakeStream:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.callback = kwargs["callback"]
        self.latency = 0.03
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def fake_sounddevice(input_rate: float = 48000.0) -> types.ModuleType:
    module = types.ModuleType("sounddevice")
    streams: list[FakeStream] = []

    def query_devices(kind: str) -> dict[str, Any]:
        return {"name": f"fake {kind}", "default_samplerate": input_rate}

    def stream(**kwargs: Any) -> FakeStream:
        streams.append(FakeStream(**kwargs))
        return streams[-1]

    module.query_devices = query_devices  # type: ignore[attr-defined]
    module.RawInputStream = stream  # type: ignore[attr-defined]
    module.RawOutputStream = stream  # type: ignore[attr-defined]
    module.streams = streams  # type: ignore[attr-defined]
    return module


async def test_with_a_sound_card_both_ends_use_it_and_echo_can_leak(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sd = fake_sounddevice()
    monkeypatch.setattr(sound_card, "open_sounddevice", lambda: sd)
    mic, speaker, acoustic = await talk_command._devices(args(), print)
    assert isinstance(mic, SoundCardMicrophone) and isinstance(speaker, SoundCardSpeaker)
    assert acoustic
    mic.close()
    speaker.close()


async def test_a_file_input_has_no_echo_path(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setattr(sound_card, "open_sounddevice", no_sound_card)
    notes: list[str] = []
    wav = write_wav(tmp_path / "in.wav", silence(0.1))
    mic, speaker, acoustic = await talk_command._devices(args(input=wav), notes.append)
    assert isinstance(mic, FileMicrophone) and isinstance(speaker, NullSpeaker)
    assert not acoustic and "discarded" in notes[0] and "--out" in notes[0]
    mic.close()
    mic, speaker, _ = await talk_command._devices(args(input=wav, out=tmp_path / "o.wav"), print)
    assert isinstance(speaker, WavSpeaker)
    mic.close()
    speaker.close()


async def test_the_sound_card_microphone_delivers_20_ms_at_16_khz() -> None:
    sd = fake_sounddevice(input_rate=44100.0)
    mic = SoundCardMicrophone(sd)
    stream = sd.streams[0]  # type: ignore[attr-defined]
    assert stream.kwargs["samplerate"] == 44100 and stream.started
    block = (np.sin(np.arange(882) / 5.0) * 8000).astype("<i2").tobytes()
    for _ in range(6):
        stream.callback(block, 882, None, None)  # as PortAudio's thread would
    blocks = [await asyncio.wait_for(mic.read(), 2) for _ in range(4)]
    assert all(len(b.mic) == 320 for b in blocks) and np.any(blocks[-1].mic)
    assert blocks[0].user is None  # only the microphone is known
    assert mic.latency_ms == pytest.approx(30.0)
    mic.close()
    assert stream.closed


async def test_the_sound_card_speaker_plays_frames_then_silence_and_stays_bounded() -> None:
    sd = fake_sounddevice()
    speaker = SoundCardSpeaker(sd)
    stream = sd.streams[0]  # type: ignore[attr-defined]
    speaker.write(b"\x01" * 1920)
    assert speaker.latency_ms == pytest.approx(50.0)  # 30 ms device + 20 ms queued
    out = bytearray(1920)
    stream.callback(out, 960, None, None)
    assert bytes(out) == b"\x01" * 1920
    stream.callback(out, 960, None, None)
    assert bytes(out) == bytes(1920)
    for _ in range(100):
        speaker.write(bytes(1920))
    assert speaker.dropped == 75  # at most 0.5 s queued
    speaker.close()


def test_open_sounddevice_says_which_package_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def find_spec(self, name: str, *args: Any) -> None:
            if name == "sounddevice":
                raise OSError("PortAudio library not found")

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(SoundCardUnavailable, match="libportaudio2"):
        sound_card.open_sounddevice()


@pytest.mark.parametrize("value", ["loud", "-6:5", "-6:x"])
def test_a_bad_simulated_echo_is_one_line(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path, value: str) -> None:
    wav = write_wav(tmp_path / "in.wav", silence(0.1))
    code, err = run(capsys, "--input", str(wav), f"--simulate-echo={value}")
    assert code == 1 and err.count("\n") == 1 and "--simulate-echo" in err
