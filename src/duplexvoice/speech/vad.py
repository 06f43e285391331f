"""Voice activity engines: one frame of 16 kHz float32 in, a speech probability out.

Every engine has the same small surface (:class:`VoiceActivity`): ``frame_samples``
(the frame it wants, cut by :class:`~duplexvoice.speech.audio_in.Framer`),
``window_samples`` (the audio each probability describes: more than the frame when
windows overlap), ``probability(frame) -> float`` in 0..1, and ``reset()``.
Hysteresis (minimum speech, hangover, the barge-in onset while the system speaks) is
not here: it is the pure :mod:`.vad_gate` over these probabilities (and the
:class:`OnsetCues` of each frame), the same for both engines.

- :class:`WebRtcVad`: Google's WebRTC VAD (``webrtcvad-wheels``), a GMM on band
  energies; 10/20/30 ms frames; says yes or no, so its probability is 0.0 or 1.0.
  Aggressiveness 0-3, default 2 (the seed's guide: 2 general, 3 noisy, 1 quiet).
- :class:`SileroVad`: the Silero v6 model that ships inside ``faster-whisper``
  (``assets/silero_vad_v6.onnx``), on onnxruntime, never torch. Its input row is 64
  samples of context (the end of the previous window) + a 512-sample window (32 ms);
  ``h``/``c`` [1, 1, 128] carry the LSTM state. One stream is fed exactly as
  faster-whisper's ``SileroVADModel`` does (zeros before the first window), so its
  probabilities equal faster-whisper's batch ones. ``hop=256`` (the default of
  :class:`VadConfig`) runs two such streams, 256 samples apart, each with its own
  state, taking turns: a fresh probability of the latest 32 ms every 16 ms, each
  exactly what the model was trained to see (on the 512 grid the second stream's
  probabilities equal the single stream's, to the bit). One state stepped every 256
  samples instead is off that grid: its probabilities differ from the 512 hop's by
  0.18 at p95 (up to 0.87) where their windows coincide, and it detected nothing
  sooner (``bench/vad.py``). After 2 s of quiet (every probability under 0.2) the
  states start afresh: carried through long quiet, Silero's LSTM state drifts and the
  model grows deaf to the next onset (a known trait of streaming Silero, e.g.
  snakers4/silero-vad#725). Measured at a 512 hop and threshold 0.5: a barge-in
  after 20 s of a quiet floor was confirmed 305/784 ms (p50/p95) after the speech
  began with the state carried, 58/109 ms renewed, 54/102 ms after 1 s of floor (the
  old default, threshold 0.7: 794/1858 ms). A fresh state hears an onset 0.1 s after
  its renewal as well as one 3 s old. One
  ``InferenceSession`` per process (1 intra-op and 1 inter-op thread: a window is far
  too small to split, and sessions run on the event loop), shared by every session;
  ``InferenceSession.run`` is thread-safe and holds no per-call state, so each
  :class:`SileroVad` keeps its own states and context.
- :class:`OnsetCues`: the fast onset's inputs per frame: the level (dBFS) and
  whether WebRTC VAD (aggressiveness 1 by default: 3 misses soft fricatives, "f",
  "s", for 60-100 ms) hears speech in it.

Why a 256 hop and a fast onset (``bench/vad.py``, every speaker, six first sounds):
a barge-in must pause playback within 80 ms (p95) of the speech onset at the client,
the client's 20 ms chunks and the resampler's hold-back (11 ms average) included, so
the onset must be confirmed about 50 ms into the speech. Silero cannot: it needs the
voiced part of a syllable, and "Hello", "Sorry", "Five" begin with 40-100 ms of
breath or friction it calls silence. Over a quiet room's floor (-60 dBFS) the onset
while the system speaks is confirmed at p50/p95 16/30 ms (input time 34/50 ms; after
20 s of floor 14/24 ms) with the fast onset, against 78/118 ms (input 108/146) with
the old default (512 hop, threshold 0.7) and 42/98 ms with the 256 hop alone at
threshold 0.5. In noise the onset is as late as the model: nothing rises over a
-30 dBFS bed before the speech does (p95 95 ms, from 109).

Cost per session on the event loop (``bench/vad.py``, 2 shared cores, best of the
passes): one Silero call 115-150 us, so 90 us per 20 ms of audio at a 512 hop and
180 us at 256; the cues 12 us per 16 ms frame; the gate 2 us; the whole chain from
48 kHz PCM (resampler included) 310 us per 20 ms against 142 us for the old default
(2.2x): 1.6 % of a core per talking session.

Errors: a frame of the wrong size or shape, or a bad engine name or setting, is a
``ValueError`` with a message; a missing model file is a ``FileNotFoundError``; NaN or
infinite samples never crash the cues (NaN counts as silence, infinity as full scale).
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
from duplexvoice.speech.vad_gate import SILENT_DB, GateConfig, GateEvent, OnsetCue, VadGate

FloatAudio = npt.NDArray[np.float32]

ENGINES = ("silero", "webrtc")
WEBRTC_FRAME_MS = (10, 20, 30)
SILERO_WINDOW = 512  # samples per window at 16 kHz (32 ms)
SILERO_CONTEXT = 64  # samples of the previous window the model sees again
SILERO_ROW = SILERO_CONTEXT + SILERO_WINDOW
SILERO_HOPS = (256, 512)  # new samples per probability: 512 one state, 256 two interleaved
SILERO_QUIET_P = 0.2  # probabilities under this count as quiet for the state's renewal
SILERO_STATE_SHAPE = (1, 1, 128)
SILERO_ASSET = "silero_vad_v6.onnx"


@runtime_checkable
class VoiceActivity(Protocol):
    """A per-session VAD engine. Not thread-safe; one per session."""

    @property
    def frame_samples(self) -> int:
        """Samples per frame at 16 kHz that :meth:`probability` takes."""
        ...

    @property
    def window_samples(self) -> int:
        """Samples each probability describes: the frame, or more when windows overlap."""
        ...

    def probability(self, frame: FloatAudio) -> float:
        """Speech probability of one frame (0..1); updates the engine's state."""
        ...

    def reset(self) -> None:
        """Forget all state, as for a new stream."""
        ...


