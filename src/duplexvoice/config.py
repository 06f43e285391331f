"""Typed configuration: one pydantic model per component, read from YAML, then
environment variables, then command-line flags (later wins).

Every leaf option of a config model gets, from the model itself, a flat name, an
environment variable ``<PREFIX>_<NAME>`` and a flag ``--<name>`` (underscores become
dashes), so the option list exists once. A nested model (or pydantic dataclass) is a
section of its parent: its leaves keep their own names (the worker's ``models``), or,
when the field says ``json_schema_extra={"option_prefix": "vad"}``, are named
``vad_<leaf>`` (the orchestrator's ``conversation.vad.threshold`` is
``--vad-threshold``). Flat names are unique within a model tree. Lists are given
comma-separated on the command line and in the environment; ``none`` (or an empty
value) is the empty list, or no value for an optional option. Options whose values are
mappings (e.g. the orchestrator's ``routing_modes``) are YAML-only.

Old names: a model may map the names its options had before they moved into a
section (``old_names``, a class variable: old name -> new dotted path below the
model). The old flag, environment variable and YAML key set the new option; the help
mentions the old flag. Sources keep their order (a flag beats an environment variable
whatever name each uses); one source giving an option under two names with two
different values is an error.

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
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass

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
    """Where each option's value came from: option name -> a phrase naming the source."""

    by_leaf: dict[str, str] = field(default_factory=dict)
    yaml_path: Path | None = None

    def of(self, name: str) -> str:
        return self.by_leaf.get(name, "default")

    def label(self, name: str) -> str:
        """``port (from flag --port)``: the option and its source, for an error line."""
        return f"{name} (from {self.of(name)})"


def one_line(text: str) -> str:
    """Error text for a one-line report (library messages may span lines)."""
    return " ".join(text.split())


# -- the option tree ------------------------------------------------------------------


def _is_model(annotation: object) -> bool:
    """A section: a pydantic model, or a pydantic dataclass (fields read faster)."""
    return isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or is_pydantic_dataclass(annotation))


def _fields(model: type) -> dict[str, Any]:
    if is_pydantic_dataclass(model):
        return dict(model.__pydantic_fields__)
    assert issubclass(model, BaseModel)
    return dict(model.model_fields)


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
    for name, info in _fields(model).items():
        if _is_model(info.annotation):
            assert isinstance(info.annotation, type)
            yield from iter_leaves(info.annotation, (*prefix, name))
        else:
            yield (*prefix, name), info


@dataclass(frozen=True)
class Option:
    """One settable leaf: its flat ``name`` (flag ``--name``, variable
    ``<PREFIX>_NAME``), its ``path`` in the model tree, its field, and the old names
    that still set it: ``old_names`` as flags and variables, ``old_paths`` as YAML keys."""

    name: str
    path: tuple[str, ...]
    info: Any
    old_names: tuple[str, ...] = ()
    old_paths: tuple[tuple[str, ...], ...] = ()

    @property
    def key(self) -> str:
        """The YAML key, dotted: ``conversation.turns.end_of_turn_ms``."""
        return ".".join(self.path)


def _section_prefix(info: Any) -> str:
    extra = info.json_schema_extra
    prefix = extra.get("option_prefix", "") if isinstance(extra, dict) else ""
    return f"{prefix}_" if isinstance(prefix, str) and prefix else ""


def _walk(model: type, path: tuple[str, ...], prefix: str,
          found: list[tuple[str, tuple[str, ...], Any]],
          old: list[tuple[str, tuple[str, ...], tuple[str, ...]]]) -> None:
    """Collect (name, path, info) of every leaf and (old name, old path, new path) of
    every old name, depth first."""
    for name, info in _fields(model).items():
        if _is_model(info.annotation):
            assert isinstance(info.annotation, type)
            _walk(info.annotation, (*path, name), prefix + _section_prefix(info), found, old)
        else:
            found.append((prefix + name, (*path, name), info))
    renamed: Mapping[str, str] = getattr(model, "old_names", {})
    for old_name, new_path in renamed.items():
        old.append((prefix + old_name, (*path, old_name), (*path, *new_path.split("."))))


