"""``duplexvoice talk`` end to end: a Piper worker, the orchestrator with VAD, Whisper
tiny.en and echo replies; speech made at test time.

The loop-back tests put the talk client in a simulated room (``LoopbackDevice``):
what it plays comes back into its microphone at -6 dB after 50 ms, with reflections
and noise. With the real echo canceller it must not interrupt itself; without it
(the control) the same room makes it pause itself, which shows the test can fail;
and a user talking over the reply in that room still barges in."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from duplexvoice.client.audio_io import LoopbackDevice, TrackMicrophone
from duplexvoice.client.echo_cancel import (
    EchoCanceller,
    FloatAudio,
    NoEchoCanceller,
    WebRtcEchoCanceller,
    level_db,
)
from duplexvoice.client.talk import TalkClient, TalkOptions, TalkResult
from duplexvoice.launcher import OrchestratorProcess, WorkerProcess
from duplexvoice.speech.wer import wer
from duplexvoice.wire.ports import free_port
from tests.support.speech import SPEAKERS, say, silence, write_wav

pytestmark = pytest.mark.integration

GAIN_DB = -6.0  # a loudspeaker near the microphone (realistic: -6 to -20 dB)
DELAY_MS = 50.0
# About 6 s of speech: long enough for the echo to be heard many times over.
LONG = ("Here is a long answer that goes on for a while. It keeps talking about the "
        "weather, the sea and the mountains.")


@pytest.fixture(scope="module")
def stack(real_worker: WorkerProcess) -> Iterator[OrchestratorProcess]:
    orch = OrchestratorProcess("--workers", real_worker.addr, "--reply-engine", "echo").start()
    yield orch
    orch.terminate()


class Measured:
    """The echo canceller, with the level of what goes in and out per tick."""

    def __init__(self, inner: EchoCanceller) -> None:
        self.inner = inner
        self.name = inner.name
        self.levels: list[tuple[float, float]] = []  # (microphone, sent) in dBFS

    def process(self, far: FloatAudio, near: FloatAudio) -> FloatAudio:
        out = self.inner.process(far, near)
        self.levels.append((level_db(near), level_db(out)))
        return out


async def converse(url: str, echo: EchoCanceller, user: FloatAudio | None = None, *,
                   stop_when: str = "", timeout: float = 40.0
                   ) -> tuple[TalkResult, LoopbackDevice]:
    """The system says LONG in the room; ``user`` (16 kHz) is what the user says over
    it. Ends when settled, or once a message of type ``stop_when`` arrived."""
    room = LoopbackDevice(TrackMicrophone(user), gain_db=GAIN_DB, delay_ms=DELAY_MS)
    client = TalkClient(TalkOptions(url=url, say=LONG, linger_s=20.0, quiet_s=1.0),
                        room.microphone, room.speaker, echo, record=True)
    task = asyncio.create_task(client.run())
    deadline = time.monotonic() + timeout
    while not task.done():
        if (stop_when and client.result.messages(stop_when)) or time.monotonic() > deadline:
            client.stop()  # ends at the next tick; the caller checks what came
            break
        await asyncio.wait({task}, timeout=0.05)
    return await asyncio.wait_for(task, 10), room


def spoken_ticks(room: LoopbackDevice) -> np.ndarray:
    """Ticks where the room's echo was loud (well above its noise)."""
    echo_db = 10 * np.log10(np.array(room.echo_level) + 1e-12)
    return np.flatnonzero(echo_db > -45)


async def test_with_the_echo_canceller_it_does_not_interrupt_itself(
        stack: OrchestratorProcess) -> None:
    echo = Measured(WebRtcEchoCanceller())
    result, room = await converse(stack.ws_url, echo)
    kinds = [r.message["type"] for r in result.log]
    assert "pause" not in kinds and "interrupt" not in kinds, kinds
    ends = result.messages("utterance_end")
    assert [e["reason"] for e in ends] == ["completed"], ends
    assert ends[0]["frames"] > 200  # the whole reply: 4 s and more
    assert result.playback.played_frames == ends[0]["frames"]
    assert not result.messages("transcript")  # nothing of the echo was heard as words
    assert result.code == 0 and result.ended_by == "settled"
    # How much of the echo the canceller removed, where the echo was loud.
    loud = spoken_ticks(room)
    loud = loud[loud > loud[0] + 25]  # after its first half second
    levels = np.array(echo.levels)[loud]
    suppression = float(np.mean(levels[:, 0]) - np.mean(levels[:, 1]))
    print(f"echo at the microphone {np.mean(levels[:, 0]):.1f} dBFS, sent "
          f"{np.mean(levels[:, 1]):.1f} dBFS: {suppression:.1f} dB removed; loudest "
          f"residual tick {np.max(levels[:, 1]):.1f} dBFS")
    assert suppression > 20


