"""The TTS families this worker can run, by name, and helpers every adapter shares.

The registry is an explicit mapping (no registration by import side effect): adding a
family is adding one file in this folder and one line in :data:`ADAPTERS`.

Errors: every failure to load or synthesize is an :class:`AdapterError` (from
:mod:`.base`); adapters translate engine exceptions (onnxruntime, libespeak-ng, bad
``params``) into it at their boundary. None is retryable as is: the same pack and
text fail the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from duplexvoice.worker.adapters.base import AdapterError, Capabilities, TTSAdapter
from duplexvoice.worker.adapters.espeak import EspeakAdapter
from duplexvoice.worker.adapters.mock import MockAdapter
from duplexvoice.worker.adapters.piper import PiperAdapter

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

__all__ = [
    "ADAPTERS",
    "AdapterError",
    "EspeakAdapter",
    "MockAdapter",
    "PiperAdapter",
    "adapter_for",
    "capabilities_from_pack",
    "parse_params",
]

ADAPTERS: Mapping[str, type[TTSAdapter]] = {
    "mock": MockAdapter,
    "piper": PiperAdapter,
    "espeak": EspeakAdapter,
}

P = TypeVar("P", bound=BaseModel)


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


def capabilities_from_pack(pack: VoicePack) -> Capabilities:
    """What a voice declares in its ``metadata.yaml``: one source for every family."""
    caps = pack.metadata.capabilities
    return Capabilities(
        streaming=caps.streaming,
        zero_shot=caps.zero_shot,
        lora=caps.lora,
        cpu_ok=caps.cpu_ok,
        languages=tuple(pack.metadata.languages),
        emotive_zero_prompt=caps.emotive_zero_prompt,
    )


def parse_params(pack: VoicePack, model: type[P]) -> P:
    """Validate a pack's family-specific ``params`` against the family's model.

    Param models forbid unknown keys, so a typo in ``metadata.yaml`` is reported at
    load time instead of silently falling back to a default.
    """
    try:
        return model.model_validate(pack.metadata.params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
        )
        raise AdapterError(f"voice pack {pack.model_id}: params: {problems}") from exc
