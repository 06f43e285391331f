"""Worker configuration: ``configs/worker.yaml``, ``DUPLEXVOICE_WORKER_*`` environment
variables and ``duplexvoice worker --<option>`` flags, all from this one model.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from duplexvoice.worker.model_policy import ModelManagerConfig
from duplexvoice.worker.textchunk import ChunkingConfig

ENV_PREFIX = "DUPLEXVOICE_WORKER"

# The repository's voicepacks/ (editable install); a user's packs go in their own dirs.
BUNDLED_VOICEPACKS = Path(__file__).resolve().parents[3] / "voicepacks"


class WorkerConfig(BaseModel):
    """Every option of one TTS worker process."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default_factory=lambda: f"tts-worker-{socket.gethostname()}",
        min_length=1,
        max_length=128,
        description="unique worker name, the registry key is <prefix><name>",
    )
    host: str = Field("127.0.0.1", description="address the gRPC server binds to (0.0.0.0: all)")
    advertise_host: str | None = Field(
        None, description="host written in the registry record (default: host, or the hostname)"
    )
    port: int = Field(7001, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?|auto)$",
        description="cpu, cuda, cuda:N or auto; use CUDA_VISIBLE_DEVICES to give a worker its GPU",
    )
    voicepack_dirs: list[Path] = Field(
        default_factory=lambda: [BUNDLED_VOICEPACKS],
        description="folders scanned for <family>/<model_id>/metadata.yaml",
    )
    max_sessions: int = Field(
        32, ge=1, description="concurrent sessions; more get RESOURCE_EXHAUSTED"
    )
    max_text_chars: int = Field(
        5000, ge=1, description="longest text of one utterance (one Synthesize stream)"
    )
    synthesis_threads: int = Field(
        8, ge=1, description="threads running model inference (shared by all sessions)"
    )
    synthesis_niceness: int = Field(
        5, ge=0, le=19,
        description="how much lower model threads' CPU priority is than I/O's (0: same)",
    )
    frame_buffer_frames: int = Field(
        250, ge=1, description="frames (20 ms each) a session may synthesize ahead of its sender"
    )
    session_idle_timeout_s: float = Field(
        600.0, gt=0, description="a session with no stream for this long is ended (dead clients)"
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="on SIGTERM, how long active streams may finish"
    )
    first_max_chars: int = Field(
        60, ge=10, description="a first sentence longer than this is split at a clause"
    )
    first_min_chars: int = Field(20, ge=1, description="shortest first chunk when splitting")
    max_chunk_chars: int = Field(300, ge=20, description="longest text chunk given to a model")
    redis_url: str | None = Field(
        None, description="redis://host:port/db to register in; none: standalone"
    )
    registry_key_prefix: str = Field("worker:", description="registry key prefix")
    heartbeat_interval_s: float = Field(10.0, gt=0, description="registry refresh interval")
    registry_ttl_s: float = Field(30.0, gt=0, description="registry record expiry")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    models: ModelManagerConfig = Field(default_factory=ModelManagerConfig)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _chunking_consistent(self) -> WorkerConfig:
        self.chunking()  # raises ValueError naming the inconsistent options
        return self

    def chunking(self) -> ChunkingConfig:
        return ChunkingConfig(
            first_max_chars=self.first_max_chars,
            first_min_chars=self.first_min_chars,
            max_chunk_chars=self.max_chunk_chars,
        )

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> WorkerConfig:
        if self.registry_ttl_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"registry_ttl_s ({self.registry_ttl_s}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s}), or the record expires between heartbeats"
            )
        return self

    def advertised_addr(self, port: int) -> str:
        host = self.advertise_host or self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"grpc://{host}:{port}"