def options(model: type[BaseModel]) -> dict[str, Option]:
    """Every option of a model tree by its flat name, with its old names."""
    found: list[tuple[str, tuple[str, ...], Any]] = []
    old: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
    _walk(model, (), "", found, old)
    seen = [name for name, _path, _info in found]
    if twice := next((name for name in seen if seen.count(name) > 1), None):
        raise ConfigError(f"option name {twice!r} is not unique in {model.__name__}")
    by_path = {path: name for name, path, _info in found}
    old_names: dict[str, list[str]] = {name: [] for name in seen}
    old_paths: dict[str, list[tuple[str, ...]]] = {name: [] for name in seen}
    for old_name, old_path, new_path in old:
        target = by_path.get(new_path)
        if target is None:
            raise ConfigError(f"old name {old_name!r} of {model.__name__}: no option "
                              f"{'.'.join(new_path)}")
        old_paths[target].append(old_path)
        if old_name == target:
            continue  # the flag and the variable kept their name: only the YAML key moved
        if old_name in old_names or any(old_name in names for names in old_names.values()):
            raise ConfigError(f"old name {old_name!r} is not unique in {model.__name__}")
        old_names[target].append(old_name)
    return {name: Option(name, path, info, tuple(old_names[name]), tuple(old_paths[name]))
            for name, path, info in found}


def flag_name(leaf: str) -> str:
    return "--" + leaf.replace("_", "-")


# -- flags and their help ---------------------------------------------------------------

_LIST_ITEMS = {"_dirs": "DIR", "_ids": "ID", "_keys": "KEY", "_origins": "ORIGIN"}
_TEXT_NAMES = {"name": "NAME", "device": "DEVICE", "_prefix": "PREFIX", "_mode": "MODE",
               "_voice": "ID", "_id": "ID", "_url": "URL", "host": "HOST", "_path": "PATH",
               "_key": "KEY"}
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
        return "S" if timed else "MS" if leaf.endswith("_ms") else "NUMBER"
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



