"""Conversation-mode settings of the orchestrator: VAD, speech recognition, turn-taking,
replies. Part of :class:`~.config.OrchestratorConfig` (YAML key ``conversation``).

Each section is its core's own config, the one home of its options' defaults, bounds
and descriptions: ``vad`` (:class:`~duplexvoice.speech.vad.VadConfig`), ``asr``
(:class:`~duplexvoice.speech.asr_types.AsrConfig`), ``turns``
(:class:`~duplexvoice.orchestrator.sessions.turns.TurnConfig`), ``endturn`` (the acoustic
end-of-turn model's runtime, :class:`~duplexvoice.speech.endturn.EndTurnConfig`), ``reply``
(:class:`~duplexvoice.replies.ReplyConfig`). Their options are flags and environment
variables named after the section: ``conversation.turns.end_of_turn_ms`` is
``--turns-end-of-turn-ms`` and ``DUPLEXVOICE_ORCH_TURNS_END_OF_TURN_MS``. What is the
listener's own (partials, input limits) stays here, unprefixed.

The options were flat here before (``vad_threshold``, ``end_of_turn_ms``,
``barge_in_min_speech_ms``, ...): :data:`OLD_NAMES` keeps every old flag, variable and
YAML key working (:mod:`duplexvoice.config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from duplexvoice.orchestrator.sessions.turns import TurnConfig
from duplexvoice.replies import ReplyConfig
from duplexvoice.speech.asr_types import AsrConfig
from duplexvoice.speech.endturn import EndTurnConfig
from duplexvoice.speech.vad import VadConfig

# Old flat name -> where it lives now (below ``conversation``). Where the flat name is
# the section's prefix plus the option (vad_threshold: vad.threshold), the flag and the
# variable are unchanged and only the YAML key moved.
OLD_NAMES: Mapping[str, str] = {
    **{f"vad_{name}": f"vad.{name}" for name in (
        "engine", "aggressiveness", "threshold", "neg_threshold", "speaking_threshold",
        "min_speech_ms", "speaking_min_speech_ms", "min_silence_ms", "silero_hop",
        "fast_onset", "fast_rise_db", "fast_min_level_db", "fast_backoff_ms")},
    "asr_model": "asr.model_path",
    "asr_device": "asr.device",
    "asr_compute_type": "asr.compute_type",
    "asr_threads": "asr.cpu_threads",
    "asr_beam_size": "asr.beam_size",
    "asr_max_queue": "asr.max_queue",
    "end_of_turn_ms": "turns.end_of_turn_ms",
    "adaptive_end_of_turn": "turns.adaptive",
    "complete_end_ms": "turns.complete_end_ms",
    "trailing_end_ms": "turns.trailing_end_ms",
    "min_turn_ms": "turns.min_turn_ms",
    "max_turn_ms": "turns.max_turn_ms",
    "barge_in_min_speech_ms": "turns.interrupt_after_ms",
    "barge_in_words_ms": "turns.words_after_ms",
    "barge_in_words_wait_ms": "turns.words_wait_ms",
    "false_interruption_resume_ms": "turns.resume_after_ms",
    "speculative_reply": "turns.speculative_reply",
    **{f"reply_{name}": f"reply.{name}" for name in (
        "engine", "base_url", "model", "api_key_env", "system_prompt", "timeout_s")},
}


class ConversationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old_names: ClassVar[Mapping[str, str]] = OLD_NAMES

    vad: VadConfig = Field(
        default_factory=VadConfig, description="voice activity detection",
        json_schema_extra={"option_prefix": "vad"})
    asr: AsrConfig = Field(
        default_factory=AsrConfig, description="speech recognition",
        json_schema_extra={"option_prefix": "asr"})
    partial_interval_ms: int = Field(
        400, ge=0, description="partial transcripts while the user speaks, every this much "
        "new audio (0: none)")
    early_final_ms: int = Field(
        48, ge=0, le=2000, description="ask for the final transcript early, after this much "
        "silence within speech (the end of speech is confirmed after vad.min_silence_ms); "
        "the final reuses it when the speech does end there (0: at the end of speech only)")
    turns: TurnConfig = Field(
        default_factory=TurnConfig, description="turn-taking and barge-in",
        json_schema_extra={"option_prefix": "turns"})
    endturn: EndTurnConfig = Field(
        default_factory=EndTurnConfig, description="the acoustic end-of-turn model (used when "
        "turns.end_mode is acoustic or fused)", json_schema_extra={"option_prefix": "endturn"})
    reply: ReplyConfig = Field(
        default_factory=ReplyConfig, description="how the system answers",
        json_schema_extra={"option_prefix": "reply"})

    # -- input limits ---------------------------------------------------------------------
    max_audio_rate: float = Field(
        2.0, gt=1, le=100, description="microphone audio accepted, in seconds per second "
        "(averaged; a burst of max_audio_burst_s is allowed)")
    max_audio_burst_s: float = Field(
        5.0, gt=0, le=60, description="microphone audio accepted at once above the rate")
