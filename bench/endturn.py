"""Benchmark the end of turn offline: silence only, the text rule, Smart-Turn, fused.

    .venv/bin/python bench/endturn.py [--json] [--no-human] [--no-synthetic] [--tail-s 2.5]
        [--measured | --text-after-ms N --score-after-ms N] [--heard FILE]

Each user turn is replayed through the pure turn-taking core with a fake clock, on
what the real components heard: the real VAD (Silero, the default settings) over the
turn's audio in 20 ms frames; at each of its offsets the real final transcript
(Whisper tiny.en, ``Transcriber.transcribe_sync``, the orchestrator's default settings)
and the real Smart-Turn v3.2 p(complete) of the turn's audio so far. Each answer
reaches the core a fixed time after the offset, so that the decisions do not depend on
how busy the machine was: the final transcript 150 ms (synthetic) or 350 ms (human
speech: what the orchestrator measured on a quiet machine, issue 17), the score 150 ms
(Smart-Turn's cost here, features included); ``--measured`` uses the times this run
measured instead (uncontended, one after the other; in a session both run at once).
Then, for every setting of a grid, the core decides: when did it first confirm the end
of the turn? ``--heard FILE`` keeps what was heard (JSON) and reuses it next time.

- **cut off**: the turn was confirmed before the speaker's last run of speech began
  (the VAD heard speech again after the confirmation): they had not finished.
- **wait**: confirmation - the end of the last speech (the VAD's last voiced frame),
  over the turns not cut off; **ready**: the later of the confirmation and the final
  transcript, the same way (a reply cannot be heard before either).

Each mode is shown at its best setting: the lowest p50 wait among the settings that
cut off at most 1 turn in 10 (over every turn), else the fewest cut-offs; and the
defaults. The grid is small and the turns few (~30): the best settings are fitted to
these turns, so the figures flatter them a little; the defaults are what ships.

**Turns.** Synthetic (``conversation_set.py``): the 13 complete utterances and the 7
cut-off probes (a trailing "and"/"so"/"um", a pause of 0.40-0.95 s, the rest).
Human: the ``pyannote.audio`` 4.0.7 sdist's ``sample.wav`` / ``sample.stm`` (MIT; a
telephone call, two speakers), fetched once into ``~/.cache/duplexvoice/bench`` (or
``$DUPLEXVOICE_BENCH_CACHE``) with ``pip download --no-deps --no-binary :all:``: each
speaker's consecutive utterances are one turn (9), cut with up to 100 ms around them
(at most half the gap to the other speaker), between 0.3 s and ``--tail-s`` of the
room's own noise (the call's first 6 s, where nobody speaks). The other speaker's
response gaps (from the ``.stm``) are the human anchor.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from duplexvoice.orchestrator.sessions.listening import PREROLL_S  # noqa: E402
from duplexvoice.orchestrator.sessions.turns import (  # noqa: E402
    Confirm,
    TurnConfig,
    TurnTaking,
)
from duplexvoice.speech.asr import AsrConfig, Transcriber  # noqa: E402
from duplexvoice.speech.endturn import WINDOW_S, SmartTurn, features  # noqa: E402
from duplexvoice.speech.vad import VadConfig  # noqa: E402
from duplexvoice.speech.vad_gate import SpeechOnset  # noqa: E402

RATE = 16_000
FRAME = 320
PYANNOTE = "pyannote.audio==4.0.7"
SAMPLE = "src/pyannote/audio/sample/sample"
HUMAN_MARGIN_S = 0.1
NOISE_BED_S = (0.0, 6.0)  # nobody speaks in the call's first 6.6 s


@dataclass
class Turn:
    id: str
    source: str  # synthetic | human
    text: str
    audio: np.ndarray


@dataclass
class Offset:
    end_s: float  # last voiced frame
    confirmed_s: float
    text: str
    asr_ms: float
    p: float
    st_ms: float


@dataclass
class Heard:
    """What the real components heard of one turn."""

    turn: Turn
    onsets: list[SpeechOnset]
    offsets: list[Offset]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.turn.id, "source": self.turn.source, "text": self.turn.text,
                "onsets": [[o.start_s, o.confirmed_s] for o in self.onsets],
                "offsets": [vars(o) for o in self.offsets]}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Heard:
        turn = Turn(d["id"], d["source"], d["text"], np.zeros(0, np.float32))
        return Heard(turn, [SpeechOnset(a, b) for a, b in d["onsets"]],
                     [Offset(**o) for o in d["offsets"]])

    @property
    def last_start_s(self) -> float:
        return self.onsets[-1].start_s

    @property
    def voice_end_s(self) -> float:
        return self.offsets[-1].end_s


@dataclass
class Outcome:
    cut: bool
    wait_ms: float | None  # None when cut off (or never confirmed)
    ready_ms: float | None


@dataclass
class Row:
    mode: str
    label: str
    settings: dict[str, Any]
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def of(self, source: str | None = None) -> list[Outcome]:
        return [o for k, o in self.outcomes.items()
                if source is None or k.startswith(source)]

    def cut(self, source: str | None = None) -> tuple[int, int]:
        outs = self.of(source)
        return sum(o.cut for o in outs), len(outs)

    def waits(self, source: str | None = None, ready: bool = False) -> list[float]:
        values = [o.ready_ms if ready else o.wait_ms for o in self.of(source)]
        return [v for v in values if v is not None]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


# -- turns ------------------------------------------------------------------------------

def synthetic_turns(tail_s: float) -> list[Turn]:
    from conversation_set import build_set

    ref = build_set()
    out = []
    for item in ref.references:
        audio = np.concatenate([np.zeros(round(0.3 * RATE), np.float32), item.audio,
                                np.zeros(round(tail_s * RATE), np.float32)])
        out.append(Turn(f"synthetic/{item.id}", "synthetic", item.text, audio))
    return out


def _cache() -> Path:
    base = os.environ.get("DUPLEXVOICE_BENCH_CACHE") or Path.home() / ".cache/duplexvoice/bench"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pyannote_sample() -> tuple[np.ndarray, str]:
    cache = _cache()
    tarballs = sorted(cache.glob("pyannote_audio-4.0.7.tar.gz"))
    if not tarballs:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", PYANNOTE, "-d", str(cache)], check=True)
        tarballs = sorted(cache.glob("pyannote_audio-4.0.7.tar.gz"))
    with tarfile.open(tarballs[0]) as tar:
        def read(suffix: str) -> bytes:
            member = next(m for m in tar.getmembers() if m.name.endswith(SAMPLE + suffix))
            extracted = tar.extractfile(member)
            assert extracted is not None
            return extracted.read()

        wav, stm = read(".wav"), read(".stm").decode()
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return pcm, stm


def _bed(noise: np.ndarray, seconds: float) -> np.ndarray:
    """The room's noise for ``seconds``: forwards then backwards (no click at joins)."""
    loop = np.concatenate([noise, noise[::-1]])
    reps = int(np.ceil(seconds * RATE / loop.size)) + 1
    return np.tile(loop, reps)[: round(seconds * RATE)].astype(np.float32)


