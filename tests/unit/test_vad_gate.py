"""VAD hysteresis: scripted per-frame probabilities in, onsets and offsets out."""

from __future__ import annotations

import math
import random

import pytest

from duplexvoice.speech.vad_gate import (
    GateConfig,
    GateEvent,
    SpeechOffset,
    SpeechOnset,
    VadGate,
)

pytestmark = pytest.mark.unit

F = 0.02  # 20 ms frames unless a test says otherwise
ON, MID, OFF = 0.9, 0.4, 0.1  # voiced, in between, unvoiced (with the default thresholds)


def cfg(**kw: float) -> GateConfig:
    base: dict[str, float] = {
        "threshold": 0.5, "neg_threshold": 0.35, "speaking_threshold": 0.7,
        "min_speech_ms": 40.0, "min_silence_ms": 100.0,
    }
    base.update(kw)
    base.setdefault("speaking_min_speech_ms", base["min_speech_ms"])
    return GateConfig(**base)


def run(
    probs: list[float], config: GateConfig | None = None, frame_s: float = F,
    strict: bool | list[bool] = False, start: float = 0.0, gate: VadGate | None = None,
) -> list[GateEvent]:
    gate = gate or VadGate(config or cfg())
    flags = strict if isinstance(strict, list) else [strict] * len(probs)
    events: list[GateEvent] = []
    for i, (p, s) in enumerate(zip(probs, flags, strict=True)):
        events += gate.push(p, start + (i + 1) * frame_s, frame_s, s)
    return events


def approx(events: list[GateEvent]) -> list[tuple[str, float, float]]:
    out = []
    for e in events:
        if isinstance(e, SpeechOnset):
            out.append(("on", round(e.start_s, 6), round(e.confirmed_s, 6)))
        else:
            out.append(("off", round(e.end_s, 6), round(e.confirmed_s, 6)))
    return out


def test_defaults_are_silero_standard_and_short() -> None:
    c = GateConfig()
    assert (c.threshold, c.neg_threshold) == (0.5, 0.35)
    # No threshold rejects the system's own voice (the echo canceller's job): barge-in
    # gets the normal one, one 32 ms window, and the fast onset.
    assert c.speaking_threshold == c.threshold and c.fast_onset
    assert c.speaking_min_speech_ms == 32 < c.min_speech_ms <= 60
    assert 100 <= c.min_silence_ms <= 200


def test_silence_gives_nothing() -> None:
    gate = VadGate(cfg())
    assert run([OFF] * 500, gate=gate) == []
    assert not gate.speaking and gate.speech_start_s is None and gate.last_voiced_s is None


def test_onset_reports_start_of_first_voiced_frame_and_confirming_frame() -> None:
    events = run([OFF] * 5 + [ON] * 3)
    # voiced frames 6, 7 (0.10-0.14 s): 40 ms of voice confirms at the end of frame 7
    assert approx(events) == [("on", 0.1, 0.14)]


def test_float_sums_do_not_delay_confirmation() -> None:
    # 3 x 0.02 s adds up to 0.06000000000000001 or 0.059999999999999998 depending on order
    assert approx(run([ON] * 3, cfg(min_speech_ms=60))) == [("on", 0.0, 0.06)]
    assert approx(run([ON] * 3, cfg(min_speech_ms=60), frame_s=0.1 / 5)) == [("on", 0.0, 0.06)]


def test_single_frame_blips_are_ignored() -> None:
    assert run([OFF, ON, OFF, OFF, ON, OFF, ON, OFF] * 10) == []


def test_one_frame_is_enough_with_min_speech_zero() -> None:
    events = run([OFF, ON] + [OFF] * 10, cfg(min_speech_ms=0))
    assert approx(events) == [("on", 0.02, 0.04), ("off", 0.04, 0.14)]


def test_flicker_between_voiced_and_in_between_still_counts_the_voiced_frames() -> None:
    # in-between frames keep the candidate but add nothing: onset at the 2nd voiced frame
    events = run([ON, MID, MID, ON, MID])
    assert approx(events) == [("on", 0.0, 0.08)]


def test_flicker_between_voiced_and_unvoiced_never_confirms() -> None:
    assert run([ON, OFF] * 50) == []


def test_exactly_at_thresholds() -> None:
    c = cfg(min_speech_ms=0, min_silence_ms=0)
    assert approx(run([0.5], c)) == [("on", 0.0, 0.02)]  # p == threshold is voiced
    assert run([0.4999], c) == []
    # p == neg_threshold is in between: speech goes on; just below it ends it
    assert approx(run([0.9, 0.35, 0.35], c)) == [("on", 0.0, 0.02)]
    assert approx(run([0.9, 0.3499], c)) == [("on", 0.0, 0.02), ("off", 0.02, 0.04)]
    assert approx(run([0.7], c, strict=True)) == [("on", 0.0, 0.02)]  # == speaking_threshold
    assert run([0.6999], c, strict=True) == []


