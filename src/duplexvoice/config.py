"""Typed configuration: one pydantic model per component, read from YAML, then
environment variables, then command-line flags (later wins).

Every leaf option of a config model gets, from the model itself, an environment
variable ``<PREFIX>_<LEAF>`` and a flag ``--<leaf>`` (underscores become dashes), so
the option list exists once. Leaf names are unique within a model tree. Lists are
given comma-separated on the command line and in the environment; ``none`` (or an
empty value) is the empty list, or no value for an optional option. Options whose
values are mappings (e.g. the orchestrator's ``routing_modes``) are YAML-only.

Errors name the option and where its value came from (the YAML file, the
environment variable or the flag)::

    ConfigError       the configuration cannot be read or does not validate
     +-- OptionError  a valid value the service cannot use (a port in use, a voice
                      that no voice pack provides); raised by the service at start
"""

from __future__ import annotations

import argparse
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# What a user types for "no value" (an optional option) or an empty list.
NONE_WORDS = ("", "none")


class ConfigError(Exception):
    """The configuration is invalid; the message says which option, from where, and why."""


class OptionError(ConfigError):
    """A value that validated but cannot be used when the service starts."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Origins:
    """Where each option's value came from: leaf name -> a phrase naming the source."""

    by_leaf: dict[str, str] = field(default_factory=dict)
    yaml_path: Path | None = None

    def of(self, leaf: str) -> str:
        return self.by_leaf.get(leaf, "default")

    def label(self, leaf: str) -> str:
        """``port (from flag --port)``: the option and its source, for an error line."""
        return f"{leaf} (from {self.of(leaf)})"


def one_line(text: str) -> str:
    """Error text for a one-line report (library messages may span lines)."""
    return " ".join(text.split())


# -- the option tree ------------------------------------------------------------------


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _members(annotation: object) -> tuple[object, ...]:
    """The non-None members of a union, else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _is_list(annotation: object) -> bool:
    return any(typing.get_origin(a) in (list, tuple) for a in _members(annotation))


def _is_optional(annotation: object) -> bool:
    return type(None) in typing.get_args(annotation)


def yaml_only(annotation: object) -> bool:
    """Mappings (and lists of models) have no flat text form: YAML only."""
    for member in _members(annotation):
        if typing.get_origin(member) is dict or member is dict:
            return True
        if typing.get_origin(member) in (list, tuple) and any(
            _is_model(a) for a in typing.get_args(member)
        ):
            return True
    return False


def iter_leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], Any]
]:
    """(path, FieldInfo) for every leaf option, depth first."""
    for name, info in model.model_fields.items():
        if _is_model(info.annotation):
            assert isinstance(info.annotation, type)
            yield from iter_leaves(info.annotation, (*prefix, name))
        else:
            yield (*prefix, name), info


def _leaf_index(model: type[BaseModel]) -> dict[str, tuple[tuple[str, ...], Any]]:
    index: dict[str, tuple[tuple[str, ...], Any]] = {}
    for path, info in iter_leaves(model):
        if path[-1] in index:
            raise ConfigError(f"option name {path[-1]!r} is not unique in {model.__name__}")
        index[path[-1]] = (path, info)
    return index


def flag_name(leaf: str) -> str:
    return "--" + leaf.replace("_", "-")


# -- flags and their help ---------------------------------------------------------------

_LIST_ITEMS = {"_dirs": "DIR", "_ids": "ID", "_keys": "KEY", "_origins": "ORIGIN"}
_TEXT_NAMES = {"name": "NAME", "device": "DEVICE", "_prefix": "PREFIX", "_mode": "MODE",
               "_voice": "ID", "_id": "ID", "_url": "URL", "host": "HOST"}
_SHELL_SAFE = re.compile(r"[\w@%+=:,./-]+")


def metavar(leaf: str, info: Any) -> str:
    """The value name shown in help, from the field's type and its name's suffix."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("metavar"), str):
        return str(extra["metavar"])
    annotation = info.annotation
    if _is_list(annotation):
        item = next((v for k, v in _LIST_ITEMS.items() if leaf.endswith(k)), "")
        return f"{item},..." if item else "LIST"
    kind = _members(annotation)[0]
    if typing.get_origin(kind) is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(kind)) + "}"
    if kind is bool:
        return "BOOL"
    timed = leaf.endswith("_s") and not leaf.endswith("_per_s")
    if kind is int:
        if leaf == "port" or leaf.endswith("_port"):
            return "PORT"
        if leaf.endswith("_ms"):
            return "MS"
        if leaf.endswith("_bytes"):
            return "BYTES"
        return "S" if timed else "N"
    if kind is float:
        return "S" if timed else "NUMBER"
    if kind is Path:
        return "PATH"
    return next((v for k, v in _TEXT_NAMES.items() if leaf.endswith(k)), "TEXT")


