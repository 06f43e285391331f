"""What ``duplexvoice up`` runs, configured: every option of the orchestrator and of each
child service, by flag, environment variable and YAML file, derived from their config
models (:mod:`duplexvoice.config`), never listed by hand.

- The orchestrator's options keep their names: ``--port``, ``--api-keys``,
  ``--reply-engine``, ``DUPLEXVOICE_ORCH_API_KEYS``; its YAML file is ``--config``.
- A child service's options carry its name in front of the flag: the worker's
  ``--port`` is ``--worker-port``, its YAML file ``--worker-config``; its environment
  variables are its own (``DUPLEXVOICE_WORKER_*``): read here (so a bad value stops
  ``up`` before anything starts) and inherited by the child. What is given as a flag
  goes to the child as its own flag; ``up`` adds what it decides (port, name, ...).
- ``up``'s own defaults, where they differ from the services': log level WARNING (the
  worker's follows the orchestrator's), worker name ``tts-worker-0``.
- Refused (exit 2, one line) because ``up`` decides it: the orchestrator's ``workers``
  (``up`` gives it its own worker); a worker ``redis_url`` other than the
  orchestrator's (both use one Redis: ``--redis-url``).
- Older spellings of ``up``'s: ``--voice`` (``--default-voice``, checked against the
  worker's voices), ``--redis`` (``--redis-url``).

A new child service is one more :class:`ChildOptions` in :data:`CHILDREN` plus its
wiring in :mod:`duplexvoice.up`.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from duplexvoice.config import (
    ConfigError,
    Origins,
    add_flags,
    flag_name,
    load_config_with_origins,
    options,
    show_value,
)

if TYPE_CHECKING:
    from duplexvoice.orchestrator.config import OrchestratorConfig
    from duplexvoice.worker.config import WorkerConfig

UP_LOG_LEVEL = "WARNING"
WORKER_NAME = "tts-worker-0"


class UpError(Exception):
    """A reason not to start, in one line; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ChildOptions:
    """A service ``up`` runs as a child process: its flags are ``--<name>-<option>``."""

    name: str  # "worker"
    command: str  # its subcommand, for the help: ``duplexvoice worker``
    config: str  # "module:Class" of its config model; the module's ENV_PREFIX names
    # its environment variables
    decided: frozenset[str] = frozenset()  # options up gives it itself (from the resolved config)

    @property
    def prefix(self) -> str:
        return f"{self.name}_"

    def model(self) -> tuple[type[BaseModel], str]:
        """Its config model and environment prefix (imported late: start-up time)."""
        module_name, class_name = self.config.split(":")
        module = importlib.import_module(module_name)
        model: type[BaseModel] = getattr(module, class_name)
        return model, str(module.ENV_PREFIX)


WORKER = ChildOptions("worker", "duplexvoice worker", "duplexvoice.worker.config:WorkerConfig",
                      frozenset({"port", "name", "log_level", "redis_url"}))
CHILDREN: tuple[ChildOptions, ...] = (WORKER,)

# up's own older flags: flag -> the option it sets (the orchestrator's)
ALIASES: Mapping[str, str] = {"--voice": "default_voice", "--redis": "redis_url"}


def _alias_dest(flag: str) -> str:
    return "up__" + flag.removeprefix("--")


def add_up_flags(parser: argparse.ArgumentParser) -> None:
    from duplexvoice.orchestrator.config import ENV_PREFIX, OrchestratorConfig

    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="the orchestrator's YAML file (e.g. configs/orchestrator.yaml)")
    parser.add_argument("--voice", dest=_alias_dest("--voice"), default=None, metavar="ID",
                        help="as --default-voice, checked against the worker's voices "
                        "before the orchestrator starts")
    parser.add_argument("--redis", dest=_alias_dest("--redis"), default=None, metavar="URL",
                        help="as --redis-url: the worker registers in this Redis and the "
                        "orchestrator finds it there")
    add_flags(parser, OrchestratorConfig, description=(
        f"As `duplexvoice orchestrator`: also from its YAML file (--config) and "
        f"{ENV_PREFIX}_<OPTION>. Under up, log_level defaults to {UP_LOG_LEVEL}; "
        "workers is up's own worker (refused if given)."))
    for child in CHILDREN:
        model, env_prefix = child.model()
        flag = flag_name(child.prefix + "config")
        parser.add_argument(flag, dest=f"up__{child.prefix}config", type=Path, default=None,
                            metavar="FILE", help=f"the {child.name}'s YAML file")
        add_flags(parser, model, prefix=child.prefix, description=(
            f"Every option of `{child.command}`, with {child.name}- in front of its flag: "
            f"also from its YAML file ({flag}) and {env_prefix}_<OPTION>. "
            + (f"Under up, worker_name defaults to {WORKER_NAME}, worker_log_level to "
               "the orchestrator's, and worker_redis_url is the orchestrator's "
               "redis_url (another value is refused)." if child is WORKER else "")))


