"""The orchestrator's conversation settings: nested sections that are the cores' own
configs, every old flat name still working (flag, environment variable, YAML key), and
the configured values reaching the cores."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from duplexvoice.config import ConfigError, add_flags, flag_name, load_config, options
from duplexvoice.orchestrator.config import ENV_PREFIX, OrchestratorConfig
from duplexvoice.orchestrator.conversation_config import OLD_NAMES, ConversationConfig
from duplexvoice.orchestrator.metrics import OrchestratorMetrics
from duplexvoice.orchestrator.sessions import shared
from duplexvoice.orchestrator.sessions.driver import SessionDriver
from duplexvoice.orchestrator.sessions.listener import listening_config
from duplexvoice.orchestrator.sessions.turns import TurnConfig
from duplexvoice.replies import EchoEngine, OpenAIEngine
from duplexvoice.speech.asr_types import AsrConfig
from tests.support.fake_orchestrator import FakeClient, FakeRegistry, FakeWorkerPool

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

# Every conversation option as `duplexvoice orchestrator --help` listed it before the
# settings were nested: old name, where it lives now (below `conversation`), a value as
# typed, the value it must give.
BEFORE: list[tuple[str, str, str, object]] = [
    ("vad_engine", "vad.engine", "webrtc", "webrtc"),
    ("vad_aggressiveness", "vad.aggressiveness", "3", 3),
    ("vad_threshold", "vad.threshold", "0.4", 0.4),
    ("vad_neg_threshold", "vad.neg_threshold", "0.3", 0.3),
    ("vad_speaking_threshold", "vad.speaking_threshold", "0.7", 0.7),
    ("vad_min_speech_ms", "vad.min_speech_ms", "64", 64),
    ("vad_speaking_min_speech_ms", "vad.speaking_min_speech_ms", "40", 40),
    ("vad_min_silence_ms", "vad.min_silence_ms", "200", 200),
    ("vad_silero_hop", "vad.silero_hop", "512", 512),
    ("vad_fast_onset", "vad.fast_onset", "false", False),
    ("vad_fast_rise_db", "vad.fast_rise_db", "9", 9),
    ("vad_fast_min_level_db", "vad.fast_min_level_db", "-40", -40),
    ("vad_fast_backoff_ms", "vad.fast_backoff_ms", "90000", 90_000),
    ("asr_model", "asr.model_path", "/models/whisper", "/models/whisper"),
    ("asr_device", "asr.device", "cuda", "cuda"),
    ("asr_compute_type", "asr.compute_type", "float16", "float16"),
    ("asr_threads", "asr.cpu_threads", "2", 2),
    ("asr_beam_size", "asr.beam_size", "5", 5),
    ("asr_max_queue", "asr.max_queue", "4", 4),
    ("partial_interval_ms", "partial_interval_ms", "300", 300),
    ("end_of_turn_ms", "turns.end_of_turn_ms", "700", 700),
    ("adaptive_end_of_turn", "turns.adaptive", "false", False),
    ("complete_end_ms", "turns.complete_end_ms", "200", 200),
    ("trailing_end_ms", "turns.trailing_end_ms", "900", 900),
    ("min_turn_ms", "turns.min_turn_ms", "100", 100),
    ("max_turn_ms", "turns.max_turn_ms", "2000", 2000),
    ("barge_in_min_speech_ms", "turns.interrupt_after_ms", "600", 600),
    ("barge_in_words_ms", "turns.words_after_ms", "150", 150),
    ("barge_in_words_wait_ms", "turns.words_wait_ms", "250", 250),
    ("false_interruption_resume_ms", "turns.resume_after_ms", "300", 300),
    ("speculative_reply", "turns.speculative_reply", "false", False),
    ("reply_engine", "reply.engine", "openai", "openai"),
    ("reply_base_url", "reply.base_url", "http://llm:9/v1", "http://llm:9/v1"),
    ("reply_model", "reply.model", "llama", "llama"),
    ("reply_api_key_env", "reply.api_key_env", "MY_KEY", "MY_KEY"),
    ("reply_system_prompt", "reply.system_prompt", "Be brief.", "Be brief."),
    ("reply_timeout_s", "reply.timeout_s", "30", 30),
    ("max_audio_rate", "max_audio_rate", "3", 3),
    ("max_audio_burst_s", "max_audio_burst_s", "2", 2),
]


def at(config: OrchestratorConfig, dotted: str) -> object:
    node: Any = config.conversation
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, OrchestratorConfig)
    return parser.parse_args(list(argv))


def load(*argv: str, env: dict[str, str] | None = None,
         yaml_file: Path | None = None) -> OrchestratorConfig:
    return load_config(OrchestratorConfig, yaml_path=yaml_file, env_prefix=ENV_PREFIX,
                       environ=env or {}, flags=flags(*argv))


def test_the_table_holds_every_old_name() -> None:
    assert {old for old, new, _t, _v in BEFORE if old != new} == set(OLD_NAMES)
    for old, new, _typed, _value in BEFORE:
        assert OLD_NAMES.get(old, old) == new


@pytest.mark.parametrize("old,new,typed,value", BEFORE, ids=[row[0] for row in BEFORE])
def test_an_old_flag_sets_the_nested_option(old: str, new: str, typed: str,
                                            value: object) -> None:
    config = load(flag_name(old), typed)
    assert at(config, new) == value
    assert at(OrchestratorConfig(), new) != value  # the row proves something


@pytest.mark.parametrize("old,new,typed,value", BEFORE, ids=[row[0] for row in BEFORE])
def test_an_old_environment_variable_sets_the_nested_option(old: str, new: str, typed: str,
                                                            value: object) -> None:
    assert at(load(env={f"{ENV_PREFIX}_{old.upper()}": typed}), new) == value


@pytest.mark.parametrize("old,new,typed,value", BEFORE, ids=[row[0] for row in BEFORE])
def test_an_old_yaml_key_sets_the_nested_option(tmp_path: Path, old: str, new: str,
                                                typed: str, value: object) -> None:
    yaml_file = tmp_path / "orchestrator.yaml"
    yaml_file.write_text(f"conversation:\n  {old}: {typed}\n")
    assert at(load(yaml_file=yaml_file), new) == value


def test_new_names_from_yaml_environment_and_flags(tmp_path: Path) -> None:
    yaml_file = tmp_path / "orchestrator.yaml"
    yaml_file.write_text("conversation:\n  turns:\n    interrupt_after_ms: 600\n"
                         "  vad:\n    threshold: 0.4\n  asr:\n    beam_size: 3\n")
    config = load("--reply-engine", "openai", "--reply-temperature", "none",
                  env={"DUPLEXVOICE_ORCH_TURNS_END_OF_TURN_MS": "800",
                       "DUPLEXVOICE_ORCH_VAD_WEBRTC_FRAME_MS": "30"},
                  yaml_file=yaml_file)
    conversation = config.conversation
    assert (conversation.turns.interrupt_after_ms, conversation.turns.end_of_turn_ms) == (600, 800)
    assert (conversation.vad.threshold, conversation.vad.webrtc_frame_ms) == (0.4, 30)
    assert conversation.asr.beam_size == 3
    assert (conversation.reply.engine, conversation.reply.temperature) == ("openai", None)


def test_old_and_new_names_follow_the_sources_order() -> None:
    config = load("--turns-end-of-turn-ms", "800", env={"DUPLEXVOICE_ORCH_END_OF_TURN_MS": "700"})
    assert config.conversation.turns.end_of_turn_ms == 800
    config = load("--end-of-turn-ms", "700",
                  env={"DUPLEXVOICE_ORCH_TURNS_END_OF_TURN_MS": "800"})
    assert config.conversation.turns.end_of_turn_ms == 700


def test_old_and_new_flags_with_two_values_are_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        load("--end-of-turn-ms", "700", "--turns-end-of-turn-ms", "800")
    assert "conversation.turns.end_of_turn_ms: given twice with different values" \
        in str(exc.value)
    assert "flag --turns-end-of-turn-ms" in str(exc.value) and "flag --end-of-turn-ms" \
        in str(exc.value)


def test_errors_name_the_nested_option_and_the_old_flag() -> None:
    with pytest.raises(ConfigError) as exc:
        load("--barge-in-min-speech-ms", "9000")
    assert "conversation.turns.interrupt_after_ms = '9000' (from flag " \
        "--barge-in-min-speech-ms)" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load("--vad-neg-threshold", "0.6")
    message = str(exc.value)
    assert "conversation.vad: neg_threshold (0.6) must not exceed threshold (0.5)" in message
    assert "vad_neg_threshold from flag --vad-neg-threshold" in message
    with pytest.raises(ConfigError, match=r"conversation\.reply: .*needs a model name"):
        load("--reply-engine", "openai", "--reply-model", "")


def test_the_defaults_are_what_they_were() -> None:
    c = ConversationConfig()
    assert (c.vad.engine, c.vad.threshold, c.vad.min_speech_ms, c.vad.fast_backoff_max_ms) == (
        "silero", 0.5, 48, 60_000)
    assert (c.asr.model_path, c.asr.beam_size, c.asr.max_queue, c.asr.cpu_threads) == (
        None, 1, 16, 0)
    # The end of turn moved to the fused rule (issue 17, bench/endturn.py): 600 ms is its
    # wait when the model is unsure.
    assert c.turns == TurnConfig() and (c.turns.end_of_turn_ms, c.turns.interrupt_after_ms) == (
        600, 400)
    assert (c.turns.end_mode, c.endturn.threads) == ("text", 1)
    # The local brain is the default reply engine (issue 17).
    assert (c.reply.engine, c.reply.model, c.reply.timeout_s) == ("local", "gpt-4o-mini", 60)
    assert (c.partial_interval_ms, c.max_audio_rate, c.max_audio_burst_s) == (400, 2, 5)


@pytest.mark.parametrize("fields", [
    {"end_of_turn_ms": -1}, {"max_turn_ms": 500}, {"interrupt_after_ms": 6000},
    {"adaptive": "maybe"}, {"barge_in_min_speech_ms": 400},
])
def test_turn_settings_are_validated(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TurnConfig(**fields)  # type: ignore[arg-type]


def test_turn_settings_are_frozen() -> None:
    turns = TurnConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        turns.max_turn_ms = 1  # type: ignore[misc]


def test_an_old_name_inside_its_new_section_is_an_unknown_option(tmp_path: Path) -> None:
    yaml_file = tmp_path / "orchestrator.yaml"
    yaml_file.write_text("conversation:\n  turns:\n    barge_in_min_speech_ms: 400\n")
    with pytest.raises(ConfigError, match=r"conversation\.turns\.barge_in_min_speech_ms "
                       r"\(in .*orchestrator\.yaml\): unknown option"):
        load(yaml_file=yaml_file)


def test_the_listening_core_reads_its_settings_from_the_sections() -> None:
    c = load("--turns-max-turn-ms", "5000", "--turns-words-after-ms", "120",
             "--partial-interval-ms", "300", "--max-audio-rate", "3").conversation
    core = listening_config(c, lead_ms=80)
    assert (core.max_turn_ms, core.barge_in_words_ms, core.partial_interval_ms) == (
        5000, 120, 300)
    assert (core.max_audio_rate, core.lead_ms) == (3, 80)


def test_every_section_option_has_its_prefix() -> None:
    for name, opt in options(OrchestratorConfig).items():
        if opt.path[:1] == ("conversation",) and len(opt.path) == 3:
            assert name == f"{opt.path[1]}_{opt.path[2]}"


def test_the_documented_old_names_are_the_aliases() -> None:
    text = (REPO / "docs/protocol.md").read_text(encoding="utf-8")
    section = text.split("#### Old setting names", 1)[1].split("\n#", 1)[0]
    rows = {old: (new, key) for old, new, key in re.findall(
        r"^\| `(--[a-z-]+)` \| `(--[a-z-]+)` \| `([a-z_.]+)` \|$", section, re.M)}
    renamed = {flag_name(old): (flag_name(name), opt.key.removeprefix("conversation."))
               for name, opt in options(OrchestratorConfig).items() for old in opt.old_names}
    assert rows == renamed and len(rows) == 13


# -- the cores get the configured values ----------------------------------------------


class FakeTranscriber:
    def __init__(self, config: AsrConfig) -> None:
        self.config = config

    def close(self) -> None: ...


async def test_the_services_hand_each_core_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "Transcriber", FakeTranscriber)
    config = load("--vad-threshold", "0.6", "--vad-speaking-threshold", "0.7",
                  "--vad-min-silence-ms", "240",
                  "--asr-beam-size", "3", "--reply-engine", "openai",
                  "--reply-base-url", "http://llm:9/v1", "--reply-model", "llama").conversation
    services = await shared.make_services(config)
    try:
        gate = services.vad.make_detector().gate.config
        assert (gate.threshold, gate.speaking_threshold, gate.min_silence_ms) == (0.6, 0.7, 240)
        assert isinstance(services.transcriber, FakeTranscriber)
        assert services.transcriber.config is config.asr and config.asr.beam_size == 3
        openai = services.replies["openai"]
        assert isinstance(openai, OpenAIEngine)
        assert (openai.base_url, openai.model) == ("http://llm:9/v1", "llama")
        assert isinstance(services.replies["echo"], EchoEngine)  # a session may ask for echo
    finally:
        await services.close()


def test_the_local_engine_and_echo_by_default() -> None:
    replies = shared.make_replies(ConversationConfig().reply)
    assert list(replies) == ["echo", "local"] and isinstance(replies["echo"], EchoEngine)
    echo_only = shared.make_replies(ConversationConfig().reply.model_copy(
        update={"engine": "echo"}))
    assert list(echo_only) == ["echo"]


def test_a_session_gets_the_configured_turn_taking() -> None:
    config = load("--turns-end-of-turn-ms", "800", "--barge-in-min-speech-ms", "600")
    driver = SessionDriver("s1", config, FakeRegistry(), FakeWorkerPool(),
                           OrchestratorMetrics(), output=FakeClient())
    turns = driver.machine.config.turns
    assert (turns.end_of_turn_ms, turns.interrupt_after_ms) == (800, 600)
    assert turns is config.conversation.turns
