"""CosyVoice 2's front end, local: the parts of ``cosyvoice.cli.frontend`` a voice needs.

The package's ``CosyVoiceFrontEnd`` cannot be imported in a lean runtime: its module
imports openai-whisper (for one log-mel function), inflect, and WeTextProcessing or
ttsfrd (text normalisation that builds or fetches grammar resources), and
``cosyvoice.tokenizer.tokenizer`` imports whisper and tiktoken at module level.
``matcha.utils.audio.mel_spectrogram`` needs librosa (for one filter bank) and its
package ``__init__`` needs gdown. So this module re-implements exactly those small
pieces, line for line against the package (``frontend_zero_shot``, ``QwenTokenizer``,
matcha's ``mel_spectrogram``, whisper's ``log_mel_spectrogram``, librosa's Slaney mel
filter bank), and runs the published ONNX models (``campplus.onnx``,
``speech_tokenizer_v2.onnx``) the same way the package does:

* speech tokens: whisper 128-bin log-mel of the 16 kHz prompt -> speech tokenizer
  (inputs by position: feats ``[1, 128, T]`` float32, feats length ``[1]`` int32);
* speaker embedding: Kaldi 80-bin fbank (torchaudio), mean-normalised -> CAM++
  (input ``[1, T, 80]`` float32, output flattened to the embedding, 192 for CV2);
* prompt mel: matcha-style 80-bin mel of the prompt resampled to 24 kHz, trimmed so
  that mel frames = 2 x speech tokens (the package's CosyVoice 2 rule).

Text normalisation: none is bundled (WeTextProcessing/ttsfrd/NeMo are heavy or fetch
resources). ``text_frontend: basic`` only cleans whitespace and splits sentences and
long sentences with the package's own ``split_paragraph`` token budget (80 tokens);
numbers, abbreviations and symbols reach the model as written. ``none`` sends the text
as is. This is a quality difference from the upstream runtime, not a silent failure.

Unproven here (no real files on this machine): that the real ``campplus.onnx`` and
``speech_tokenizer_v2.onnx`` accept exactly these shapes (the checks below fail with
a clear error if they do not), and the voice quality of the whole front end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import onnxruntime  # type: ignore[import-untyped, unused-ignore]
import torch

from duplexvoice.worker.adapters.base import AdapterError

# The package's QwenTokenizer adds these (non-chat model: they stay random-initialised).
QWEN_SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|endofprompt|>", "[breath]", "<strong>", "</strong>",
    "[noise]", "[laughter]", "[cough]", "[clucking]", "[accent]", "[quick_breath]",
    "<laughter>", "</laughter>", "[hissing]", "[sigh]", "[vocalized-noise]",
    "[lipsmack]", "[mn]",
]  # fmt: skip

PROMPT_MAX_S = 30.0  # the speech tokenizer's limit (the package asserts it)
PROMPT_MIN_S = 0.5


class QwenTokenizer:
    """``cosyvoice.tokenizer.tokenizer.QwenTokenizer`` without its whisper import."""

    def __init__(self, token_path: str, skip_special_tokens: bool = True) -> None:
        from transformers import AutoTokenizer

        # local_files_only: a missing folder must fail here, never reach a hub.
        self.tokenizer = AutoTokenizer.from_pretrained(token_path, local_files_only=True)
        self.tokenizer.add_special_tokens(
            {
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "additional_special_tokens": QWEN_SPECIALS,
            }
        )
        self.skip_special_tokens = skip_special_tokens

    def encode(self, text: str, **_: Any) -> list[int]:
        ids = self.tokenizer([text], return_tensors="pt")["input_ids"][0]
        return cast(list[int], ids.cpu().tolist())

    def __len__(self) -> int:
        return len(self.tokenizer)


def get_qwen_tokenizer(
    token_path: str, skip_special_tokens: bool = True, **_: Any
) -> QwenTokenizer:
    """Stands in for the yaml's ``get_tokenizer`` (same arguments)."""
    return QwenTokenizer(token_path, skip_special_tokens)


