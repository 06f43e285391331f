"""The gate's fast onset and its overlapping frames: scripted probabilities and cues
(level, speech-like) in, onsets and offsets out; the gate is pure, time is a parameter."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from duplexvoice.speech.vad_gate import (
    GateConfig,
    GateEvent,
    OnsetCue,
    SpeechOffset,
    SpeechOnset,
    VadGate,
)

pytestmark = pytest.mark.unit

HOP, WIN = 0.016, 0.032  # Silero at a 256 hop: a 32 ms window every 16 ms
QUIET, LOUD = OnsetCue(-60.0, False), OnsetCue(-30.0, True)
BASE = GateConfig(fast_backoff_ms=2000.0, fast_backoff_max_ms=60_000.0)


def push_all(
    gate: VadGate, frames: list[tuple[float, OnsetCue | None]], strict: bool = True,
    start: float = 0.0, frame_s: float = WIN, hop: float = HOP,
) -> list[GateEvent]:
    """Frames (probability, cue) ending every ``hop`` after ``start``."""
    events: list[GateEvent] = []
    for i, (p, cue) in enumerate(frames):
        events += gate.push(p, round(start + (i + 1) * hop, 9), frame_s, strict, cue)
    return events


def quiet(n: int) -> list[tuple[float, OnsetCue | None]]:
    return [(0.02, QUIET)] * n


def approx(events: list[GateEvent]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, SpeechOnset):
            out.append(("on", round(e.start_s, 6), round(e.confirmed_s, 6), e.fast))
        else:
            out.append(("off", round(e.end_s, 6), round(e.confirmed_s, 6)))
    return out


# -- overlapping frames -----------------------------------------------------------------


def test_one_voiced_window_is_32ms_of_speech_and_starts_where_the_window_starts() -> None:
    gate = VadGate(replace(BASE, fast_onset=False))
    events = push_all(gate, [(0.02, None)] * 3 + [(0.9, None)], strict=True)
    assert approx(events) == [("on", 0.032, 0.064, False)]  # window 0.032-0.064


def test_overlapping_voiced_windows_count_only_their_new_audio() -> None:
    # min_speech 48: the first window gives 32 ms, the next (16 ms later) adds 16
    gate = VadGate(replace(BASE, fast_onset=False))
    events = push_all(gate, [(0.02, None)] * 3 + [(0.9, None)] * 2, strict=False)
    assert approx(events) == [("on", 0.032, 0.08, False)]
    # two voiced windows far apart add a full window each: still one candidate run
    gate = VadGate(replace(BASE, fast_onset=False, min_speech_ms=64))
    frames = [(0.9, None), (0.4, None), (0.4, None), (0.9, None)]
    assert approx(push_all(gate, frames, strict=False)) == [("on", -0.016, 0.064, False)]


def test_the_offset_ends_where_the_first_unvoiced_window_begins() -> None:
    gate = VadGate(replace(BASE, fast_onset=False, min_silence_ms=64))
    frames = [(0.9, None)] * 5 + [(0.02, None)] * 10
    events = push_all(gate, frames, strict=False)
    # last voiced window ends at 0.08; the next (0.064-0.096) has no speech: ends 0.064
    assert approx(events) == [("on", -0.016, 0.032, False), ("off", 0.064, 0.128)]


def test_in_between_windows_before_silence_still_extend_the_speech() -> None:
    gate = VadGate(replace(BASE, fast_onset=False, min_silence_ms=64))
    frames = [(0.9, None)] * 3 + [(0.4, None)] * 2 + [(0.02, None)] * 10
    events = push_all(gate, frames, strict=False)
    assert approx(events)[1] == ("off", 0.064, 0.128)  # the in-between windows reach 0.08


def test_a_gap_in_time_counts_as_one_frame_of_new_audio() -> None:
    gate = VadGate(replace(BASE, fast_onset=False, min_speech_ms=80))
    assert gate.push(0.9, 0.032, WIN) == []
    assert gate.push(0.9, 1.0, WIN) == []  # not 968 ms of speech: one window more
    (onset,) = gate.push(0.9, 1.016, WIN)
    assert isinstance(onset, SpeechOnset) and onset.start_s == 0.0


# -- fast onset -------------------------------------------------------------------------


def test_a_speechlike_rise_while_the_system_speaks_confirms_at_once() -> None:
    gate = VadGate(BASE)
    events = push_all(gate, [*quiet(20), (0.02, LOUD)])
    assert approx(events) == [("on", 0.304, 0.336, True)]
    assert gate.speaking


def test_no_fast_onset_when_the_system_is_silent() -> None:
    gate = VadGate(BASE)
    assert push_all(gate, quiet(20) + [(0.02, LOUD)] * 3, strict=False) == []


@pytest.mark.parametrize(
    ("cue", "why"),
    [
        (OnsetCue(-30.0, False), "not speech-like"),
        (OnsetCue(-49.0, True), "only 11 dB over the floor"),
        (OnsetCue(-56.0, True), "under the least level"),
    ],
)
def test_no_fast_onset_without_a_speechlike_rise_loud_enough(cue: OnsetCue, why: str) -> None:
    gate = VadGate(BASE)
    floor = [(0.02, OnsetCue(-60.0 if cue.level_db > -55 else -75.0, False))] * 20
    assert push_all(gate, floor + [(0.02, cue)] * 3) == [], why


def test_fast_onset_off_in_the_config() -> None:
    gate = VadGate(replace(BASE, fast_onset=False))
    assert push_all(gate, quiet(20) + [(0.02, LOUD)] * 3) == []


def test_fast_min_ms_needs_the_rise_to_last() -> None:
    gate = VadGate(replace(BASE, fast_min_ms=32.0))
    assert push_all(gate, quiet(20) + [(0.02, LOUD), (0.02, QUIET)] * 3) == []
    gate = VadGate(replace(BASE, fast_min_ms=32.0))
    events = push_all(gate, quiet(20) + [(0.02, LOUD)] * 2)
    assert approx(events) == [("on", 0.32, 0.352, True)]


def test_the_floor_follows_stationary_noise_so_it_never_starts_a_fast_onset() -> None:
    gate = VadGate(BASE)
    push_all(gate, quiet(20), strict=False)
    assert gate.noise_floor_db == pytest.approx(-60.0)
    # a fan is switched on: 20 dB louder for 10 s, speech-like to WebRTC now and then
    fan = [(0.02, OnsetCue(-40.0, i % 7 == 0)) for i in range(625)]
    events = push_all(gate, fan, start=0.32)
    # the floor climbs 3 dB/s: fast onsets only in its first seconds, and backing off
    assert len([e for e in events if isinstance(e, SpeechOnset)]) <= 2
    assert gate.noise_floor_db == pytest.approx(-40.0)
    assert push_all(gate, [(0.02, OnsetCue(-37.0, True))] * 10, start=10.32) == []


def test_the_floor_falls_quickly_after_a_loud_stretch() -> None:
    gate = VadGate(BASE)
    push_all(gate, [(0.02, OnsetCue(-30.0, False))] * 20, strict=False)
    push_all(gate, quiet(10), strict=False, start=0.32)  # 160 ms: three time constants
    assert gate.noise_floor_db is not None and gate.noise_floor_db < -58.0


def test_digital_silence_is_a_floor_of_minus_120() -> None:
    gate = VadGate(BASE)
    push_all(gate, [(0.0, OnsetCue(-500.0, False))] * 5, strict=False)
    assert gate.noise_floor_db == -120.0


def test_an_unconfirmed_fast_onset_ends_like_any_speech_and_backs_off() -> None:
    gate = VadGate(BASE)
    click = [(0.02, LOUD), *quiet(20)]
    events = push_all(gate, quiet(20) + click)
    # onset on the rise; the next window (0.32-0.352) has nothing: the speech ended at
    # 0.32, and it is over once the model had fast_confirm_ms to call it speech
    assert approx(events) == [("on", 0.304, 0.336, True), ("off", 0.32, 0.64)]
    assert gate.fast_blocked_until_s == pytest.approx(2.32)
    # another click 1 s later: blocked; one at 2.4 s: a fast onset again, then 4 s off
    assert push_all(gate, click, start=0.656 + 0.4) == []
    events = push_all(gate, quiet(60) + click, start=1.392)
    assert [e.fast for e in events if isinstance(e, SpeechOnset)] == [True]
    offset = events[-1]
    assert isinstance(offset, SpeechOffset)
    assert gate.fast_blocked_until_s == pytest.approx(offset.end_s + 4.0)


def test_the_back_off_doubles_to_its_maximum() -> None:
    gate = VadGate(replace(BASE, fast_backoff_max_ms=10_000.0))
    t, pauses = 0.0, []
    for _ in range(6):
        push_all(gate, quiet(20), start=t)
        t += 0.32
        events = push_all(gate, [(0.02, LOUD), *quiet(20)], start=t)
        (onset, offset) = events
        assert isinstance(onset, SpeechOnset) and onset.fast
        assert isinstance(offset, SpeechOffset)
        pauses.append(round(gate.fast_blocked_until_s - offset.end_s, 6))
        t = gate.fast_blocked_until_s + 0.1
    assert pauses == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_speech_the_model_confirms_keeps_going_and_resets_the_back_off() -> None:
    gate = VadGate(BASE)
    push_all(gate, [*quiet(20), (0.02, LOUD), *quiet(30)])  # one unconfirmed: backs off
    assert gate.fast_blocked_until_s > 0
    # real speech 1 s later, still blocked (onset by the model), then an offset: the
    # back-off is over
    events = push_all(gate, [(0.9, QUIET)] * 20 + quiet(20), start=1.5)
    assert [type(e) for e in events] == [SpeechOnset, SpeechOffset]
    assert not events[0].fast  # type: ignore[union-attr]
    assert gate.fast_blocked_until_s == -math.inf
    events = push_all(gate, [(0.02, LOUD), *quiet(20)], start=1.5 + 40 * HOP)
    assert approx(events)[0][3] is True
    assert gate.fast_blocked_until_s == pytest.approx(events[1].end_s + 2.0)  # type: ignore[union-attr]


def test_a_fast_onset_the_model_confirms_is_one_speech() -> None:
    gate = VadGate(BASE)
    frames = quiet(20) + [(0.1, LOUD), (0.3, LOUD)] + [(0.9, LOUD)] * 30 + quiet(20)
    events = push_all(gate, frames)
    assert [type(e) for e in events] == [SpeechOnset, SpeechOffset]
    assert events[0].fast  # type: ignore[union-attr]
    assert gate.fast_blocked_until_s == -math.inf  # confirmed: no back-off


def test_a_fricative_start_is_one_speech_though_the_model_hears_it_late() -> None:
    # "Stop": 150 ms of friction the model calls silence, then the vowel
    gate = VadGate(BASE)
    frames = [*quiet(20), *[(0.05, LOUD)] * 10, *[(0.9, LOUD)] * 20, *quiet(30)]
    events = push_all(gate, frames)
    assert [type(e) for e in events] == [SpeechOnset, SpeechOffset]
    assert events[0].fast  # type: ignore[union-attr]
    assert gate.fast_blocked_until_s == -math.inf


def test_an_unconfirmed_fast_onset_lasts_fast_confirm_ms() -> None:
    for wait_ms in (0.0, 160.0, 300.0, 500.0):
        gate = VadGate(replace(BASE, fast_confirm_ms=wait_ms))
        onset, offset = push_all(gate, [*quiet(20), (0.02, LOUD), *quiet(40)])
        assert isinstance(onset, SpeechOnset) and isinstance(offset, SpeechOffset)
        held = offset.confirmed_s - onset.confirmed_s
        assert max(wait_ms, 160.0 - 16.0) / 1000 <= held + 1e-9 <= max(wait_ms, 160.0) / 1000 + HOP


def test_probability_and_rise_on_the_same_frame_is_not_a_fast_onset() -> None:
    gate = VadGate(BASE)
    assert approx(push_all(gate, [*quiet(20), (0.9, LOUD)])) == [("on", 0.304, 0.336, False)]


def test_fast_onset_starts_at_an_open_candidate() -> None:
    gate = VadGate(replace(BASE, speaking_min_speech_ms=64))
    events = push_all(gate, [*quiet(20), (0.9, QUIET), (0.9, LOUD)])
    assert approx(events) == [("on", 0.304, 0.352, True)]  # the model's window began it


@pytest.mark.parametrize(
    "cue", [OnsetCue(math.nan, True), OnsetCue(math.inf, True), OnsetCue(-30.0, 1),  # type: ignore[arg-type]
            "loud", OnsetCue(True, True)],  # type: ignore[arg-type]
)
def test_a_bad_cue_is_refused_and_changes_nothing(cue: object) -> None:
    gate = VadGate(BASE)
    push_all(gate, quiet(5))
    with pytest.raises(ValueError, match="cue"):
        gate.push(0.02, 1.0, WIN, True, cue)  # type: ignore[arg-type]
    assert gate.noise_floor_db == pytest.approx(-60.0) and not gate.speaking
    assert approx(push_all(gate, [(0.02, LOUD)], start=5 * HOP))[0][3] is True


def test_reset_forgets_the_floor_and_the_back_off() -> None:
    gate = VadGate(BASE)
    push_all(gate, [*quiet(20), (0.02, LOUD), *quiet(20)])
    gate.reset()
    assert gate.noise_floor_db is None and gate.fast_blocked_until_s == -math.inf
    assert approx(push_all(gate, [*quiet(20), (0.02, LOUD)]))[0][3] is True


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fast_rise_db": -1.0}, "fast_rise_db"),
        ({"fast_min_level_db": 3.0}, "fast_min_level_db"),
        ({"fast_min_level_db": -200.0}, "fast_min_level_db"),
        ({"fast_min_ms": math.nan}, "fast_min_ms"),
        ({"fast_confirm_ms": -1.0}, "fast_confirm_ms"),
        ({"floor_rise_db_per_s": 0.0}, "floor_rise_db_per_s"),
        ({"floor_fall_ms": -5.0}, "floor_fall_ms"),
        ({"fast_backoff_ms": 5000.0, "fast_backoff_max_ms": 1000.0}, "at least"),
        ({"speaking_min_speech_ms": -1.0}, "speaking_min_speech_ms"),
        ({"fast_onset": 1}, "fast_onset"),
        ({"fast_rise_db": True}, "fast_rise_db"),
    ],
)
def test_bad_fast_config(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GateConfig(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(40))
def test_invariants_with_cues_and_overlapping_frames(seed: int) -> None:
    rng = random.Random(seed)
    c = replace(BASE, min_speech_ms=rng.choice([0, 32, 48, 64]),
                speaking_min_speech_ms=rng.choice([0, 32, 48]),
                min_silence_ms=rng.choice([0, 64, 160]), fast_rise_db=rng.choice([6, 12]),
                fast_backoff_ms=rng.choice([0, 500, 2000]),
                fast_backoff_max_ms=rng.choice([2000, 8000]))
    hop, frame_s = rng.choice([(0.016, 0.032), (0.032, 0.032), (0.01, 0.02)])
    frames: list[tuple[float, OnsetCue, bool]] = []
    while len(frames) < 800:
        p = rng.choice([0.02, 0.3, 0.45, 0.6, 0.97])
        level = rng.choice([-120.0, -60.0, -45.0, -30.0, -10.0])
        speechlike = rng.random() < 0.5
        strict = rng.random() < 0.6
        for _ in range(rng.randint(1, 12)):
            q = min(1.0, max(0.0, p + rng.uniform(-0.1, 0.1)))
            frames.append((q, OnsetCue(level + rng.uniform(-3, 3), speechlike), strict))
    gate = VadGate(c)
    events: list[GateEvent] = []
    eps = 1e-9
    for i, (p, cue, strict) in enumerate(frames):
        end = round((i + 1) * hop, 9)
        new = gate.push(p, end, frame_s, strict, cue)
        assert len(new) <= 1
        for e in new:
            if isinstance(e, SpeechOnset):
                assert e.confirmed_s == end
                if e.fast:
                    assert strict and cue.speechlike and cue.level_db >= c.fast_min_level_db
                else:
                    need = c.speaking_min_speech_ms if strict else c.min_speech_ms
                    assert e.confirmed_s - e.start_s >= need / 1000 - eps
            else:
                onset = events[-1]
                assert isinstance(onset, SpeechOnset)
                assert onset.start_s <= e.end_s <= onset.confirmed_s + len(frames) * hop
                assert e.confirmed_s - e.end_s >= c.min_silence_ms / 1000 - eps
        events += new
        assert gate.speaking == (bool(events) and isinstance(events[-1], SpeechOnset))
    for i, e in enumerate(events):
        assert isinstance(e, SpeechOnset if i % 2 == 0 else SpeechOffset)