def human_turns(tail_s: float) -> tuple[list[Turn], list[float]]:
    """The call's turns, and the human anchor (response gaps, ms)."""
    pcm, stm = _pyannote_sample()
    utts = []
    for line in stm.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            utts.append((parts[2], float(parts[3]), float(parts[4]), parts[5]))
    merged: list[list[Any]] = []
    for speaker, start, end, words in utts:
        if merged and merged[-1][0] == speaker:
            merged[-1][2] = end
            merged[-1][3] += " " + words
        else:
            merged.append([speaker, start, end, words])
    noise = pcm[round(NOISE_BED_S[0] * RATE): round(NOISE_BED_S[1] * RATE)]
    turns, gaps = [], []
    for i, (speaker, start, end, words) in enumerate(merged):
        before = merged[i - 1][2] if i else 0.0
        after = merged[i + 1][1] if i + 1 < len(merged) else pcm.size / RATE
        if i + 1 < len(merged):
            gaps.append((merged[i + 1][1] - end) * 1000)
        a = start - min(HUMAN_MARGIN_S, max(0.0, (start - before) / 2))
        b = end + min(HUMAN_MARGIN_S, max(0.0, (after - end) / 2))
        clip = pcm[round(a * RATE): round(b * RATE)]
        audio = np.concatenate([_bed(noise, 0.3), clip, _bed(noise, tail_s)])
        turns.append(Turn(f"human/{i + 1:02d}-{speaker}", "human", words, audio))
    return turns, gaps


