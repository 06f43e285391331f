"""Pure rules of the speech recognizer: window sizing, token budget, loop detection,
silence tests and where to cut long audio. No model, no clock, no threads.

Whisper's encoder was trained on 30 s windows, but CTranslate2 accepts fewer frames,
and encoding cost grows with the window (TOOLCHAIN.md): the window is the utterance
plus a margin of padding, rounded up to whole steps so that a few shapes recur. On a
short window the decoder sometimes writes on into the padding or fails to stop: what
starts after the audio's end is dropped (:func:`tokens_before`), the token budget is
bounded by the audio's duration, and an output that still looks like a loop is retried
on the 30 s window (:func:`looks_repetitive`).

Levels are RMS over 20 ms frames of float audio in [-1, 1] (1.0 = 0 dBFS).
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import numpy.typing as npt

from duplexvoice.speech import SPEECH_RATE

FloatAudio = npt.NDArray[np.float32]

MAX_WINDOW_S = 30.0  # what Whisper was trained on; the fallback window
FRAME = SPEECH_RATE // 50  # 20 ms
SMOOTH_FRAMES = 10  # 200 ms: where to cut long audio is judged over this span

# Below this loudest-frame level (-60 dBFS) audio is treated as silence without running
# the model at all: Whisper normalizes its log-mel to the loudest frame, so it "hears"
# faint hiss as loudly as speech and may write "Thank you." for it.
NEGLIGIBLE_RMS = 1e-3
# Silero VAD (32 ms chunks, its default threshold 0.5) must hear this many chunks of
# speech in a row before the audio is decoded at all. Measured: noise bursts, clicks,
# white and pink noise peaked at 0.17; every short word of 7 voices ("Hi.", "Hmm.",
# "No.") had 5 or more chunks above 0.5.
SPEECH_RUN = 2
# An added tail counts as silence when no 20 ms frame of it is louder than this fraction
# (-20 dB) of the speech level before it (or the negligible floor, for very quiet input).
SILENT_TAIL_REL = 0.1

# Token budget per second of audio, and slack. Measured on the bench's 12 texts x 7
# voices: tiny.en's tokens for the spoken text ran at 3.3-6.4 per second of audio
# (median 4.4; short phrases with punctuation are the densest), plus two timestamp
# tokens per segment; real speech stays clear of 8/s + 16 while a loop is cut short.
TOKENS_PER_S = 8.0
TOKEN_SLACK = 16
TIMESTAMP_S = 0.02  # one timestamp token step
# A segment that starts this close to the end of the audio, or after it, is in the
# padding: the decoder writing on after the speech.
END_SLACK_S = 0.1
# faster-whisper's own threshold: gzip ratio of the text above this is "too repetitive".
COMPRESSION_RATIO_MAX = 2.4

_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def window_seconds(audio_s: float, margin_s: float, step_s: float = 1.0) -> float:
    """The encoder window for ``audio_s`` of audio: audio plus margin, rounded up to
    whole ``step_s``, at least one step, at most 30 s."""
    if audio_s < 0 or margin_s < 0 or step_s <= 0:
        raise ValueError("audio_s and margin_s must be >= 0 and step_s > 0")
    steps = math.ceil((audio_s + margin_s) / step_s - 1e-9)
    return min(MAX_WINDOW_S, max(step_s, steps * step_s))


def fallback_windows(window_s: float) -> list[float]:
    """The windows to retry a looping decode of ``window_s`` on, in order: twice the
    window, then the full 30 s (only those longer than ``window_s``)."""
    return sorted({w for w in (min(MAX_WINDOW_S, 2 * window_s), MAX_WINDOW_S) if w > window_s})


def token_budget(audio_s: float, limit: int) -> int:
    """Most new tokens to decode for ``audio_s`` of audio (never above ``limit``)."""
    return max(1, min(limit, math.ceil(audio_s * TOKENS_PER_S) + TOKEN_SLACK))


def tokens_before(tokens: list[int], timestamp_begin: int, end_s: float) -> list[int]:
    """The text tokens of the segments that start before ``end_s`` (the end of the
    audio), from a decode with timestamps: ``<|t0|> text <|t1|><|t1|> text <|t2|>``.
    Tokens at or above ``timestamp_begin`` are timestamps. What Whisper writes in the
    padding after the speech (a repetition, "Thank you.") starts at or after the end
    and is dropped, with everything after it."""
    kept: list[int] = []
    start: float | None = None  # start of the open segment, None between segments
    last_end = 0.0
    for token in tokens:
        if token >= timestamp_begin:
            at = (token - timestamp_begin) * TIMESTAMP_S
            if start is None:
                if at >= end_s - END_SLACK_S:
                    break
                start = at
            else:
                start, last_end = None, at
        else:
            if start is None:  # text without an opening timestamp: it follows the last
                if last_end >= end_s - END_SLACK_S:
                    break
                start = last_end
            kept.append(token)
    return kept


def compression_ratio(text: str) -> float:
    """gzip ratio of the UTF-8 text, as faster-whisper computes it (0 for empty text)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def words_of(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (apostrophes kept inside words)."""
    return _WORD.findall(text.lower().replace("-", " "))


def repeated_run(words: list[str], max_n: int = 6) -> bool:
    """Whether some n-gram (n <= ``max_n``) occurs back to back: a single word 4 times
    or a longer phrase 3 times. Speech rarely does that; a looping decoder does."""
    for n in range(1, max_n + 1):
        need = 4 if n == 1 else 3
        if len(words) < n * need:
            break
        for start in range(len(words) - n * need + 1):
            unit = words[start : start + n]
            if all(words[start + k * n : start + (k + 1) * n] == unit for k in range(1, need)):
                return True
    return False


def starts_over(text: str) -> bool:
    """Whether a later sentence begins with the text's first words ("Yes, please. Yes,
    please. Yes,"): on a short window the decoder sometimes transcribes the utterance
    again into the padding. Speech can do that too ("No. No, ..."); the price of a
    false alarm is one more decode, not a wrong text."""
    sentences = [words_of(s) for s in _SENTENCE_END.split(text.strip())]
    sentences = [w for w in sentences if w]
    if len(sentences) < 2:
        return False
    head = sentences[0][:2]
    return any(w[: len(head)] == head[: len(w)] for w in sentences[1:])


def looks_repetitive(text: str, *, hit_limit: bool) -> bool:
    """Whether a decode looks like a loop: it ran out of budget without ending, its
    text compresses too well, it repeats a word or phrase back to back, or it starts
    over."""
    return (
        hit_limit
        or compression_ratio(text) > COMPRESSION_RATIO_MAX
        or repeated_run(words_of(text))
        or starts_over(text)
    )


def frame_rms(audio: FloatAudio) -> npt.NDArray[np.float64]:
    """RMS of each whole 20 ms frame (a trailing partial frame counts as one)."""
    if audio.size == 0:
        return np.zeros(0)
    n = math.ceil(audio.size / FRAME)
    padded = np.zeros(n * FRAME, np.float64)
    padded[: audio.size] = audio
    frames = padded.reshape(n, FRAME)
    rms: npt.NDArray[np.float64] = np.sqrt(np.mean(frames * frames, axis=1))
    return rms


def is_negligible(audio: FloatAudio) -> bool:
    """No frame reaches -60 dBFS: nothing to transcribe."""
    rms = frame_rms(audio)
    return rms.size == 0 or float(rms.max()) < NEGLIGIBLE_RMS


def has_speech_run(probabilities: npt.NDArray[np.float32], threshold: float = 0.5,
                   min_run: int = SPEECH_RUN) -> bool:
    """Whether ``min_run`` consecutive VAD probabilities reach ``threshold``."""
    run = 0
    for p in probabilities.reshape(-1):
        run = run + 1 if p >= threshold else 0
        if run >= min_run:
            return True
    return False


def speech_level(audio: FloatAudio) -> float:
    """The level of the loud part of ``audio``: the 90th percentile of frame RMS."""
    rms = frame_rms(audio)
    return float(np.percentile(rms, 90)) if rms.size else 0.0


def extends_with_silence(old: FloatAudio, new: FloatAudio) -> bool:
    """``new`` is ``old`` followed only by silence (or nothing): the same utterance, so
    its transcript can be reused. In doubt (a click, a breath), it is not."""
    if new.size < old.size or not np.array_equal(new[: old.size], old):
        return False
    tail = new[old.size :]
    if tail.size == 0:
        return True
    limit = max(NEGLIGIBLE_RMS, SILENT_TAIL_REL * speech_level(old))
    return float(frame_rms(tail).max()) <= limit


def split_points(audio: FloatAudio, max_samples: int, search_samples: int) -> list[int]:
    """Where to cut audio longer than ``max_samples`` into pieces no longer than that:
    in the quietest stretch (200 ms moving average of the frame level) of the last
    ``search_samples`` of each piece, so a cut falls in a pause, near its middle, when
    there is one. Returns the cut offsets (empty: one piece)."""
    if max_samples < FRAME or search_samples < 0:
        raise ValueError("max_samples must be at least one frame and search_samples >= 0")
    search_samples = min(search_samples, max_samples - FRAME)
    cuts: list[int] = []
    start = 0
    while audio.size - start > max_samples:
        lo = start + max_samples - search_samples
        hi = start + max_samples
        full = (hi - lo) // FRAME  # whole frames from ``lo``: a cut at any of them fits
        if full == 0:
            cut = hi
        else:
            rms = frame_rms(audio[lo : lo + full * FRAME])
            width = min(SMOOTH_FRAMES, full)
            kernel = np.ones(width)
            # a mean over the frames present: the edges are not quieter for lack of them
            smooth = np.convolve(rms, kernel, mode="same") / np.convolve(
                np.ones(full), kernel, mode="same"
            )
            cut = lo + int(np.argmin(smooth)) * FRAME
        cuts.append(cut)
        start = cut
    return cuts
