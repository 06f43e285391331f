"""The end of the voice, found acoustically (audio/voice_end.py), on synthetic clips."""

from __future__ import annotations

import numpy as np
import pytest

from duplexvoice.audio.voice_end import find_voice_end, frame_levels_db

pytestmark = pytest.mark.unit

RATE = 16000
FRAME = RATE // 50  # 20 ms


def tone(seconds: float, level: float = 0.3, hz: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(round(seconds * RATE))).astype(np.float32)


def test_tone_then_digital_silence_ends_at_the_tone() -> None:
    clip = np.concatenate([tone(1.0), np.zeros(RATE, np.float32)])
    found = find_voice_end(clip, RATE)
    assert found.end == RATE  # the tone's last sample is in frame 49: ends at 1.0 s


def test_end_is_on_the_frame_holding_the_last_voiced_sample() -> None:
    clip = np.concatenate([np.zeros(RATE // 2, np.float32), tone(0.51),
                           np.zeros(RATE, np.float32)])
    found = find_voice_end(clip, RATE)
    # 0.5 + 0.51 s = sample 16160, inside frame 50 (16000-16320): ends at its end.
    assert found.end == 51 * FRAME


def test_room_noise_floor_is_not_voice() -> None:
    room = noise(3.0, 0.003, seed=1)  # about -50 dBFS
    clip = room.copy()
    clip[RATE // 2:RATE // 2 + RATE] += tone(1.0)
    found = find_voice_end(clip, RATE)
    assert found.end == int(1.5 * RATE)
    assert -55 < found.floor_db < -45


def test_no_voice_in_noise_alone() -> None:
    assert find_voice_end(noise(2.0, 0.003, seed=2), RATE).end is None
    assert find_voice_end(np.zeros(RATE, np.float32), RATE).end is None
    assert find_voice_end(np.zeros(10, np.float32), RATE).end is None


def test_fade_out_ends_where_it_sinks_into_the_noise() -> None:
    room = noise(3.0, 0.001, seed=3)  # about -60 dBFS
    voice = tone(1.0, 0.3)
    fade = tone(0.5, 0.3) * np.linspace(1.0, 0.0, RATE // 2, dtype=np.float32) ** 3
    clip = room.copy()
    clip[:RATE + RATE // 2] += np.concatenate([voice, fade])
    found = find_voice_end(clip, RATE)
    assert found.end is not None
    levels = frame_levels_db(clip, RATE)
    last = found.end // FRAME - 1
    # The last voiced frame is above floor + margin; the next one is not.
    assert levels[last] > found.threshold_db >= levels[last + 1]
    assert RATE < found.end < RATE + RATE // 2  # inside the fade, before its very end


def test_a_click_after_the_voice_is_not_its_end() -> None:
    clip = np.concatenate([tone(1.0), np.zeros(RATE // 2, np.float32)])
    clip = np.concatenate([clip, 0.5 * np.ones(FRAME, np.float32), np.zeros(RATE, np.float32)])
    assert find_voice_end(clip, RATE).end == RATE


def test_a_release_close_after_the_vowel_belongs_to_the_word() -> None:
    # "that": the vowel, a 60 ms closure, the release burst of the t (40 ms).
    release = noise(0.04, 0.2, seed=4)
    clip = np.concatenate([tone(0.5), np.zeros(int(0.06 * RATE), np.float32), release,
                           np.zeros(RATE, np.float32)])
    assert find_voice_end(clip, RATE).end == int(0.6 * RATE)


def test_speech_pause_speech_ends_after_the_second_part() -> None:
    clip = np.concatenate([tone(0.6), np.zeros(int(0.7 * RATE), np.float32), tone(0.4),
                           np.zeros(RATE, np.float32)])
    assert find_voice_end(clip, RATE).end == int(1.7 * RATE)


def test_a_bad_frame_size_is_refused() -> None:
    with pytest.raises(ValueError, match="no sample"):
        frame_levels_db(np.zeros(100), 10, frame_ms=20)
