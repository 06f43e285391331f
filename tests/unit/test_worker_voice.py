"""A loaded voice (worker/voice.py, session.py): the warm-up that calibrates its
loudness, and the loudness state each session keeps for itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from duplexvoice.worker.adapters.base import AdapterError, FloatAudio, SynthesisOptions
from duplexvoice.worker.session import SynthesisSession
from duplexvoice.worker.voice import LoadedVoice
from tests.support.fake_tts import FakeAdapter, fake_pack

pytestmark = pytest.mark.unit

# 30 words: 30 fake chunks of 20 ms, 600 ms in all (over the 400 ms loudness needs).
WORDS = " ".join(["word"] * 30)


class SeededWarmUp(FakeAdapter):
    """A fake whose warm-up options carry a seed; it records the options of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[SynthesisOptions] = []

    def warmup_options(self) -> SynthesisOptions:
        return SynthesisOptions(extra={"seed": "0"})

    def stream(
        self, text: str, options: SynthesisOptions, cancel: threading.Event
    ) -> Iterator[FloatAudio]:
        self.options.append(options)
        return super().stream(text, options, cancel)


def test_the_warm_up_uses_the_adapters_warm_up_options_and_calibrates() -> None:
    adapter = SeededWarmUp()
    voice = LoadedVoice.warmed(fake_pack(), adapter, WORDS)
    assert [dict(o.extra) for o in adapter.options] == [{"seed": "0"}]
    assert voice.loudness.calibrated


def test_a_failed_warm_up_closes_the_model() -> None:
    adapter = FakeAdapter()
    adapter.fail_on("broken", after=2)
    with pytest.raises(AdapterError, match="broken"):
        LoadedVoice.warmed(fake_pack(), adapter, "a broken warm-up")
    assert adapter.closed


def _speak(session: SynthesisSession, text: str) -> None:
    """One whole utterance of ``session``, the way the worker renders it."""
    renderer = session.voice.renderer(session.options, threading.Event(), session.loudness)
    renderer.begin(text)
    while renderer.step() is not None:
        pass
    renderer.finish()


def test_each_session_learns_its_loudness_for_itself() -> None:
    """A session's utterances refine its own gain only: the voice's calibration, and so
    every new session, stays where the warm-up put it."""
    voice = LoadedVoice(fake_pack(), FakeAdapter())
    quiet = np.full(48_000, 0.02, np.float32) * np.sign(np.sin(np.arange(48_000) / 7.0))
    voice.loudness.calibrate(quiet.astype(np.float32), 48_000)  # far quieter than the fake
    calibrated = voice.loudness.gain_db
    a = SynthesisSession("a", voice, SynthesisOptions())
    b = SynthesisSession("b", voice, SynthesisOptions())
    assert a.loudness is not b.loudness
    assert a.loudness.gain_db == b.loudness.gain_db == calibrated
    _speak(a, WORDS)
    assert a.loudness.gain_db < calibrated - 3.0  # the fake is loud: this session learned
    assert voice.loudness.gain_db == calibrated
    assert b.loudness.gain_db == calibrated
    assert SynthesisSession("c", voice, SynthesisOptions()).loudness.gain_db == calibrated
