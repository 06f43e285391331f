"""The TTS families this worker can run, by name, and helpers every adapter shares.

The registry is an explicit mapping (no registration by import side effect): adding a
family is adding one file in this folder and one line in :data:`ADAPTERS`.

The GPU families (``csm``, ``xtts``, ``cosyvoice``) need PyTorch and large packages
that conflict with each other, so each lives in its own virtual environment (``make
worker-env FAMILY=<family>``) and is imported only when a voice of it loads. In an
environment without them the family is still known (its packs are listed), and
loading one of its voices raises :class:`FamilyNotInstalledError` naming the command
that installs it.

Errors: every failure to load or synthesize is an :class:`AdapterError` (from
:mod:`.base`); adapters translate engine exceptions (onnxruntime, libespeak-ng, bad
``params``) into it at their boundary. None is retryable as is: the same pack and
text fail the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from duplexvoice.worker.adapters.base import AdapterError, TTSAdapter
from duplexvoice.worker.adapters.espeak import EspeakAdapter
from duplexvoice.worker.adapters.mock import MockAdapter
from duplexvoice.worker.adapters.packs import capabilities_from_pack, parse_params
from duplexvoice.worker.adapters.piper import PiperAdapter

__all__ = [
    "ADAPTERS",
    "TORCH_FAMILIES",
    "AdapterError",
    "EspeakAdapter",
    "FamilyNotInstalledError",
    "MockAdapter",
    "PiperAdapter",
    "adapter_for",
    "capabilities_from_pack",
    "family_installed",
    "install_hint",
    "parse_params",
]


class FamilyNotInstalledError(AdapterError):
    """A family's packages are missing from this environment."""


# Family -> (module, class) of the families installed as their own environments.
TORCH_FAMILIES: Mapping[str, tuple[str, str]] = {
    "csm": ("duplexvoice.worker.adapters.csm", "CsmAdapter"),
    "xtts": ("duplexvoice.worker.adapters.xtts", "XttsAdapter"),
    "cosyvoice": ("duplexvoice.worker.adapters.cosyvoice", "CosyVoiceAdapter"),
}


def install_hint(family: str) -> str:
    """The command that installs a family's environment, and how to run its worker."""
    return (
        f"install it with `make worker-env FAMILY={family}` and run the worker from that "
        f"environment (.venv-{family}/bin/duplexvoice worker ...)"
    )


class _Families(Mapping[str, type[TTSAdapter]]):
    """Every family we ship; the torch families are imported on first use."""

    def __init__(self, builtin: Mapping[str, type[TTSAdapter]]) -> None:
        self._builtin = dict(builtin)
        self._loaded: dict[str, type[TTSAdapter]] = {}

    def __getitem__(self, family: str) -> type[TTSAdapter]:
        if family in self._builtin:
            return self._builtin[family]
        if family in self._loaded:
            return self._loaded[family]
        module_name, class_name = TORCH_FAMILIES[family]  # KeyError: unknown family
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise FamilyNotInstalledError(
                f"TTS family {family!r} needs packages this environment lacks "
                f"(no module {missing!r}): {install_hint(family)}"
            ) from exc
        except OSError as exc:  # e.g. a CUDA library torch links against is missing
            raise FamilyNotInstalledError(
                f"TTS family {family!r}: its packages are installed but do not load "
                f"({exc}): reinstall with `make worker-env FAMILY={family}`"
            ) from exc
        cls: type[TTSAdapter] = getattr(module, class_name)
        self._loaded[family] = cls
        return cls

    def __contains__(self, family: object) -> bool:
        # By name only: asking whether a family exists must not import torch.
        return family in self._builtin or family in TORCH_FAMILIES

    def __iter__(self) -> Iterator[str]:
        yield from self._builtin
        yield from TORCH_FAMILIES

    def __len__(self) -> int:
        return len(self._builtin) + len(TORCH_FAMILIES)


ADAPTERS: Mapping[str, type[TTSAdapter]] = _Families(
    {"mock": MockAdapter, "piper": PiperAdapter, "espeak": EspeakAdapter}
)


def family_installed(family: str) -> bool:
    """Whether ``family``'s adapter imports in this environment."""
    try:
        ADAPTERS[family]
    except FamilyNotInstalledError:
        return False
    return True

def adapter_for(
    family: str, adapters: Mapping[str, type[TTSAdapter]] = ADAPTERS
) -> type[TTSAdapter]:
    """The adapter class of a family in ``adapters`` (default: every family we ship);
    :class:`AdapterError` naming the known ones if none."""
    try:
        return adapters[family]
    except KeyError:
        raise AdapterError(
            f"unknown TTS family {family!r} (known: {', '.join(sorted(adapters))})"
        ) from None
