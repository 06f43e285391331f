"""Typed configuration: one pydantic model per component, read from YAML, then
environment variables, then command-line flags (later wins).

Every leaf option of a config model gets, from the model itself, an environment
variable ``<PREFIX>_<LEAF>`` and a flag ``--<leaf>`` (underscores become dashes), so
the option list exists once. Leaf names are unique within a model tree. Lists are
given comma-separated on the command line and in the environment.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """The configuration is invalid; the message says which option and why."""


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_list(annotation: object) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, tuple)


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


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add ``--<leaf>`` for every option; values stay strings until validation."""
    group = parser.add_argument_group(f"{model.__name__} options (also settable in YAML/env)")
    for leaf, (_path, info) in _leaf_index(model).items():
        help_text = (info.description or "").replace("%", "%%")
        group.add_argument(
            "--" + leaf.replace("_", "-"),
            dest=f"cfg__{leaf}",
            default=None,
            metavar="VALUE",
            help=f"{help_text} (default: {info.get_default(call_default_factory=True)!r})",
        )


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _convert(raw: str, info: Any) -> object:
    if _is_list(info.annotation):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if raw == "" and type(None) in typing.get_args(info.annotation):
        return None
    return raw


def load_config(
    model: type[M],
    *,
    yaml_path: Path | None,
    env_prefix: str,
    flags: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build a validated config: defaults < YAML file < environment < flags."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {yaml_path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping at top level")
        tree = loaded
    for leaf, (path, info) in _leaf_index(model).items():
        env_value = environ.get(f"{env_prefix}_{leaf.upper()}")
        if env_value is not None:
            _set_path(tree, path, _convert(env_value, info))
        flag_value = getattr(flags, f"cfg__{leaf}", None) if flags is not None else None
        if flag_value is not None:
            _set_path(tree, path, _convert(flag_value, info))
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