def test_strict_onset_needs_the_speaking_threshold() -> None:
    probs = [0.6] * 10
    assert approx(run(probs)) == [("on", 0.0, 0.04)]
    assert run(probs, strict=True) == []
    assert approx(run([0.6, 0.6, 0.8, 0.8], strict=True)) == [("on", 0.04, 0.08)]


def test_strict_frames_between_thresholds_keep_a_candidate_without_counting() -> None:
    # 0.6 is voiced normally, in between when strict
    events = run([0.8, 0.6, 0.8], strict=[True, True, True])
    assert approx(events) == [("on", 0.0, 0.06)]


def test_strict_only_guards_the_onset() -> None:
    gate = VadGate(cfg())
    assert len(run([ON, ON], gate=gate, strict=True)) == 1
    # once speaking, 0.6 is speech even when strict: no offset
    assert run([0.6] * 20, gate=gate, strict=True, start=0.04) == []
    assert gate.speaking


def test_strict_can_change_per_frame() -> None:
    events = run([0.6, 0.6, 0.6], strict=[True, False, False])
    assert approx(events) == [("on", 0.02, 0.06)]


def test_long_speech_one_onset_then_one_offset() -> None:
    gate = VadGate(cfg())
    events = run([ON] * 500 + [OFF] * 10, gate=gate)
    assert approx(events) == [("on", 0.0, 0.04), ("off", 10.0, 10.1)]
    assert not gate.speaking and gate.last_voiced_s == pytest.approx(10.0)


def test_gaps_shorter_than_min_silence_do_not_end_speech() -> None:
    probs = [ON] * 10 + ([OFF] * 4 + [ON] * 3) * 5  # 80 ms gaps < 100 ms
    events = run(probs + [OFF] * 5)
    assert approx(events) == [("on", 0.0, 0.04), ("off", 0.9, 1.0)]


def test_gap_of_exactly_min_silence_ends_speech() -> None:
    events = run([ON] * 3 + [OFF] * 5 + [ON] * 3)
    assert approx(events) == [
        ("on", 0.0, 0.04), ("off", 0.06, 0.16), ("on", 0.16, 0.2),
    ]


def test_in_between_frames_extend_speech_until_silence_starts() -> None:
    gate = VadGate(cfg())
    events = run([ON, ON, MID, MID, OFF, OFF, OFF, OFF, OFF], gate=gate)
    # the in-between frames after speech still count as speech: it ends at 0.08
    assert approx(events) == [("on", 0.0, 0.04), ("off", 0.08, 0.18)]


def test_in_between_frames_do_not_cancel_the_hangover() -> None:
    events = run([ON, ON, OFF, MID, MID, MID, MID, MID])
    assert approx(events) == [("on", 0.0, 0.04), ("off", 0.04, 0.14)]


def test_a_voiced_frame_cancels_the_hangover() -> None:
    gate = VadGate(cfg())
    events = run([ON, ON, OFF, OFF, MID, ON, OFF, OFF, OFF, OFF, OFF], gate=gate)
    assert approx(events) == [("on", 0.0, 0.04), ("off", 0.12, 0.22)]


def test_min_silence_zero_ends_at_the_first_unvoiced_frame() -> None:
    events = run([ON, ON, MID, OFF], cfg(min_silence_ms=0))
    assert approx(events) == [("on", 0.0, 0.04), ("off", 0.06, 0.08)]


def test_a_stalled_candidate_is_dropped() -> None:
    gate = VadGate(cfg())
    # one voiced frame, then in-between for the hangover's length: the candidate goes
    events = run([ON] + [MID] * 5, gate=gate)
    assert events == [] and gate.candidate_start_s is None
    events = run([ON, ON], gate=gate, start=0.12)
    assert approx(events) == [("on", 0.12, 0.16)]  # a new run, not the old start


def test_a_candidate_survives_shorter_in_between_stretches() -> None:
    gate = VadGate(cfg())
    run([ON] + [MID] * 4, gate=gate)
    assert gate.candidate_start_s == 0.0
    assert approx(run([ON], gate=gate, start=0.1)) == [("on", 0.0, 0.12)]


def test_properties_follow_the_state() -> None:
    gate = VadGate(cfg())
    run([OFF, ON], gate=gate)
    assert gate.candidate_start_s == pytest.approx(0.02) and not gate.speaking
    run([ON], gate=gate, start=0.04)
    assert gate.speaking and gate.speech_start_s == pytest.approx(0.02)
    assert gate.last_voiced_s == pytest.approx(0.06) and gate.candidate_start_s is None
    run([OFF] * 5, gate=gate, start=0.06)
    assert not gate.speaking and gate.speech_start_s is None
    assert gate.last_voiced_s == pytest.approx(0.06)