@dataclass
class ChildConfig:
    """One child service's validated config, and the flags to start it with."""

    options: ChildOptions
    config: Any  # its model's instance
    origins: Origins
    args: list[str] = field(default_factory=list)  # flags for the child, --<option>=<value>

    def label(self, name: str) -> str:
        return label(self.origins, name, getattr(self.config, name), self.options.prefix)


@dataclass
class UpPlan:
    """Everything ``up`` needs to start, checked."""

    orchestrator: OrchestratorConfig
    origins: Origins
    children: dict[str, ChildConfig]
    aliases: dict[str, str] = field(default_factory=dict)  # option -> alias flag used

    @property
    def worker(self) -> WorkerConfig:
        config: WorkerConfig = self.children[WORKER.name].config
        return config

    def label(self, name: str) -> str:
        """How to name an orchestrator option and its value in an error line."""
        value = getattr(self.orchestrator, name)
        if name in self.aliases:
            return f"{self.aliases[name]} {show_value(value)}"
        return label(self.origins, name, value)


def label(origins: Origins, name: str, value: object, prefix: str = "") -> str:
    """``--port 8080`` for a flag as typed; ``port 8080 (from environment variable
    DUPLEXVOICE_ORCH_PORT)`` otherwise."""
    origin = origins.of(name)
    if origin.startswith("flag "):
        return f"{origin.removeprefix('flag ')} {show_value(value)}"
    return f"{prefix}{name} {show_value(value)} (from {origin})"


def plan_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> UpPlan:
    """Load and check every service's config; :class:`UpError` (exit 2) for what up
    cannot take."""
    from duplexvoice.orchestrator.config import ENV_PREFIX, OrchestratorConfig

    environ = os.environ if environ is None else environ
    aliases: dict[str, str] = {}
    for flag, option in ALIASES.items():
        value = getattr(args, _alias_dest(flag), None)
        if value is None:
            continue
        given = getattr(args, f"cfg__{option}", None)
        if given is not None and given != value:
            raise UpError(f"{flag} {value} and {flag_name(option)} {given}: give one", code=2)
        setattr(args, f"cfg__{option}", value)
        aliases[option] = flag
    for dest in ("cfg__log_level", f"cfg__{WORKER.prefix}log_level"):
        if isinstance(getattr(args, dest, None), str):  # as before: --log-level info
            setattr(args, dest, getattr(args, dest).upper())
    try:
        orchestrator, origins = load_config_with_origins(
            OrchestratorConfig, yaml_path=args.config, env_prefix=ENV_PREFIX, flags=args,
            environ=environ)
    except ConfigError as exc:
        raise UpError(str(exc), code=2) from exc
    if origins.of("workers") != "default":
        raise UpError(f"{label(origins, 'workers', orchestrator.workers)}: up runs its own "
                      "worker and gives the orchestrator its address; for other workers run "
                      "`duplexvoice orchestrator --workers ...`", code=2)
    if origins.of("log_level") == "default":
        orchestrator = orchestrator.model_copy(update={"log_level": UP_LOG_LEVEL})
    plan = UpPlan(orchestrator, origins, {}, aliases)
    for child in CHILDREN:
        plan.children[child.name] = _load_child(child, args, environ)
    _settle_worker(plan)
    return plan


def _load_child(child: ChildOptions, args: argparse.Namespace,
                environ: Mapping[str, str]) -> ChildConfig:
    model, env_prefix = child.model()
    yaml_path: Path | None = getattr(args, f"up__{child.prefix}config", None)
    try:
        config, origins = load_config_with_origins(
            model, yaml_path=yaml_path, env_prefix=env_prefix, flags=args, environ=environ,
            flag_prefix=child.prefix)
    except ConfigError as exc:
        raise UpError(f"{child.name}: {exc}", code=2) from exc
    passed = ChildConfig(child, config, origins)
    if yaml_path is not None:
        passed.args.append(f"--config={yaml_path}")
    for name, opt in options(model).items():
        if name in child.decided:
            continue
        for given in (name, *opt.old_names):
            value = getattr(args, f"cfg__{child.prefix}{given}", None)
            if value is not None:
                passed.args.append(f"{flag_name(given)}={value}")
    return passed


def _settle_worker(plan: UpPlan) -> None:
    """What up decides for its worker: its name, log level and Redis."""
    worker = plan.children[WORKER.name]
    config, origins = worker.config, worker.origins
    redis_url = plan.orchestrator.redis_url
    if origins.of("redis_url") != "default" and config.redis_url != redis_url:
        where = (f"the orchestrator's {plan.label('redis_url')}" if redis_url
                 else "no Redis for the orchestrator")
        raise UpError(f"{worker.label('redis_url')}: up gives its worker the orchestrator's "
                      f"Redis ({where}); set --redis-url for both", code=2)
    update: dict[str, object] = {"redis_url": redis_url}
    if origins.of("name") == "default":
        update["name"] = WORKER_NAME
    if origins.of("log_level") == "default":
        update["log_level"] = plan.orchestrator.log_level
    worker.config = config.model_copy(update=update)
    worker.args += [f"--name={worker.config.name}", f"--log-level={worker.config.log_level}"]
    if redis_url:
        worker.args.append(f"--redis-url={redis_url}")
