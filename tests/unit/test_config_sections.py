"""Sections and old names in the config loader (:mod:`duplexvoice.config`), on a small
model tree made for the test: a prefixed section, a flat one, renamed options."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from duplexvoice.config import (
    ConfigError,
    HelpFormatter,
    add_flags,
    load_config,
    load_config_with_origins,
    options,
)

pytestmark = pytest.mark.unit

PREFIX = "TOY"


class Knobs(BaseModel):
    """A core's own config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: int = Field(3, ge=0, le=9, description="how loud")
    frame_ms: Literal[10, 20, 30] = Field(20, description="frame length")
    low: float = Field(0.2, ge=0, le=1, description="low mark")
    high: float = Field(0.8, ge=0, le=1, description="high mark")
    key: SecretStr | None = Field(None, description="a secret")

    @model_validator(mode="after")
    def _ordered(self) -> Knobs:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old_names: ClassVar[Mapping[str, str]] = {
        "knobs_level": "knobs.level",  # the flag kept its name: only the YAML key moved
        "old_volume": "knobs.level",
        "knobs_low": "knobs.low",
    }

    knobs: Knobs = Field(default_factory=Knobs, json_schema_extra={"option_prefix": "knobs"})
    rate: int = Field(5, ge=1, description="how often")


class Top(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: int = Field(1, ge=0, description="a port")
    part: Part = Field(default_factory=Part)  # a flat section: its options keep their names


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_flags(made, Top)
    return made


def load(*argv: str, env: dict[str, str] | None = None,
         yaml_file: Path | None = None) -> tuple[Top, dict[str, str]]:
    config, origins = load_config_with_origins(
        Top, yaml_path=yaml_file, env_prefix=PREFIX, environ=env or {},
        flags=parser().parse_args(list(argv)))
    return config, origins.by_leaf


def yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return path


def test_a_prefixed_section_names_its_options_after_it() -> None:
    opts = options(Top)
    assert list(opts) == ["port", "knobs_level", "knobs_frame_ms", "knobs_low", "knobs_high",
                          "knobs_key", "rate"]
    assert opts["knobs_level"].path == ("part", "knobs", "level")
    assert opts["knobs_level"].key == "part.knobs.level"
    assert opts["knobs_level"].old_names == ("old_volume",)
    assert opts["knobs_level"].old_paths == (("part", "knobs_level"), ("part", "old_volume"))
    assert opts["rate"].path == ("part", "rate") and opts["rate"].old_names == ()


def test_nested_options_from_yaml_environment_and_flags(tmp_path: Path) -> None:
    config, origins = load(yaml_file=yaml(tmp_path, "part:\n  knobs:\n    level: 4\n"))
    assert config.part.knobs.level == 4 and origins["knobs_level"] == str(tmp_path / "toy.yaml")
    config, origins = load(env={"TOY_KNOBS_LEVEL": "5", "TOY_RATE": "7"})
    assert (config.part.knobs.level, config.part.rate) == (5, 7)
    assert origins["knobs_level"] == "environment variable TOY_KNOBS_LEVEL"
    config, origins = load("--knobs-level", "6", "--knobs-frame-ms", "10")
    assert (config.part.knobs.level, config.part.knobs.frame_ms) == (6, 10)
    assert origins["knobs_level"] == "flag --knobs-level"


@pytest.mark.parametrize("argv,env,text,origin", [
    (["--old-volume", "7"], {}, "", "flag --old-volume"),
    ([], {"TOY_OLD_VOLUME": "7"}, "", "environment variable TOY_OLD_VOLUME"),
    ([], {}, "part:\n  old_volume: 7\n", "{yaml} key part.old_volume"),
    ([], {}, "part:\n  knobs_level: 7\n", "{yaml} key part.knobs_level"),
])
def test_an_old_name_sets_the_option_and_is_named_as_its_source(
        tmp_path: Path, argv: list[str], env: dict[str, str], text: str, origin: str) -> None:
    yaml_file = yaml(tmp_path, text) if text else None
    config, origins = load(*argv, env=env, yaml_file=yaml_file)
    assert config.part.knobs.level == 7
    assert origins["knobs_level"] == origin.format(yaml=yaml_file)


def test_sources_keep_their_order_whatever_the_name(tmp_path: Path) -> None:
    yaml_file = yaml(tmp_path, "part:\n  knobs:\n    level: 1\n")
    config, _ = load(env={"TOY_OLD_VOLUME": "2"}, yaml_file=yaml_file)
    assert config.part.knobs.level == 2  # the old variable beats the new YAML key
    config, origins = load("--old-volume", "3", env={"TOY_KNOBS_LEVEL": "2"})
    assert config.part.knobs.level == 3 and origins["knobs_level"] == "flag --old-volume"
    config, _ = load("--knobs-level", "4", env={"TOY_OLD_VOLUME": "2"})
    assert config.part.knobs.level == 4


@pytest.mark.parametrize("argv,env,text,fragments", [
    (["--knobs-level", "4", "--old-volume", "5"], {}, "",
     ["part.knobs.level: given twice", "flag --knobs-level", "flag --old-volume", "give one"]),
    ([], {"TOY_KNOBS_LEVEL": "4", "TOY_OLD_VOLUME": "5"}, "",
     ["environment variable TOY_KNOBS_LEVEL", "environment variable TOY_OLD_VOLUME"]),
    ([], {}, "part:\n  old_volume: 5\n  knobs:\n    level: 4\n",
     ["key part.knobs.level", "key part.old_volume"]),
])
def test_one_source_giving_two_names_two_values_is_an_error(
        tmp_path: Path, argv: list[str], env: dict[str, str], text: str,
        fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        load(*argv, env=env, yaml_file=yaml(tmp_path, text) if text else None)
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_one_source_giving_two_names_one_value_is_fine(tmp_path: Path) -> None:
    assert load("--knobs-level", "4", "--old-volume", "4")[0].part.knobs.level == 4
    yaml_file = yaml(tmp_path, "part:\n  old_volume: 4\n  knobs:\n    level: 4\n")
    assert load(yaml_file=yaml_file)[0].part.knobs.level == 4


def test_errors_name_the_option_and_the_name_it_came_under(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load("--old-volume", "12")
    assert "part.knobs.level = '12' (from flag --old-volume)" in str(exc.value)
    yaml_file = yaml(tmp_path, "part:\n  old_volume: -1\n")
    with pytest.raises(ConfigError) as exc:
        load(yaml_file=yaml_file)
    assert f"part.knobs.level = -1 (from {yaml_file} key part.old_volume)" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load(env={"TOY_KNOBS_FRAME_MS": "25"})
    assert "part.knobs.frame_ms = 25 (from environment variable TOY_KNOBS_FRAME_MS)" \
        in str(exc.value)


def test_a_check_across_a_sections_options_names_their_sources() -> None:
    with pytest.raises(ConfigError) as exc:
        load("--knobs-low", "0.9")
    message = str(exc.value)
    assert "part.knobs: low (0.9) must not exceed high (0.8)" in message
    assert "knobs_low from flag --knobs-low" in message and "knobs_high from default" in message


def test_a_secret_is_never_shown_in_an_error(tmp_path: Path) -> None:
    yaml_file = yaml(tmp_path, "part:\n  knobs:\n    key: 123456789\n")
    with pytest.raises(ConfigError) as exc:
        load(yaml_file=yaml_file)
    assert "part.knobs.key" in str(exc.value) and "123456789" not in str(exc.value)


def test_help_lists_new_names_and_names_old_ones_whole() -> None:
    text = parser().format_help()
    flat = " ".join(text.split())
    assert "--knobs-level N" in flat and "(default: 3; old name: --old-volume)" in flat
    assert "--knobs-low NUMBER" in flat and "--knobs-frame-ms {10,20,30}" in flat
    assert "[--old-volume" not in flat and not re.search(r"^\s*--old-volume", text, re.M)
    narrow = argparse.ArgumentParser(formatter_class=lambda prog: HelpFormatter(prog, width=40))
    add_flags(narrow, Top)
    assert "--old-volume)" in narrow.format_help().split()  # never cut at a hyphen


def test_an_unknown_key_in_a_section_is_named(tmp_path: Path) -> None:
    yaml_file = yaml(tmp_path, "part:\n  knobs:\n    levle: 4\n")
    with pytest.raises(ConfigError, match=r"part\.knobs\.levle \(in .*\): unknown option"):
        load_config(Top, yaml_path=yaml_file, env_prefix=PREFIX, environ={})


class Clash(BaseModel):
    old_names: ClassVar[Mapping[str, str]] = {"port": "inner.level"}
    port: int = 1
    inner: Knobs = Field(default_factory=Knobs)


class Nowhere(BaseModel):
    old_names: ClassVar[Mapping[str, str]] = {"loud": "inner.volume"}
    inner: Knobs = Field(default_factory=Knobs)


class Twice(BaseModel):
    level: int = 1
    inner: Knobs = Field(default_factory=Knobs)  # flat: its "level" is a second one


@pytest.mark.parametrize("model,fragment", [
    (Clash, "old name 'port' is not unique"),
    (Nowhere, "no option inner.volume"),
    (Twice, "option name 'level' is not unique"),
])
def test_a_model_tree_with_ambiguous_names_is_refused(
        model: type[BaseModel], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        options(model)
