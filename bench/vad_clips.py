"""The fixed clip set of ``bench/vad.py``, made at run time from tests/support/speech.py.

Speech (every speaker of ``SPEAKERS``):

- ``speech``: six texts with different first sounds ("Hello": h, "The": voiced
  fricative, "Wait": w, "Sorry": s, "Okay": vowel, "Five": f) over a quiet room's floor
  (pink noise at -60 dBFS: no real microphone gives digital silence, and over digital
  silence any level detector would look perfect); and the same after 20 s of that
  floor (``quiet-20s``: the user listening to a long reply before barging in; a model
  state carried through long quiet grows deaf);
- ``speech_noise``: one text each in white and pink noise at -40, -30 and -20 dBFS
  (speech peaks at 0.5, about -15 dBFS RMS: -20 dBFS noise is an SNR near 5 dB), the
  texts rotating over speakers and beds;
- ``clipped``: one text at 4x gain, clipped.

Each leads with 1 s (+ 4 ms steps, so speech starts at every phase of a frame) of the
floor or bed. The true start and end are the first and last samples above 1 % of the
clean speech's peak (before any floor, bed or clipping).

Non-speech (no speech anywhere: every onset is a false hold while the system speaks):

- ``burst``: 17 sounds of 50 ms-1 s after 0.8 s of floor: white-noise bursts (clicks,
  coughs' attack) at several lengths and levels, low-passed coughs, a tone, mains hum,
  typing clicks, knocks; each over the quiet floor (``/quiet``) and over white -40,
  pink -30 and white -20 dBFS beds;
- ``series``: many sounds in a row (8 coughs over 14 s; 10 s of typing; 6 knocks), to
  see how many holds a noisy room costs;
- ``noise``: 5 s of white and pink noise at -40, -30 and -20 dBFS, and a step from -40
  to -25 dBFS (a fan switched on);
- ``silence``: digital silence, and the quiet floor alone.

Echo (``echo``): the reply voice leaking back at -20, -32 and -40 dB under the user's
level, as a weak echo canceller would leave it.

Deterministic: fixed seeds everywhere, and the speech is rendered the way
``bench/conversation_set.py`` renders its set (a fresh interpreter with onnxruntime's
and eSpeak's seeds set first: in a warm process Piper and eSpeak give slightly
different audio each time). Other machines may still round differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import conversation_set  # bench/: the deterministic renderer
import numpy as np

from tests.support import speech as sp

RATE = 16000
TEXTS = {
    "hello": "Hello there, how are you today?",
    "the": "The meeting has been moved to three o'clock on Thursday afternoon.",
    "wait": "Wait. Stop, please. I have a question about that.",
    "sorry": "Sorry, could you say that again?",
    "okay": "Okay, just a second.",
    "five": "Five minutes, maybe less.",
}
BEDS = {"-40": 0.01, "-30": 0.0316, "-20": 0.1}  # dBFS -> RMS
QUIET_RMS = 0.001  # -60 dBFS
SPEECH_KINDS = ("speech", "speech_noise", "clipped")
CONDITIONS = ("quiet", "quiet-20s", "noise-40", "noise-30", "noise-20", "clipped")
FALSE_KINDS = ("burst", "series", "noise", "silence")


@dataclass
class Clip:
    name: str
    kind: str  # speech | speech_noise | clipped | burst | series | noise | silence | echo
    audio: np.ndarray
    start_s: float = 0.0  # true speech start/end (speech kinds)
    end_s: float = 0.0
    condition: str = ""  # quiet | noise-40 | noise-30 | noise-20 | clipped (speech kinds)
    marks: list[tuple[str, float]] = field(default_factory=list)  # (kind, onset) in a sequence
    traces: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    cues: dict[str, list[tuple[float, bool, bool]]] = field(default_factory=dict)


def white(seconds: float, rms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(seconds * RATE)) * rms).astype(np.float32)


def pink(seconds: float, rms: float, seed: int) -> np.ndarray:
    n = max(2, round(seconds * RATE))
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return (x / x.std() * rms).astype(np.float32)


def bed(kind: str, n: int, rms: float, seed: int) -> np.ndarray:
    return (white if kind == "white" else pink)(n / RATE + 0.001, rms, seed)[:n]


def true_bounds(clean: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(clean) > 0.01 * float(np.max(np.abs(clean))))
    return int(loud[0]), int(loud[-1]) + 1


def speech_clip(name: str, kind: str, condition: str, speech: np.ndarray, noise: np.ndarray,
                clip_gain: float = 1.0, phase: int = 0) -> Clip:
    lead, tail = round((1.0 + 0.004 * (phase % 8)) * RATE), round(1.2 * RATE)
    track = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
    track = track + noise[: track.size]
    if clip_gain != 1.0:
        track = np.clip(track * clip_gain, -1.0, 1.0)
    s, e = true_bounds(speech)
    return Clip(name, kind, track.astype(np.float32), (lead + s) / RATE, (lead + e) / RATE,
                condition)


def lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    spec[np.fft.rfftfreq(x.size, 1 / RATE) > cutoff] = 0
    return np.fft.irfft(spec, x.size).astype(np.float32)


def sounds() -> list[tuple[str, np.ndarray]]:
    out: list[tuple[str, np.ndarray]] = []
    for seed, (dur, level) in enumerate([(0.05, 0.45), (0.08, 0.35), (0.1, 0.3), (0.2, 0.3),
                                         (0.3, 0.3), (0.5, 0.3), (0.2, 0.8), (0.3, 0.1),
                                         (0.15, 0.6)]):
        out.append((f"noise{dur:g}s@{level:g}", sp.noise(dur, level=level, seed=seed)))
    for seed, (dur, level, cut) in enumerate([(0.12, 0.4, 1500), (0.2, 0.45, 2500),
                                              (0.25, 0.35, 1000), (0.3, 0.4, 2000)]):
        out.append((f"cough{dur:g}s", cough(dur, level, cut, 50 + seed)))
    t = np.arange(RATE) / RATE
    tone = sum(np.sin(2 * np.pi * 440 * k * t) / k for k in (1, 2, 3, 4)) * 0.1
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 3, 5, 7)) * 0.1
    out += [("tone", np.asarray(tone, np.float32)), ("hum", np.asarray(hum, np.float32)),
            ("typing", typing(1.0, 0)), ("knocks", knocks(3, 0.3))]
    return out


def cough(dur: float, level: float, cutoff: float, seed: int) -> np.ndarray:
    x = lowpass(sp.noise(dur, level=level, seed=seed), cutoff)
    return (x * (0.8 * level / max(1e-9, float(np.abs(x).max())))).astype(np.float32)


def typing(seconds: float, seed: int) -> np.ndarray:
    """Key clicks, about 8 a second at uneven intervals."""
    rng = np.random.default_rng(seed)
    x = np.zeros(round(seconds * RATE))
    at = 0
    while at < x.size:
        x[at] = rng.uniform(0.4, 0.9)
        at += int(rng.uniform(0.06, 0.2) * RATE)
    return np.convolve(x, np.exp(-np.arange(80) / 10.0))[: x.size].astype(np.float32)


def knocks(n: int, every_s: float) -> np.ndarray:
    x = np.zeros(round((n * every_s + 0.2) * RATE))
    tt = np.arange(round(0.12 * RATE)) / RATE
    for k in range(n):
        i = round(k * every_s * RATE)
        x[i : i + tt.size] += 0.6 * np.sin(2 * np.pi * 90 * tt) * np.exp(-tt / 0.02)
    return x.astype(np.float32)


def quiet(n: int, seed: int) -> np.ndarray:
    return pink(n / RATE + 0.001, QUIET_RMS, seed)[:n]


class Voices:
    """Every (text, speaker) the set needs, rendered at once in a fresh interpreter."""

    def __init__(self, pairs: list[tuple[str, sp.Speaker]]) -> None:
        unique = list(dict.fromkeys(pairs))
        audio = conversation_set._render_fresh(
            [(text, s.engine, s.variant, s.speed) for text, s in unique])
        self._audio = dict(zip(unique, audio, strict=True))

    def say(self, text: str, speaker: sp.Speaker) -> np.ndarray:
        return self._audio[(text, speaker)]


def build_clips(quick: bool = False) -> list[Clip]:
    clips: list[Clip] = []
    speakers = sp.SPEAKERS[::2] if quick else sp.SPEAKERS
    tids = list(TEXTS)
    voices = Voices([(t, s) for s in sp.SPEAKERS for t in TEXTS.values()])
    for i, spk in enumerate(speakers):
        for j, tid in enumerate(tids):
            s = np.asarray(voices.say(TEXTS[tid], spk))
            n = s.size + round(2.3 * RATE)
            clips.append(speech_clip(f"{spk.name}/{tid}", "speech", "quiet", s,
                                     quiet(n, 1000 + 10 * i + j), phase=i + 3 * j))
            c = speech_clip(f"{spk.name}/{tid}/after20s", "speech", "quiet-20s", s,
                            quiet(n + 20 * RATE, 3000 + 10 * i + j), phase=i + 3 * j + 1)
            late = quiet(20 * RATE, 4000 + 10 * i + j)
            c.audio = np.concatenate([late, c.audio]).astype(np.float32)
            c.start_s, c.end_s = c.start_s + 20.0, c.end_s + 20.0
            clips.append(c)
        for j, (lv, rms) in enumerate(BEDS.items()):
            for k, kind in enumerate(("white", "pink")):
                tid = tids[(i + 2 * j + k) % len(tids)]
                s = np.asarray(voices.say(TEXTS[tid], spk))
                n = s.size + round(2.3 * RATE)
                clips.append(speech_clip(
                    f"{spk.name}/{tid}/{kind}{lv}", "speech_noise", f"noise{lv}", s,
                    bed(kind, n, rms, 100 + 7 * i + 3 * j + k), phase=i + j + 2 * k))
        s = np.asarray(voices.say(TEXTS[tids[i % len(tids)]], spk))
        n = s.size + round(2.3 * RATE)
        clips.append(speech_clip(f"{spk.name}/{tids[i % len(tids)]}/clipped", "clipped",
                                 "clipped", s, quiet(n, 2000 + i), 4.0, phase=i + 2))
    n5 = 5 * RATE
    clips.append(Clip("silence/digital", "silence", np.zeros(n5, np.float32)))
    clips.append(Clip("silence/quiet", "silence", quiet(n5, 1)))
    lead, tail = round(0.8 * RATE), RATE
    for j, (name, x) in enumerate(sounds()):
        for b, bname in enumerate(("quiet", "white-40", "pink-30", "white-20")):
            a = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
            if bname == "quiet":
                a = a + quiet(a.size, 500 + j)
            else:
                a = a + bed(bname[:-3], a.size, BEDS[bname[-3:]], 600 + 13 * j + b)
            clips.append(Clip(f"burst/{name}/{bname}", "burst", a.astype(np.float32)))
    coughs = np.zeros(14 * RATE, np.float32)
    for k, at in enumerate((0.5, 2.0, 3.2, 5.5, 7.0, 9.1, 10.4, 12.6)):
        c = cough(0.2, 0.4, 1500 + 200 * k, 70 + k)
        coughs[round(at * RATE) : round(at * RATE) + c.size] += c
    for name, x in (("coughs-x8", coughs), ("typing-10s", typing(10.0, 3)),
                    ("knocks-x6", knocks(6, 1.4))):
        a = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
        clips.append(Clip(f"series/{name}", "series", (a + quiet(a.size, 700)).astype(np.float32)))
    for lv, rms in BEDS.items():
        clips.append(Clip(f"noise/white{lv}", "noise", white(5.0, rms, 300)))
        clips.append(Clip(f"noise/pink{lv}", "noise", pink(5.0, rms, 400)))
    step = np.concatenate([pink(2.5, 0.01, 7), pink(2.5, 0.056, 8)])
    clips.append(Clip("noise/step-40to-25", "noise", step))
    for gain_name, gain in (("-20dB", 0.1), ("-32dB", 0.025), ("-40dB", 0.01)):
        for spk in sp.SPEAKERS[:1] + sp.SPEAKERS[3:4]:
            leak = np.asarray(voices.say(TEXTS["the"], spk)) * gain
            a = np.concatenate([np.zeros(RATE // 2, np.float32), leak,
                                np.zeros(round(0.8 * RATE), np.float32)])
            clips.append(Clip(f"echo{gain_name}/{spk.name}", "echo",
                              (a + quiet(a.size, 800)).astype(np.float32)))
    return clips


def conversation_clips() -> list[Clip]:
    """``bench/conversation.py``'s own interruptions and bursts (its reference set), as
    a check of what that benchmark will see: each item's timeline as the microphone
    sends it (digital silence before the event), the onset at the speech piece's start
    (its definition, 10 ms before the first sample above 1 % of the peak)."""
    out: list[Clip] = []
    items = conversation_set.build_set().of("interruption", "burst")
    for item in items:
        event = item.events[0]
        kind = "conv_speech" if item.kind == "interruption" else "conv_burst"
        audio = np.concatenate([item.audio, np.zeros(RATE, np.float32)])
        out.append(Clip(f"conv/{item.id}", kind, audio, event.start_s, event.end_s,
                        "conversation"))
    # The same items one after the other in one stream, twice over, as that benchmark
    # sends them to one session (the model's state and the back-off carry over).
    parts: list[np.ndarray] = []
    marks: list[tuple[str, float]] = []
    at = 0
    for _ in range(2):
        for item in items:
            marks.append((item.kind, (at + item.sample(item.events[0].start_s)) / RATE))
            parts += [item.audio, np.zeros(2 * RATE, np.float32)]
            at += item.audio.size + 2 * RATE
    seq = Clip("conv/sequence", "conv_sequence", np.concatenate(parts), condition="conversation")
    seq.marks = marks
    out.append(seq)
    return out