def _pcm16(x: FloatAudio) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


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

    @property
    def window_samples(self) -> int:
        return self._frame_samples

    def probability(self, frame: FloatAudio) -> float:
        x = _check_frame(frame, self._frame_samples)
        return 1.0 if self.is_speech(_pcm16(x)) else 0.0

    def is_speech(self, pcm: bytes) -> bool:
        """One frame of PCM16LE at 16 kHz (``frame_samples`` samples)."""
        return bool(self._vad.is_speech(pcm, SPEECH_RATE))

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
    """Silero v6 at 16 kHz, one probability per ``hop`` new samples; state per instance.

    ``hop=512``: one model state stepped every 32 ms window, exactly as faster-whisper
    feeds it. ``hop=256``: two states, each stepped every 512 samples but 256 samples
    apart, taking turns: each sees exactly what ``hop=512`` would (its windows,
    its context, its own LSTM state), and the stream gets a fresh probability every
    16 ms, of the 32 ms window that ends there.

    ``quiet_reset_s``: after this much audio with every probability under 0.2, the
    LSTM states start afresh (the audio context is kept); 0 never. Carried through long
    quiet, the state drifts and the model grows deaf to the next onset.
    """

    def __init__(
        self, model: SileroModel | None = None, hop: int = SILERO_WINDOW,
        quiet_reset_s: float = 2.0,
    ) -> None:
        if type(hop) is not int or hop not in SILERO_HOPS:
            raise ValueError(f"Silero hop must be one of {SILERO_HOPS} samples, got {hop!r}")
        if not (isinstance(quiet_reset_s, int | float) and not isinstance(quiet_reset_s, bool)
                and math.isfinite(quiet_reset_s) and quiet_reset_s >= 0):
            raise ValueError(f"quiet_reset_s must be a finite number >= 0, got {quiet_reset_s!r}")
        self._model = model or shared_silero_model()
        self.hop = hop
        self._reset_after = round(quiet_reset_s * SPEECH_RATE)
        self._quiet = 0  # samples since a probability was last at or over SILERO_QUIET_P
        self._streams = SILERO_WINDOW // hop
        self._row = np.zeros((1, SILERO_ROW), dtype=np.float32)
        self._h: list[FloatAudio] = []
        self._c: list[FloatAudio] = []
        self._turn = 0  # the state whose window ends with the next frame
        self.reset()

    @property
    def frame_samples(self) -> int:
        return self.hop

    @property
    def window_samples(self) -> int:
        return SILERO_WINDOW

    def probability(self, frame: FloatAudio) -> float:
        x = _check_frame(frame, self.hop)
        # The row is the stream's last 576 samples: the newest window and the 64 before
        # it (zeros before the first window, as faster-whisper feeds it).
        self._row[0, : SILERO_ROW - self.hop] = self._row[0, self.hop :]
        self._row[0, SILERO_ROW - self.hop :] = x
        k = self._turn
        self._turn = (k + 1) % self._streams
        probs, self._h[k], self._c[k] = self._model.run(self._row, self._h[k], self._c[k])
        p = float(probs[0])
        p = p if math.isfinite(p) else 0.0
        self._quiet = self._quiet + self.hop if p < SILERO_QUIET_P else 0
        if self._reset_after and self._quiet >= self._reset_after:
            self._quiet = 0
            self._fresh_states()
        return p

    def reset(self) -> None:
        self._row.fill(0.0)
        self._fresh_states()
        self._turn = 0
        self._quiet = 0

    def _fresh_states(self) -> None:
        self._h = [np.zeros(SILERO_STATE_SHAPE, dtype=np.float32) for _ in range(self._streams)]
        self._c = [np.zeros(SILERO_STATE_SHAPE, dtype=np.float32) for _ in range(self._streams)]


