"""VAD on real speech (Piper and eSpeak voices, several speakers and speeds), silence,
noise and clipping, through the whole listening path: PCM16 at the client's rate in
20 ms chunks -> MicResampler -> Framer -> engine -> gate.

Bounds are loose on purpose (behaviour, not timings; bench/vad.py has the figures):
an onset must come within 200 ms of the true speech start, the offset must mark the
true end within a few frames. "True" start and end: the first and last sample above
1 % of the clip's peak, before any noise is mixed in. While the system speaks
(``strict``), the default's fast onset must start a barge-in within 80 ms over a quiet
room's floor (measured: 34 ms at most), hold once for a noise and let it go, back off
in a series of noises, and never fire on stationary noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from duplexvoice.speech.audio_in import MicResampler
from duplexvoice.speech.vad import VadConfig, VoiceDetector
from duplexvoice.speech.vad_gate import GateEvent, SpeechOffset, SpeechOnset
from tests.support import speech as sp

pytestmark = pytest.mark.integration

TEXT = "The meeting has been moved to three o'clock on Thursday afternoon."
RATES = (48000, 16000, 44100, 8000, 24000, 22050, 32000)  # one per speaker
BARGE_IN_S = 0.4  # speech this long while the system speaks becomes an interruption
SILERO, WEBRTC = VadConfig(), VadConfig(engine="webrtc")


def white(seconds: float, rms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(seconds * 16000)) * rms).astype(np.float32)


def pink(seconds: float, rms: float, seed: int) -> np.ndarray:
    n = round(seconds * 16000)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / 16000)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return (x / x.std() * rms).astype(np.float32)


def listen(
    audio: np.ndarray, config: VadConfig = SILERO, rate: int = 48000, strict: bool = False
) -> tuple[list[GateEvent], VoiceDetector]:
    """Send ``audio`` (16 kHz float) as a client at ``rate`` would, 20 ms at a time."""
    pcm = sp.pcm16(soxr.resample(audio, 16000, rate).astype(np.float32) if rate != 16000 else audio)
    mic, det = MicResampler(rate), config.make_detector()
    events: list[GateEvent] = []
    step = rate // 50 * 2
    for i in range(0, len(pcm), step):
        events += det.push(mic.push(pcm[i : i + step]), strict)
    events += det.push(mic.flush(), strict)
    return events, det


def placed(
    speech: np.ndarray, lead_s: float = 1.0, tail_s: float = 1.2
) -> tuple[np.ndarray, float, float]:
    """Speech between silences, and where it truly starts and ends (seconds)."""
    loud = np.flatnonzero(np.abs(speech) > 0.01 * float(np.max(np.abs(speech))))
    lead = round(lead_s * 16000)
    track = np.concatenate([sp.silence(lead_s), speech, sp.silence(tail_s)])
    return track, (lead + loud[0]) / 16000, (lead + loud[-1] + 1) / 16000


def runs(events: list[GateEvent], end_s: float) -> list[float]:
    """Confirmed speech runs: onset confirmed -> offset confirmed (or the end)."""
    out, since = [], None
    for e in events:
        if isinstance(e, SpeechOnset):
            since = e.confirmed_s
        elif since is not None:
            out.append(e.confirmed_s - since)
            since = None
    if since is not None:
        out.append(end_s - since)
    return out


def check_bounds(events: list[GateEvent], start: float, end: float, det: VoiceDetector) -> None:
    onsets = [e for e in events if isinstance(e, SpeechOnset)]
    offsets = [e for e in events if isinstance(e, SpeechOffset)]
    assert onsets, "speech was not detected"
    first = onsets[0]
    assert start <= first.confirmed_s <= start + 0.2, (first, start)
    assert start - 0.05 <= first.start_s <= start + 0.12, (first, start)
    assert offsets and not det.gate.speaking, "speech did not end"
    last = offsets[-1]
    assert end - 0.15 <= last.end_s <= end + 0.3, (last, end)
    assert last.confirmed_s <= end + 0.6, (last, end)


@pytest.mark.parametrize(("speaker", "rate"), list(zip(sp.SPEAKERS, RATES, strict=True)),
                         ids=[s.name for s in sp.SPEAKERS])
def test_silero_finds_every_speakers_start_and_end(speaker: sp.Speaker, rate: int) -> None:
    track, start, end = placed(np.asarray(sp.say(TEXT, speaker)))
    events, det = listen(track, SILERO, rate)
    check_bounds(events, start, end, det)


@pytest.mark.parametrize("speaker", sp.SPEAKERS, ids=[s.name for s in sp.SPEAKERS])
def test_webrtc_finds_every_speakers_start_and_end_in_quiet(speaker: sp.Speaker) -> None:
    track, start, end = placed(np.asarray(sp.say(TEXT, speaker)))
    events, det = listen(track, WEBRTC)
    check_bounds(events, start, end, det)


@pytest.mark.parametrize("speaker", sp.SPEAKERS, ids=[s.name for s in sp.SPEAKERS])
def test_silero_hears_speech_over_moderate_noise(speaker: sp.Speaker) -> None:
    track, start, end = placed(np.asarray(sp.say(TEXT, speaker)))
    bed = white if sp.SPEAKERS.index(speaker) % 2 else pink
    events, det = listen(track + bed(track.size / 16000, 0.03, seed=7), SILERO)
    check_bounds(events, start, end, det)


@pytest.mark.parametrize("speaker", sp.SPEAKERS[::3], ids=[s.name for s in sp.SPEAKERS[::3]])
def test_clipped_speech_is_still_speech(speaker: sp.Speaker) -> None:
    track, start, end = placed(np.asarray(sp.say(TEXT, speaker)))
    events, det = listen(np.clip(track * 4.0, -1.0, 1.0), SILERO)
    check_bounds(events, start, end, det)


def test_speech_while_the_system_speaks_is_still_heard() -> None:
    """``strict`` (the speaking threshold) resists more, but a user's voice gets through."""
    for speaker in (sp.SPEAKERS[0], sp.SPEAKERS[4]):
        track, start, _ = placed(np.asarray(sp.say(TEXT, speaker)))
        events, _ = listen(track, SILERO, strict=True)
        onsets = [e for e in events if isinstance(e, SpeechOnset)]
        assert onsets and start <= onsets[0].confirmed_s <= start + 0.25


