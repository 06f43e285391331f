"""Pure rules of the recognizer: window sizing, token budget, loop detection, silence,
where long audio is cut."""

from __future__ import annotations

import numpy as np
import pytest

from duplexvoice.speech.asr_rules import (
    FRAME,
    MAX_WINDOW_S,
    compression_ratio,
    extends_with_silence,
    fallback_windows,
    frame_rms,
    has_speech_run,
    is_negligible,
    looks_repetitive,
    repeated_run,
    split_points,
    starts_over,
    token_budget,
    tokens_before,
    window_seconds,
    words_of,
)

pytestmark = pytest.mark.unit

RATE = 16000


def tone(seconds: float, level: float = 0.3, hz: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sqrt(2) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def quiet(seconds: float, level: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(round(seconds * RATE)) * level).astype(np.float32)


# -- window and budget ------------------------------------------------------------


@pytest.mark.parametrize(
    ("audio_s", "margin", "expected"),
    [
        (0.0, 3.0, 3.0),
        (0.4, 3.0, 4.0),
        (1.0, 3.0, 4.0),  # exact steps stay exact
        (1.01, 3.0, 5.0),
        (2.5, 1.0, 4.0),
        (0.0, 0.5, 1.0),  # at least one step
        (26.5, 3.0, 30.0),
        (40.0, 3.0, MAX_WINDOW_S),  # capped
    ],
)
def test_window_is_audio_plus_margin_rounded_up_and_capped(
    audio_s: float, margin: float, expected: float
) -> None:
    assert window_seconds(audio_s, margin) == expected


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (5.0, [10.0, MAX_WINDOW_S]),  # twice the window first: a loop usually ends there
        (15.0, [MAX_WINDOW_S]),  # twice is the full window: tried once
        (20.0, [MAX_WINDOW_S]),  # twice is more than the full window: capped
        (MAX_WINDOW_S, []),  # nothing wider to try
    ],
)
def test_a_looping_decode_is_retried_on_twice_the_window_then_the_full_one(
    window: float, expected: list[float]
) -> None:
    assert fallback_windows(window) == expected


def test_window_steps_and_bad_arguments() -> None:
    assert window_seconds(1.2, 1.0, step_s=0.5) == 2.5
    with pytest.raises(ValueError):
        window_seconds(-1.0, 3.0)
    with pytest.raises(ValueError):
        window_seconds(1.0, 3.0, step_s=0)


def test_token_budget_grows_with_duration_and_respects_the_limit() -> None:
    budgets = [token_budget(s, 445) for s in (0.0, 1.0, 5.0, 10.0, 30.0)]
    assert budgets == sorted(budgets) and budgets[0] >= 1
    assert token_budget(5.0, 445) >= 5 * 6.4  # the densest speech measured: 6.4 tokens/s
    assert token_budget(100.0, 445) == 445
    assert token_budget(10.0, 20) == 20


# -- loop detection ------------------------------------------------------------------


def test_words_of_drops_punctuation_and_case() -> None:
    assert words_of("Stop! Stop, STOP.") == ["stop", "stop", "stop"]
    assert words_of("It's well-known.") == ["it's", "well", "known"]


@pytest.mark.parametrize(
    ("text", "looping"),
    [
        ("stop stop stop stop", True),
        ("no no no", False),  # three times a single word: people say that
        ("thank you thank you thank you", True),
        ("thank you thank you", False),
        ("the cat sat on the mat the cat sat on the mat the cat sat on the mat", True),
        ("the quick brown fox jumps over the lazy dog", False),
        ("", False),
    ],
)
def test_repeated_runs(text: str, looping: bool) -> None:
    assert repeated_run(words_of(text)) is looping


@pytest.mark.parametrize(
    ("text", "over"),
    [
        ("Yes, please. Yes, please. Yes,", True),
        ("Turn off the lights in the kitchen and lock the back door. Turn off", True),
        ("I think the meeting moved. I think the meeting moved", True),
        ("Stop. Stop.", True),
        ("I think so. You think so too.", False),
        ("Could you book a table for two? At seven, please.", False),
        ("One sentence only", False),
        ("", False),
    ],
)
def test_starting_over(text: str, over: bool) -> None:
    assert starts_over(text) is over


def test_looks_repetitive_combines_the_signs() -> None:
    assert not looks_repetitive("Could you book a table for two at seven?", hit_limit=False)
    assert looks_repetitive("Could you book a table", hit_limit=True)
    assert looks_repetitive("Stop. Stop. Stop. Stop. Stop", hit_limit=False)
    looped = "and then we went to the store and " * 6
    assert compression_ratio(looped) > 2.4
    assert looks_repetitive(looped, hit_limit=False)
    assert compression_ratio("") == 0.0


# -- segments after the speech ------------------------------------------------------

TB = 1000  # where timestamp tokens begin, in these tests


def ts(seconds: float) -> int:
    return TB + round(seconds / 0.02)


