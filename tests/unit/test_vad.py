"""VAD engines (WebRTC, Silero on onnxruntime), the factory, the config, the detector.

Synthetic signals only (speech is in tests/integration/test_vad_speech.py); the
engines are in-process libraries that load in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from duplexvoice.speech.vad import (
    SileroModel,
    SileroVad,
    VadConfig,
    VoiceActivity,
    VoiceDetector,
    WebRtcVad,
    make_vad,
    shared_silero_model,
    silero_model_path,
)
from duplexvoice.speech.vad_gate import GateConfig, SpeechOffset, SpeechOnset

pytestmark = pytest.mark.unit


def _busy(n: int, seed: int = 0) -> np.ndarray:
    """Voiced-ish audio: a buzz with harmonics, gliding pitch, noise, on and off."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.2 * x + 0.02 * rng.standard_normal(n)).astype(np.float32)


def test_engines_satisfy_the_protocol() -> None:
    assert isinstance(WebRtcVad(), VoiceActivity)
    assert isinstance(SileroVad(), VoiceActivity)


@pytest.mark.parametrize(("ms", "samples"), [(10, 160), (20, 320), (30, 480)])
def test_webrtc_frame_sizes(ms: int, samples: int) -> None:
    assert WebRtcVad(frame_ms=ms).frame_samples == samples


@pytest.mark.parametrize("a", [-1, 4, 2.0, True, None])
def test_webrtc_bad_aggressiveness(a: object) -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        WebRtcVad(a)  # type: ignore[arg-type]


def test_webrtc_bad_frame_ms() -> None:
    with pytest.raises(ValueError, match="frames"):
        WebRtcVad(frame_ms=25)


def test_webrtc_says_zero_or_one() -> None:
    vad = WebRtcVad(2)
    assert vad.probability(np.zeros(320, np.float32)) == 0.0
    x = _busy(16000)
    probs = {vad.probability(x[i : i + 320]) for i in range(0, 16000, 320)}
    assert probs <= {0.0, 1.0} and 1.0 in probs


def test_webrtc_clips_out_of_range_samples_rather_than_wrapping() -> None:
    vad = WebRtcVad(2)
    assert vad.probability(np.full(320, 3.0, np.float32)) in (0.0, 1.0)


def test_webrtc_reset_gives_a_fresh_detector() -> None:
    x = _busy(8000, seed=1)
    a = WebRtcVad(1)
    first = [a.probability(x[i : i + 320]) for i in range(0, 8000, 320)]
    a.reset()
    again = [a.probability(x[i : i + 320]) for i in range(0, 8000, 320)]
    assert first == again


@pytest.mark.parametrize("engine", [WebRtcVad, SileroVad])
@pytest.mark.parametrize("shape", [(0,), (319,), (513,), (2, 160), (1, 512)])
def test_wrong_frame_shape_is_refused(engine: type[VoiceActivity], shape: tuple[int, ...]) -> None:
    vad = engine()
    with pytest.raises(ValueError, match="one frame"):
        vad.probability(np.zeros(shape, np.float32))


def test_silero_model_ships_with_faster_whisper() -> None:
    path = silero_model_path()
    assert path.name == "silero_vad_v6.onnx" and path.is_file()


def test_silero_missing_file_is_a_clear_error(tmp_path: object) -> None:
    from pathlib import Path

    with pytest.raises(FileNotFoundError, match="not found"):
        SileroModel(Path(str(tmp_path)) / "none.onnx")


def test_silero_streaming_equals_faster_whispers_batch_call() -> None:
    from faster_whisper.vad import SileroVADModel

    x = np.concatenate([np.zeros(3000, np.float32), _busy(16000), np.zeros(5000, np.float32)])
    x = x[: x.size - x.size % 512]
    batch = SileroVADModel(str(silero_model_path()))(x).reshape(-1)
    vad = SileroVad()
    streamed = np.array([vad.probability(x[i : i + 512]) for i in range(0, x.size, 512)])
    assert streamed.shape == batch.shape
    assert float(np.max(np.abs(streamed - batch))) < 1e-5
    assert streamed.max() > 0.5 > streamed[:5].max()  # it does hear the buzz


def test_silero_is_quiet_on_silence() -> None:
    vad = SileroVad()
    assert max(vad.probability(np.zeros(512, np.float32)) for _ in range(20)) < 0.1


