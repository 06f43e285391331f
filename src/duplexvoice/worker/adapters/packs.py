"""What every family reads from its voice pack the same way: the capabilities it
declares and its family-specific ``params``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from duplexvoice.worker.adapters.base import AdapterError, Capabilities

if TYPE_CHECKING:
    from duplexvoice.worker.voicepacks import VoicePack

P = TypeVar("P", bound=BaseModel)


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
