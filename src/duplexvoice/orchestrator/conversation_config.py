"""Conversation-mode settings of the orchestrator: VAD, speech recognition, turn-taking,
replies. Part of :class:`~.config.OrchestratorConfig` (YAML key ``conversation``; each
option is also a flag and an environment variable, like every other option).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from duplexvoice.orchestrator.sessions.turns import TurnConfig
from duplexvoice.replies import ReplyConfig
from duplexvoice.speech.vad_gate import GateConfig

# One home for each default: the pure cores' own configs.
_GATE = GateConfig()
_TURNS = TurnConfig()
_REPLY = ReplyConfig()


class ConversationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # -- voice activity ---------------------------------------------------------------
    vad_engine: Literal["silero", "webrtc"] = Field(
        "silero", description="voice activity detector: silero (ONNX) or webrtc")
    vad_aggressiveness: int = Field(
        2, ge=0, le=3, description="webrtc VAD: 0 quiet rooms ... 3 noisy rooms (2: general)")
    vad_threshold: float = Field(
        _GATE.threshold, gt=0, lt=1, description="speech probability that starts speech")
    vad_neg_threshold: float = Field(
        _GATE.neg_threshold, gt=0, lt=1, description="speech probability under which speech stops")
    vad_speaking_threshold: float = Field(
        _GATE.speaking_threshold, gt=0, lt=1,
        description="onset threshold while the system speaks (its own voice is the echo "
        "canceller's job: no threshold rejects it)")
    vad_min_speech_ms: int = Field(
        int(_GATE.min_speech_ms), ge=0, le=1000, description="speech needed to confirm an onset")
    vad_speaking_min_speech_ms: int = Field(
        int(_GATE.speaking_min_speech_ms), ge=0, le=1000,
        description="speech needed to confirm an onset while the system speaks (barge-in)")
    vad_min_silence_ms: int = Field(
        int(_GATE.min_silence_ms), ge=0, le=2000,
        description="silence needed to confirm an offset (hangover)")
    vad_silero_hop: int = Field(
        256, ge=256, le=512, multiple_of=256,
        description="silero: new samples per probability (256: two interleaved model "
        "states, a 32 ms window every 16 ms, twice the CPU)")
    vad_fast_onset: bool = Field(
        _GATE.fast_onset,
        description="while the system speaks, pause at once on a sudden speech-like "
        "rise in level (the model then decides whether it was speech); backs off after "
        "pauses the model did not confirm")
    vad_fast_rise_db: float = Field(
        _GATE.fast_rise_db, ge=0, le=60,
        description="fast onset: rise over the tracked noise floor (dB)")
    vad_fast_min_level_db: float = Field(
        _GATE.fast_min_level_db, ge=-120, le=0,
        description="fast onset: the least level that starts one (dBFS); "
        "above what an echo canceller leaves of the system's own voice (-47 dBFS at worst)")
    vad_fast_backoff_ms: int = Field(
        int(_GATE.fast_backoff_ms), ge=0, le=600_000,
        description="fast onset: off this long after a pause the "
        "model did not confirm, doubling for each in a row (to 60 s)")

    # -- speech recognition -------------------------------------------------------------
    asr_model: str = Field(
        "", description="faster-whisper (CTranslate2) model directory; empty: the packaged "
        "tiny.en")
    asr_device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where ASR runs")
    asr_compute_type: str = Field("int8", description="CTranslate2 compute type")
    asr_threads: int = Field(0, ge=0, description="ASR CPU threads (0: the cores, at most 4)")
    asr_beam_size: int = Field(
        1, ge=1, le=10, description="beam width of final transcripts (1: greedy, about "
        "twice as fast as 5 with tiny.en, and as accurate on the reference set)")
    asr_max_queue: int = Field(
        16, ge=1, description="final transcriptions waiting before new ones are refused")
    partial_interval_ms: int = Field(
        400, ge=0, description="partial transcripts while the user speaks, every this much "
        "new audio (0: none)")

    # -- turn-taking ---------------------------------------------------------------------
    end_of_turn_ms: int = Field(
        _TURNS.end_of_turn_ms, ge=0, le=10_000,
        description="silence after speech that ends the user's turn")
    adaptive_end_of_turn: bool = Field(
        _TURNS.adaptive, description="end sooner after a complete sentence, later after a trailing "
        "'and'/'um' (see complete_end_ms, trailing_end_ms)")
    complete_end_ms: int = Field(
        _TURNS.complete_end_ms, ge=0, le=10_000,
        description="adaptive: silence after a complete sentence")
    trailing_end_ms: int = Field(
        _TURNS.trailing_end_ms, ge=0, le=10_000,
        description="adaptive: silence after a trailing conjunction")
    min_turn_ms: int = Field(
        _TURNS.min_turn_ms, ge=0, le=5000,
        description="speech shorter than this is noise, not a turn")
    max_turn_ms: int = Field(
        _TURNS.max_turn_ms, ge=1000, le=300_000, description="a turn this long is ended by force")
    barge_in_min_speech_ms: int = Field(
        _TURNS.interrupt_after_ms, ge=0, le=5000,
        description="speech over the system this long is a real interruption")
    barge_in_words_ms: int = Field(
        _TURNS.words_after_ms, ge=0, le=5000,
        description="... or recognized words after this much speech")
    barge_in_words_wait_ms: int = Field(
        _TURNS.words_wait_ms, ge=0, le=5000,
        description="a short speech over the system waits up to this "
        "much more for its words before playback resumes ('Wait,' is short)")
    false_interruption_resume_ms: int = Field(
        _TURNS.resume_after_ms, ge=0, le=5000,
        description="silence after a short noise before the held speech resumes")
    speculative_reply: bool = Field(
        _TURNS.speculative_reply,
        description="start the reply during the end-of-turn silence; heard only if "
        "the turn really ended")

    # -- replies ---------------------------------------------------------------------------
    reply_engine: Literal["echo", "openai"] = Field(
        "echo", description="echo (speaks back what it heard) or openai (any "
        "OpenAI-compatible chat endpoint)")
    reply_base_url: str = Field(_REPLY.base_url, description="openai: API base URL")
    reply_model: str = Field("gpt-4o-mini", description="openai: model name")
    reply_api_key_env: str = Field(
        _REPLY.api_key_env, description="openai: environment variable holding the API key")
    reply_system_prompt: str = Field(
        _REPLY.system_prompt, description="openai: system prompt (the default asks for "
        "short spoken answers and explains the '…' that marks a reply the user cut off)")
    reply_timeout_s: float = Field(
        _REPLY.timeout_s, gt=0, description="openai: longest time for a whole reply")

    # -- input limits ---------------------------------------------------------------------
    max_audio_rate: float = Field(
        2.0, gt=1, le=100, description="microphone audio accepted, in seconds per second "
        "(averaged; a burst of max_audio_burst_s is allowed)")
    max_audio_burst_s: float = Field(
        5.0, gt=0, le=60, description="microphone audio accepted at once above the rate")

    def turn_config(self) -> TurnConfig:
        return TurnConfig(
            end_of_turn_ms=self.end_of_turn_ms, adaptive=self.adaptive_end_of_turn,
            complete_end_ms=self.complete_end_ms, trailing_end_ms=self.trailing_end_ms,
            min_turn_ms=self.min_turn_ms, max_turn_ms=self.max_turn_ms,
            interrupt_after_ms=self.barge_in_min_speech_ms,
            words_after_ms=self.barge_in_words_ms,
            resume_after_ms=self.false_interruption_resume_ms,
            words_wait_ms=self.barge_in_words_wait_ms,
            speculative_reply=self.speculative_reply,
        )
