"""Voice activity engines: one frame of 16 kHz float32 in, a speech probability out.

Every engine has the same small surface (:class:`VoiceActivity`): ``frame_samples``
(the frame it wants, cut by :class:`~duplexvoice.speech.audio_in.Framer`),
``probability(frame) -> float`` in 0..1, and ``reset()``. Hysteresis (minimum speech,
hangover, stricter onset while the system speaks) is not here: it is the pure
:mod:`.vad_gate` over these probabilities, the same for both engines.

- :class:`WebRtcVad`: Google's WebRTC VAD (``webrtcvad-wheels``), a GMM on band
  energies; 10/20/30 ms frames; says yes or no, so its probability is 0.0 or 1.0
  (a stricter threshold while speaking therefore changes nothing for it).
  Aggressiveness 0-3, default 2 (the seed's guide: 2 general, 3 noisy, 1 quiet).
- :class:`SileroVad`: the Silero v6 model that ships inside ``faster-whisper``
  (``assets/silero_vad_v6.onnx``), on onnxruntime, never torch. Its input row is 64
  samples of context (the end of the previous window) + 512 new samples (32 ms);
  ``h``/``c`` [1, 1, 128] carry the LSTM state. We feed it exactly as faster-whisper's
  ``SileroVADModel`` does (zeros before the first window, then each window's last 64
  samples), one row per call, so the streamed probabilities equal faster-whisper's
  batch ones. One ``InferenceSession`` per process (1 intra-op and 1 inter-op
  thread: a 32 ms frame is far too small to split, and sessions run on the event
  loop), shared by every session; ``InferenceSession.run`` is thread-safe and holds
  no per-call state, so each :class:`SileroVad` keeps its own ``h``, ``c`` and
  context.

Cost per session on the event loop (``bench/vad.py``, 2 shared cores, best of the
passes): Silero 145 us per 32 ms frame (about 2.5x faster per frame when
faster-whisper batches a whole file; a live stream cannot), so about 90 us per 20 ms
of audio, half a percent of a core; WebRTC 7 us per 20 ms frame; the gate under 1 us.
Measured on the same clips, Silero is the default: no false onset on silence or
stationary white/pink noise up to -20 dBFS, where WebRTC (any aggressiveness) fires
on every noise burst and holds "speech" through seconds of moderate noise; WebRTC
confirms onsets about 25 ms sooner (36/74 ms p50/p95 against 62/98 ms).

Errors: a frame of the wrong size or shape, or a bad engine name or setting, is a
``ValueError`` with a message; a missing model file is a ``FileNotFoundError``.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from duplexvoice.speech import SPEECH_RATE
from duplexvoice.speech.audio_in import Framer
from duplexvoice.speech.vad_gate import GateConfig, GateEvent, VadGate

FloatAudio = npt.NDArray[np.float32]

ENGINES = ("silero", "webrtc")
WEBRTC_FRAME_MS = (10, 20, 30)
SILERO_WINDOW = 512  # new samples per call at 16 kHz (32 ms)
SILERO_CONTEXT = 64  # samples of the previous window the model sees again
SILERO_STATE_SHAPE = (1, 1, 128)
SILERO_ASSET = "silero_vad_v6.onnx"


@runtime_checkable
class VoiceActivity(Protocol):
    """A per-session VAD engine. Not thread-safe; one per session."""

    @property
    def frame_samples(self) -> int:
        """Samples per frame at 16 kHz that :meth:`probability` takes."""
        ...

    def probability(self, frame: FloatAudio) -> float:
        """Speech probability of one frame (0..1); updates the engine's state."""
        ...

    def reset(self) -> None:
        """Forget all state, as for a new stream."""
        ...


def _check_frame(frame: FloatAudio, samples: int) -> FloatAudio:
    x = np.asarray(frame, dtype=np.float32)
    if x.shape != (samples,):
        raise ValueError(f"expected one frame of {samples} samples, got shape {x.shape}")
    return x


class WebRtcVad:
    """WebRTC VAD at 16 kHz; probability 1.0 (speech) or 0.0."""

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 20) -> None:
        import webrtcvad

        if type(aggressiveness) is not int or aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"WebRTC VAD aggressiveness must be 0..3, got {aggressiveness!r}")
        if type(frame_ms) is not int or frame_ms not in WEBRTC_FRAME_MS:
            raise ValueError(f"WebRTC VAD frames are {WEBRTC_FRAME_MS} ms, got {frame_ms!r}")
        self.aggressiveness = aggressiveness
        self.frame_ms = frame_ms
        self._frame_samples = SPEECH_RATE * frame_ms // 1000
        self._module = webrtcvad
        self._vad = webrtcvad.Vad(aggressiveness)

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    def probability(self, frame: FloatAudio) -> float:
        x = _check_frame(frame, self._frame_samples)
        pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return 1.0 if self._vad.is_speech(pcm, SPEECH_RATE) else 0.0

    def reset(self) -> None:
        # The C VAD adapts its noise model as it goes; a fresh one forgets it.
        self._vad = self._module.Vad(self.aggressiveness)


def silero_model_path() -> Path:
    """The Silero ONNX file inside the installed faster-whisper (found without
    importing faster-whisper, which would load CTranslate2)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("faster-whisper is not installed: it ships the Silero VAD model")
    for root in spec.submodule_search_locations:
        path = Path(root) / "assets" / SILERO_ASSET
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SILERO_ASSET} not found in the faster-whisper package")


class SileroModel:
    """One onnxruntime session over the Silero model; shared, stateless, thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        self.path = path or silero_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"Silero VAD model not found: {self.path}")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session: Any = onnxruntime.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def run(
        self, rows: FloatAudio, h: FloatAudio, c: FloatAudio
    ) -> tuple[FloatAudio, FloatAudio, FloatAudio]:
        """``rows`` [n, 576] (the LSTM steps through the n rows in order) -> per-row
        probabilities [n], and the new ``h``, ``c``."""
        probs, hn, cn = self._session.run(None, {"input": rows, "h": h, "c": c})
        return (
            np.asarray(probs, dtype=np.float32).reshape(-1),
            np.asarray(hn, dtype=np.float32),
            np.asarray(cn, dtype=np.float32),
        )