def show_value(value: object) -> str:
    """A value as a user would type it on the command line or in the environment."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list | tuple):
        return show_value(",".join(str(v) for v in value)) if value else "none"
    text = str(value)
    if _SHELL_SAFE.fullmatch(text):
        return text
    # As typed in a shell: "" for empty, double quotes around spaces and the like.
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'



def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add ``--<leaf>`` for every option; values stay strings until validation."""
    index = _leaf_index(model)
    only_yaml = [leaf for leaf, (_p, info) in index.items() if yaml_only(info.annotation)]
    description = "Also settable in the YAML file (--config) and the environment."
    if only_yaml:
        description += f" YAML only: {', '.join(only_yaml)}."
    group = parser.add_argument_group(f"{model.__name__} options", description)
    for leaf, (_path, info) in index.items():
        if leaf in only_yaml:
            continue
        help_text = (info.description or "").rstrip(".")
        if "default:" not in help_text:  # else the description explains the default
            default = show_value(info.get_default(call_default_factory=True))
            help_text += f" (default: {default})"
        group.add_argument(
            flag_name(leaf),
            dest=f"cfg__{leaf}",
            default=None,
            metavar=metavar(leaf, info),
            help=help_text.replace("%", "%%"),
        )


# -- loading --------------------------------------------------------------------------


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _has_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: object = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _convert(raw: str, info: Any) -> object:
    if _is_list(info.annotation):
        if raw.strip().lower() in NONE_WORDS:
            return []
        return [part.strip() for part in raw.split(",") if part.strip()]
    if _is_optional(info.annotation) and raw.strip().lower() in NONE_WORDS:
        return None
    return raw


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"cannot read {path}: {where}{exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read {path}: {one_line(str(exc))}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    return loaded


def load_config(
    model: type[M],
    *,
    yaml_path: Path | None,
    env_prefix: str,
    flags: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build a validated config: defaults < YAML file < environment < flags."""
    return load_config_with_origins(model, yaml_path=yaml_path, env_prefix=env_prefix,
                                    flags=flags, environ=environ)[0]


def load_config_with_origins(
    model: type[M],
    *,
    yaml_path: Path | None,
    env_prefix: str,
    flags: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[M, Origins]:
    """``load_config``, plus where each option came from (for later error messages)."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = _read_yaml(yaml_path) if yaml_path is not None else {}
    index = _leaf_index(model)
    origins = Origins(yaml_path=yaml_path)
    for leaf, (path, info) in index.items():
        if yaml_path is not None and _has_path(tree, path):
            origins.by_leaf[leaf] = str(yaml_path)
        if yaml_only(info.annotation):
            continue
        env_name = f"{env_prefix}_{leaf.upper()}"
        env_value = environ.get(env_name)
        if env_value is not None:
            _set_path(tree, path, _convert(env_value, info))
            origins.by_leaf[leaf] = f"environment variable {env_name}"
        flag_value = getattr(flags, f"cfg__{leaf}", None) if flags is not None else None
        if flag_value is not None:
            _set_path(tree, path, _convert(flag_value, info))
            origins.by_leaf[leaf] = f"flag {flag_name(leaf)}"
    try:
        return model.model_validate(tree), origins
    except ValidationError as exc:
        problems = "; ".join(_describe(err, index, origins) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _describe(err: Any, index: Mapping[str, Any], origins: Origins) -> str:
    """One validation error: the option, its value and source, and pydantic's reason."""
    names = [str(p) for p in err["loc"] if isinstance(p, str)]
    message = str(err["msg"]).removeprefix("Value error, ")
    if names and names[-1] in index:
        leaf = names[-1]
        value = err.get("input")
        shown = f" = {value!r}" if isinstance(value, str | int | float) else ""
        return f"{'.'.join(names)}{shown} (from {origins.of(leaf)}): {message}"
    if names and err["type"] == "extra_forbidden":
        source = origins.yaml_path or "the configuration"
        return f"{'.'.join(names)} (in {source}): unknown option"
    # A check across options (a model validator): name where each one mentioned came from.
    mentioned = [leaf for leaf in index if re.search(rf"\b{leaf}\b", message)]
    sources = "; ".join(f"{leaf} from {origins.of(leaf)}" for leaf in mentioned)
    where = ".".join(names)
    return f"{where + ': ' if where else ''}{message}{f' ({sources})' if sources else ''}"
