"""The human set's pure parts (bench/human.py): the .stm and Sphinx transcripts, turns
and their answer gaps, clips padded with room noise. No fetching here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import human

pytestmark = pytest.mark.unit

STM = """\
sample 1 Diane 6.68 7.16 Hello?
sample 1 Sheila 7.634 8.155 Hello?
sample 1 Diane 8.436 8.876 Oh, hello.
sample 1 Diane 8.916 9.798 I didn't know you were there.
sample 1 Sheila 9.838 10.78 Neither did I.
"""


def test_stm_utterances_make_turns_with_the_others_answer_gap() -> None:
    turns = human.turns_of(human.parse_stm(STM))
    assert [(t.speaker, t.text) for t in turns] == [
        ("Diane", "Hello?"), ("Sheila", "Hello?"),
        ("Diane", "Oh, hello. I didn't know you were there."), ("Sheila", "Neither did I.")]
    assert [None if t.answer_gap_s is None else round(t.answer_gap_s * 1000)
            for t in turns] == [474, 281, 40, None]


def test_sphinx_transcription_lines() -> None:
    text = "<s> ten of clubs  </s> (001)\n<s> five five  </s> (004)\nnoise\n"
    assert human.parse_transcription(text) == {"001": "ten of clubs", "004": "five five"}


def test_a_turn_is_cut_between_room_noise_and_ends_where_its_voice_ends() -> None:
    rate = human.RATE
    rng = np.random.default_rng(0)
    audio = (0.0003 * rng.standard_normal(12 * rate)).astype(np.float32)  # -70 dBFS
    t = np.arange(rate) / rate
    for start in (7, 9):  # two voices of 1 s: 7-8 s (A), 9-10 s (B)
        audio[start * rate:(start + 1) * rate] += (0.3 * np.sin(2 * np.pi * 200 * t))
    utterances = [human.Utterance("A", 7.0, 8.0, "one"), human.Utterance("B", 9.0, 10.0, "two")]
    items, turns = human.build_items(audio, utterances, tail_s=1.0)
    first = items[0]
    speech = first.events[0]
    assert first.kind == "human" and first.text == "one" and first.speaker == "A"
    # 0.3 s of noise, then 7.0 - 0.1 s onwards: the voice starts 0.1 s in.
    assert speech.start_s == pytest.approx(human.LEAD_S)
    assert speech.end_s == pytest.approx(human.LEAD_S + 0.1 + 1.0)
    assert first.duration_s == pytest.approx(human.LEAD_S + 1.2 + 1.0)
    assert turns[0].answer_gap_s == pytest.approx(1.0)
    # No voice in the padding: the room's noise only.
    lead = first.audio[:first.sample(human.LEAD_S)]
    assert np.abs(lead).max() < 0.01


def test_room_noise_repeats_its_bed_without_a_jump() -> None:
    bed = np.linspace(-0.01, 0.01, 100, dtype=np.float32)
    out = human.room_noise(bed, 250 / human.RATE)
    assert len(out) == 250
    assert np.abs(np.diff(out)).max() <= np.abs(np.diff(bed)).max() + 1e-7


def test_the_quietest_stretch_leaves_a_click_out() -> None:
    rate = human.RATE
    audio = np.full(rate, 0.001, np.float32)
    audio[: rate // 2] = 0.2  # loud first half
    audio[int(0.7 * rate)] = 0.9  # a click in the quiet half
    bed = human.quietest(audio, 0.1)
    assert len(bed) == rate // 10 and np.abs(bed).max() == pytest.approx(0.001)
