"""The acoustic end-of-turn model: how likely the user has finished, from how the last
seconds of their voice sound (falling pitch, a drawn-out "um", a breath before more).

The model is Smart-Turn v3.2 (Daily, BSD-2-Clause, code and weights): a Whisper-tiny
encoder and a classifier, int8, ONNX, 8 s of 16 kHz audio in, p(complete) out. It ships
inside the ``pipecat-ai`` 1.14.0 wheel (``pip install --no-deps pipecat-ai==1.14.0``:
its own dependencies are not needed, and pipecat is never imported, only its file
found through the package's metadata); its licence is that wheel's
``dist-info/licenses/LICENSE`` (:func:`licence_path`). It runs on onnxruntime, which
faster-whisper brings.

- **Features** (:func:`features`): Whisper's log-mel recipe on the last 8 s of the turn
  (zero-padded in front when shorter), the waveform first normalized to zero mean and
  unit variance, then an STFT (400-sample periodic Hann window, hop 160, centred with
  reflection), power, 80 Slaney mel bands, log10 floored at 1e-10, 8 decades of range
  below the peak, scaled as ``(x + 4) / 4``: 80 x 800 frames. Our own numpy code,
  checked against the wheel's reference by an integration test.
- **One model per process**, shared by every session; calls run one at a time on one
  thread of their own (:class:`EndTurnScorer`), ``nice`` steps below the event loop as
  the recognizer's (:mod:`duplexvoice.threads`), with ``threads`` intra-op threads (1 by
  default: about 70-110 ms a call on this 2-core machine, beside Whisper's 2).
- **Never in the way**: at most ``max_pending`` calls wait; beyond that a request gets
  no answer (None) and the turn ends on the text and the silence alone, as it does
  when the answer comes late (the turn-taking core never waits for it).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from duplexvoice.speech import SPEECH_RATE
from duplexvoice.threads import lower_thread_priority, single_threaded_blas

log = logging.getLogger(__name__)

FloatAudio = npt.NDArray[np.float32]

DISTRIBUTION = "pipecat-ai"
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
INSTALL_HINT = "pip install --no-deps pipecat-ai==1.14.0"

WINDOW_S = 8  # the model's input: the last 8 s of the turn
_N_FFT = 400
_HOP = 160
_N_MELS = 80
_FRAMES = WINDOW_S * SPEECH_RATE // _HOP  # 800


class EndTurnModelMissing(RuntimeError):
    """The model file is not installed (or not where the settings say)."""


class EndTurnConfig(BaseModel):
    """The end-of-turn model's runtime: ``conversation.endturn`` of the orchestrator's
    config (flags ``--endturn-<option>``). Whether it is used at all, and how its answer
    is weighed, is turn-taking's (``conversation.turns.end_mode``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(
        None, description="Smart-Turn ONNX file (none or empty: the one in the pipecat-ai "
        "package)")
    threads: int = Field(
        1, ge=1, le=64, description="intra-op threads of the model (a call takes about "
        "70-110 ms with 1 on a 2-core machine)")
    nice: int = Field(
        5, ge=0, le=19, description="how much lower the model's thread runs than the rest "
        "of the process (Linux; 0: the same), like the recognizer's")
    max_pending: int = Field(
        8, ge=1, le=1000, description="calls waiting for the model before new ones get no "
        "answer (the turn then ends on the text and the silence)")

    @field_validator("model_path")
    @classmethod
    def _empty_is_packaged(cls, value: str | None) -> str | None:
        return value or None


