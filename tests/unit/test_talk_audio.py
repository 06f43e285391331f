"""The talk client's audio without a sound card: WAV input of any rate and channel
count, real-time pacing, the recorded output, the simulated room, and the echo
canceller on real speech (no server)."""

from __future__ import annotations

import itertools
import wave
from pathlib import Path

import numpy as np
import pytest

from duplexvoice.client import audio_io
from duplexvoice.client.audio_io import (
    MIC_FRAME,
    Decimator,
    FileMicrophone,
    InputError,
    LoopbackDevice,
    Pacer,
    Reblocker,
    TrackMicrophone,
    WavReader,
    WavSpeaker,
)
from duplexvoice.client.echo_cancel import (
    NoEchoCanceller,
    WebRtcEchoCanceller,
    level_db,
    make_echo_canceller,
    to_pcm16,
)
from tests.support.speech import SPEAKERS, say, silence

pytestmark = pytest.mark.unit


def write(path: Path, audio: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    data = np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio[:, None]
    if width == 2:
        raw = (np.clip(data, -1, 1) * 32767).astype("<i2").tobytes()
    elif width == 1:
        raw = (np.clip(data, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
    elif width == 4:
        raw = (np.clip(data, -1, 1) * (2**31 - 1)).astype("<i4").tobytes()
    else:
        ints = (np.clip(data, -1, 1) * (2**23 - 1)).astype("<i4").reshape(-1)
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def tone(seconds: float, rate: int, hz: float = 440.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * level).astype(np.float32)


def read_all(reader: WavReader) -> np.ndarray:
    blocks = []
    while (block := reader.read()) is not None:
        assert len(block) == MIC_FRAME
        blocks.append(block)
    return np.concatenate(blocks)


@pytest.mark.parametrize(("rate", "channels", "width"),
                         [(16000, 1, 2), (44100, 2, 2), (48000, 1, 4), (8000, 1, 1),
                          (22050, 2, 3)])
def test_any_pcm_wav_becomes_16_khz_mono_of_the_same_duration(
        tmp_path: Path, rate: int, channels: int, width: int) -> None:
    path = write(tmp_path / "in.wav", tone(0.5, rate), rate, channels, width)
    reader = WavReader(path)
    audio = read_all(reader)
    reader.close()
    assert abs(len(audio) - 8000) <= MIC_FRAME  # the last block is padded
    middle = audio[2000:6000]
    assert abs(level_db(middle) - level_db(tone(0.25, 16000))) < 1.0  # same loudness


def test_stereo_is_downmixed(tmp_path: Path) -> None:
    left, right = tone(0.2, 16000, level=0.4), np.zeros(3200, np.float32)
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    path = tmp_path / "st.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((stereo * 32767).astype("<i2").tobytes())
    audio = read_all(WavReader(path))
    assert np.max(np.abs(audio)) == pytest.approx(0.2, abs=0.01)


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        WavReader(tmp_path / "missing.wav")
    with pytest.raises(InputError, match="is a folder"):
        WavReader(tmp_path)
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(InputError, match="not a PCM WAV"):
        WavReader(tmp_path / "text.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InputError, match="not a PCM WAV"):
        WavReader(tmp_path / "empty.wav")


def test_a_truncated_wav_plays_what_it_has(tmp_path: Path) -> None:
    path = write(tmp_path / "in.wav", tone(0.3, 16000), 16000)
    path.write_bytes(path.read_bytes()[:-1001])  # cut mid-sample, header sizes wrong
    audio = read_all(WavReader(path))
    assert 4000 <= len(audio) <= 4800


class FakeTime:
    """A clock that only moves when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 5.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


async def test_the_file_is_paced_at_20_ms_a_block_then_silence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    monkeypatch.setattr(audio_io.asyncio, "sleep", fake.sleep)
    mic = FileMicrophone(write(tmp_path / "in.wav", tone(0.1, 16000), 16000), clock=fake.clock)
    blocks = [await mic.read() for _ in range(8)]
    assert fake.sleeps == pytest.approx([0.02] * 8)
    assert mic.exhausted
    assert all(np.any(b.mic) for b in blocks[:5]) and not np.any(blocks[6].mic)
    assert blocks[0].user is blocks[0].mic  # the file is what the user said
    mic.close()


async def test_a_late_loop_catches_up_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    monkeypatch.setattr(audio_io.asyncio, "sleep", fake.sleep)
    pacer = Pacer(fake.clock)
    await pacer.wait()
    fake.now += 0.105  # the loop stalled: ticks 2-6 are due already
    for _ in range(5):
        await pacer.wait()
    await pacer.wait()
    assert fake.sleeps == pytest.approx([0.02, 0.015])


async def test_a_long_stall_re_anchors_the_clock_instead_of_flooding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    monkeypatch.setattr(audio_io.asyncio, "sleep", fake.sleep)
    pacer = Pacer(fake.clock)
    await pacer.wait()
    fake.now += 10.0  # stopped for 10 s
    await pacer.wait()  # due long ago: now, and the clock starts again from here
    await pacer.wait()
    assert fake.sleeps == pytest.approx([0.02, 0.02])


def test_reblocker_cuts_exact_blocks_and_pads_only_when_short() -> None:
    blocks = Reblocker(4)
    blocks.push(np.arange(6, dtype=np.float32))
    assert blocks.pop().tolist() == [0, 1, 2, 3]
    assert blocks.pop().tolist() == [4, 5, 0, 0]


def test_decimator_is_exact_keeps_voice_and_removes_what_would_alias() -> None:
    decimator = Decimator()
    voice, high = tone(0.2, 48000, hz=1000), tone(0.2, 48000, hz=12000)
    out_voice = np.concatenate([decimator.process(to_pcm16(voice[i:i + 960]))
                                for i in range(0, 9600, 960)])
    out_high = np.concatenate([Decimator().process(to_pcm16(high[i:i + 960]))
                               for i in range(0, 9600, 960)])
    assert len(out_voice) == 3200
    assert abs(level_db(out_voice[320:]) - level_db(voice)) < 0.5
    assert level_db(out_high[320:]) < level_db(high) - 30


def test_wav_speaker_records_every_frame_with_its_timing(tmp_path: Path) -> None:
    speaker = WavSpeaker(tmp_path / "out.wav")
    for i in range(5):
        speaker.write(bytes([i]) * 1920)
    speaker.close()
    with wave.open(str(tmp_path / "out.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (48000, 1, 4800)


def fast_clock() -> float:
    """Always late: the pacer never sleeps (tests that do not need real time)."""
    return next(_COUNTER)


_COUNTER = itertools.count(step=1.0)


async def test_the_room_echoes_the_speaker_with_its_delay_and_gain() -> None:
    room = LoopbackDevice(TrackMicrophone(clock=fast_clock), gain_db=-6.0, delay_ms=50.0,
                          noise_db=-120.0)
    click = np.zeros(960, np.float32)
    click[0:3] = 0.9  # a click at 48 kHz: one sample at 16 kHz
    heard = []
    for i in range(8):
        heard.append((await room.microphone.read()).mic)
        room.speaker.write(to_pcm16(click) if i == 0 else bytes(1920))
    mic = np.concatenate(heard)
    first = int(np.argmax(np.abs(mic)))
    assert 800 <= first <= 820  # 50 ms at 16 kHz (+ the room's filter, about 1 ms)
    assert abs(mic[first]) == pytest.approx(0.9 * 10 ** (-6 / 20), rel=0.2)
    assert np.count_nonzero(np.abs(mic) > 0.05) >= 2  # and its reflections


def test_the_room_refuses_an_echo_sooner_than_a_tick() -> None:
    with pytest.raises(ValueError, match="20 ms"):
        LoopbackDevice(TrackMicrophone(clock=fast_clock), delay_ms=10)


async def run_room(echo: NoEchoCanceller | WebRtcEchoCanceller, far: np.ndarray,
                   user: np.ndarray, gain_db: float = -6.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Play ``far`` (48 kHz) into a room with ``user`` talking; returns the microphone,
    the cleaned microphone and the echo level per tick."""
    room = LoopbackDevice(TrackMicrophone(user, clock=fast_clock), gain_db=gain_db,
                          delay_ms=50.0)
    decimator = Decimator()
    mics, cleaned = [], []
    for at in range(0, len(far) - 959, 960):
        captured = await room.microphone.read()
        pcm = to_pcm16(far[at:at + 960])
        room.speaker.write(pcm)
        mics.append(captured.mic)
        cleaned.append(echo.process(decimator.process(pcm), captured.mic))
    return np.concatenate(mics), np.concatenate(cleaned), np.array(room.echo_level)


AEC_LAG = 128  # samples at 16 kHz: AEC3's own delay, measured

FAR_TEXT = ("Here is a long answer that goes on for a while. It keeps talking about the "
            "weather, the sea and the mountains.")


async def test_the_echo_canceller_removes_the_echo_of_real_speech() -> None:
    far = np.concatenate([silence(0.3, 48000), say(FAR_TEXT, SPEAKERS[0], rate=48000)])
    near, out, echo_level = await run_room(WebRtcEchoCanceller(), far,
                                           np.zeros(0, np.float32))
    ticks = len(out) // MIC_FRAME
    loud = np.flatnonzero(10 * np.log10(echo_level[:ticks] + 1e-12) > -40)
    loud = loud[loud > loud[0] + 25]  # after its first half second
    near_t, out_t = near.reshape(-1, MIC_FRAME), out.reshape(-1, MIC_FRAME)
    erle = level_db(near_t[loud].ravel()) - level_db(out_t[loud].ravel())
    worst = max(level_db(f) for f in out_t[loud])
    assert erle > 20, f"echo suppressed by only {erle:.1f} dB"
    assert worst < -40, f"loudest residual frame {worst:.1f} dBFS"


async def test_the_users_voice_passes_through_while_the_echo_plays() -> None:
    far = np.concatenate([silence(0.3, 48000), say(FAR_TEXT, SPEAKERS[0], rate=48000)])
    voice = say("Stop, I want to ask about trains.", SPEAKERS[3])
    start = 16000 * 2
    user = np.concatenate([silence(2.0), voice]).astype(np.float32)
    _, out, _ = await run_room(WebRtcEchoCanceller(), far, user)
    lag = AEC_LAG  # the canceller delays the microphone by 8 ms
    span = slice(start + lag, start + lag + len(voice))
    kept = level_db(out[span]) - level_db(voice)
    corr = float(np.corrcoef(out[span], voice)[0, 1])
    assert kept > -6, f"the user's voice lost {-kept:.1f} dB"
    assert corr > 0.7


async def test_without_the_canceller_the_microphone_goes_out_as_it_is() -> None:
    far = say("Hello there.", SPEAKERS[0], rate=48000)
    near, out, _ = await run_room(NoEchoCanceller(), far, np.zeros(0, np.float32))
    assert np.array_equal(near, out) and level_db(out) > -40


def test_canceller_factory_and_frame_checks() -> None:
    assert make_echo_canceller(False).name == "off"
    canceller = make_echo_canceller(True, delay_ms=40)
    assert canceller.name == "webrtc-aec3"
    with pytest.raises(ValueError, match="10 ms"):
        canceller.process(np.zeros(100, np.float32), np.zeros(100, np.float32))
