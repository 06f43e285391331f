"""The fixed reference set of ``bench/conversation.py``: what the user says, and when.

    .venv/bin/python bench/conversation_set.py [--wav-dir DIR]   # list it (and write WAVs)

Built at run time from ``tests/support/speech.py`` (Piper and eSpeak voices, every
speaker of ``SPEAKERS``, item ``i`` spoken by ``SPEAKERS[i % 7]``); no audio is kept in
the repository. Each :class:`Item` is one microphone input timeline (16 kHz mono) with
its pieces (``speech.timeline``: kind, start, end, text) and its reference text:

- ``utterance`` (13): a complete sentence of 1-6 s: questions, statements, numbers.
- ``cutoff`` (7), the speaker-cut-off probes: a sentence broken off on a trailing
  "and" / "so" / "um", a pause of 0.40-0.95 s, then its continuation. People pause like
  this mid-sentence; a system that ends the turn in the pause cuts them off. The
  pauses straddle the end-of-turn silences a server would use (a fixed 500 ms timeout
  cuts the longer ones), so the figure compares an adaptive rule with the plain
  timeout on the same probes. Together with ``utterance``: the 20 reference utterances.
- ``interruption`` (10): a real user sentence of 1-2 s, starting ``offset_s`` into a
  long system reply (:data:`REPLY_TEXT`; ``offset_s`` of silence begins the timeline,
  which the client starts at the reply's first audio frame).
- ``burst`` (10): non-speech at ``offset_s`` into a reply: clicks and cough-like noise
  bursts of 50-300 ms (``speech.noise`` with fixed seeds; some low-passed) and one
  short "mm"-like hum. The right answer is ``resume`` (or nothing), never ``interrupt``.

Deterministic: the same bytes every run (checked by a test). Piper's ONNX graph draws
noise from onnxruntime's generator, and eSpeak NG keeps state from one synthesis to the
next (its output depends on what it said before in the process), so the clips are
rendered in a fresh interpreter, in a fixed order, with onnxruntime's and eSpeak's seeds
set first. Other CPUs or package versions may round differently:
:attr:`ReferenceSet.fingerprint` (SHA-256 of every item's id and PCM) names the set in
each report, so runs on different sets are not compared unawares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support.speech

from tests.support import speech  # noqa: E402
from tests.support.speech import SPEAKERS, FloatAudio, Piece  # noqa: E402

RATE = speech.RATE
SEED = 20251128

# The long system reply interruptions and bursts land in (about 14 s with Piper).
REPLY_TEXT = (
    "It was a bright cold day in April, and the clocks were striking thirteen. "
    "Winston walked quickly through the glass doors. The hallway smelt of boiled "
    "cabbage and old rag mats. At one end of it a coloured poster, too large for "
    "indoor display, had been tacked to the wall."
)

UTTERANCES: tuple[str, ...] = (
    "What time does the pharmacy close tonight?",
    "Please remind me to call my sister tomorrow morning.",
    "The door code is four seven two nine.",
    "How much is a ticket to Boston?",
    "I need a table for four people at seven thirty.",
    "Turn the volume down a little.",
    "Is it going to rain this weekend?",
    "The package should arrive in three to five days.",
    "Thank you, that was really helpful.",
    "We drove about two hundred miles yesterday.",
    "Yes, that works for me.",
    "Set a timer for twelve minutes.",
    "I would like to book a flight from Chicago to Denver on Friday, "
    "coming back the following Monday afternoon.",
)

# (broken-off start, pause in seconds, continuation)
CUTOFFS: tuple[tuple[str, float, str], ...] = (
    ("I went to the store and", 0.60, "I bought some fresh bread."),
    ("So the thing is, um", 0.80, "I forgot my password again."),
    ("I'm running a bit late so", 0.45, "please start without me."),
    ("Can you add milk and", 0.70, "eggs to the shopping list?"),
    ("The meeting starts at um", 0.95, "three o'clock."),
    ("I think we should leave early and", 0.40, "take the train instead."),
    ("My flight lands at nine so", 0.55, "can you pick me up?"),
)

# (text, seconds into the reply)
INTERRUPTIONS: tuple[tuple[str, float], ...] = (
    ("Wait, that's not what I asked.", 1.00),
    ("Sorry, can you repeat that?", 1.30),
    ("Hold on, I have a question.", 1.60),
    ("No, I meant next Friday.", 1.90),
    ("Actually, never mind that.", 2.20),
    ("Okay, that's enough, thank you.", 2.50),
    ("Excuse me, what was the price?", 2.80),
    ("Stop, I need to go now.", 1.15),
    ("Hang on, which street was it?", 2.05),
    ("No, the other one.", 2.65),
)

# (label, seconds, level, seed, low-passed: cough-like, seconds into the reply)
BURSTS: tuple[tuple[str, float, float, int, bool, float], ...] = (
    ("click 50 ms", 0.05, 0.45, 1, False, 1.10),
    ("click 80 ms", 0.08, 0.35, 2, False, 1.40),
    ("noise 100 ms", 0.10, 0.30, 3, False, 1.70),
    ("cough 120 ms", 0.12, 0.40, 4, True, 2.00),
    ("noise 150 ms", 0.15, 0.25, 5, False, 2.30),
    ("cough 200 ms", 0.20, 0.45, 6, True, 2.60),
    ("cough 250 ms", 0.25, 0.35, 7, True, 1.25),
    ("noise 300 ms", 0.30, 0.20, 8, False, 1.85),
    ("cough 300 ms", 0.30, 0.40, 9, True, 2.45),
)
HUM = ("mm hum 250 ms", 0.25, 0.30, 2.15)  # label, seconds, level, seconds into the reply

KINDS = ("utterance", "cutoff", "interruption", "burst")


@dataclass(frozen=True)
class Item:
    """One input timeline. ``audio``: 16 kHz mono float32; ``pieces``: where each part
    lies in it (seconds from the timeline's first sample); ``text``: everything spoken
    (the WER reference; "" for bursts); ``offset_s``: for ``interruption`` and
    ``burst``, where the event starts, counted from the reply's first audio frame."""

    id: str
    kind: str
    speaker: str
    text: str
    label: str
    audio: FloatAudio
    pieces: tuple[Piece, ...]
    offset_s: float = 0.0

    @property
    def pcm(self) -> bytes:
        return speech.pcm16(self.audio)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / RATE

    @property
    def events(self) -> tuple[Piece, ...]:
        """The pieces that are not silence: speech or noise."""
        return tuple(p for p in self.pieces if p.kind != "silence")

    @property
    def onset_s(self) -> float:
        """First sample of speech (or noise)."""
        return self.events[0].start_s

    @property
    def end_s(self) -> float:
        """Just after the last sample of speech (or noise)."""
        return self.events[-1].end_s

    @property
    def speech_s(self) -> float:
        """From the first to the last sample of speech (pauses within count)."""
        return self.end_s - self.onset_s

    @property
    def continuation_s(self) -> float | None:
        """``cutoff``: where the continuation starts; else ``None``."""
        speech_pieces = [p for p in self.pieces if p.kind == "speech"]
        return speech_pieces[1].start_s if self.kind == "cutoff" else None

    def sample(self, seconds: float) -> int:
        """The sample index at ``seconds`` into the timeline."""
        return round(seconds * RATE)


@dataclass(frozen=True)
class ReferenceSet:
    items: tuple[Item, ...]
    fingerprint: str
    reply_text: str = REPLY_TEXT

    def of(self, *kinds: str) -> tuple[Item, ...]:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown item kinds {sorted(unknown)}; known: {KINDS}")
        return tuple(i for i in self.items if i.kind in kinds)

    @property
    def references(self) -> tuple[Item, ...]:
        """The reference utterances: complete sentences and cut-off probes."""
        return self.of("utterance", "cutoff")


# -- rendering, in a fresh process -------------------------------------------------------

Request = tuple[str, str, str, float]  # text, engine, variant, speed


def _render(requests: list[Request]) -> list[FloatAudio]:
    """Runs in a fresh child: seeds first, then every clip in the order given."""
    import ctypes

    import espeakng_loader
    import onnxruntime

    from duplexvoice.worker.adapters import espeak

    onnxruntime.set_seed(SEED)  # before Piper's session exists: its noise is drawn from it
    with espeak._LOCK:
        espeak._get_engine()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_ng_SetRandSeed(ctypes.c_long(SEED))
    return [np.asarray(speech.say(text, speech.Speaker(engine, variant, speed), RATE),
                       dtype=np.float32) for text, engine, variant, speed in requests]


def _render_fresh(requests: list[Request]) -> list[FloatAudio]:
    # A new interpreter (this file with --render), not a fork: a forked child would
    # inherit this process's eSpeak and onnxruntime state, which is what makes the
    # output vary; nor multiprocessing's spawn, which re-runs the caller's __main__.
    with tempfile.TemporaryDirectory(prefix="dv-convset-") as tmp:
        out = Path(tmp) / "clips.npz"
        done = subprocess.run([sys.executable, __file__, "--render", str(out)],
                              input=json.dumps(requests), capture_output=True, text=True,
                              timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rendering the reference set failed:\n{done.stderr[-2000:]}")
        with np.load(out) as clips:
            return [clips[f"c{i}"].copy() for i in range(len(requests))]


# -- the set ----------------------------------------------------------------------------


def _hum(seconds: float, level: float) -> FloatAudio:
    """A closed-mouth "mm": 120 Hz with a few harmonics, soft attack and release."""
    t = np.arange(round(seconds * RATE)) / RATE
    wave = sum(a * np.sin(2 * np.pi * 120 * k * t) for k, a in
               ((1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12)))
    env = np.minimum(1.0, np.minimum(t / 0.02, (seconds - t) / 0.06))
    out = np.asarray(wave * env, dtype=np.float64)
    return (out / np.max(np.abs(out)) * level).astype(np.float32)


def _cough(audio: FloatAudio, level: float) -> FloatAudio:
    """White noise through a one-pole low-pass (~600 Hz): duller, like a cough."""
    alpha = 1 - np.exp(-2 * np.pi * 600 / RATE)
    out = np.empty_like(audio, dtype=np.float64)
    acc = 0.0
    for i, x in enumerate(audio):
        acc += alpha * (float(x) - acc)
        out[i] = acc
    peak = float(np.max(np.abs(out))) or 1.0
    return (out / peak * level).astype(np.float32)


def build_set() -> ReferenceSet:
    """The reference set: 20 utterances (13 complete, 7 cut-off probes), 10
    interruptions, 10 bursts. Takes a few seconds (a child process renders the speech)."""
    speakers = [SPEAKERS[i % len(SPEAKERS)] for i in range(64)]
    requests: list[Request] = []

    def ask(text: str, n: int) -> int:
        s = speakers[n]
        requests.append((text, s.engine, s.variant, s.speed))
        return len(requests) - 1

    plan_u = [ask(text, n) for n, text in enumerate(UTTERANCES)]
    base = len(UTTERANCES)
    plan_c = [(ask(a, base + n), pause, ask(b, base + n)) for n, (a, pause, b)
              in enumerate(CUTOFFS)]
    plan_i = [ask(text, n) for n, (text, _) in enumerate(INTERRUPTIONS)]
    clips = _render_fresh(requests)

    items: list[Item] = []
    for n, (text, k) in enumerate(zip(UTTERANCES, plan_u, strict=True)):
        audio, pieces = speech.timeline(("speech", clips[k], text))
        items.append(Item(f"utt-{n + 1:02d}", "utterance", speakers[n].name, text,
                          "complete sentence", audio, tuple(pieces)))
    for n, ((a, pause, b), (ka, _, kb)) in enumerate(zip(CUTOFFS, plan_c, strict=True)):
        audio, pieces = speech.timeline(("speech", clips[ka], a),
                                        ("silence", speech.silence(pause), ""),
                                        ("speech", clips[kb], b))
        items.append(Item(f"cut-{n + 1:02d}", "cutoff", speakers[base + n].name,
                          f"{a} {b}", f"pause {pause * 1000:.0f} ms after "
                          f"{a.split()[-1]!r}", audio, tuple(pieces)))
    for n, ((text, offset), k) in enumerate(zip(INTERRUPTIONS, plan_i, strict=True)):
        audio, pieces = speech.timeline(("silence", speech.silence(offset), ""),
                                        ("speech", clips[k], text))
        items.append(Item(f"int-{n + 1:02d}", "interruption", speakers[n].name, text,
                          f"{offset:.2f} s into the reply", audio, tuple(pieces), offset))
    for n, (label, seconds, level, seed, dull, offset) in enumerate(BURSTS):
        burst = speech.noise(seconds, level, seed)
        if dull:
            burst = _cough(burst, level)
        audio, pieces = speech.timeline(("silence", speech.silence(offset), ""),
                                        ("noise", burst, ""))
        items.append(Item(f"burst-{n + 1:02d}", "burst", "-", "", label, audio,
                          tuple(pieces), offset))
    label, seconds, level, offset = HUM
    audio, pieces = speech.timeline(("silence", speech.silence(offset), ""),
                                    ("noise", _hum(seconds, level), ""))
    items.append(Item(f"burst-{len(BURSTS) + 1:02d}", "burst", "-", "", label, audio,
                      tuple(pieces), offset))

    digest = hashlib.sha256()
    for item in items:
        digest.update(item.id.encode())
        digest.update(item.pcm)
    return ReferenceSet(tuple(items), digest.hexdigest())


def main() -> None:
    parser = argparse.ArgumentParser(description="List the conversation benchmark's "
                                     "reference set (and write it as WAV files).")
    parser.add_argument("--wav-dir", type=Path, default=None,
                        help="write one WAV per item here (to listen; keep out of git)")
    parser.add_argument("--render", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render is not None:  # the child of _render_fresh: requests on stdin
        requests = [tuple(r) for r in json.load(sys.stdin)]
        clips = _render(requests)  # type: ignore[arg-type]
        np.savez(args.render, **{f"c{i}": c for i, c in enumerate(clips)})
        return
    ref = build_set()
    print(f"reference set {ref.fingerprint[:16]}: {len(ref.items)} items")
    for item in ref.items:
        spans = ", ".join(f"{p.kind} {p.start_s:.2f}-{p.end_s:.2f}" for p in item.pieces)
        print(f"{item.id:9s} {item.kind:12s} {item.speaker:24s} {item.duration_s:5.2f} s  "
              f"{item.label:30s} [{spans}] {item.text!r}")
        if args.wav_dir is not None:
            args.wav_dir.mkdir(parents=True, exist_ok=True)
            speech.write_wav(args.wav_dir / f"{item.id}.wav", item.audio)


if __name__ == "__main__":
    main()