@pytest.mark.parametrize(
    ("tokens", "end_s", "kept"),
    [
        ([ts(0), 1, 2, ts(1.0), ts(1.0), 3, ts(2.0)], 3.0, [1, 2, 3]),
        # the decoder starts over in the padding: that segment and all after it go
        ([ts(0), 1, 2, ts(1.0), ts(3.0), 1, 2, ts(3.5)], 3.0, [1, 2]),
        ([ts(0), 1, ts(2.9), ts(2.95), 4, ts(3.3)], 3.0, [1]),  # within the slack
        ([ts(0), 1, ts(2.0), ts(2.2), 5, ts(3.4)], 3.0, [1, 5]),  # starts inside: kept
        ([1, 2], 3.0, [1, 2]),  # no timestamps at all
        ([ts(0), 1, ts(1.0), 2, ts(2.0)], 3.0, [1, 2]),  # one timestamp between segments
        ([ts(0), 1, ts(3.2), 2], 3.0, [1]),  # text after an end past the audio
        ([ts(4.0), 1, ts(5.0)], 3.0, []),
        ([], 3.0, []),
    ],
)
def test_tokens_before_the_end_of_the_audio(tokens: list[int], end_s: float,
                                            kept: list[int]) -> None:
    assert tokens_before(tokens, TB, end_s) == kept


# -- levels and silence ---------------------------------------------------------------


def test_frame_rms_and_negligible_audio() -> None:
    assert frame_rms(np.zeros(0, np.float32)).size == 0
    rms = frame_rms(tone(0.1, level=0.25))
    assert rms.size == 5 and np.allclose(rms, 0.25, atol=0.01)
    assert frame_rms(np.ones(FRAME + 1, np.float32)).size == 2
    assert is_negligible(np.zeros(0, np.float32))
    assert is_negligible(quiet(1.0, level=1e-4))
    assert not is_negligible(quiet(1.0, level=1e-2))
    assert not is_negligible(np.concatenate([quiet(1.0), tone(0.02, 0.01)]))


def test_speech_needs_a_run_of_confident_vad_chunks() -> None:
    p = np.array
    assert has_speech_run(p([0.1, 0.6, 0.7, 0.2], np.float32))
    assert not has_speech_run(p([0.6, 0.1, 0.6, 0.1, 0.9], np.float32))  # never twice in a row
    assert not has_speech_run(p([0.17] * 50, np.float32))  # noise, however long
    assert not has_speech_run(p([], np.float32))
    assert has_speech_run(p([0.5, 0.5], np.float32))
    assert has_speech_run(p([0.9], np.float32), min_run=1)


def test_same_audio_plus_silence_extends() -> None:
    speech = np.concatenate([tone(1.0), quiet(0.2, 1e-3)])
    assert extends_with_silence(speech, speech)
    assert extends_with_silence(speech, np.concatenate([speech, quiet(0.5)]))
    # a noise floor well under the speech counts as silence
    assert extends_with_silence(speech, np.concatenate([speech, quiet(0.5, 0.01)]))


def test_more_speech_or_other_audio_does_not_extend() -> None:
    speech = tone(1.0)
    assert not extends_with_silence(speech, np.concatenate([speech, quiet(0.3), tone(0.3)]))
    assert not extends_with_silence(speech, speech[:-10])  # shorter
    changed = speech.copy()
    changed[100] += 0.1
    assert not extends_with_silence(speech, np.concatenate([changed, quiet(0.3)]))
    # a quiet talker: the tail is judged against that talker's own level
    soft = tone(1.0, level=0.01)
    assert not extends_with_silence(soft, np.concatenate([soft, tone(0.2, level=0.005)]))
    assert extends_with_silence(np.zeros(0, np.float32), quiet(0.5))


# -- long audio ---------------------------------------------------------------------


def test_short_audio_is_not_cut() -> None:
    assert split_points(tone(2.0), 3 * RATE, RATE) == []


def test_long_audio_is_cut_at_the_quietest_frame_near_each_limit() -> None:
    # speech with a pause at 2.5-2.6 s and another at 5.2-5.3 s; pieces of <= 3 s
    audio = np.concatenate([tone(2.5), quiet(0.1), tone(2.6), quiet(0.1), tone(1.5)])
    cuts = split_points(audio, 3 * RATE, RATE)
    assert len(cuts) == 2
    assert 2.5 * RATE <= cuts[0] < 2.6 * RATE
    assert 5.2 * RATE <= cuts[1] < 5.3 * RATE
    pieces = np.diff([0, *cuts, audio.size])
    assert (pieces <= 3 * RATE).all() and (pieces > 0).all()


def test_steady_audio_is_cut_within_the_limit() -> None:
    audio = tone(10.0)
    cuts = split_points(audio, 3 * RATE, RATE // 2)
    pieces = np.diff([0, *cuts, audio.size])
    assert (pieces <= 3 * RATE).all() and (pieces > 0).all() and sum(pieces) == audio.size


def test_split_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        split_points(tone(1.0), FRAME - 1, 0)
    with pytest.raises(ValueError):
        split_points(tone(1.0), RATE, -1)