# -- what the real components hear -------------------------------------------------------

def hear(turn: Turn, transcriber: Transcriber, model: SmartTurn,
         costs: dict[str, list[float]]) -> Heard:
    detector = VadConfig().make_detector()
    onsets: list[SpeechOnset] = []
    offsets: list[Offset] = []
    turn_start: int | None = None
    for i in range(0, turn.audio.size - FRAME + 1, FRAME):
        for edge in detector.push(turn.audio[i:i + FRAME]):
            if isinstance(edge, SpeechOnset):
                onsets.append(edge)
                if turn_start is None:
                    turn_start = max(0, round((edge.start_s - PREROLL_S) * RATE))
            else:
                assert turn_start is not None
                audio = turn.audio[turn_start: round(edge.confirmed_s * RATE)]
                t0 = time.perf_counter()
                rec = transcriber.transcribe_sync(audio)
                asr_ms = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                features(audio[-WINDOW_S * RATE:])
                costs["features"].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                p = model.probability(audio)  # features again: the whole call is timed
                st_ms = (time.perf_counter() - t0) * 1000
                costs["smart_turn"].append(st_ms)
                costs["asr"].append(asr_ms)
                offsets.append(Offset(edge.end_s, edge.confirmed_s, rec.text, asr_ms, p, st_ms))
    return Heard(turn, onsets, offsets)


# -- the pure decisions -------------------------------------------------------------------

@dataclass(frozen=True)
class Delays:
    """When the answers reach the core after an offset (ms); None: as measured."""

    text_ms: dict[str, float] | None
    score_ms: float | None

    def text(self, heard: Heard, off: Offset) -> float:
        return off.asr_ms if self.text_ms is None else self.text_ms[heard.turn.source]

    def score(self, off: Offset) -> float:
        return off.st_ms if self.score_ms is None else self.score_ms


NOMINAL = Delays({"synthetic": 150.0, "human": 350.0}, 150.0)


def replay(heard: Heard, config: TurnConfig, delays: Delays = NOMINAL) -> Outcome:
    """The turn through the core with a fake clock, up to its first confirmation."""
    core = TurnTaking(config)
    events: list[tuple[float, int, str, Any]] = []
    for on in heard.onsets:
        events.append((on.confirmed_s, 0, "start", on))
    for k, off in enumerate(heard.offsets):
        events.append((off.confirmed_s, 1, "end", k))
        events.append((off.confirmed_s + delays.text(heard, off) / 1000, 2, "text", k))
        events.append((off.confirmed_s + delays.score(off) / 1000, 2, "score", k))
    events.sort(key=lambda e: (e[0], e[1]))
    events.append((float("inf"), 9, "over", None))
    latest = -1  # the latest offset: older answers were cancelled by the listener
    for at, _, kind, what in events:
        deadline = core.next_deadline
        while deadline is not None and deadline <= at:
            if any(isinstance(d, Confirm) for d in core.tick(deadline)):
                return outcome(heard, deadline, delays)
            later = core.next_deadline
            if later is not None and later <= deadline:
                break  # nothing due moved: wait for the next event
            deadline = later
        if kind == "start":
            out = core.speech_started(at, at - what.start_s)
        elif kind == "end":
            latest = what
            out = core.speech_ended(at, at - heard.offsets[what].end_s)
        elif kind == "text" and what == latest:
            out = core.transcript(1, heard.offsets[what].text, True, at)
        elif kind == "score" and what == latest:
            out = core.acoustic(1, heard.offsets[what].p, at)
        else:
            out = []
        if any(isinstance(d, Confirm) for d in out):
            return outcome(heard, at, delays)
    return Outcome(False, None, None)


def outcome(heard: Heard, confirmed: float, delays: Delays) -> Outcome:
    if confirmed < heard.last_start_s:
        return Outcome(True, None, None)  # they spoke again after it: cut off
    end = heard.voice_end_s
    last = heard.offsets[-1]
    text_ready = last.confirmed_s + delays.text(heard, last) / 1000
    return Outcome(False, (confirmed - end) * 1000, (max(confirmed, text_ready) - end) * 1000)


