"""The conversation benchmark's own parts (bench/conversation*.py): the reference set,
the client's pacing and scenarios, the naive pipeline, WER and the figures.

The client's scenarios run against a small fake conversation server here (an energy
"VAD", ``pause`` / ``interrupt`` / ``resume``, echo-like replies): it checks that the
client speaks WIRE §1.2 and measures what it claims, not how fast anything is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import conversation
import conversation_client as cc
import conversation_set as cs

from duplexvoice.speech.wer import wer
from tests.support.bench_items import bench_item

# -- pacing, with a fake clock -------------------------------------------------------


class FakeClock:
    """Time moves only when the sender sleeps or sends; ``late`` is added to every
    sleep (a loop that wakes up late), ``stall`` to the send of given frames."""

    def __init__(self, late: float = 0.0, stall: dict[int, float] | None = None) -> None:
        self.now = 100.0
        self.late = late
        self.stall = stall or {}
        self.sent: list[bytes] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.late

    async def send(self, frame: bytes) -> None:
        self.now += self.stall.get(len(self.sent), 0.0)
        self.sent.append(frame)


def _mic(fake: FakeClock) -> cc.MicStream:
    mic = cc.MicStream(fake.send, 16000, clock=fake.clock, sleep=fake.sleep)
    mic.t0 = fake.now
    return mic


@pytest.mark.unit
async def test_frames_go_out_when_complete_and_late_wakeups_do_not_add_up() -> None:
    fake = FakeClock(late=0.0007)  # every wake-up 0.7 ms late
    mic = _mic(fake)
    await mic.run(frames=1000)
    lateness = np.asarray(mic.sent_at) - np.asarray([mic.due(k) for k in range(1000)])
    assert lateness.min() >= 0  # never before the frame is complete
    assert lateness.max() == pytest.approx(0.0007)  # 20 s later: no drift


@pytest.mark.unit
async def test_a_stall_is_caught_up_back_to_back_then_pacing_resumes() -> None:
    fake = FakeClock(stall={10: 0.1})  # the send of frame 10 takes 100 ms
    mic = _mic(fake)
    await mic.run(frames=30)
    assert mic.sent_at[10] == pytest.approx(mic.due(10) + 0.1)
    # frames 11..14 were due during the stall: sent at once, at the same moment
    assert mic.sent_at[11:15] == pytest.approx([mic.sent_at[10]] * 4)
    assert mic.sent_at[20:] == pytest.approx([mic.due(k) for k in range(20, 30)])


@pytest.mark.unit
async def test_a_track_is_sent_in_order_padded_between_silence() -> None:
    fake = FakeClock()
    mic = _mic(fake)
    await mic.run(frames=3)
    pcm = bytes(range(256)) * 5  # 1280 bytes: 2 frames; + 1 odd part below
    track = mic.play(pcm + b"\x01\x02")
    assert (track.first, track.frames) == (3, 3)
    await mic.run(frames=10)
    assert fake.sent[:3] == [bytes(640)] * 3 and fake.sent[6:] == [bytes(640)] * 4
    assert b"".join(fake.sent[3:6]) == pcm + b"\x01\x02" + bytes(638)
    assert track.frame_of(0) == 3 and track.frame_of(959) == 5
    assert await mic.wall_time(track, 320) == mic.sent_at[4]
    with pytest.raises(ValueError):
        track.frame_of(960)
    with pytest.raises(ValueError):
        mic.play(b"\x00")


# -- WER ---------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("ref", "hyp", "expected"), [
    ("The door code is four seven two nine.", "The door code is 4729.", 0.0),
    ("A table for four people at seven thirty.", "A table for 4 people at 7:30.", 0.0),
    ("The meeting starts at um three o'clock.", "The meeting starts at 3:00.", 0.0),
    ("We drove about two hundred miles.", "We drove about 200 miles!", 0.0),
    ("Hold on, I have a question.", "Hold on I have question", 1 / 6),
    ("yes", "", 1.0),
])
def test_wer_the_bench_uses_scores_what_whisper_writes_like_what_was_said(ref: str, hyp: str,
                                                           expected: float) -> None:
    assert wer(ref, hyp) == pytest.approx(expected)


# -- figures from rows ---------------------------------------------------------------


@pytest.mark.unit
def test_figures_leave_cut_off_turns_out_of_voice_to_voice_and_count_them() -> None:
    items = (bench_item("utt-01", "utterance", "one two"),
             bench_item("cut-01", "cutoff", "a b c"),
             bench_item("int-01", "interruption", "stop"), bench_item("burst-01", "burst", ""))
    ref = cs.ReferenceSet(items, "f")

    def row(id: str, kind: str, **kw: Any) -> dict[str, Any]:
        return {"id": id, "kind": kind, "finals": kw.pop("finals", []), **kw}

    rows = {"off": [row("utt-01", "utterance", v2v_ms=600.0, finals=["One, two."]),
                    row("cut-01", "cutoff", v2v_ms=100.0, cut_off=True, finals=["a", "b c"]),
                    row("int-01", "interruption", pause_ms=30.0, interrupt_ms=450.0,
                        old_audio_after_onset_ms=40, old_frames_after_interrupt=0,
                        missed=False, finals=["stop"]),
                    row("burst-01", "burst", outcome="interrupted", pause_ms=25.0,
                        sequence_gaps=0)],
            "naive": [{"id": "utt-01", "total_ms": 1200.0, "asr_ms": 650.0, "text": "one two"},
                      {"id": "cut-01", "total_ms": 1000.0, "asr_ms": 500.0, "text": "a b"}]}
    f = conversation.figures(rows, ["off"], ref, None)
    assert f["v2v_ms"]["off"]["n"] == 1 and f["v2v_ms"]["off"]["p50"] == 600
    assert f["cutoff"]["off"] == {"cut": 1, "n": 1, "rate": 1.0}
    assert f["ratio_p50"]["off"] == pytest.approx(600 / 1100)
    assert f["missed"]["rate"] == 0 and f["false_interruption"]["rate"] == 1.0
    assert f["wer"]["off"] == 0.0
    assert f["wer"]["naive"] == pytest.approx(1 / 5)  # "c" missing; int-01 not transcribed