def _packaged_file(relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EndTurnModelMissing(
            f"the end-of-turn model comes with {DISTRIBUTION}: {INSTALL_HINT}") from exc
    for file in dist.files or ():
        if str(file).replace("\\", "/") == relative:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise EndTurnModelMissing(f"{DISTRIBUTION} holds no {relative}: {INSTALL_HINT}")


def model_path(config: EndTurnConfig | None = None) -> Path:
    """The ONNX file: the configured one, else the packaged one."""
    if config is not None and config.model_path:
        path = Path(config.model_path).expanduser()
        if not path.is_file():
            raise EndTurnModelMissing(f"end-of-turn model {path} is not a file")
        return path
    return _packaged_file(MODEL_FILE)


def licence_path() -> Path:
    """The model's licence text (BSD-2-Clause), as its package ships it."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    for file in dist.files or ():
        name = str(file).replace("\\", "/")
        if ".dist-info/" in name and name.rsplit("/", 1)[-1].upper().startswith("LICENSE"):
            return Path(str(dist.locate_file(file)))
    raise EndTurnModelMissing(f"{DISTRIBUTION} ships no licence file")


# -- features -------------------------------------------------------------------------

def _slaney_mel_filters() -> npt.NDArray[np.float64]:
    """(bins, mels) triangular filters on the Slaney mel scale (linear below 1 kHz,
    logarithmic above), each normalized to unit area: Whisper's (librosa's) bank."""
    def to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.where(hz < 1000.0, hz * 3 / 200,
                        15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27 / np.log(6.4))

    def to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.where(mel < 15.0, mel * 200 / 3,
                        1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27))

    edges = to_hz(np.linspace(0.0, float(to_mel(np.array(SPEECH_RATE / 2.0))), _N_MELS + 2))
    bins = np.linspace(0.0, SPEECH_RATE / 2, _N_FFT // 2 + 1)
    rise = (bins[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    fall = (edges[None, 2:] - bins[:, None]) / np.diff(edges)[None, 1:]
    bank = np.maximum(0.0, np.minimum(rise, fall))
    return np.asarray(bank * (2.0 / (edges[2:] - edges[:-2]))[None, :], dtype=np.float64)


_MEL = _slaney_mel_filters()
_HANN = np.hanning(_N_FFT + 1)[:-1]  # periodic, as torch.hann_window


def features(audio: npt.NDArray[Any]) -> FloatAudio:
    """The model's input for ``audio`` (16 kHz mono): (80, 800) log-mel frames of its
    last 8 s. ``ValueError`` for audio that is not 1-D or not finite."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    n = WINDOW_S * SPEECH_RATE
    x = x[-n:]
    if x.size < n:  # the model saw short turns padded with silence in front
        x = np.concatenate([np.zeros(n - x.size, np.float32), x])
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(power @ _MEL, 1e-10)).T[:, :-1]  # (80, 800): last frame dropped
    mel = np.maximum(mel, mel.max() - 8.0)
    out: FloatAudio = ((mel + 4.0) / 4.0).astype(np.float32)
    return out


# -- the model --------------------------------------------------------------------------

class SmartTurn:
    """The loaded model. :meth:`probability` is thread-safe (one call at a time)."""

    def __init__(self, config: EndTurnConfig | None = None) -> None:
        import onnxruntime as ort

        self.config = config or EndTurnConfig()
        self.path = model_path(self.config)
        single_threaded_blas()  # the features' BLAS threads would spin on the model's cores
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._lock = threading.Lock()

    def probability(self, audio: npt.NDArray[Any]) -> float:
        """p(the speaker has finished their turn) for the turn's 16 kHz audio, ending
        at the moment asked about."""
        batch = features(audio)[None]
        with self._lock:
            out = self._session.run(None, {self._input: batch})
        # The graph ends in a sigmoid: its output is the probability itself.
        return float(np.clip(np.asarray(out[0]).reshape(-1)[0], 0.0, 1.0))


class EndTurnScorer:
    """The shared model behind the event loop: one call at a time on its own lowered
    thread; :meth:`close` at shutdown. ``model`` replaces the real one (tests)."""

    def __init__(self, config: EndTurnConfig | None = None, *, model: Any = None) -> None:
        self.config = config or EndTurnConfig()
        nice = self.config.nice
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="endturn",
            initializer=lambda: lower_thread_priority(nice))
        self._model = model
        if self._model is None:
            # Loaded on the lowered thread: onnxruntime's pool inherits its niceness.
            self._model = self._executor.submit(SmartTurn, self.config).result()
        self._pending = 0
        self._lock = threading.Lock()
        self.calls = 0
        self.refused = 0
        self.compute_ms: list[float] = []  # the last few calls' model time (bench, logs)

    def probability_sync(self, audio: npt.NDArray[Any]) -> float:
        """In the calling thread, past the queue (benchmarks)."""
        return float(self._model.probability(audio))

    async def score(self, audio: npt.NDArray[Any]) -> float | None:
        """p(complete) for the turn's audio; None when too many calls wait or the
        model failed (logged): the turn then ends without it."""
        with self._lock:
            if self._pending >= self.config.max_pending:
                self.refused += 1
                return None
            self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._timed, audio)
        except Exception as exc:  # never fatal to a turn: it ends on text and silence
            log.warning("end-of-turn model failed: %s", exc)
            return None
        finally:
            with self._lock:
                self._pending -= 1

    def _timed(self, audio: npt.NDArray[Any]) -> float:
        start = time.perf_counter()
        p = float(self._model.probability(audio))
        with self._lock:
            self.calls += 1
            self.compute_ms.append((time.perf_counter() - start) * 1000)
            del self.compute_ms[:-256]
        return p

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
