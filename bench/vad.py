"""Voice activity detection: barge-in onset delay, false holds on noise, end-of-turn
offsets, CPU per 20 ms of input.

    PYTHONPATH=src .venv/bin/python bench/vad.py [--quick] [--cpu-reps N]

Clips: ``bench/vad_clips.py`` (every speaker, six first sounds, over a quiet floor
right away and after 20 s of it, in noise beds at -40/-30/-20 dBFS, clipped; 68
non-speech sounds over the same beds, series of sounds, stationary noise, echo; and
``bench/conversation.py``'s own interruptions and bursts, alone and in one stream).
Each clip is sent as a client would: 48 kHz PCM16 in 20 ms chunks through
:class:`MicResampler`, cut by :class:`Framer` into the engine's frames; one
probability (and one :class:`OnsetCue`) per frame is recorded, then gate settings are
replayed over the recordings, so every option below sees the same probabilities.
About 3 minutes on 2 cores (``--quick``: every other speaker).

Options (strict mode: the system is speaking, an onset sends ``pause``): today's
default (Silero at a 512 hop, its state never renewed, speaking threshold 0.7) as the
baseline; (c) lower speaking thresholds; (a) a 256-sample hop: two interleaved model
states (each exactly on the model's 512 grid) and, for the record, one state stepped
every 256 samples (off the grid the model was trained on); states renewed after 2 s
of quiet or never; (b) a fast onset on top: WebRTC VAD (10 ms) calls speech AND the
level rose ``fast_rise_db`` over the tracked noise floor (with a back-off after holds
the model never confirms), or WebRTC voting with Silero's latest probability >= 0.2
(the brief's first idea). Figures:

- onset delay: ``confirmed_s`` of the first strict onset - the true speech start
  (first sample above 1 % of the clean speech's peak), audio time, per condition; and
  in input time (how much input had been pushed when the onset came out: + the
  resampler's hold-back and the client's 20 ms chunking; the barge-in budget of 80 ms
  counts this one, plus the network and the client);
- false holds: strict onsets on clips with no speech (each would pause the reply for
  about 300 ms, then resume), per kind of noise; echo: clips with a strict onset;
- non-strict (the user's turn while the system is silent): onset, offset delay (last
  offset's ``confirmed_s`` - true end), end error, splits (extra onsets), false onsets;
- CPU (us): the whole chain per 20 ms of input, per option; parts per frame.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from vad_clips import (  # noqa: E402
    CONDITIONS,
    FALSE_KINDS,
    SPEECH_KINDS,
    Clip,
    build_clips,
    conversation_clips,
)
from vad_tables import print_tables  # noqa: E402

from duplexvoice.speech.audio_in import Framer, MicResampler  # noqa: E402
from duplexvoice.speech.vad import (  # noqa: E402
    OnsetCues,
    SileroModel,
    SileroVad,
    VoiceActivity,
    WebRtcVad,
    shared_silero_model,
)
from duplexvoice.speech.vad_gate import (  # noqa: E402
    GateConfig,
    OnsetCue,
    SpeechOffset,
    SpeechOnset,
    VadGate,
)
from tests.support import speech as sp  # noqa: E402

RATE = 16000
MIC_RATE = 48000
CHUNK = MIC_RATE // 50  # 20 ms client frames
TODAY = GateConfig(speaking_threshold=0.7, min_speech_ms=32, speaking_min_speech_ms=32,
                   fast_onset=False)  # with Silero at a 512 hop, states never renewed
NEW = GateConfig()


class OffGridSilero:
    """One Silero state stepped every 256 samples (the last 576 as its row): off the
    512 grid the model was trained on; measured, not offered."""

    frame_samples = 256

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self.reset()

    def probability(self, frame: np.ndarray) -> float:
        self._row[0, :-256] = self._row[0, 256:]
        self._row[0, -256:] = frame
        p, self._h, self._c = self._model.run(self._row, self._h, self._c)
        return float(p[0])

    def reset(self) -> None:
        self._row = np.zeros((1, 576), np.float32)
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)


def engines() -> dict[str, VoiceActivity]:
    return {"silero512": SileroVad(hop=512, quiet_reset_s=0),
            "silero512-renewed": SileroVad(hop=512),
            "silero256": SileroVad(hop=256),
            "silero256-unrenewed": SileroVad(hop=256, quiet_reset_s=0),
            "silero256-1state": OffGridSilero(shared_silero_model()),
            "webrtc2": WebRtcVad(2), "webrtc3": WebRtcVad(3)}


CUE_ENGINES = ("silero512-renewed", "silero256")
CUE_SOURCE = {"silero512": "silero512-renewed", "silero256-unrenewed": "silero256"}  # same frames
WINDOW_S = {"silero256": 0.032, "silero256-unrenewed": 0.032,
            "silero256-1state": 0.032}  # probabilities of 32 ms windows every 16 ms


def trace(clip: Clip, name: str, engine: VoiceActivity) -> None:
    """Records (end_s, p, input pushed) per frame, and (level, webrtc1, webrtc3) cues."""
    engine.reset()
    cues = [OnsetCues(1), OnsetCues(3)] if name in CUE_ENGINES else []
    pcm = sp.pcm16(soxr.resample(clip.audio, RATE, MIC_RATE).astype(np.float32))
    mic, framer = MicResampler(MIC_RATE), Framer(engine.frame_samples)
    frames: list[tuple[float, float, float]] = []
    cue_rows: list[tuple[float, bool, bool]] = []
    for i in range(0, len(pcm), CHUNK * 2):
        pushed_s = min(len(pcm), i + CHUNK * 2) / 2 / MIC_RATE
        for frame in framer.push(mic.push(pcm[i : i + CHUNK * 2])):
            frames.append((frame.end_s, engine.probability(frame.samples), pushed_s))
            if cues:
                a, b = (c.cue(frame.samples) for c in cues)
                cue_rows.append((a.level_db, a.speechlike, b.speechlike))
    clip.traces[name] = frames
    if cues:
        clip.cues[name] = cue_rows


@dataclass(frozen=True)
class Option:
    label: str
    engine: str
    gate: GateConfig
    cue: str = ""  # "" none | webrtc1 | webrtc3 | vote (webrtc1 and p >= 0.2, no level rule)


def cue_of(option: Option, row: tuple[float, bool, bool], p: float) -> OnsetCue | None:
    if not option.cue:
        return None
    level, w1, w3 = row
    if option.cue == "vote":
        return OnsetCue(0.0, w1 and p >= 0.2)
    return OnsetCue(level, w1 if option.cue == "webrtc1" else w3)


def replay(clip: Clip, option: Option, strict: bool
           ) -> tuple[list[tuple[SpeechOnset, float]], list[SpeechOffset]]:
    gate = VadGate(option.gate)
    frames = clip.traces[option.engine]
    frame_s = WINDOW_S.get(option.engine, frames[1][0] - frames[0][0])
    cue_rows = clip.cues.get(CUE_SOURCE.get(option.engine, option.engine), [])
    onsets: list[tuple[SpeechOnset, float]] = []
    offsets: list[SpeechOffset] = []
    for k, (end_s, p, pushed_s) in enumerate(frames):
        cue = cue_of(option, cue_rows[k], p) if option.cue else None
        for ev in gate.push(p, end_s, frame_s, strict, cue):
            if isinstance(ev, SpeechOnset):
                onsets.append((ev, pushed_s))
            else:
                offsets.append(ev)
    return onsets, offsets


def unconfirmed_fast(clip: Clip, option: Option) -> int:
    """Fast onsets in a speech clip that ended with no voiced frame (they back off)."""
    if not option.cue:
        return 0
    gate = VadGate(option.gate)
    frames = clip.traces[option.engine]
    frame_s = WINDOW_S.get(option.engine, frames[1][0] - frames[0][0])
    count = 0
    for k, (end_s, p, _) in enumerate(frames):
        before = gate.fast_blocked_until_s
        row = clip.cues[CUE_SOURCE.get(option.engine, option.engine)][k]
        gate.push(p, end_s, frame_s, True, cue_of(option, row, p))
        count += gate.fast_blocked_until_s != before and gate.fast_blocked_until_s > end_s
    return count


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": math.nan, "p95": math.nan, "max": math.nan}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": float(np.percentile(arr, 50)),
            "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}


def false_key(clip: Clip) -> str:
    if clip.kind == "burst":
        return "burst_quiet" if clip.name.endswith("/quiet") else "burst" + clip.name[-3:]
    if clip.kind == "noise":
        return "noise_step" if "step" in clip.name else "noise" + clip.name[-3:]
    return clip.kind


def evaluate_strict(clips: list[Clip], option: Option) -> dict[str, object]:
    audio: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    every: list[float] = []
    inputs: list[float] = []
    quiet_inputs: list[float] = []
    start_error: list[float] = []
    splits = 0
    fast_unconfirmed = 0
    fast = 0
    missed: list[str] = []
    early: list[str] = []
    holds: dict[str, int] = {}
    hold_clips: dict[str, int] = {}
    echo = 0
    conv: list[float] = []
    conv_input: list[float] = []
    conv_holds = 0
    seq_onsets: list[float] = []
    seq_holds = 0
    for clip in clips:
        onsets, _ = replay(clip, option, strict=True)
        if clip.kind == "conv_speech":
            inside = [(o, t) for o, t in onsets if o.confirmed_s > clip.start_s - 0.05]
            if inside:
                conv.append((inside[0][0].confirmed_s - clip.start_s) * 1000)
                conv_input.append((inside[0][1] - clip.start_s) * 1000)
            continue
        if clip.kind == "conv_burst":
            conv_holds += len(onsets)
            continue
        if clip.kind == "conv_sequence":
            for n, (kind, at) in enumerate(clip.marks):
                until = clip.marks[n + 1][1] if n + 1 < len(clip.marks) else math.inf
                inside = [(o, t) for o, t in onsets if at - 0.05 < o.confirmed_s < until]
                if kind == "interruption" and inside:
                    seq_onsets.append((inside[0][0].confirmed_s - at) * 1000)
                elif kind == "interruption":
                    seq_onsets.append(math.inf)
                else:
                    seq_holds += len(inside)
            continue
        if clip.kind in SPEECH_KINDS:
            inside = [(o, t) for o, t in onsets if o.confirmed_s > clip.start_s - 0.05]
            if len(inside) < len(onsets):
                early.append(clip.name)
            splits += max(0, len(inside) - 1)
            fast_unconfirmed += unconfirmed_fast(clip, option)
            if not inside:
                missed.append(clip.name)
                continue
            first, pushed = inside[0]
            delay = (first.confirmed_s - clip.start_s) * 1000
            audio[clip.condition].append(delay)
            every.append(delay)
            start_error.append((first.start_s - clip.start_s) * 1000)
            inputs.append((pushed - clip.start_s) * 1000)
            if clip.condition == "quiet":
                quiet_inputs.append(inputs[-1])
            fast += first.fast
        elif clip.kind in FALSE_KINDS:
            key = false_key(clip)
            holds[key] = holds.get(key, 0) + len(onsets)
            hold_clips[key] = hold_clips.get(key, 0) + bool(onsets)
        elif clip.kind == "echo":
            echo += bool(onsets)
    return {"onset_ms": percentiles(every), "onset_input_ms": percentiles(inputs),
            "onset_input_quiet_ms": percentiles(quiet_inputs),
            "start_error_ms": percentiles(start_error),
            "strict_splits": splits, "fast_unconfirmed_on_speech": fast_unconfirmed,
            "onset_by_condition_ms": {c: percentiles(v) for c, v in audio.items()},
            "fast_onsets": fast, "missed": missed, "early": early, "false_holds": holds,
            "clips_with_false_holds": hold_clips, "echo_clips_with_onset": echo,
            "conversation_onset_ms": percentiles(conv),
            "conversation_onset_input_ms": percentiles(conv_input),
            "conversation_burst_holds": conv_holds,
            "conversation_sequence_onset_ms": percentiles(seq_onsets),
            "conversation_sequence_burst_holds": seq_holds}


def evaluate_nonstrict(clips: list[Clip], option: Option) -> dict[str, object]:
    onset: list[float] = []
    offset: list[float] = []
    end_error: list[float] = []
    splits = 0
    false_onsets = 0
    for clip in clips:
        if clip.kind in ("echo", "conv_speech", "conv_burst", "conv_sequence"):
            continue
        onsets, offsets = replay(clip, option, strict=False)
        if clip.kind in SPEECH_KINDS:
            inside = [o for o, _ in onsets if o.confirmed_s > clip.start_s - 0.05]
            if inside:
                onset.append((inside[0].confirmed_s - clip.start_s) * 1000)
                splits += len(inside) - 1
            if offsets:
                offset.append((offsets[-1].confirmed_s - clip.end_s) * 1000)
                end_error.append((offsets[-1].end_s - clip.end_s) * 1000)
        else:
            false_onsets += len(onsets)
    return {"onset_ms": percentiles(onset), "offset_ms": percentiles(offset),
            "end_error_ms": percentiles(end_error),
            "splits": splits, "false_onsets": false_onsets}


def options() -> list[Option]:
    today = TODAY
    fast = replace(NEW, fast_onset=True)
    no_fast = replace(NEW, fast_onset=False)
    return [
        Option("today: silero512 st0.7", "silero512", today),
        Option("(c) silero512 st0.5", "silero512", replace(today, speaking_threshold=0.5)),
        Option("(c) silero512 st0.4", "silero512",
               replace(today, speaking_threshold=0.4, threshold=0.4, neg_threshold=0.3)),
        Option("(a) silero256 st0.7 min32", "silero256", replace(today, speaking_threshold=0.7)),
        Option("(a) silero256 st0.5 min48", "silero256", replace(no_fast,
               speaking_min_speech_ms=48)),
        Option("(a) silero256 st0.5 min32", "silero256", no_fast),
        Option("(a) silero256 st0.4 min32", "silero256",
               replace(no_fast, speaking_threshold=0.4, threshold=0.4, neg_threshold=0.3)),
        Option("(a) 1-state256 st0.5 min32", "silero256-1state", no_fast),
        Option("(a) silero256 st0.5 min32 unrenewed", "silero256-unrenewed", no_fast),
        Option("(a) silero512 st0.5 renewed", "silero512-renewed",
               replace(today, speaking_threshold=0.5)),
        Option("(b) vote webrtc1+p>=0.2", "silero256", replace(fast, fast_rise_db=0.0,
               fast_min_level_db=-120.0), "vote"),
        Option("(b) fast webrtc1 rise12 [new]", "silero256", fast, "webrtc1"),
        Option("(b) fast webrtc1 rise9", "silero256", replace(fast, fast_rise_db=9.0), "webrtc1"),
        Option("(b) fast webrtc3 rise12", "silero256", fast, "webrtc3"),
        Option("(b) fast webrtc1 rise6", "silero256", replace(fast, fast_rise_db=6.0), "webrtc1"),
        Option("(b) fast webrtc1 rise15", "silero256", replace(fast, fast_rise_db=15.0),
               "webrtc1"),
        Option("(b) fast webrtc1 rise12 for 32ms", "silero256", replace(fast, fast_min_ms=32.0),
               "webrtc1"),
        Option("(b) fast webrtc1 rise12 no backoff", "silero256",
               replace(fast, fast_backoff_ms=0.0), "webrtc1"),
        Option("(b) fast webrtc1 rise12 st0.7", "silero256",
               replace(fast, speaking_threshold=0.7), "webrtc1"),
        Option("(b) fast on silero512", "silero512-renewed", fast, "webrtc1"),
        Option("(b) fast, states never renewed", "silero256-unrenewed", fast, "webrtc1"),
        Option("(b) fast webrtc1 rise12 confirm160", "silero256",
               replace(fast, fast_confirm_ms=0.0), "webrtc1"),
        Option("webrtc2 alone", "webrtc2", replace(no_fast, speaking_min_speech_ms=20)),
        Option("webrtc3 alone", "webrtc3", replace(no_fast, speaking_min_speech_ms=20)),
    ]


def nonstrict_options() -> list[Option]:
    return [
        Option("today: silero512", "silero512", TODAY),
        Option("silero512 renewed", "silero512-renewed", TODAY),
        Option("silero256 min32", "silero256", replace(NEW, min_speech_ms=32)),
        Option("silero256 min48 [new]", "silero256", NEW),
        Option("silero256 min48 unrenewed", "silero256-unrenewed", NEW),
        Option("silero256 min64", "silero256", replace(NEW, min_speech_ms=64)),
        Option("webrtc2", "webrtc2", replace(NEW, min_speech_ms=40)),
    ]


def off_grid(clips: list[Clip]) -> dict[str, float]:
    """The 1-state 256 hop and the 2-state one against the 512 hop, where windows coincide
    (all three never renewing their states, so that they may be compared)."""
    out: dict[str, float] = {}
    for name in ("silero256-unrenewed", "silero256-1state"):
        diffs: list[float] = []
        agree: list[bool] = []
        for clip in clips:
            base = {round(e * RATE): p for e, p, _ in clip.traces["silero512"]}
            for e, p, _ in clip.traces[name]:
                q = base.get(round(e * RATE))
                if q is not None:
                    diffs.append(abs(p - q))
                    agree.append((p >= 0.5) == (q >= 0.5))
        out[f"{name}_abs_diff_p50"] = float(np.percentile(diffs, 50))
        out[f"{name}_abs_diff_p95"] = float(np.percentile(diffs, 95))
        out[f"{name}_abs_diff_max"] = float(np.max(diffs))
        out[f"{name}_agree_at_0.5"] = float(np.mean(agree))
    return out


def cpu_costs(clips: list[Clip], reps: int) -> dict[str, object]:
    """Microseconds, min / p50 over ``reps`` interleaved passes."""
    audio = np.concatenate([c.audio for c in clips if c.kind == "speech"][:6])
    pcm48 = sp.pcm16(soxr.resample(audio, RATE, MIC_RATE).astype(np.float32))
    chunks = [pcm48[i : i + CHUNK * 2] for i in range(0, len(pcm48), CHUNK * 2)]
    frames256 = audio[: audio.size - audio.size % 256].reshape(-1, 256)
    found: dict[str, list[float]] = {}

    def timed(key: str, n: int, fn: Callable[[], object]) -> None:
        t = time.perf_counter()
        fn()
        found.setdefault(key, []).append((time.perf_counter() - t) / n * 1e6)

    def chain(engine: VoiceActivity, cfg: GateConfig, cues: bool) -> None:
        engine.reset()
        mic, framer, gate = MicResampler(MIC_RATE), Framer(engine.frame_samples), VadGate(cfg)
        oc = OnsetCues(1) if cues else None
        for c in chunks:
            for fr in framer.push(mic.push(c)):
                cue = oc.cue(fr.samples) if oc else None
                gate.push(engine.probability(fr.samples), fr.end_s, framer.frame_s, True, cue)

    def cues_only() -> None:
        oc = OnsetCues(1)
        for f in frames256:
            oc.cue(f)

    def gate_only() -> None:
        g = VadGate(NEW)
        for i in range(frames256.shape[0]):
            g.push(0.1, (i + 1) * 0.016, 0.016, True, OnsetCue(-50.0, False))

    s512, s256, w2 = SileroVad(hop=512), SileroVad(hop=256), WebRtcVad(2)
    for _ in range(reps):
        timed("chain_today_silero512_per_20ms", len(chunks), lambda: chain(s512, TODAY, False))
        timed("chain_silero256_per_20ms", len(chunks), lambda: chain(s256, NEW, False))
        timed("chain_new_silero256_fast_per_20ms", len(chunks), lambda: chain(s256, NEW, True))
        timed("chain_webrtc2_per_20ms", len(chunks), lambda: chain(w2, NEW, False))
        timed("cues_per_16ms_frame", frames256.shape[0], cues_only)
        timed("gate_per_frame", frames256.shape[0], gate_only)
    costs: dict[str, object] = {k: {"min": min(v), "p50": float(np.median(v)), "n": len(v)}
                                for k, v in found.items()}
    base = min(found["chain_today_silero512_per_20ms"])
    costs["new_vs_today_ratio"] = min(found["chain_new_silero256_fast_per_20ms"]) / base
    costs["audio_seconds_per_pass"] = audio.size / RATE
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every other speaker")
    ap.add_argument("--cpu-reps", type=int, default=7)
    args = ap.parse_args()
    t0 = time.perf_counter()
    clips = build_clips(args.quick) + conversation_clips()
    engs = engines()
    for clip in clips:
        for name, engine in engs.items():
            trace(clip, name, engine)
    result: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "new_defaults": NEW.__dict__, "baseline": TODAY.__dict__,
        "clip_counts": {k: sum(c.kind == k for c in clips)
                        for k in (*SPEECH_KINDS, *FALSE_KINDS, "echo", "conv_speech",
                                  "conv_burst", "conv_sequence")},
        "strict": [{"option": o.label, "engine": o.engine, "cue": o.cue,
                    **evaluate_strict(clips, o)} for o in options()],
        "nonstrict": [{"option": o.label, **evaluate_nonstrict(clips, o)}
                      for o in nonstrict_options()],
        "off_grid": off_grid(clips),
        "cpu_us": cpu_costs(clips, args.cpu_reps),
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