class OnsetCues:
    """Per frame, what the gate's fast onset needs besides the probability
    (:class:`~.vad_gate.OnsetCue`): the frame's level in dBFS and whether WebRTC VAD
    (``aggressiveness``, on 10 ms frames cut from the stream, the remainder carried)
    calls speech in a 10 ms frame that ended within it (none ended: the last one's
    call). Any frame size; not thread-safe; about 20 us per 16 ms frame."""

    def __init__(self, aggressiveness: int = 1) -> None:
        self._webrtc = WebRtcVad(aggressiveness, 10)
        self._bytes = self._webrtc.frame_samples * 2
        self._pending = b""
        self._last = False

    def cue(self, frame: FloatAudio) -> OnsetCue:
        x = np.asarray(frame, dtype=np.float32)
        if x.ndim != 1 or not x.size:
            raise ValueError(f"expected one non-empty mono frame, got shape {x.shape}")
        power = float(np.dot(x, x)) / x.size
        if not math.isfinite(power):  # NaN or inf samples: never crash, never wrap
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
            power = min(1.0, float(np.dot(x, x)) / x.size)
        level = 10.0 * math.log10(power) if power > 1e-12 else SILENT_DB
        pending = self._pending + _pcm16(x)
        calls = []
        for at in range(0, len(pending) - self._bytes + 1, self._bytes):
            calls.append(self._webrtc.is_speech(pending[at : at + self._bytes]))
        self._pending = pending[len(calls) * self._bytes :]
        if calls:
            self._last = calls[-1]
        return OnsetCue(max(SILENT_DB, level), any(calls) if calls else self._last)

    def reset(self) -> None:
        self._webrtc.reset()
        self._pending = b""
        self._last = False


def make_vad(
    engine: str, *, aggressiveness: int = 2, webrtc_frame_ms: int = 20,
    silero_hop: int = SILERO_WINDOW, silero_quiet_reset_s: float = 2.0,
) -> VoiceActivity:
    """A fresh per-session engine: ``"silero"`` or ``"webrtc"`` (``aggressiveness`` and
    ``webrtc_frame_ms`` apply to WebRTC only, ``silero_*`` to Silero)."""
    if engine == "silero":
        return SileroVad(hop=silero_hop, quiet_reset_s=silero_quiet_reset_s)
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
        self, engine: VoiceActivity, gate: GateConfig | None = None, start_sample: int = 0,
        cues: OnsetCues | None = None,
    ) -> None:
        self.engine = engine
        self.framer = Framer(engine.frame_samples, SPEECH_RATE, start_sample)
        self.window_s = engine.window_samples / SPEECH_RATE
        self.gate = VadGate(gate)
        self.cues = cues
        self.last_probability = 0.0

    def push(self, audio: FloatAudio, strict: bool = False) -> list[GateEvent]:
        """``strict``: the system is speaking now (onsets need ``speaking_threshold``,
        or a fast onset when ``cues`` are on)."""
        events: list[GateEvent] = []
        for frame in self.framer.push(audio):
            self.last_probability = self.engine.probability(frame.samples)
            cue = self.cues.cue(frame.samples) if self.cues is not None else None
            events.extend(
                self.gate.push(self.last_probability, frame.end_s, self.window_s, strict, cue)
            )
        return events


_GATE = GateConfig()