_shared_model: SileroModel | None = None
_shared_lock = threading.Lock()


def shared_silero_model() -> SileroModel:
    """The process's one Silero session, made on first use (about 20 ms)."""
    global _shared_model
    with _shared_lock:
        if _shared_model is None:
            _shared_model = SileroModel()
        return _shared_model


class SileroVad:
    """Silero v6 on 32 ms frames (512 samples at 16 kHz); state kept per instance."""

    def __init__(self, model: SileroModel | None = None) -> None:
        self._model = model or shared_silero_model()
        self._row = np.zeros((1, SILERO_CONTEXT + SILERO_WINDOW), dtype=np.float32)
        self._h = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)

    @property
    def frame_samples(self) -> int:
        return SILERO_WINDOW

    def probability(self, frame: FloatAudio) -> float:
        x = _check_frame(frame, SILERO_WINDOW)
        # The row's head already holds the previous window's last 64 samples (the
        # context); zeros before the first window, as faster-whisper feeds it.
        self._row[0, SILERO_CONTEXT:] = x
        probs, self._h, self._c = self._model.run(self._row, self._h, self._c)
        self._row[0, :SILERO_CONTEXT] = x[-SILERO_CONTEXT:]
        p = float(probs[0])
        return p if math.isfinite(p) else 0.0

    def reset(self) -> None:
        self._row.fill(0.0)
        self._h = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(SILERO_STATE_SHAPE, dtype=np.float32)


def make_vad(engine: str, *, aggressiveness: int = 2, webrtc_frame_ms: int = 20) -> VoiceActivity:
    """A fresh per-session engine: ``"silero"`` or ``"webrtc"`` (``aggressiveness`` and
    ``webrtc_frame_ms`` apply to WebRTC only)."""
    if engine == "silero":
        return SileroVad()
    if engine == "webrtc":
        return WebRtcVad(aggressiveness, webrtc_frame_ms)
    raise ValueError(f"unknown VAD engine {engine!r}; choose one of {ENGINES}")


class VoiceDetector:
    """One session's listening chain after the resampler: 16 kHz float32 in any
    amounts -> the engine's frames -> probabilities -> the gate's onsets and offsets.

    ``start_sample`` lets a detector made mid-session (a new engine) keep the
    session's audio clock.
    """

    def __init__(
        self, engine: VoiceActivity, gate: GateConfig | None = None, start_sample: int = 0
    ) -> None:
        self.engine = engine
        self.framer = Framer(engine.frame_samples, SPEECH_RATE, start_sample)
        self.gate = VadGate(gate)
        self.last_probability = 0.0

    def push(self, audio: FloatAudio, strict: bool = False) -> list[GateEvent]:
        """``strict``: the system is speaking now (onsets need ``speaking_threshold``)."""
        events: list[GateEvent] = []
        frame_s = self.framer.frame_s
        for frame in self.framer.push(audio):
            self.last_probability = self.engine.probability(frame.samples)
            events.extend(self.gate.push(self.last_probability, frame.end_s, frame_s, strict))
        return events


_GATE = GateConfig()


class VadConfig(BaseModel):
    """Voice activity settings of a conversation session (one engine per session)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["silero", "webrtc"] = Field(
        "silero", description="VAD engine: silero (neural, robust to noise) or webrtc (GMM)"
    )
    aggressiveness: int = Field(
        2, ge=0, le=3, description="WebRTC only: 0 quiet rooms .. 3 noisy; 2 general use"
    )
    webrtc_frame_ms: Literal[10, 20, 30] = Field(20, description="WebRTC only: frame length")
    threshold: float = Field(
        _GATE.threshold, ge=0.0, le=1.0, description="a frame is speech if p >= this"
    )
    neg_threshold: float = Field(
        _GATE.neg_threshold, ge=0.0, le=1.0,
        description="a frame is silence if p < this; in between keeps the current state",
    )
    speaking_threshold: float = Field(
        _GATE.speaking_threshold, ge=0.0, le=1.0,
        description="onset threshold while the system itself speaks (resists its own echo)",
    )
    min_speech_ms: float = Field(
        _GATE.min_speech_ms, ge=0.0, le=2000.0,
        description="voiced time that confirms an onset (barge-in waits this long)",
    )
    min_silence_ms: float = Field(
        _GATE.min_silence_ms, ge=0.0, le=10_000.0,
        description="unvoiced time that confirms an offset (the end-of-turn wait adds to it)",
    )

    @model_validator(mode="after")
    def _gate_is_valid(self) -> VadConfig:
        self.gate_config()  # one home for the cross-field rules: GateConfig's own checks
        return self

    def gate_config(self) -> GateConfig:
        return GateConfig(
            threshold=self.threshold,
            neg_threshold=self.neg_threshold,
            speaking_threshold=self.speaking_threshold,
            min_speech_ms=self.min_speech_ms,
            min_silence_ms=self.min_silence_ms,
        )

    def make_vad(self) -> VoiceActivity:
        return make_vad(
            self.engine, aggressiveness=self.aggressiveness, webrtc_frame_ms=self.webrtc_frame_ms
        )

    def make_detector(self, start_sample: int = 0) -> VoiceDetector:
        return VoiceDetector(self.make_vad(), self.gate_config(), start_sample)
