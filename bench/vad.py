"""Voice activity detection: onset/offset delays, false onsets, CPU per frame.

    PYTHONPATH=src .venv/bin/python bench/vad.py [--quick] [--cpu-reps N]

A fixed set of clips made at run time (tests/support/speech.py): every speaker and
speed saying three texts between silences, the same speech under white and pink noise
and clipped, digital silence and a low noise floor, cough-like noise bursts, and
stationary white and pink noise at three levels. Each clip is sent as a client would:
48 kHz PCM16 in 20 ms chunks through :class:`MicResampler` (48 -> 16 kHz), cut by
:class:`Framer` into the engine's frames, one probability per frame, then the pure
:class:`VadGate`. Probabilities are computed once per clip and engine; gate settings
are replayed over them (the sweep tables).

Figures, per engine (Silero; WebRTC at aggressiveness 0-3):
- onset delay: ``confirmed_s`` of the first onset - the true speech start (first
  sample above 1 % of the clip's peak), in audio time; and the same measured in input
  time (how much input had been pushed when the onset came out: adds the resampler's
  hold-back and the frame's fill time; the barge-in budget is counted in this one);
- start error: the onset's ``start_s`` - the true start; offset delay: the last
  offset's ``confirmed_s`` - the true end; splits: extra onsets inside one clip;
- false onsets on silence, on noise bursts and on stationary noise, and the longest
  confirmed run on noise (onset -> offset): over 400 ms a barge-in would become an
  interruption;
- echo: the reply voice leaking back at -20, -32 and -40 dB under the user's level
  (peak 0.05, 0.0125, 0.005 against 0.5): clips with an onset, with the normal
  threshold and with ``speaking_threshold`` (``strict``);
- CPU per frame (us): each engine, the gate, the resampler at LQ and HQ, the chain
  per 20 ms of input; Silero streamed one frame per call against faster-whisper's own
  batch call over the same audio, interleaved (the ratio is what streaming costs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from duplexvoice.speech.audio_in import Framer, MicResampler  # noqa: E402
from duplexvoice.speech.vad import (  # noqa: E402
    SileroVad,
    VoiceActivity,
    WebRtcVad,
    shared_silero_model,
    silero_model_path,
)
from duplexvoice.speech.vad_gate import (  # noqa: E402
    GateConfig,
    SpeechOffset,
    SpeechOnset,
    VadGate,
)
from tests.support import speech as sp  # noqa: E402

RATE = 16000
MIC_RATE = 48000
CHUNK = MIC_RATE // 50  # 20 ms client frames
TEXTS = {
    "short": "Hello there, how are you today?",
    "medium": "The meeting has been moved to three o'clock on Thursday afternoon.",
    "pauses": "Wait. Stop, please. I have a question about that.",
}
NOISE_LEVELS = {"low": 0.01, "moderate": 0.03, "loud": 0.1}  # RMS; speech RMS is ~0.1
BARGE_IN_MS = 400.0


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": float(np.percentile(arr, 50)),
            "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}


def white(seconds: float, rms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(seconds * RATE)) * rms).astype(np.float32)


def pink(seconds: float, rms: float, seed: int) -> np.ndarray:
    n = round(seconds * RATE)
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return (x / x.std() * rms).astype(np.float32)


@dataclass
class Clip:
    name: str
    kind: str  # speech | speech_noise | clipped | silence | burst | noise | echo
    audio: np.ndarray
    start_s: float = 0.0  # true speech start/end (speech kinds)
    end_s: float = 0.0
    traces: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)


def true_bounds(clean: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(clean) > 0.01 * float(np.max(np.abs(clean))))
    return int(loud[0]), int(loud[-1]) + 1


def speech_clip(name: str, kind: str, speech: np.ndarray, bed: np.ndarray | None,
                clip_gain: float = 1.0, phase: int = 0) -> Clip:
    # The lead varies by 4 ms steps so speech starts at every phase of a 32 ms frame.
    lead, tail = sp.silence(1.0 + 0.004 * (phase % 8)), sp.silence(1.2)
    track = np.concatenate([lead, speech, tail])
    if bed is not None:
        track = track + bed[: track.size]
    if clip_gain != 1.0:
        track = np.clip(track * clip_gain, -1.0, 1.0)
    s, e = true_bounds(speech)
    return Clip(name, kind, track.astype(np.float32),
                (lead.size + s) / RATE, (lead.size + e) / RATE)


def build_clips(quick: bool) -> list[Clip]:
    clips: list[Clip] = []
    speakers = sp.SPEAKERS[::2] if quick else sp.SPEAKERS
    texts = dict(list(TEXTS.items())[:2]) if quick else TEXTS
    for i, speaker in enumerate(speakers):
        for j, (tid, text) in enumerate(texts.items()):
            clips.append(speech_clip(f"{speaker.name}/{tid}", "speech",
                                     np.asarray(sp.say(text, speaker)), None, phase=i + 3 * j))
        medium = np.asarray(sp.say(TEXTS["medium"], speaker))
        n = medium.size + round(2.3 * RATE)
        clips.append(speech_clip(f"{speaker.name}/white", "speech_noise", medium,
                                 white(n / RATE, NOISE_LEVELS["moderate"], 100 + i), phase=i + 1))
        clips.append(speech_clip(f"{speaker.name}/pink", "speech_noise", medium,
                                 pink(n / RATE, NOISE_LEVELS["moderate"], 200 + i), phase=i + 5))
        clips.append(speech_clip(f"{speaker.name}/clipped", "clipped", medium, None, 4.0,
                                 phase=i + 2))
    clips.append(Clip("silence/digital", "silence", sp.silence(5.0)))
    clips.append(Clip("silence/floor", "silence", white(5.0, 0.001, 1)))
    for seed, (dur, level) in enumerate(
        [(0.1, 0.3), (0.2, 0.3), (0.3, 0.3), (0.5, 0.3), (0.2, 0.8), (0.3, 0.1), (0.15, 0.6)]
    ):
        burst = sp.noise(dur, level=level, seed=seed)
        clips.append(Clip(f"burst/{dur:g}s@{level:g}", "burst",
                          np.concatenate([sp.silence(0.8), burst, sp.silence(1.0)])))
    t = np.arange(round(1.0 * RATE)) / RATE
    tone = sum(np.sin(2 * np.pi * 440 * k * t) / k for k in (1, 2, 3, 4)) * 0.1
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 3, 5, 7)) * 0.1
    clicks = np.zeros(t.size)
    clicks[:: RATE // 8] = 0.8  # eight taps a second, like typing
    clicks = np.convolve(clicks, np.exp(-np.arange(80) / 10.0))[: t.size]
    for name, x in (("tone", tone), ("hum", hum), ("clicks", clicks)):
        clips.append(Clip(f"burst/{name}", "burst",
                          np.concatenate([sp.silence(0.8), x.astype(np.float32),
                                          sp.silence(1.0)])))
    for lname, rms in NOISE_LEVELS.items():
        clips.append(Clip(f"white/{lname}", "noise", white(5.0, rms, 300)))
        clips.append(Clip(f"pink/{lname}", "noise", pink(5.0, rms, 400)))
    for gain_name, gain in (("-20dB", 0.1), ("-32dB", 0.025), ("-40dB", 0.01)):
        for speaker in sp.SPEAKERS[:1] + sp.SPEAKERS[3:4]:
            leak = np.asarray(sp.say(TEXTS["medium"], speaker)) * gain
            clips.append(Clip(f"echo{gain_name}/{speaker.name}", "echo",
                              np.concatenate([sp.silence(0.5), leak, sp.silence(0.8)])))
    return clips


def engines() -> dict[str, VoiceActivity]:
    found: dict[str, VoiceActivity] = {"silero": SileroVad()}
    for a in range(4):
        found[f"webrtc{a}"] = WebRtcVad(a)
    return found


def trace(clip: Clip, engine: VoiceActivity) -> list[tuple[float, float, float]]:
    """Per frame: (end_s, probability, input seconds pushed when the frame came out)."""
    engine.reset()
    audio48 = soxr.resample(clip.audio, RATE, MIC_RATE).astype(np.float32)
    pcm = sp.pcm16(audio48)
    mic = MicResampler(MIC_RATE)
    framer = Framer(engine.frame_samples)
    out: list[tuple[float, float, float]] = []
    for i in range(0, len(pcm), CHUNK * 2):
        pushed_s = min(len(pcm), i + CHUNK * 2) / 2 / MIC_RATE
        for frame in framer.push(mic.push(pcm[i : i + CHUNK * 2])):
            out.append((frame.end_s, engine.probability(frame.samples), pushed_s))
    return out


@dataclass
class Replay:
    onsets: list[tuple[SpeechOnset, float]]  # with input time
    offsets: list[SpeechOffset]
    runs_ms: list[float]  # onset confirmed -> offset confirmed (or end of clip)


def replay(tr: list[tuple[float, float, float]], frame_s: float, cfg: GateConfig,
           strict: bool = False) -> Replay:
    gate = VadGate(cfg)
    onsets: list[tuple[SpeechOnset, float]] = []
    offsets: list[SpeechOffset] = []
    runs: list[float] = []
    for end_s, p, pushed_s in tr:
        for ev in gate.push(p, end_s, frame_s, strict):
            if isinstance(ev, SpeechOnset):
                onsets.append((ev, pushed_s))
            else:
                offsets.append(ev)
                runs.append((ev.confirmed_s - onsets[-1][0].confirmed_s) * 1000)
    if gate.speaking and tr:
        runs.append((tr[-1][0] - onsets[-1][0].confirmed_s) * 1000)
    return Replay(onsets, offsets, runs)


def evaluate(clips: list[Clip], eng: str, frame_s: float, cfg: GateConfig) -> dict[str, object]:
    onset_ms: list[float] = []
    strict_ms: list[float] = []
    onset_input_ms: list[float] = []
    start_err_ms: list[float] = []
    offset_ms: list[float] = []
    end_err_ms: list[float] = []
    missed: list[str] = []
    early: list[str] = []
    splits = 0
    by_kind: dict[str, list[float]] = {}
    false_onsets = {"silence": 0, "burst": 0, "noise": 0}
    false_clips = {"silence": 0, "burst": 0, "noise": 0}
    false_strict = {"silence": 0, "burst": 0, "noise": 0}
    longest_run: dict[str, float] = {"burst": 0.0, "noise": 0.0}
    longest_moderate = 0.0
    echo: dict[str, int] = {}
    false_names: list[str] = []
    for clip in clips:
        tr = clip.traces[eng]
        if clip.kind in ("speech", "speech_noise", "clipped"):
            r = replay(tr, frame_s, cfg)
            inside = [(o, t) for o, t in r.onsets if o.confirmed_s > clip.start_s - 0.05]
            if len(inside) < len(r.onsets):
                early.append(clip.name)
            if not inside:
                missed.append(clip.name)
                continue
            first, pushed = inside[0]
            onset_ms.append((first.confirmed_s - clip.start_s) * 1000)
            onset_input_ms.append((pushed - clip.start_s) * 1000)
            start_err_ms.append((first.start_s - clip.start_s) * 1000)
            by_kind.setdefault(clip.kind, []).append(onset_ms[-1])
            splits += len(inside) - 1
            if r.offsets:
                last = r.offsets[-1]
                offset_ms.append((last.confirmed_s - clip.end_s) * 1000)
                end_err_ms.append((last.end_s - clip.end_s) * 1000)
            strict = [o for o, _ in replay(tr, frame_s, cfg, strict=True).onsets
                      if o.confirmed_s > clip.start_s - 0.05]
            if strict:
                strict_ms.append((strict[0].confirmed_s - clip.start_s) * 1000)
        elif clip.kind in false_onsets:
            r = replay(tr, frame_s, cfg)
            false_onsets[clip.kind] += len(r.onsets)
            if r.onsets:
                false_names.append(clip.name)
            false_clips[clip.kind] += bool(r.onsets)
            false_strict[clip.kind] += len(replay(tr, frame_s, cfg, strict=True).onsets)
            if clip.kind in longest_run and r.runs_ms:
                longest_run[clip.kind] = max(longest_run[clip.kind], max(r.runs_ms))
                if "moderate" in clip.name:
                    longest_moderate = max(longest_moderate, max(r.runs_ms))
        elif clip.kind == "echo":
            level = clip.name.split("/")[0]
            for is_strict in (False, True):
                key = f"{level}_{'strict' if is_strict else 'normal'}"
                hit = bool(replay(tr, frame_s, cfg, is_strict).onsets)
                echo[key] = echo.get(key, 0) + hit
    n_speech = sum(c.kind in ("speech", "speech_noise", "clipped") for c in clips)
    return {
        "onset_delay_ms": percentiles(onset_ms),
        "onset_delay_input_ms": percentiles(onset_input_ms),
        "onset_delay_strict_ms": percentiles(strict_ms),
        "onset_delay_by_kind_ms": {k: percentiles(v) for k, v in by_kind.items()},
        "start_error_ms": percentiles(start_err_ms),
        "offset_delay_ms": percentiles(offset_ms),
        "end_error_ms": percentiles(end_err_ms),
        "speech_clips": n_speech,
        "missed": missed,
        "onset_before_speech": early,
        "splits": splits,
        "false_onsets": false_onsets,
        "false_onset_clips": false_clips,
        "false_onset_names": false_names,
        "false_onsets_strict": false_strict,
        "clips": {k: sum(c.kind == k for c in clips) for k in false_onsets},
        "longest_noise_run_ms": longest_run,
        "longest_moderate_noise_run_ms": longest_moderate,
        "echo_clips_with_onset": echo,
    }


def cpu_costs(clips: list[Clip], reps: int) -> dict[str, object]:
    """Microseconds per frame, min over ``reps`` passes (the least disturbed)."""
    from faster_whisper.vad import SileroVADModel

    audio = np.concatenate([c.audio for c in clips if c.kind == "speech"][:6])
    audio = audio[: audio.size - audio.size % 512]
    silero, web = SileroVad(), WebRtcVad(2)
    batch = SileroVADModel(str(silero_model_path()))
    n512, n320 = audio.size // 512, audio.size // 320
    frames512 = audio.reshape(-1, 512)
    frames320 = audio[: n320 * 320].reshape(-1, 320)
    pcm48 = sp.pcm16(soxr.resample(audio, RATE, MIC_RATE).astype(np.float32))
    chunks = [pcm48[i : i + CHUNK * 2] for i in range(0, len(pcm48), CHUNK * 2)]
    probs = [float(p) for p in np.clip(batch(audio).reshape(-1), 0, 1)]
    found: dict[str, list[float]] = {}

    def timed(key: str, n: int, fn: object) -> None:
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        found.setdefault(key, []).append((time.perf_counter() - t) / n * 1e6)

    def stream_silero() -> None:
        silero.reset()
        for f in frames512:
            silero.probability(f)

    def stream_webrtc() -> None:
        web.reset()
        for f in frames320:
            web.probability(f)

    def resample(q: str) -> None:
        mic = MicResampler(MIC_RATE, quality=q)
        for c in chunks:
            mic.push(c)

    def gate() -> None:
        g = VadGate()
        for i, p in enumerate(probs):
            g.push(p, (i + 1) * 0.032, 0.032)

    def chain(make: type[SileroVad] | type[WebRtcVad]) -> None:
        eng = silero if make is SileroVad else web
        eng.reset()
        mic, framer, g = MicResampler(MIC_RATE), Framer(eng.frame_samples), VadGate()
        for c in chunks:
            for fr in framer.push(mic.push(c)):
                g.push(eng.probability(fr.samples), fr.end_s, framer.frame_s)

    for _ in range(reps):  # interleaved: A B A B
        timed("silero_stream_per_32ms_frame", n512, stream_silero)
        timed("silero_fw_batch_per_32ms_frame", n512, lambda: batch(audio))
        timed("webrtc_per_20ms_frame", n320, stream_webrtc)
        timed("resampler_lq_48k_per_20ms", len(chunks), lambda: resample("LQ"))
        timed("resampler_hq_48k_per_20ms", len(chunks), lambda: resample("HQ"))
        timed("gate_per_frame", len(probs), gate)
        timed("chain_silero_per_20ms_input", len(chunks), lambda: chain(SileroVad))
        timed("chain_webrtc_per_20ms_input", len(chunks), lambda: chain(WebRtcVad))
    costs: dict[str, object] = {k: {"min": min(v), "p50": float(np.median(v)), "n": len(v)}
                                for k, v in found.items()}
    s, b = min(found["silero_stream_per_32ms_frame"]), min(found["silero_fw_batch_per_32ms_frame"])
    costs["silero_stream_vs_batch_ratio"] = s / b
    costs["audio_seconds_per_pass"] = audio.size / RATE
    for eng in ("silero", "webrtc"):  # share of one core per session, and sessions per core
        us = min(found[f"chain_{eng}_per_20ms_input"])
        costs[f"chain_{eng}_core_share"] = us / 20_000
        costs[f"chain_{eng}_sessions_per_core"] = 20_000 / us
    return costs


def resampler_holdback() -> dict[str, object]:
    """How far output lags input (ms) while streaming 20 ms chunks, per rate and quality."""
    out: dict[str, object] = {}
    rng = np.random.default_rng(0)
    for rate in (8000, 44100, 48000):
        for q in ("LQ", "HQ"):
            mic = MicResampler(rate, quality=q)
            lags = []
            fed = 0
            for _ in range(300):
                x = (rng.standard_normal(rate // 50) * 3000).astype("<i2").tobytes()
                fed += rate // 50
                mic.push(x)
                lags.append((fed / rate - mic.samples_out / RATE) * 1000)
            out[f"{rate}_{q}"] = percentiles(lags[20:])
    return out


def sweep(clips: list[Clip], base: GateConfig, frames: dict[str, float]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    variants: list[tuple[str, GateConfig]] = [
        (f"min_speech={ms:g}", replace(base, min_speech_ms=ms)) for ms in (0, 32, 40, 64, 100)
    ] + [(f"min_silence={ms:g}", replace(base, min_silence_ms=ms)) for ms in (100, 200, 240, 400)]
    variants += [
        ("threshold=0.6,neg=0.45", replace(base, threshold=0.6, neg_threshold=0.45,
                                          speaking_threshold=max(0.6, base.speaking_threshold))),
        ("threshold=0.4,neg=0.25", replace(base, threshold=0.4, neg_threshold=0.25)),
        ("speaking=0.5", replace(base, speaking_threshold=0.5)),
        ("speaking=0.7", replace(base, speaking_threshold=0.7)),
        ("speaking=0.9", replace(base, speaking_threshold=0.9)),
    ]
    for eng in ("silero", "webrtc2", "webrtc3"):
        for label, cfg in variants:
            if eng != "silero" and ("threshold" in label or "speaking" in label):
                continue  # binary probabilities: thresholds change nothing
            r = evaluate(clips, eng, frames[eng], cfg)
            rows.append({"engine": eng, "variant": label, **r})
    return rows


def fmt(d: object, key: str = "p50") -> str:
    return f"{d[key]:.0f}" if isinstance(d, dict) and d.get("n") else "-"  # type: ignore[index]


def echo_cell(r: dict[str, object]) -> str:
    echo: dict[str, int] = r["echo_clips_with_onset"]  # type: ignore[assignment]
    levels = sorted({k.rsplit("_", 1)[0] for k in echo}, key=lambda k: -float(k[4:-2]))
    return " ".join(f"{echo[lv + '_normal']}/{echo[lv + '_strict']}" for lv in levels)


def print_tables(result: dict[str, object]) -> None:
    print(f"\nVAD on {result['clip_counts']} clips; defaults {result['gate_defaults']}")
    print("onset/offset: ms after the true start/end, audio time (input time: + resampler "
          "hold-back and frame fill); FO: false onsets (normal/strict); run: longest "
          "confirmed run on noise; echo: clips with an onset at -20/-32/-40 dB, normal/strict")
    header = (f"{'engine':9} {'onset p50/p95/max':>17} {'input p50/p95':>13} "
              f"{'strict p50/p95':>14} {'start err':>9} {'offset p50/p95/max':>18} "
              f"{'miss':>4} {'split':>5} {'FO sil':>6} {'FO burst':>8} {'FO noise':>8} "
              f"{'run mod':>7} {'run max':>7} {'echo':>14}")
    print(header)
    for eng, r in result["engines"].items():  # type: ignore[attr-defined]
        o, oi, off = r["onset_delay_ms"], r["onset_delay_input_ms"], r["offset_delay_ms"]
        st = r["onset_delay_strict_ms"]
        fo, fs = r["false_onsets"], r["false_onsets_strict"]
        print(f"{eng:9} {fmt(o) + '/' + fmt(o, 'p95') + '/' + fmt(o, 'max'):>17} "
              f"{fmt(oi) + '/' + fmt(oi, 'p95'):>13} {fmt(st) + '/' + fmt(st, 'p95'):>14} "
              f"{fmt(r['start_error_ms']):>9} "
              f"{fmt(off) + '/' + fmt(off, 'p95') + '/' + fmt(off, 'max'):>18} "
              f"{len(r['missed']):>4} {r['splits']:>5} "
              f"{str(fo['silence']) + '/' + str(fs['silence']):>6} "
              f"{str(fo['burst']) + '/' + str(fs['burst']):>8} "
              f"{str(fo['noise']) + '/' + str(fs['noise']):>8} "
              f"{r['longest_moderate_noise_run_ms']:>7.0f} "
              f"{max(r['longest_noise_run_ms'].values()):>7.0f} {echo_cell(r):>14}")
    print("\nSweep (one setting changed from the defaults):")
    print(f"{'engine':9} {'variant':24} {'onset p50/p95':>14} {'input p95':>9} "
          f"{'strict p95':>10} {'offset p95':>10} {'miss':>4} {'split':>5} {'FO burst':>8} "
          f"{'FO noise':>8} {'run max':>7} {'echo':>14}")
    for r in result["sweep"]:  # type: ignore[attr-defined]
        o = r["onset_delay_ms"]
        fo, fs = r["false_onsets"], r["false_onsets_strict"]
        print(f"{r['engine']:9} {r['variant']:24} {fmt(o) + '/' + fmt(o, 'p95'):>14} "
              f"{fmt(r['onset_delay_input_ms'], 'p95'):>9} "
              f"{fmt(r['onset_delay_strict_ms'], 'p95'):>10} "
              f"{fmt(r['offset_delay_ms'], 'p95'):>10} "
              f"{len(r['missed']):>4} {r['splits']:>5} "
              f"{str(fo['burst']) + '/' + str(fs['burst']):>8} "
              f"{str(fo['noise']) + '/' + str(fs['noise']):>8} "
              f"{max(r['longest_noise_run_ms'].values()):>7.0f} {echo_cell(r):>14}")
    print("\nCPU per frame (us, min / p50 over passes):")
    for k, v in result["cpu_us"].items():  # type: ignore[attr-defined]
        if isinstance(v, dict):
            print(f"  {k:34} {v['min']:8.1f} {v['p50']:8.1f}")
        else:
            print(f"  {k:34} {v:8.3g}")
    print("\nResampler hold-back (ms of input not yet out, 20 ms chunks): p50/p95/max")
    for k, v in result["resampler_holdback_ms"].items():  # type: ignore[attr-defined]
        print(f"  {k:10} {v['p50']:6.1f} {v['p95']:6.1f} {v['max']:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer speakers and texts")
    ap.add_argument("--cpu-reps", type=int, default=7)
    args = ap.parse_args()
    t0 = time.perf_counter()
    clips = build_clips(args.quick)
    shared_silero_model()
    engs = engines()
    frames = {name: e.frame_samples / RATE for name, e in engs.items()}
    for clip in clips:
        for name, e in engs.items():
            clip.traces[name] = trace(clip, e)
    base = GateConfig()
    result: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "gate_defaults": base.__dict__,
        "clip_counts": {k: sum(c.kind == k for c in clips)
                        for k in ("speech", "speech_noise", "clipped", "silence", "burst",
                                  "noise", "echo")},
        "engines": {name: evaluate(clips, name, frames[name], base) for name in engs},
        "sweep": sweep(clips, base, frames),
        "cpu_us": cpu_costs(clips, args.cpu_reps),
        "resampler_holdback_ms": resampler_holdback(),
    }
    result["elapsed_s"] = time.perf_counter() - t0
    print_tables(result)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"vad-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
