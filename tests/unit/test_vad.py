"""VAD engines (WebRTC, Silero on onnxruntime), the factory, the config, the detector.

Synthetic signals only (speech is in tests/integration/test_vad_speech.py); the
engines are in-process libraries that load in milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from duplexvoice.speech.vad import (
    OnsetCues,
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
from duplexvoice.speech.vad_gate import GateConfig, OnsetCue, SpeechOffset, SpeechOnset

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
    assert make_vad("silero", silero_hop=256).frame_samples == 256
    web = make_vad("webrtc", aggressiveness=3, webrtc_frame_ms=30)
    assert isinstance(web, WebRtcVad) and web.aggressiveness == 3 and web.frame_samples == 480
    with pytest.raises(ValueError, match="unknown VAD engine 'torch'"):
        make_vad("torch")


def test_vad_config_defaults_and_gate() -> None:
    c = VadConfig()
    assert c.engine == "silero" and c.aggressiveness == 2
    assert c.gate_config() == GateConfig()
    vad = c.make_vad()
    assert isinstance(vad, SileroVad) and (vad.frame_samples, vad.window_samples) == (256, 512)
    det = c.make_detector()
    assert isinstance(det.cues, OnsetCues) and det.window_s == 0.032
    web = VadConfig(engine="webrtc", aggressiveness=3, min_speech_ms=60).make_detector()
    assert isinstance(web.engine, WebRtcVad) and web.gate.config.min_speech_ms == 60
    assert web.window_s == 0.02
    assert VadConfig(fast_onset=False).make_detector().cues is None
    assert VadConfig(silero_hop=512).make_vad().frame_samples == 512


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
        {"silero_hop": 300},
        {"silero_hop": 128},
        {"fast_aggressiveness": 5},
        {"fast_rise_db": -1},
        {"fast_min_level_db": 1},
        {"fast_backoff_ms": 90_000, "fast_backoff_max_ms": 60_000},  # above the maximum
        {"unknown": 1},
    ],
)
def test_vad_config_is_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VadConfig(**kw)  # type: ignore[arg-type]


def test_an_unset_longest_backoff_follows_a_longer_first_one() -> None:
    assert VadConfig().fast_backoff_max_ms == 60_000
    assert VadConfig(fast_backoff_ms=90_000).fast_backoff_max_ms == 90_000
    assert VadConfig.model_validate({"fast_backoff_ms": "90000"}).fast_backoff_max_ms == 90_000
    assert VadConfig(fast_backoff_ms=500).fast_backoff_max_ms == 60_000
    assert VadConfig(fast_backoff_ms=5000, fast_backoff_max_ms=8000).fast_backoff_max_ms == 8000


class Scripted:
    """A fake engine: plays back a list of probabilities, one per frame."""

    frame_samples = 320
    window_samples = 320

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
    config = GateConfig(speaking_threshold=0.7, min_speech_ms=40, speaking_min_speech_ms=40)
    det = VoiceDetector(Scripted([0.6] * 4), config, start_sample=16000)
    assert det.push(np.zeros(640, np.float32), strict=True) == []
    (onset,) = det.push(np.zeros(640, np.float32))
    assert isinstance(onset, SpeechOnset) and onset.start_s == pytest.approx(1.04)


# -- Silero at a 256 hop ------------------------------------------------------------


def test_silero_256_hop_equals_the_512_hop_where_windows_coincide() -> None:
    x = np.concatenate([np.zeros(3000, np.float32), _busy(16000), np.zeros(5000, np.float32)])
    x = x[: x.size - x.size % 512]
    one, two = SileroVad(hop=512), SileroVad(hop=256)
    p512 = [one.probability(x[i : i + 512]) for i in range(0, x.size, 512)]
    p256 = [two.probability(x[i : i + 256]) for i in range(0, x.size, 256)]
    assert p256[1::2] == p512  # windows ending at 512, 1024, ...: the same stream, bit for bit
    # the others are windows 16 ms later, each its own state: sane, and not copies
    assert max(p256[0::2]) > 0.5 > max(p256[0:8])
    assert p256[0::2] != p512


def test_silero_256_hop_reset_and_bad_hops() -> None:
    x = _busy(4096, seed=4)
    vad = SileroVad(hop=256)
    first = [vad.probability(x[i : i + 256]) for i in range(0, 4096, 256)]
    vad.reset()
    assert [vad.probability(x[i : i + 256]) for i in range(0, 4096, 256)] == first
    for hop in (128, 300, 1024, 256.0, True):
        with pytest.raises(ValueError, match="hop"):
            SileroVad(hop=hop)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one frame of 256"):
        vad.probability(np.zeros(512, np.float32))


# -- onset cues -----------------------------------------------------------------------


def test_cues_level_in_dbfs() -> None:
    cues = OnsetCues()
    assert cues.cue(np.zeros(256, np.float32)).level_db == -120.0
    t = np.arange(256) / 16000
    tone = (0.1 * np.sqrt(2) * np.sin(2 * np.pi * 500 * t)).astype(np.float32)  # RMS 0.1
    assert cues.cue(tone).level_db == pytest.approx(-20.0, abs=0.2)


def test_cues_hear_a_voice_and_not_silence_at_any_chunking() -> None:
    x = np.concatenate([np.zeros(4000, np.float32), _busy(8000)])
    for size in (256, 160, 100, 517):
        cues = OnsetCues()
        got = [cues.cue(x[i : i + size]) for i in range(0, x.size - size + 1, size)]
        silent = [c for i, c in enumerate(got) if (i + 1) * size <= 3800]
        voiced = [c for i, c in enumerate(got) if i * size >= 6000]
        assert not any(c.speechlike for c in silent), size
        assert sum(c.speechlike for c in voiced) > 0.8 * len(voiced), size


def test_cues_keep_the_last_call_when_no_10ms_frame_ended() -> None:
    cues = OnsetCues()
    x = _busy(3200, seed=5)
    for i in range(0, 1600, 160):
        cues.cue(x[i : i + 160])
    last = cues.cue(x[1600:1760])
    small = cues.cue(x[1760:1800])  # 40 samples: no new 10 ms frame
    assert small.speechlike == last.speechlike


@pytest.mark.parametrize("shape", [(0,), (2, 160)])
def test_cues_refuse_a_bad_frame(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="frame"):
        OnsetCues().cue(np.zeros(shape, np.float32))


def test_cues_survive_nan_and_inf() -> None:
    cues = OnsetCues()
    x = np.full(256, np.nan, np.float32)
    assert cues.cue(x) == OnsetCue(-120.0, cues.cue(np.zeros(256, np.float32)).speechlike)
    x[::2] = np.inf
    assert cues.cue(x).level_db == pytest.approx(-3.0, abs=0.1)


def test_cues_reset() -> None:
    x = _busy(3200, seed=6)
    cues = OnsetCues(2)
    first = [cues.cue(x[i : i + 300]) for i in range(0, 3000, 300)]
    cues.reset()
    assert [cues.cue(x[i : i + 300]) for i in range(0, 3000, 300)] == first
    with pytest.raises(ValueError, match="aggressiveness"):
        OnsetCues(4)


def test_detector_passes_windows_and_cues_to_the_gate() -> None:
    class Overlapping(Scripted):
        window_samples = 640

    quiet = (np.random.default_rng(1).standard_normal(320 * 20) * 0.001).astype(np.float32)
    loud = _busy(320 * 3, seed=7)
    config = GateConfig(min_speech_ms=40, speaking_min_speech_ms=40)
    # the model hears nothing: only the fast onset can start the speech, and only strict
    for strict, expected in ((False, []), (True, [True])):
        det = VoiceDetector(Overlapping([0.0] * 23), config, cues=OnsetCues())
        events = det.push(np.concatenate([quiet, loud]), strict=strict)
        assert [e.fast for e in events if isinstance(e, SpeechOnset)] == expected
        if expected:
            onset = events[0]
            assert isinstance(onset, SpeechOnset)
            assert onset.confirmed_s - onset.start_s == pytest.approx(0.04)  # a 40 ms window


class FakeModel:
    """Stands in for the ONNX session: scripted probabilities; each call's state in is
    recorded, and the state out is the state in + 1."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)
        self.states_in: list[float] = []

    def run(self, rows: np.ndarray, h: np.ndarray, c: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.states_in.append(float(h.flat[0]))
        return np.array([self.probs.pop(0)], np.float32), h + 1, c + 1


def test_silero_states_start_afresh_after_quiet() -> None:
    # hop 512, 0.1 s of quiet (4 windows of 32 ms = 0.128 s >= 0.1) renews the state
    probs = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.1]
    model = FakeModel(probs)
    vad = SileroVad(model, hop=512, quiet_reset_s=0.1)  # type: ignore[arg-type]
    for _ in probs:
        vad.probability(np.zeros(512, np.float32))
    # state in: 0, 1, 2, 3, 4 (quiet reaches 0.128 s after the 5th call: renewed), 0, ...
    assert model.states_in == [0, 1, 2, 3, 4, 0, 1, 2]
    # hop 256: two states take turns; a voice in between starts the count again
    probs = [0.1] * 6 + [0.5] + [0.1] * 8
    model = FakeModel(probs)
    vad = SileroVad(model, hop=256, quiet_reset_s=0.1)  # type: ignore[arg-type]
    for _ in probs:
        vad.probability(np.zeros(256, np.float32))
    # states A, B alternate: A0 B0 A1 B1 A2 B2 (0.096 s of quiet) A3 (voiced) B3 ...
    # 7 quiet hops after the voice = 0.112 s: both renewed for the 15th call
    assert model.states_in == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 0]
    never = FakeModel([0.0] * 100)
    vad = SileroVad(never, hop=512, quiet_reset_s=0)  # type: ignore[arg-type]
    for _ in range(100):
        vad.probability(np.zeros(512, np.float32))
    assert never.states_in == list(range(100))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "2", True])
def test_silero_bad_quiet_reset(bad: object) -> None:
    with pytest.raises(ValueError, match="quiet_reset_s"):
        SileroVad(quiet_reset_s=bad)  # type: ignore[arg-type]
