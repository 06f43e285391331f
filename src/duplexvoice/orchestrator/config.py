"""Orchestrator configuration: ``configs/orchestrator.yaml``, ``DUPLEXVOICE_ORCH_*``
environment variables and ``duplexvoice orchestrator --<option>`` flags, all from this
one model (see :mod:`duplexvoice.config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from duplexvoice.orchestrator.conversation_config import ConversationConfig
from duplexvoice.orchestrator.workers.router import RoutingMode, default_routing_modes

ENV_PREFIX = "DUPLEXVOICE_ORCH"


class OrchestratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="HTTP/WebSocket bind address (0.0.0.0: all)")
    port: int = Field(8080, ge=0, le=65535, description="HTTP/WebSocket port (0: a free one)")
    workers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:7001"],
        description="embedded registry: worker addresses [name=]host:port (ignored with Redis)",
        json_schema_extra={"metavar": "ADDR,..."},
    )
    redis_url: str | None = Field(
        None, description="discover workers in Redis (WIRE §3) instead of the workers list"
    )
    registry_key_prefix: str = Field("worker:", description="Redis key prefix of worker records")
    registry_ttl_s: float = Field(30.0, gt=0, description="ignore records older than this")
    registry_poll_s: float = Field(2.0, gt=0, description="how often the registry is read")
    routing_mode: str = Field("default", description="routing mode used for every session")
    routing_modes: dict[str, RoutingMode] = Field(
        default_factory=default_routing_modes,
        description="named routing modes (YAML only: a mapping, see configs/orchestrator.yaml)",
    )
    default_voice: str = Field(
        "", description="model id for sessions that name none (empty: the worker's default)"
    )
    lead_ms: int = Field(
        100, ge=20, le=2000, description="how far audio sent may run ahead of real time"
    )
    send_quantum_ms: int = Field(
        40, ge=20, le=2000,
        description="audio released to a client at a time (one wake-up and write per "
        "quantum); the client holds between lead - quantum + 20 and lead ms",
    )
    buffer_ms: int = Field(
        1000, ge=100, le=60_000,
        description="audio held per session before it is sent; above it the worker "
        "stream is not read (the worker keeps synthesizing ahead into its own buffer)",
    )
    worker_linger_s: float = Field(
        1.0, ge=0, description="a session gives its worker session back after this long "
        "with nothing to say (a connected, silent client holds no worker capacity)",
    )
    idle_timeout_s: float = Field(
        300.0, gt=0, description="close a session idle (LISTENING, no message) this long"
    )
    max_sessions: int = Field(500, ge=1, description="concurrent WebSocket sessions")
    max_message_bytes: int = Field(
        1_048_576, ge=1024, description="largest WebSocket message accepted"
    )
    max_text_chars: int = Field(5000, ge=1, description="longest text of one text message")
    max_queued_utterances: int = Field(8, ge=0, description="texts waiting behind the current")
    rate_limit_per_s: float = Field(50.0, gt=0, description="client messages per second")
    rate_limit_burst: int = Field(100, ge=1, description="burst above the rate")
    send_timeout_s: float = Field(
        5.0, gt=0, description="a client that reads nothing this long is closed"
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="if set, clients must send Authorization: Bearer KEY or ?api_key=KEY",
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="if set, browser Origins allowed to connect"
    )
    worker_timeout_s: float = Field(
        5.0, gt=0, description="deadline of unary worker calls (StartSession, Control, ...)"
    )
    shutdown_grace_s: float = Field(2.0, ge=0, description="on SIGTERM, time to close sessions")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    conversation: ConversationConfig = Field(
        default_factory=ConversationConfig,
        description="conversation mode: VAD, speech recognition, turn-taking, replies")

    @model_validator(mode="after")
    def _known_mode(self) -> OrchestratorConfig:
        if self.send_quantum_ms > self.lead_ms:
            raise ValueError(f"send_quantum_ms ({self.send_quantum_ms}) must not exceed "
                             f"lead_ms ({self.lead_ms})")
        if self.routing_mode not in self.routing_modes:
            raise ValueError(
                f"routing_mode {self.routing_mode!r} is not one of {sorted(self.routing_modes)}"
            )
        return self

    @property
    def mode(self) -> RoutingMode:
        return self.routing_modes[self.routing_mode]