def test_32ms_frames() -> None:
    events = run([OFF, ON, ON, OFF, OFF, OFF, OFF], cfg(min_speech_ms=32), frame_s=0.032)
    assert approx(events) == [("on", 0.032, 0.064), ("off", 0.096, 0.224)]


def test_reset_forgets_everything() -> None:
    gate = VadGate(cfg())
    run([ON] * 5, gate=gate)
    gate.reset()
    assert not gate.speaking and gate.last_voiced_s is None
    # time may start again from zero after a reset
    assert approx(run([ON, ON], gate=gate)) == [("on", 0.0, 0.04)]


@pytest.mark.parametrize("p", [math.nan, -0.01, 1.01, math.inf, "0.5", None])
def test_bad_probability_is_refused_and_changes_nothing(p: object) -> None:
    gate = VadGate(cfg())
    run([ON], gate=gate)
    with pytest.raises(ValueError, match="probability"):
        gate.push(p, 0.04, F)  # type: ignore[arg-type]
    assert approx(run([ON], gate=gate, start=0.02)) == [("on", 0.0, 0.04)]


@pytest.mark.parametrize("frame_s", [0.0, -0.02, math.nan, math.inf])
def test_bad_frame_length_is_refused(frame_s: float) -> None:
    with pytest.raises(ValueError, match="frame_s"):
        VadGate().push(0.9, 0.02, frame_s)


def test_time_must_move_forward() -> None:
    gate = VadGate(cfg())
    gate.push(ON, 0.04, F)
    for t in (0.04, 0.02, math.nan):
        with pytest.raises(ValueError, match=r"forward|finite"):
            gate.push(ON, t, F)
    assert approx(gate.push(ON, 0.06, F)) == [("on", 0.02, 0.06)]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"neg_threshold": -0.1}, "neg_threshold"),
        ({"neg_threshold": 0.6}, "must not exceed"),
        ({"speaking_threshold": 0.4}, "stricter"),
        ({"min_speech_ms": -1.0}, "min_speech_ms"),
        ({"min_silence_ms": math.inf}, "min_silence_ms"),
        ({"threshold": math.nan}, "threshold"),
    ],
)
def test_bad_config(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cfg(**kw)


def test_no_hysteresis_is_allowed() -> None:
    c = cfg(neg_threshold=0.5, speaking_threshold=0.5, min_speech_ms=0, min_silence_ms=0)
    assert approx(run([0.5, 0.49], c)) == [("on", 0.0, 0.02), ("off", 0.02, 0.04)]


@pytest.mark.parametrize("seed", range(40))
def test_invariants_on_random_sequences(seed: int) -> None:
    rng = random.Random(seed)
    c = cfg(
        min_speech_ms=rng.choice([0, 20, 40, 64]), min_silence_ms=rng.choice([0, 60, 100, 200])
    )
    frame_s = rng.choice([0.01, 0.02, 0.032])
    # runs of similar probabilities, like a real VAD's output
    probs: list[float] = []
    while len(probs) < 600:
        level = rng.choice([0.02, 0.3, 0.45, 0.6, 0.75, 0.97])
        probs += [min(1.0, max(0.0, level + rng.uniform(-0.1, 0.1)))] * rng.randint(1, 15)
    strict = [rng.random() < 0.3 for _ in probs]
    gate = VadGate(c)
    events: list[GateEvent] = []
    ends = set()
    for i, (p, s) in enumerate(zip(probs, strict, strict=True)):
        end = round((i + 1) * frame_s, 9)
        ends.add(end)
        new = gate.push(p, end, frame_s, s)
        assert len(new) <= 1
        events += new
        assert gate.speaking == (bool(events) and isinstance(events[-1], SpeechOnset))
    eps = 1e-9
    for i, e in enumerate(events):
        assert isinstance(e, SpeechOnset if i % 2 == 0 else SpeechOffset)  # they alternate
        assert e.confirmed_s in ends
        if isinstance(e, SpeechOnset):
            assert e.confirmed_s - e.start_s >= c.min_speech_ms / 1000 - eps
            if i:
                assert e.start_s >= events[i - 1].confirmed_s - frame_s - eps  # type: ignore[union-attr]
        else:
            onset = events[i - 1]
            assert isinstance(onset, SpeechOnset)
            assert onset.confirmed_s <= e.end_s + eps
            assert e.confirmed_s - e.end_s >= c.min_silence_ms / 1000 - eps