class HelpFormatter(argparse.HelpFormatter):
    """Help lines that never break a flag's name at a hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], *, prefix: str = "",
              description: str = "") -> None:
    """Add ``--<prefix><name>`` for every option, and its old names hidden (the help of
    the option names them); values stay strings until validation. ``prefix`` (e.g.
    ``worker_``) lets one command take the options of several services (``up``): give
    the same ``flag_prefix`` to :func:`load_config_with_origins`."""
    opts = options(model)
    only_yaml = [name for name, opt in opts.items() if yaml_only(opt.info.annotation)]
    description = description or "Also settable in the YAML file (--config) and the environment."
    if only_yaml:
        description += f" YAML only: {', '.join(only_yaml)}."
    group = parser.add_argument_group(f"{model.__name__} options", description)
    for name, opt in opts.items():
        if name in only_yaml:
            continue
        info, value_name = opt.info, metavar(opt.path[-1], opt.info)
        help_text = (info.description or "").rstrip(".")
        notes = []
        if "default:" not in help_text:  # else the description explains the default
            notes.append(f"default: {show_value(info.get_default(call_default_factory=True))}")
        if opt.old_names:
            notes.append(f"old name: {', '.join(flag_name(old) for old in opt.old_names)}")
        if notes:
            help_text += f" ({'; '.join(notes)})"
        group.add_argument(flag_name(prefix + name), dest=f"cfg__{prefix}{name}", default=None,
                           metavar=value_name, help=help_text.replace("%", "%%"))
        for old in opt.old_names:
            group.add_argument(flag_name(prefix + old), dest=f"cfg__{prefix}{old}",
                               default=None, metavar=value_name, help=argparse.SUPPRESS)


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


_MISSING = object()


def _get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> object:
    """The value at ``path``, or ``_MISSING``."""
    node: object = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _pop_path(tree: dict[str, Any], path: tuple[str, ...]) -> None:
    parent = _get_path(tree, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def _one_value(opt: Option, given: Sequence[tuple[str, object]]) -> tuple[str, object] | None:
    """(where, value) of the first name one source gives an option under; an error
    if two of its names there disagree."""
    if len(given) > 1 and any(value != given[0][1] for _where, value in given[1:]):
        wheres = " and as ".join(where for where, _value in given)
        raise ConfigError(f"{opt.key}: given twice with different values, as {wheres} "
                          "(an old name); give one")
    return given[0] if given else None


def _convert(raw: str, info: Any) -> object:
    if _is_list(info.annotation):
        if raw.strip().lower() in NONE_WORDS:
            return []
        return [part.strip() for part in raw.split(",") if part.strip()]
    if _is_optional(info.annotation) and raw.strip().lower() in NONE_WORDS:
        return None
    kind = _members(info.annotation)[0]
    if typing.get_origin(kind) is typing.Literal and re.fullmatch(r"\s*-?\d+\s*", raw) and all(
            type(a) is int for a in typing.get_args(kind)):
        return int(raw)  # a choice of numbers (pydantic takes no text for them)
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
    flag_prefix: str = "",
) -> M:
    """Build a validated config: defaults < YAML file < environment < flags."""
    return load_config_with_origins(model, yaml_path=yaml_path, env_prefix=env_prefix,
                                    flags=flags, environ=environ, flag_prefix=flag_prefix)[0]


def load_config_with_origins(
    model: type[M],
    *,
    yaml_path: Path | None,
    env_prefix: str,
    flags: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    flag_prefix: str = "",
) -> tuple[M, Origins]:
    """``load_config``, plus where each option came from (for later error messages).
    ``flag_prefix``: the flags were added with :func:`add_flags`' ``prefix``."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = _read_yaml(yaml_path) if yaml_path is not None else {}
    opts = options(model)
    origins = Origins(yaml_path=yaml_path)
    for name, opt in opts.items():
        if yaml_path is not None:
            in_yaml = [(p, v) for p in (opt.path, *opt.old_paths)
                       if (v := _get_path(tree, p)) is not _MISSING]
            picked = _one_value(opt, [(f"{yaml_path} key {'.'.join(p)}", v) for p, v in in_yaml])
            if picked is not None:
                for old_path in opt.old_paths:
                    _pop_path(tree, old_path)
                _set_path(tree, opt.path, picked[1])
                old_key = in_yaml[0][0] != opt.path
                origins.by_leaf[name] = picked[0] if old_key else str(yaml_path)
        if yaml_only(opt.info.annotation):
            continue
        names = (name, *opt.old_names)
        in_env = [(f"environment variable {env_prefix}_{n.upper()}", v) for n in names
                  if (v := environ.get(f"{env_prefix}_{n.upper()}")) is not None]
        in_flags = [(f"flag {flag_name(flag_prefix + n)}", v) for n in names
                    if flags is not None
                    and (v := getattr(flags, f"cfg__{flag_prefix}{n}", None)) is not None]
        for given in (in_env, in_flags):  # the flags last: they win
            if (picked := _one_value(opt, given)) is not None:
                _set_path(tree, opt.path, _convert(str(picked[1]), opt.info))
                origins.by_leaf[name] = picked[0]
    try:
        return model.model_validate(tree), origins
    except ValidationError as exc:
        problems = "; ".join(_describe(err, opts, origins) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _is_secret(info: Any) -> bool:
    return any(isinstance(a, type) and issubclass(a, SecretStr) for a in _members(info.annotation))


def _describe(err: Any, opts: Mapping[str, Option], origins: Origins) -> str:
    """One validation error: the option, its value and source, and pydantic's reason."""
    names = tuple(str(p) for p in err["loc"] if isinstance(p, str))
    message = str(err["msg"]).removeprefix("Value error, ")
    by_path = {opt.path: opt for opt in opts.values()}
    if (opt := by_path.get(names)) is not None:
        value = err.get("input")
        shown = (f" = {value!r}" if isinstance(value, str | int | float)
                 and not _is_secret(opt.info) else "")
        return f"{opt.key}{shown} (from {origins.of(opt.name)}): {message}"
    if names and err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        source = origins.yaml_path or "the configuration"
        return f"{'.'.join(names)} (in {source}): unknown option"
    # A check across options (a model validator): name where each one mentioned came
    # from, among the options below the model that made the check (the nearest one of
    # a name).
    nearest: dict[str, Option] = {}
    for opt in sorted(opts.values(), key=lambda opt: len(opt.path)):
        if opt.path[:len(names)] == names and re.search(rf"\b{opt.path[-1]}\b", message):
            nearest.setdefault(opt.path[-1], opt)
    mentioned = list(nearest.values())
    sources = "; ".join(f"{opt.name} from {origins.of(opt.name)}" for opt in mentioned)
    where = ".".join(names)
    return f"{where + ': ' if where else ''}{message}{f' ({sources})' if sources else ''}"
