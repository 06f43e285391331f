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
from human import HumanSet

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


# -- voice to voice from the end of the voice, and its split --------------------------


def _server(**kw: float) -> dict[str, float]:
    return {"offset_ms": 150.0, "asr_ms": 330.0, "transcript_ms": 420.0, "reply_ms": 340.0,
            "voice_to_voice_ms": 470.0} | kw


@pytest.mark.unit
def test_the_split_of_a_turn_adds_up_to_the_client_figure() -> None:
    parts = conversation.split({"v2v_voice_ms": 600.0, "server": _server()})
    assert parts == {"before the VAD's end + delivery": 130.0, "offset detection": 150.0,
                     "final transcript": 180.0, "end-of-turn wait": 90.0, "reply": 0.0,
                     "first audio": 50.0}
    assert sum(parts.values()) == 600.0
    # A reply slower than the end of the turn: the wait for it is "reply".
    late = conversation.split({"v2v_voice_ms": 800.0, "server": _server(
        reply_ms=600.0, voice_to_voice_ms=670.0)})
    assert late is not None and late["reply"] == 180.0 and late["first audio"] == 70.0
    assert sum(late.values()) == 800.0
    assert conversation.split({"v2v_voice_ms": 600.0, "server": {"voice_to_voice_ms": 1.0}}) \
        is None
    assert conversation.split({"v2v_voice_ms": None, "server": _server()}) is None


@pytest.mark.unit
def test_human_turns_are_their_own_set_with_the_servers_figure_and_the_difference() -> None:
    items = (bench_item("utt-01", "utterance", "one two"), bench_item("hum-01", "human", "hi"),
             bench_item("hum-02", "human", "so well"), bench_item("hum-03", "human", "yes"))
    ref = cs.ReferenceSet(items[:1], "f")

    def row(id: str, kind: str, client: float, server: dict[str, float] | None,
            **kw: Any) -> dict[str, Any]:
        return {"id": id, "kind": kind, "finals": kw.pop("finals", []), "v2v_ms": client,
                "v2v_voice_ms": client, "server": server, **kw}

    rows = {"on": [row("utt-01", "utterance", 500.0, _server(), finals=["one two"]),
                   row("hum-01", "human", 600.0, _server(), finals=["Hi."]),
                   row("hum-02", "human", 700.0, _server(voice_to_voice_ms=520.0),
                       finals=["So", "well."], cut_off=True),
                   row("hum-03", "human", 650.0, None, finals=["Yes."])],
            "naive": [{"id": "hum-01", "kind": "human", "text": "hi", "total_ms": 900.0},
                      {"id": "hum-02", "kind": "human", "text": "so", "total_ms": 900.0},
                      {"id": "hum-03", "kind": "human", "text": "yes", "total_ms": 900.0}]}
    f = conversation.figures(rows, ["on"], ref, None, HumanSet(items[1:], (), "h", ()))
    human = f["sets"]["human"]["on"]
    assert human["v2v_voice_ms"]["n"] == 2  # the cut-off turn is left out, counted
    assert human["cut"] == {"cut": 1, "n": 3, "rate": 1 / 3}
    assert human["server_v2v_ms"]["n"] == 1 and human["server_v2v_ms"]["p50"] == 470.0
    assert human["difference_ms"]["p50"] == 130.0  # only turns with both figures
    assert human["split_p50_ms"]["n"] == 1
    assert f["sets"]["synthetic"]["on"]["v2v_voice_ms"]["n"] == 1
    assert f["v2v_ms"]["on"]["n"] == 1  # the synthetic figure is the synthetic set's
    # WER on human speech: 'so well' heard as two finals, "so well" -> 0 errors; plain
    # transcribe() missed "well": 1 error in 4 words.
    assert f["wer_human"]["on"] == 0.0
    assert f["wer_human"]["naive"] == pytest.approx(1 / 4)
    assert "naive_ms" not in f  # no synthetic item went through the naive pipeline