def _hz_to_mel(freq: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    log_t = freq >= min_log_hz
    mels[log_t] = min_log_hz / f_sp + np.log(freq[log_t] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


@lru_cache(maxsize=8)
def mel_filters(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> npt.NDArray[np.float32]:
    """librosa.filters.mel (Slaney scale and norm, librosa's defaults)."""
    top = sr / 2 if fmax is None else fmax
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    low, high = _hz_to_mel(np.array([fmin, top], dtype=np.float64))
    edges = _mel_to_hz(np.linspace(low, high, n_mels + 2))
    fdiff = np.diff(edges)
    ramps = np.subtract.outer(edges, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


def mel_spectrogram(
    y: torch.Tensor, n_fft: int, num_mels: int, sampling_rate: int, hop_size: int,
    win_size: int, fmin: float, fmax: float | None, center: bool = False,
) -> torch.Tensor:  # fmt: skip
    """``matcha.utils.audio.mel_spectrogram`` (the yaml's ``feat_extractor``): natural-log
    magnitude mel, reflect-padded by (n_fft - hop) / 2 each side."""
    basis = torch.from_numpy(mel_filters(sampling_rate, n_fft, num_mels, fmin, fmax)).to(y.device)
    window = torch.hann_window(win_size, device=y.device)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y, n_fft, hop_length=hop_size, win_length=win_size, window=window, center=center,
        pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
    )  # fmt: skip
    mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    return torch.log(torch.clamp(torch.matmul(basis, mag), min=1e-5))


def whisper_log_mel(audio_16k: torch.Tensor, n_mels: int = 128) -> torch.Tensor:
    """``whisper.log_mel_spectrogram(audio, n_mels)`` for ``[1, samples]`` at 16 kHz."""
    window = torch.hann_window(400, device=audio_16k.device)
    stft = torch.stft(audio_16k, 400, 160, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(mel_filters(16000, 400, n_mels)).to(audio_16k.device)
    log_spec = torch.clamp(filters @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


_SENTENCE_END = re.compile(r"(?<=[\.\?\!\u2026\u3002\uff01\uff1f])\s+")


def split_text(text: str, encode: Callable[[str], list[int]], mode: str) -> list[str]:
    """The texts to synthesize one after the other (see the module docstring)."""
    text = text.strip()
    if mode == "none":
        return [text] if text else []
    from cosyvoice.utils.frontend_utils import is_only_punctuation, split_paragraph

    text = re.sub(r"\s+", " ", text)
    segments: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        if sentence:
            segments.extend(
                split_paragraph(
                    sentence, encode, "en", token_max_n=80, token_min_n=60,
                    merge_len=20, comma_split=False,
                )
            )  # fmt: skip
    return [s for s in segments if s.strip() and not is_only_punctuation(s)]


@dataclass(frozen=True)
class PromptFeatures:
    """What ``frontend_zero_shot`` computes from a prompt, computed once per voice."""

    text_token: torch.Tensor  # [1, N] int32
    speech_token: torch.Tensor  # [1, T] int32
    speech_feat: torch.Tensor  # [1, 2T, 80] float32
    embedding: torch.Tensor  # [1, 192] float32


def _onnx_session(path: Path, what: str) -> Any:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1  # runs once per voice, at load; as the package
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise AdapterError(f"{path.name}: cannot load the {what} ONNX model: {exc}") from exc


def _dims(value: Any) -> str:
    return "[" + ", ".join(str(d) for d in value.shape) + "]"


def _check_io(session: Any, path: Path, inputs: list[tuple[int, dict[int, int], str]]) -> None:
    """Each input in order: ``(rank, {axis: fixed size}, onnx type)``."""
    found = session.get_inputs()
    if len(found) != len(inputs):
        raise AdapterError(f"{path.name}: expected {len(inputs)} input(s), found {len(found)}")
    for i, (arg, (rank, fixed, kind)) in enumerate(zip(found, inputs, strict=True)):
        shape = list(arg.shape)
        ok = len(shape) == rank and arg.type == kind
        ok = ok and all(shape[axis] == size for axis, size in fixed.items())
        if not ok:
            want = ", ".join(f"axis {a} = {n}" for a, n in fixed.items())
            raise AdapterError(
                f"{path.name}: input {i} ({arg.name}) is {arg.type} {_dims(arg)}, "
                f"expected rank {rank} {kind}" + (f" with {want}" if want else "")
            )


class PromptFrontEnd:
    """The ONNX front-end models and the tokenizer of one loaded voice."""

    def __init__(
        self, folder: Path, tokenizer: QwenTokenizer, feat_extractor: Callable[..., torch.Tensor]
    ) -> None:
        self.tokenizer = tokenizer
        self.feat_extractor = feat_extractor
        self.campplus_path = folder / "campplus.onnx"
        self.tokenizer_path = folder / "speech_tokenizer_v2.onnx"
        self.campplus = _onnx_session(self.campplus_path, "speaker embedding (CAM++)")
        self.speech_tokenizer = _onnx_session(self.tokenizer_path, "speech tokenizer")
        _check_io(self.campplus, self.campplus_path, [(3, {2: 80}, "tensor(float)")])
        _check_io(
            self.speech_tokenizer,
            self.tokenizer_path,
            [(3, {1: 128}, "tensor(float)"), (1, {}, "tensor(int32)")],
        )
        self.prompt_runs = 0  # how many prompts were encoded (tests: once per voice)

    def text_token(self, text: str) -> torch.Tensor:
        return torch.tensor([self.tokenizer.encode(text)], dtype=torch.int32)

    def speech_token(self, speech_16k: torch.Tensor) -> torch.Tensor:
        feat = whisper_log_mel(speech_16k, n_mels=128)
        names = [i.name for i in self.speech_tokenizer.get_inputs()]
        try:
            out = self.speech_tokenizer.run(
                None,
                {
                    names[0]: feat.detach().cpu().numpy(),
                    names[1]: np.array([feat.shape[2]], dtype=np.int32),
                },
            )[0]
        except Exception as exc:
            raise AdapterError(f"{self.tokenizer_path.name}: run failed: {exc}") from exc
        return torch.tensor([np.asarray(out).flatten().tolist()], dtype=torch.int32)

    def embedding(self, speech_16k: torch.Tensor) -> torch.Tensor:
        import torchaudio.compliance.kaldi as kaldi

        feat = kaldi.fbank(speech_16k, num_mel_bins=80, dither=0, sample_frequency=16000)
        feat = feat - feat.mean(dim=0, keepdim=True)
        name = self.campplus.get_inputs()[0].name
        try:
            out = self.campplus.run(None, {name: feat.unsqueeze(dim=0).cpu().numpy()})[0]
        except Exception as exc:
            raise AdapterError(f"{self.campplus_path.name}: run failed: {exc}") from exc
        return torch.tensor([np.asarray(out, dtype=np.float32).flatten().tolist()])

    def prompt(
        self, prompt_text: str, speech_16k: torch.Tensor, sample_rate: int
    ) -> PromptFeatures:
        """``frontend_zero_shot``'s prompt half, as the package computes it."""
        import torchaudio.functional

        self.prompt_runs += 1
        resampled = torchaudio.functional.resample(speech_16k, 16000, sample_rate)
        speech_feat = self.feat_extractor(resampled).squeeze(dim=0).transpose(0, 1).unsqueeze(0)
        speech_token = self.speech_token(speech_16k)
        if sample_rate == 24000:  # CosyVoice 2: mel frames = 2 x tokens
            token_len = min(int(speech_feat.shape[1] / 2), speech_token.shape[1])
            speech_feat = speech_feat[:, : 2 * token_len]
            speech_token = speech_token[:, :token_len]
        return PromptFeatures(
            text_token=self.text_token(prompt_text),
            speech_token=speech_token,
            speech_feat=speech_feat.float(),
            embedding=self.embedding(speech_16k),
        )


def read_prompt_wav(path: Path) -> torch.Tensor:
    """A prompt clip as ``[1, samples]`` float32 at 16 kHz (as the package's load_wav)."""
    import torchaudio.functional
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(str(path))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"prompt clip {path}: cannot read it as WAV: {exc}") from exc
    audio = np.asarray(data)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    elif audio.dtype == np.int32:
        audio = audio.astype(np.float32) / 2147483648.0
    elif audio.dtype == np.uint8:
        audio = (audio.astype(np.float32) - 128.0) / 128.0
    else:
        audio = audio.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    seconds = audio.shape[0] / float(rate)
    if not PROMPT_MIN_S <= seconds <= PROMPT_MAX_S:
        raise AdapterError(
            f"prompt clip {path}: {seconds:.2f} s long, expected {PROMPT_MIN_S}-{PROMPT_MAX_S} s"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0)
    if rate != 16000:
        tensor = torchaudio.functional.resample(tensor, rate, 16000)
    return tensor