async def test_without_it_the_same_room_makes_it_interrupt_itself(
        stack: OrchestratorProcess) -> None:
    # The control: the server hears the echo as a user barging in. It pauses within a
    # few hundred ms, resumes after the echo stops (the client holds playback), hears
    # itself again, and so on: the reply stutters and never gets far (measured: a
    # pause every ~0.45 s at -6, -12 and -20 dB; a full interrupt after 3-14 s when
    # Whisper hears words in the echo).
    result, _ = await converse(stack.ws_url, NoEchoCanceller(), timeout=3.0)
    pauses = result.messages("pause")
    assert len(pauses) >= 2, [r.message["type"] for r in result.log]
    first_frame = next(r.at for r in result.log if r.message["type"] == "binary")
    first_pause = next(r.at for r in result.log if r.message["type"] == "pause")
    assert first_pause - first_frame < 1.0  # its own first words paused it
    assert not [e for e in result.messages("utterance_end") if e["reason"] == "completed"]


async def test_a_user_talking_over_the_echo_still_barges_in(
        stack: OrchestratorProcess) -> None:
    text = "Stop, I want to ask about trains."
    speech = say(text, SPEAKERS[3])
    user = np.concatenate([silence(2.0), speech, silence(0.5)])
    result, _ = await converse(stack.ws_url, Measured(WebRtcEchoCanceller()), user,
                               stop_when="reply", timeout=30)
    kinds = [r.message["type"] for r in result.log]
    assert "pause" in kinds and "interrupt" in kinds, kinds
    assert kinds.index("pause") < kinds.index("interrupt")
    first = next(r for r in result.log if r.message["type"] == "binary")
    uid = first.message["utterance_id"]
    pause, interrupt = result.messages("pause")[0], result.messages("interrupt")[0]
    assert pause["utterance_id"] == uid and interrupt["utterance_id"] == uid
    # The pause came from the user's voice, not from the echo before it.
    pause_at = next(r.at for r in result.log if r.message["type"] == "pause")
    assert pause_at - first.at > 1.5
    final = next(m for m in result.messages("transcript") if m["final"])
    # The new turn is transcribed. Not word for word: with the room's -60 dBFS noise
    # floor the server's turn loses "Stop," even with no echo at all (seen with the
    # echo at -80 dB and no canceller), a server-side matter, not the canceller's.
    assert "train" in final["text"].lower(), final
    assert result.messages("reply")[0]["utterance_id"] > uid


def test_talk_command_with_a_file_prints_the_conversation_and_records_the_reply(
        stack: OrchestratorProcess, tmp_path: Path) -> None:
    text = "Please book a table for two people tomorrow evening."
    wav = write_wav(tmp_path / "in.wav", np.concatenate([silence(0.3), say(text),
                                                          silence(0.3)]))
    out = tmp_path / "reply.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "duplexvoice", "talk", "--url", stack.ws_url,
         "--input", str(wav), "--out", str(out), "--linger", "20"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    final = next(line for line in lines if "] you: " in line)
    assert wer(text, final.split("you: ", 1)[1]) <= 0.25, proc.stdout
    assert any("] bot: " in line for line in lines), proc.stdout
    assert any("(client: end of speech" in line for line in lines), proc.stdout
    assert any(re.search(r"voice-to-voice \d+ ms \(server\)", line) for line in lines)
    assert "end of utterance 1: completed" in proc.stdout
    import wave

    with wave.open(str(out)) as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    frames = np.abs(pcm[:len(pcm) // 960 * 960].reshape(-1, 960)).max(axis=1)
    playing = np.flatnonzero(frames > 0)
    assert rate == 48000 and len(playing) > 50
    # The reply is heard after the question, with silence before it: real timing.
    assert playing[0] * 0.02 > 0.3 + len(say(text)) / 16000


def test_talk_command_says_in_one_line_when_the_server_is_unreachable(
        tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "in.wav", silence(0.2))
    url = f"ws://127.0.0.1:{free_port()}/ws"
    proc = subprocess.run(
        [sys.executable, "-m", "duplexvoice", "talk", "--url", url, "--input", str(wav),
         "--out", str(tmp_path / "out.wav")],
        capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "cannot connect" in proc.stderr, proc.stderr