def grid(mode: str) -> Iterator[dict[str, Any]]:
    def product(**axes: Iterable[Any]) -> Iterator[dict[str, Any]]:
        keys = list(axes)
        for values in itertools.product(*axes.values()):
            yield dict(zip(keys, values, strict=True))

    if mode == "silence":
        yield from product(end_of_turn_ms=range(200, 1601, 50))
    elif mode == "text":
        yield from product(end_of_turn_ms=(300, 400, 500, 600, 700, 800, 1000),
                           complete_end_ms=(100, 150, 200, 250, 300, 400),
                           trailing_end_ms=(600, 800, 1000, 1200, 1500))
    elif mode == "acoustic":
        for s in product(end_of_turn_ms=(300, 400, 500, 600, 800),
                         complete_p=(0.3, 0.5, 0.7, 0.9),
                         incomplete_p=(0.02, 0.05, 0.1, 0.2, 0.3),
                         acoustic_complete_ms=(0, 50, 100, 150, 200, 300),
                         acoustic_incomplete_ms=(600, 800, 1000, 1200, 1500)):
            if s["incomplete_p"] <= s["complete_p"]:
                yield s
    else:
        for s in product(end_of_turn_ms=(400, 500, 600, 800),
                         complete_p=(0.5, 0.7, 0.9), incomplete_p=(0.05, 0.1, 0.2),
                         acoustic_complete_ms=(50, 100, 150, 200),
                         acoustic_incomplete_ms=(800, 1000, 1200),
                         complete_end_ms=(150, 250), trailing_end_ms=(800, 1000, 1200)):
            yield s


def evaluate(heard: list[Heard], mode: str, settings: dict[str, Any], label: str,
             delays: Delays) -> Row:
    config = TurnConfig(end_mode=mode, **settings)  # type: ignore[arg-type]
    row = Row(mode, label, settings)
    for h in heard:
        if h.onsets and h.offsets:
            row.outcomes[h.turn.id] = replay(h, config, delays)
    return row


def best(rows: list[Row], max_cut: float = 0.1) -> Row:
    def key(row: Row) -> tuple[float, ...]:
        cut, n = row.cut()
        waits = row.waits()
        ok = cut <= max_cut * n
        return (0 if ok else 1, cut if not ok else 0, pct(waits, 50), pct(waits, 95), cut)

    return min(rows, key=key)


# -- report -------------------------------------------------------------------------------