@pytest.mark.parametrize("config", [SILERO, WEBRTC], ids=["silero", "webrtc"])
def test_digital_silence_gives_no_onset(config: VadConfig) -> None:
    events, _ = listen(sp.silence(3.0), config)
    assert events == []


def test_silero_ignores_a_noise_floor() -> None:
    events, _ = listen(white(3.0, 0.001, seed=1), SILERO)
    assert events == []


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_silero_moderate_noise_never_makes_a_barge_in_long_run(kind: str) -> None:
    noise = (white if kind == "white" else pink)(4.0, 0.03, seed=11)
    events, _ = listen(noise, SILERO)
    assert max(runs(events, 4.0), default=0.0) < BARGE_IN_S


@pytest.mark.parametrize(("seconds", "level"), [(0.1, 0.3), (0.3, 0.3), (0.5, 0.3), (0.2, 0.8)])
def test_silero_noise_bursts_never_make_a_barge_in_long_run(seconds: float, level: float) -> None:
    burst = sp.noise(seconds, level=level, seed=3)
    clip = np.concatenate([sp.silence(0.5), burst, sp.silence(0.8)])
    events, _ = listen(clip, SILERO)
    assert max(runs(events, clip.size / 16000), default=0.0) < BARGE_IN_S


def quiet_floor(seconds: float, seed: int) -> np.ndarray:
    return pink(seconds, 0.001, seed)  # -60 dBFS: a quiet room's microphone


SORRY = "Sorry, could you say that again?"  # a fricative start: the model hears it late


@pytest.mark.parametrize(("speaker", "rate"), list(zip(sp.SPEAKERS, RATES, strict=True)),
                         ids=[s.name for s in sp.SPEAKERS])
def test_barge_in_starts_within_80ms_for_every_speaker(speaker: sp.Speaker, rate: int) -> None:
    for text in (TEXT, SORRY):
        track, start, _ = placed(np.asarray(sp.say(text, speaker)))
        track = track + quiet_floor(track.size / 16000, seed=5)
        events, _ = listen(track, SILERO, rate, strict=True)
        onsets = [e for e in events if isinstance(e, SpeechOnset)]
        assert onsets, (speaker.name, text)
        first = onsets[0]
        assert start - 0.01 <= first.confirmed_s <= start + 0.08, (first, start, text)
        assert start - 0.05 <= first.start_s <= start + 0.05, (first, start, text)


@pytest.mark.parametrize(("seconds", "level"), [(0.05, 0.45), (0.2, 0.3), (0.5, 0.3)])
def test_a_noise_while_the_system_speaks_holds_once_and_lets_go(
        seconds: float, level: float) -> None:
    burst = sp.noise(seconds, level=level, seed=4)
    clip = np.concatenate([sp.silence(0.8), burst, sp.silence(1.0)])
    clip = clip + quiet_floor(clip.size / 16000, seed=6)
    events, det = listen(clip, SILERO, strict=True)
    assert [type(e) for e in events] == [SpeechOnset, SpeechOffset]
    onset = events[0]
    assert isinstance(onset, SpeechOnset) and onset.fast
    assert max(runs(events, clip.size / 16000)) < BARGE_IN_S
    assert not det.gate.speaking


def test_a_series_of_noises_backs_the_fast_onset_off() -> None:
    parts = [sp.silence(0.5)]
    for k in range(10):  # ten coughs in 10 s
        parts += [sp.noise(0.2, level=0.4, seed=20 + k), sp.silence(0.8)]
    clip = np.concatenate(parts)
    clip = clip + quiet_floor(clip.size / 16000, seed=7)
    events, _ = listen(clip, SILERO, strict=True)
    onsets = [e for e in events if isinstance(e, SpeechOnset)]
    assert 1 <= len(onsets) <= 4  # 0.5 s, then 2, 4, 8 s off: not one per cough
    assert max(runs(events, clip.size / 16000)) < BARGE_IN_S


@pytest.mark.parametrize(("kind", "rms"), [("white", 0.01), ("pink", 0.03), ("white", 0.1)])
def test_stationary_noise_never_holds_while_the_system_speaks(kind: str, rms: float) -> None:
    noise = (white if kind == "white" else pink)(5.0, rms, seed=12)
    events, _ = listen(noise, SILERO, strict=True)
    assert events == []


@pytest.mark.parametrize("speaker", sp.SPEAKERS[::3], ids=[s.name for s in sp.SPEAKERS[::3]])
def test_the_model_still_hears_an_onset_after_long_quiet(speaker: sp.Speaker) -> None:
    """The user listens to a long reply, then talks: Silero's state, carried through
    30 s of quiet, would grow deaf (onsets 0.5-2 s late); renewed, it is not."""
    track, start, _ = placed(np.asarray(sp.say(TEXT, speaker)), lead_s=30.0)
    track = track + quiet_floor(track.size / 16000, seed=8)
    events, _ = listen(track, VadConfig(fast_onset=False), strict=True)
    onsets = [e for e in events if isinstance(e, SpeechOnset)]
    assert onsets and start <= onsets[0].confirmed_s <= start + 0.2, (onsets[:1], start)