def test_silero_sessions_share_one_model_but_not_state() -> None:
    assert SileroVad()._model is SileroVad()._model is shared_silero_model()
    x, y = _busy(8192, seed=2), np.zeros(8192, np.float32)
    alone_x = [SileroVad().probability(x[:512])]
    a, b = SileroVad(), SileroVad()
    alone = SileroVad()
    mixed_a, mixed_b, ref_a = [], [], []
    for i in range(0, 8192, 512):
        mixed_a.append(a.probability(x[i : i + 512]))
        mixed_b.append(b.probability(y[i : i + 512]))  # interleaved with another session
        ref_a.append(alone.probability(x[i : i + 512]))
    assert mixed_a == ref_a and mixed_a[0] == alone_x[0]
    assert max(mixed_b) < 0.1


def test_silero_reset_gives_a_fresh_stream() -> None:
    x = _busy(4096, seed=3)
    vad = SileroVad()
    first = [vad.probability(x[i : i + 512]) for i in range(0, 4096, 512)]
    vad.reset()
    assert [vad.probability(x[i : i + 512]) for i in range(0, 4096, 512)] == first


def test_make_vad() -> None:
    assert isinstance(make_vad("silero"), SileroVad)
    web = make_vad("webrtc", aggressiveness=3, webrtc_frame_ms=30)
    assert isinstance(web, WebRtcVad) and web.aggressiveness == 3 and web.frame_samples == 480
    with pytest.raises(ValueError, match="unknown VAD engine 'torch'"):
        make_vad("torch")


def test_vad_config_defaults_and_gate() -> None:
    c = VadConfig()
    assert c.engine == "silero" and c.aggressiveness == 2
    assert c.gate_config() == GateConfig()
    assert isinstance(c.make_vad(), SileroVad)
    web = VadConfig(engine="webrtc", aggressiveness=3, min_speech_ms=60).make_detector()
    assert isinstance(web.engine, WebRtcVad) and web.gate.config.min_speech_ms == 60


@pytest.mark.parametrize(
    "kw",
    [
        {"engine": "torch"},
        {"aggressiveness": 4},
        {"webrtc_frame_ms": 25},
        {"threshold": 1.2},
        {"neg_threshold": 0.6},  # above the threshold
        {"speaking_threshold": 0.3},  # below the threshold
        {"min_speech_ms": -5},
        {"unknown": 1},
    ],
)
def test_vad_config_is_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VadConfig(**kw)  # type: ignore[arg-type]


class Scripted:
    """A fake engine: plays back a list of probabilities, one per frame."""

    frame_samples = 320

    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)
        self.seen = 0

    def probability(self, frame: np.ndarray) -> float:
        assert frame.shape == (320,)
        self.seen += 1
        return self.probs.pop(0)

    def reset(self) -> None:
        pass


def test_detector_frames_any_chunking_and_keeps_audio_time() -> None:
    engine = Scripted([0.0] * 5 + [0.9] * 10 + [0.0] * 10)
    det = VoiceDetector(engine, GateConfig(min_speech_ms=40, min_silence_ms=100))
    events = []
    rng = np.random.default_rng(0)
    audio = np.zeros(25 * 320, np.float32)
    pos = 0
    while pos < audio.size:
        n = int(rng.integers(0, 700))
        events += det.push(audio[pos : pos + n])
        pos += n
    assert engine.seen == 25
    assert [type(e) for e in events] == [SpeechOnset, SpeechOffset]
    onset, offset = events
    assert isinstance(onset, SpeechOnset) and isinstance(offset, SpeechOffset)
    assert onset.start_s == pytest.approx(0.1) and onset.confirmed_s == pytest.approx(0.14)
    assert offset.end_s == pytest.approx(0.3) and offset.confirmed_s == pytest.approx(0.4)
    assert det.last_probability == 0.0


def test_detector_strict_and_start_sample() -> None:
    det = VoiceDetector(Scripted([0.6] * 4), GateConfig(), start_sample=16000)
    assert det.push(np.zeros(640, np.float32), strict=True) == []
    (onset,) = det.push(np.zeros(640, np.float32))
    assert isinstance(onset, SpeechOnset) and onset.start_s == pytest.approx(1.04)
