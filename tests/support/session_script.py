"""Scripting the session machine in unit tests: a fake-clock driver and readers of
the actions it returns."""

from __future__ import annotations

from typing import Any

from duplexvoice.orchestrator.sessions.events import (
    Action,
    Connected,
    ControlReceived,
    Event,
    Send,
    SendAudio,
    ServerShutdown,
    TextReceived,
    WorkerFrame,
)
from duplexvoice.orchestrator.sessions.machine import SessionConfig, SessionMachine, State
from duplexvoice.orchestrator.sessions.playout import PlayoutConfig
from duplexvoice.wire.messages import Command

PCM = b"\x01\x00" * 960
CFG = SessionConfig("s1", idle_timeout_s=30.0, max_queued_utterances=2, max_pending_chars=100)
PAUSE, RESUME, STOP = Command.PAUSE, Command.RESUME, Command.STOP


def cfg(**playout: Any) -> SessionConfig:
    return SessionConfig("s1", playout=PlayoutConfig(**playout))


class Driver:
    """Feeds events at a fake time and records every action."""

    def __init__(self, config: SessionConfig = CFG) -> None:
        self.now = 0.0
        self.m = SessionMachine(config, self.now)
        self.log: list[Action] = []

    def __call__(self, event: Event, at: float | None = None) -> list[Action]:
        if at is not None:
            self.now = at
        out = self.m.handle(event, self.now)
        self.log.extend(out)
        return out

    def frames(self, uid: int, n: int) -> list[Action]:
        return [a for _ in range(n) for a in self(WorkerFrame(uid, PCM))]


def msgs(actions: list[Action], kind: str | None = None) -> list[dict[str, Any]]:
    out = [a.message.to_wire() for a in actions if isinstance(a, Send)]
    return [m for m in out if kind is None or m["type"] == kind]


def audio(actions: list[Action]) -> list[SendAudio]:
    return [a for a in actions if isinstance(a, SendAudio)]


def ends(actions: list[Action]) -> list[tuple[int, str, int]]:
    return [(m["utterance_id"], m["reason"], m["frames"]) for m in msgs(actions, "utterance_end")]


def errors(actions: list[Action]) -> list[str]:
    return [m["code"] for m in msgs(actions, "error")]


def states(actions: list[Action]) -> list[str]:
    return [m["state"] for m in msgs(actions, "state")]


def in_state(state: State, config: SessionConfig = CFG) -> Driver:
    """A driver whose machine rests in ``state`` (ERROR is transient, never at rest)."""
    d = Driver(config)
    if state is State.INITIALIZING:
        return d
    d(Connected())
    if state in (State.SPEAKING, State.PAUSED):
        d(TextReceived("hello"))
        d.frames(1, 2)
    if state is State.PAUSED:
        d(ControlReceived(PAUSE))
    if state is State.CLOSED:
        d(ServerShutdown())
    assert d.m.state is state
    return d