def line(row: Row, sources: tuple[str | None, ...]) -> str:
    cells = [f"{row.mode:8s} {row.label:8s}"]
    for source in sources:
        cut, n = row.cut(source)
        w, r = row.waits(source), row.waits(source, ready=True)
        cells.append(f"{pct(w, 50):5.0f} {pct(w, 95):5.0f} {pct(r, 50):5.0f} {pct(r, 95):5.0f}"
                     f" {cut:2d}/{n:<2d}")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--no-human", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--tail-s", type=float, default=2.5,
                        help="silence (noise) after each turn")
    parser.add_argument("--measured", action="store_true",
                        help="answers reach the core after their measured compute times")
    parser.add_argument("--text-after-ms", type=float, default=None,
                        help="the final transcript reaches the core this long after the "
                        "offset (default: 150 synthetic, 350 human)")
    parser.add_argument("--score-after-ms", type=float, default=NOMINAL.score_ms)
    parser.add_argument("--heard", type=Path, default=None,
                        help="JSON of what was heard: read if it exists, else written")
    args = parser.parse_args()

    t0 = time.perf_counter()
    anchor: list[float] = []
    costs: dict[str, list[float]] = {"asr": [], "smart_turn": [], "features": []}
    if args.heard is not None and args.heard.exists():
        saved = json.loads(args.heard.read_text())
        heard = [Heard.from_json(h) for h in saved["heard"]]
        anchor, costs = saved["anchor"], saved["costs"]
        heard = [h for h in heard if not (args.no_human and h.turn.source == "human")
                 and not (args.no_synthetic and h.turn.source == "synthetic")]
    else:
        turns: list[Turn] = []
        if not args.no_synthetic:
            turns += synthetic_turns(args.tail_s)
        if not args.no_human:
            human, anchor = human_turns(args.tail_s)
            turns += human
        transcriber = Transcriber(AsrConfig())
        model = SmartTurn()
        warm = turns[0].audio[: 3 * RATE]
        transcriber.transcribe_sync(warm)
        model.probability(warm)
        heard = [hear(t, transcriber, model, costs) for t in turns]
        transcriber.close()
        if args.heard is not None:
            args.heard.write_text(json.dumps({"heard": [h.to_json() for h in heard],
                                              "anchor": anchor, "costs": costs}))
    turns = [h.turn for h in heard]
    if args.measured:
        delays = Delays(None, None)
    else:
        text_ms = NOMINAL.text_ms if args.text_after_ms is None else {
            "synthetic": args.text_after_ms, "human": args.text_after_ms}
        delays = Delays(text_ms, args.score_after_ms)

    defaults = TurnConfig()
    fields = ("end_of_turn_ms", "complete_end_ms", "trailing_end_ms", "complete_p",
              "incomplete_p", "acoustic_complete_ms", "acoustic_incomplete_ms")
    default_settings = {f: getattr(defaults, f) for f in fields}
    rows: list[Row] = []
    chosen: dict[str, Row] = {}
    # What shipped before issue 17: the text rule, 500 / 250 / 1000 ms.
    before = {**default_settings, "end_of_turn_ms": 500, "complete_end_ms": 250,
              "trailing_end_ms": 1000}
    rows.append(evaluate(heard, "text", before, "before", delays))
    for mode in ("silence", "text", "acoustic", "fused"):
        candidates = [evaluate(heard, mode, s, "best", delays) for s in grid(mode)]
        chosen[mode] = best(candidates)
        rows.append(evaluate(heard, mode, default_settings, "default", delays))
        rows.append(chosen[mode])

    sources: tuple[str | None, ...] = (None, "synthetic", "human")
    present = tuple(s for s in sources if s is None or any(t.source == s for t in turns))
    print(f"end of turn, {len(turns)} turns ({sum(t.source == 'synthetic' for t in turns)} "
          f"synthetic, {sum(t.source == 'human' for t in turns)} human), "
          f"{time.perf_counter() - t0:.0f} s")
    arrive = "as measured" if delays.text_ms is None else (
        f"final transcript {delays.text_ms} ms, score {delays.score_ms:g} ms after the offset")
    print(f"answers reach the core: {arrive}")
    print(f"measured per offset ({len(costs['asr'])} offsets): final transcript p50 "
          f"{pct(costs['asr'], 50):.0f} p95 {pct(costs['asr'], 95):.0f} ms; Smart-Turn "
          f"p50 {pct(costs['smart_turn'], 50):.0f} p95 {pct(costs['smart_turn'], 95):.0f} "
          f"ms (of which features p50 {pct(costs['features'], 50):.0f} ms)")
    if anchor:
        print(f"human anchor: the other speaker answered after p50 {pct(anchor, 50):.0f} ms "
              f"(min {min(anchor):.0f}, max {max(anchor):.0f}, n {len(anchor)})")
    head = " | ".join(["mode     setting "] + [
        f"{(s or 'all'):^30s}" for s in present])
    print("\nwait = confirmation - end of voice; ready = later of it and the final "
          "transcript (ms)")
    print(head)
    print(" | ".join(["                  "] + ["wait50 w95 rdy50 r95 cut    "] * len(present)))
    for row in rows:
        print(line(row, present))
    print("\nbest settings (lowest p50 wait with at most 1 cut-off in 10):")
    for mode, row in chosen.items():
        print(f"  {mode:8s} {row.settings}")
    for h in heard:
        said = " / ".join(f"{o.p:.2f} {o.text!r}" for o in h.offsets)
        print(f"  {h.turn.id:22s} {said}")
    if args.json:
        print(json.dumps({
            "costs_ms": {k: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)}
                         for k, v in costs.items()},
            "anchor_ms": anchor,
            "rows": [{"mode": r.mode, "label": r.label, "settings": r.settings,
                      **{f"{s or 'all'}": {"wait_p50": pct(r.waits(s), 50),
                                           "wait_p95": pct(r.waits(s), 95),
                                           "ready_p50": pct(r.waits(s, True), 50),
                                           "ready_p95": pct(r.waits(s, True), 95),
                                           "cut": r.cut(s)[0], "n": r.cut(s)[1]}
                         for s in present}} for r in rows],
        }, indent=1, default=str))


if __name__ == "__main__":
    main()
