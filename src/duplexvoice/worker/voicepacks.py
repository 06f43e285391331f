"""Voice packs: one folder per model, described by ``metadata.yaml``.

Layout (see the README, "Voice packs")::

    voicepacks/<family>/<model_id>/metadata.yaml
                                  <model files>       (or a pointer into a package)
                                  ref/seed.wav        (optional, cloning families)

Packs are discovered at start and on RELOAD. A pack that does not validate is
reported and skipped; it never stops the worker.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

MODEL_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)+$"


class PackCapabilities(BaseModel):
    """The Capabilities fields of WIRE §2 that describe a voice."""

    model_config = ConfigDict(extra="ignore")

    streaming: bool = True
    zero_shot: bool = False
    lora: bool = False
    cpu_ok: bool = True
    emotive_zero_prompt: bool = False


class FileRef(BaseModel):
    """A model file: ``path`` inside the pack folder, or inside an installed ``package``."""

    model_config = ConfigDict(extra="forbid")

    path: str
    package: str | None = None


class VoicePackMetadata(BaseModel):
    """``metadata.yaml``. Unknown keys are ignored so newer packs load in older workers."""

    model_config = ConfigDict(extra="ignore")

    model_id: str = Field(pattern=MODEL_ID_PATTERN, description="<family>-<language>-<variant>")
    name: str
    family: str
    version: str
    languages: list[str] = Field(min_length=1)
    capabilities: PackCapabilities = Field(default_factory=PackCapabilities)
    description: str = ""
    audio: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    performance: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    license: str = ""
    source_url: str = ""
    files: dict[str, FileRef] = Field(
        default_factory=dict, description="named model files, e.g. model, config"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="family-specific settings (e.g. espeak voice name)"
    )
    base_model: str | None = Field(
        default=None,
        pattern=MODEL_ID_PATTERN,
        description="a LoRA voice: the model_id of the resident model its adapter goes over",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # YAML reads `version: 1.0` as a float; a version is text.
        return str(value) if isinstance(value, int | float) else value

    @field_validator("files", mode="before")
    @classmethod
    def _file_shorthand(cls, value: object) -> object:
        # `model: voice.onnx` is shorthand for `model: {path: voice.onnx}`.
        if isinstance(value, Mapping):
            return {k: ({"path": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value


class VoicePackError(Exception):
    """A voice pack is invalid or one of its files cannot be found."""


@dataclass(frozen=True)
class VoicePack:
    """A validated pack and the folder it lives in."""

    metadata: VoicePackMetadata
    root: Path

    @property
    def model_id(self) -> str:
        return self.metadata.model_id

    @property
    def family(self) -> str:
        return self.metadata.family

    def file(self, name: str) -> Path | None:
        """The absolute path of the named file, or None if the pack names none."""
        ref = self.metadata.files.get(name)
        if ref is None:
            return None
        return resolve_file(ref, self.root)


def resolve_file(ref: FileRef, root: Path) -> Path:
    """Find a file in the pack folder, or inside an installed package."""
    if ref.package is None:
        base = root
    else:
        spec = importlib.util.find_spec(ref.package)
        if spec is None or not spec.submodule_search_locations:
            raise VoicePackError(f"package {ref.package!r} is not installed")
        base = Path(next(iter(spec.submodule_search_locations)))
    path = (base / ref.path).resolve()
    if not path.is_file():
        raise VoicePackError(f"file {ref.path!r} not found in {base}")
    return path


def load_pack(metadata_file: Path, known_families: Iterable[str]) -> VoicePack:
    """Read and validate one pack; raise :class:`VoicePackError` with the reason."""
    try:
        raw = yaml.safe_load(metadata_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise VoicePackError(f"cannot read {metadata_file}: {exc}") from exc
    if not isinstance(raw, dict):
        raise VoicePackError(f"{metadata_file}: expected a mapping at top level")
    try:
        meta = VoicePackMetadata.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise VoicePackError(f"{metadata_file}: {problems}") from exc
    families = set(known_families)
    if meta.family not in families:
        raise VoicePackError(
            f"{metadata_file}: unknown family {meta.family!r} (known: {sorted(families)})"
        )
    pack = VoicePack(meta, metadata_file.parent.resolve())
    for name in meta.files:
        try:
            pack.file(name)
        except VoicePackError as exc:
            raise VoicePackError(f"{metadata_file}: files.{name}: {exc}") from exc
    return pack


@dataclass(frozen=True)
class ScanResult:
    packs: dict[str, VoicePack]
    errors: list[str]


def scan_voicepacks(dirs: Iterable[Path], known_families: Iterable[str]) -> ScanResult:
    """Find every ``metadata.yaml`` under ``dirs``; later dirs override earlier ones."""
    families = tuple(known_families)
    packs: dict[str, VoicePack] = {}
    errors: list[str] = []
    for root in dirs:
        if not root.is_dir():
            errors.append(f"voice pack folder {root} does not exist")
            continue
        for metadata_file in sorted(root.glob("**/metadata.yaml")):
            try:
                pack = load_pack(metadata_file, families)
            except VoicePackError as exc:
                errors.append(str(exc))
                continue
            packs[pack.model_id] = pack
    for message in errors:
        log.warning("voice pack skipped: %s", message)
    return ScanResult(packs, errors)
