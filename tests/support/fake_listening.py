"""Fakes for unit tests of a session in conversation mode: small and deliberate.

- ``FakeTranscriber``: the recognizer surface a ``Listener`` uses; it answers at once
  with the text a test set, and records what it was asked.
- ``LoudVad``: a VAD engine whose speech probability is the frame's loudness (1 above
  -20 dBFS, else 0), so a test scripts speech with loud and silent PCM; the real
  framer and hysteresis gate run on it (``fake_services`` puts it in a detector).
- ``FakeScorer``: the end-of-turn model's surface; answers a fixed p(complete) (None:
  no answer), and records the audio it was asked about.
- ``speech_pcm`` / ``silence_pcm``: 20 ms PCM16 frames at 16 kHz.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from duplexvoice.orchestrator.conversation_config import ConversationConfig
from duplexvoice.orchestrator.sessions.shared import ConversationServices
from duplexvoice.replies import EchoEngine
from duplexvoice.speech.asr_types import Recognition
from duplexvoice.speech.vad import VoiceDetector
from duplexvoice.speech.vad_gate import GateConfig

RATE = 16_000
FRAME = 320  # 20 ms


class FakeTranscriber:
    def __init__(self, final_text: str = "hello there.", partial_text: str = "") -> None:
        self.final_text = final_text
        self.partial_text = partial_text
        self.asked: list[tuple[bool, int]] = []  # (final, samples) per request
        self.early: list[int] = []  # samples per early final (apart: nobody awaits them)
        self.early_withdrawn = 0
        self.forgotten: list[Hashable] = []

    async def transcribe(self, audio: Any, *, final: bool, key: Hashable = None,
                         early: bool = False) -> Recognition:
        if early:
            self.early.append(int(audio.size))
            return Recognition(self.final_text, True, audio.size / RATE, 0.0, 0.0)
        self.asked.append((final, int(audio.size)))
        text = self.final_text if final else self.partial_text
        return Recognition(text, final, audio.size / RATE, 0.0, 0.0)

    def forget(self, key: Hashable) -> None:
        self.forgotten.append(key)

    def withdraw_early(self, key: Hashable) -> None:
        self.early_withdrawn += 1

    def close(self) -> None:
        pass

    def partials(self) -> int:
        return sum(not final for final, _ in self.asked)


class FakeScorer:
    def __init__(self, p_complete: float | None = 0.9) -> None:
        self.p_complete = p_complete
        self.asked: list[int] = []  # samples per request
        self.closed = False

    async def score(self, audio: Any) -> float | None:
        self.asked.append(int(audio.size))
        return self.p_complete

    def close(self) -> None:
        self.closed = True


class LoudVad:
    frame_samples = FRAME
    window_samples = FRAME

    def probability(self, frame: Any) -> float:
        return 1.0 if float(np.abs(frame).max()) > 0.1 else 0.0

    def reset(self) -> None:
        pass


class _LoudVadConfig:
    def make_detector(self, start_sample: int = 0) -> VoiceDetector:
        return VoiceDetector(LoudVad(), GateConfig(fast_onset=False), start_sample)


class _FakeServices(ConversationServices):
    @property
    def vad(self) -> Any:  # the loudness VAD instead of the configured one
        return _LoudVadConfig()


def fake_services(config: ConversationConfig, transcriber: FakeTranscriber,
                  engine: EchoEngine | None = None,
                  endturn: FakeScorer | None = None) -> ConversationServices:
    """Conversation services on these fakes (the reply engine: ``engine`` or echo; no
    end-of-turn model unless ``endturn``)."""
    return _FakeServices(config, transcriber,  # type: ignore[arg-type]
                         {"echo": engine or EchoEngine()}, endturn)  # type: ignore[arg-type]


def speech_pcm() -> bytes:
    return (np.full(FRAME, 8000, np.int16) * np.resize([1, -1], FRAME)).astype("<i2").tobytes()


def silence_pcm() -> bytes:
    return bytes(2 * FRAME)
