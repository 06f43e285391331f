"""A session's settings: a config is applied whole or not at all; the output format
changes only at an utterance boundary (asked at each utterance's first frame)."""

from __future__ import annotations

from copy import deepcopy

import pytest

from duplexvoice.orchestrator.sessions.settings import SessionSettings
from duplexvoice.wire.messages import ErrorCode
from duplexvoice.wire.protocol import DEFAULT_INPUT_SAMPLE_RATE, ConfigMessage

pytestmark = pytest.mark.unit

OFFERED = ("piper-a", "espeak-b")


def snapshot(settings: SessionSettings) -> tuple[object, ...]:
    """Everything a client can observe: the voice, the rate, and the format of the next
    few utterances (asked on a copy, so the snapshot itself changes nothing)."""
    copy = deepcopy(settings)
    return (settings.voice, settings.input_sample_rate,
            tuple(copy.format_for(uid) for uid in range(1, 6)))


def test_defaults() -> None:
    settings = SessionSettings()
    assert settings.voice == ""
    assert settings.input_sample_rate == DEFAULT_INPUT_SAMPLE_RATE
    assert [settings.format_for(uid) for uid in (1, 2, 3)] == ["json"] * 3


def test_every_given_setting_is_applied() -> None:
    settings = SessionSettings(voice="espeak-b")
    message = ConfigMessage(voice="piper-a", mode="tts", input_sample_rate=24_000,
                            output_format="binary")
    assert settings.apply(message, OFFERED, next_utterance=1) is None
    assert settings.voice == "piper-a"
    assert settings.input_sample_rate == 24_000
    assert settings.format_for(1) == "binary"


def test_settings_not_given_are_kept() -> None:
    settings = SessionSettings(voice="espeak-b", input_sample_rate=8_000)
    assert settings.apply(ConfigMessage(output_format="binary"), OFFERED, 1) is None
    assert (settings.voice, settings.input_sample_rate) == ("espeak-b", 8_000)
    assert settings.apply(ConfigMessage(voice="piper-a"), OFFERED, 1) is None
    assert settings.format_for(1) == "binary"  # a later config without a format keeps it


@pytest.mark.parametrize("message, needle", [
    (ConfigMessage(voice="nope", output_format="binary", input_sample_rate=24_000), "nope"),
    (ConfigMessage(mode="conversation", voice="piper-a", output_format="binary",
                   input_sample_rate=24_000), "conversation"),
])
def test_a_refused_config_changes_nothing(message: ConfigMessage, needle: str) -> None:
    # Catches a partial apply: settings given before the bad one taking effect.
    settings = SessionSettings(voice="espeak-b")
    before = snapshot(settings)
    error = settings.apply(message, OFFERED, next_utterance=1)
    assert error is not None
    assert error.code is ErrorCode.INVALID_CONFIG
    assert needle in error.message
    assert snapshot(settings) == before


def test_the_refusal_names_what_is_available() -> None:
    error = SessionSettings().apply(ConfigMessage(voice="nope"), OFFERED, 1)
    assert error is not None and "espeak-b, piper-a" in error.message  # sorted
    error = SessionSettings().apply(ConfigMessage(voice="nope"), (), 1)
    assert error is not None and "none" in error.message


def test_the_format_switches_at_the_next_utterance_not_within_one() -> None:
    # Catches one utterance mixing formats: a config arriving while utterance 1 plays.
    settings = SessionSettings()
    assert settings.format_for(1) == "json"  # utterance 1's first frame
    assert settings.apply(ConfigMessage(output_format="binary"), OFFERED, 2) is None
    assert settings.format_for(1) == "json"  # the rest of utterance 1
    assert settings.format_for(2) == "binary"
    assert settings.format_for(3) == "binary"
    assert settings.apply(ConfigMessage(output_format="json"), OFFERED, 4) is None
    assert settings.format_for(3) == "binary"
    assert settings.format_for(4) == "json"


def test_a_config_before_any_utterance_applies_to_the_first() -> None:
    settings = SessionSettings()
    assert settings.apply(ConfigMessage(output_format="binary"), OFFERED, 1) is None
    assert settings.format_for(1) == "binary"


def test_two_changes_before_the_first_is_used_each_apply_from_their_own_utterance() -> None:
    # binary from utterance 2 (asked while utterance 1 plays), then json from utterance
    # 3 (the client sent a text, then changed its mind), all before utterance 2's first
    # frame: utterance 2 was opened under "binary" and must get it.
    settings = SessionSettings()
    assert settings.format_for(1) == "json"
    assert settings.apply(ConfigMessage(output_format="binary"), OFFERED, 2) is None
    assert settings.apply(ConfigMessage(output_format="json"), OFFERED, 3) is None
    assert settings.format_for(1) == "json"
    assert settings.format_for(2) == "binary"
    assert settings.format_for(3) == "json"


def test_a_later_change_for_the_same_utterance_replaces_the_earlier() -> None:
    settings = SessionSettings()
    assert settings.apply(ConfigMessage(output_format="binary"), OFFERED, 2) is None
    assert settings.apply(ConfigMessage(output_format="json"), OFFERED, 2) is None
    assert [settings.format_for(uid) for uid in (1, 2, 3)] == ["json"] * 3