class VadConfig(BaseModel):
    """Voice activity settings of a conversation session (one engine per session):
    ``conversation.vad`` of the orchestrator's config (flags ``--vad-<option>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["silero", "webrtc"] = Field(
        "silero", description="voice activity detector: silero (ONNX, robust to noise) or "
        "webrtc (GMM, fires on noise)"
    )
    aggressiveness: int = Field(
        2, ge=0, le=3, description="webrtc VAD: 0 quiet rooms ... 3 noisy rooms (2: general)"
    )
    webrtc_frame_ms: Literal[10, 20, 30] = Field(20, description="webrtc VAD: frame length")
    silero_hop: int = Field(
        256, ge=256, le=512, multiple_of=256,
        description="silero: new samples per probability (256: two interleaved model "
        "states, a 32 ms window every 16 ms, twice the CPU)",
    )
    silero_quiet_reset_s: float = Field(
        2.0, ge=0.0, le=3600.0, description="silero: fresh model states after this "
        "much quiet (0: never); carried through long quiet, the state grows deaf to onsets",
    )
    threshold: float = Field(
        _GATE.threshold, gt=0.0, lt=1.0, description="speech probability that starts speech"
    )
    neg_threshold: float = Field(
        _GATE.neg_threshold, gt=0.0, lt=1.0,
        description="speech probability under which speech stops (in between keeps the "
        "current state)",
    )
    speaking_threshold: float = Field(
        _GATE.speaking_threshold, gt=0.0, lt=1.0,
        description="onset threshold while the system speaks (its own voice is the echo "
        "canceller's job: no threshold rejects it)",
    )
    min_speech_ms: float = Field(
        _GATE.min_speech_ms, ge=0.0, le=1000.0, description="speech needed to confirm an onset"
    )
    speaking_min_speech_ms: float = Field(
        _GATE.speaking_min_speech_ms, ge=0.0, le=1000.0,
        description="speech needed to confirm an onset while the system speaks (barge-in)",
    )
    min_silence_ms: float = Field(
        _GATE.min_silence_ms, ge=0.0, le=2000.0,
        description="silence needed to confirm an offset (hangover; the end-of-turn wait "
        "adds to it)",
    )
    fast_onset: bool = Field(
        _GATE.fast_onset, description="while the system speaks, pause at once on a sudden "
        "speech-like rise in level (the model then decides whether it was speech); backs "
        "off after pauses the model did not confirm",
    )
    fast_aggressiveness: int = Field(
        1, ge=0, le=3, description="fast onset: WebRTC VAD aggressiveness of its speech cue",
    )
    fast_rise_db: float = Field(
        _GATE.fast_rise_db, ge=0.0, le=60.0,
        description="fast onset: rise over the tracked noise floor (dB)",
    )
    fast_min_level_db: float = Field(
        _GATE.fast_min_level_db, ge=-120.0, le=0.0,
        description="fast onset: the least level that starts one (dBFS); above what an "
        "echo canceller leaves of the system's own voice (-47 dBFS at worst)",
    )
    fast_backoff_ms: float = Field(
        _GATE.fast_backoff_ms, ge=0.0, le=600_000.0,
        description="fast onset: off this long after a pause the model did not confirm, "
        "doubling for each in a row (up to fast_backoff_max_ms)",
    )
    fast_backoff_max_ms: float = Field(
        _GATE.fast_backoff_max_ms, ge=0.0, le=3_600_000.0,
        description="fast onset: the longest back-off (unset: 60 s, or fast_backoff_ms "
        "if longer)",
    )

    @model_validator(mode="before")
    @classmethod
    def _longest_backoff_follows(cls, data: Any) -> Any:
        """An unset longest back-off is at least the first one."""
        if not isinstance(data, dict) or "fast_backoff_max_ms" in data:
            return data
        try:
            first = float(data.get("fast_backoff_ms", 0.0))
        except (TypeError, ValueError):
            return data  # the field's own check reports it
        if first > _GATE.fast_backoff_max_ms:
            return {**data, "fast_backoff_max_ms": first}
        return data

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
            speaking_min_speech_ms=self.speaking_min_speech_ms,
            fast_onset=self.fast_onset,
            fast_rise_db=self.fast_rise_db,
            fast_min_level_db=self.fast_min_level_db,
            fast_backoff_ms=self.fast_backoff_ms,
            fast_backoff_max_ms=self.fast_backoff_max_ms,
        )

    def make_vad(self) -> VoiceActivity:
        return make_vad(
            self.engine, aggressiveness=self.aggressiveness,
            webrtc_frame_ms=self.webrtc_frame_ms, silero_hop=self.silero_hop,
            silero_quiet_reset_s=self.silero_quiet_reset_s,
        )

    def make_cues(self) -> OnsetCues | None:
        return OnsetCues(self.fast_aggressiveness) if self.fast_onset else None

    def make_detector(self, start_sample: int = 0) -> VoiceDetector:
        return VoiceDetector(self.make_vad(), self.gate_config(), start_sample, self.make_cues())
