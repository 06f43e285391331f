"""``duplexvoice up``'s supervision, without processes: the back-off, the restart
loop over fake processes, and a child's watch on its parent."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest

from duplexvoice import launcher
from duplexvoice.launcher import NotReadyError, describe_exit, parent_to_follow
from duplexvoice.up import Backoff, Supervisor
from tests.support.eventually import eventually_sync

pytestmark = pytest.mark.unit


def test_backoff_doubles_to_its_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=10.0, stable_after_s=30.0)
    assert [backoff.delay(1.0) for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_backoff_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(initial_s=0.5, max_s=10.0, stable_after_s=30.0)
    assert [backoff.delay(1.0) for _ in range(3)] == [0.5, 1, 2]
    assert backoff.delay(30.0) == 0.5  # ran long enough: the crash is news
    assert backoff.delay(29.9) == 1


def test_describe_exit() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


class FakeProcess:
    """A service process that ends when told; ``ready`` says if it gets to ready."""

    def __init__(self, pid: int, ready: bool = True) -> None:
        self.pid = pid
        self.proc: object = object()
        self.addr = ""
        self.ready = ready
        self.code = 0
        self.ended = threading.Event()
        self.terminated = False

    def spawn(self) -> FakeProcess:
        return self

    def wait_ready(self, timeout: float = 120.0) -> FakeProcess:
        if not self.ready:
            self.end(1)
            raise NotReadyError("not ready", "duplexvoice worker: port in use")
        self.addr = "127.0.0.1:7001"
        return self

    def wait(self, timeout: float | None = None) -> int:
        self.ended.wait()
        return self.code

    def end(self, code: int) -> None:
        self.code = code
        self.ended.set()

    def terminate(self, timeout: float = 20.0) -> int:
        self.terminated = True
        self.end(-signal.SIGTERM)
        return self.code

    def last_line(self) -> str:
        return "duplexvoice worker: port in use"


class Factory:
    def __init__(self, *ready: bool) -> None:
        self.plan = list(ready)
        self.made: list[FakeProcess] = []

    def __call__(self) -> Any:
        process = FakeProcess(100 + len(self.made), self.plan.pop(0) if self.plan else True)
        self.made.append(process)
        return process


def supervised(factory: Factory, backoff: Backoff) -> tuple[Supervisor, list[str]]:
    said: list[str] = []
    return Supervisor(factory, say=said.append, backoff=backoff), said


def test_a_process_that_dies_is_restarted_and_each_restart_is_one_line() -> None:
    factory = Factory()
    supervisor, said = supervised(factory, Backoff(initial_s=0.01))
    first = supervisor.start()
    assert first is factory.made[0]
    factory.made[0].end(-signal.SIGKILL)
    eventually_sync(lambda: len(said) == 2, what="exit and ready-again lines")
    assert said[0].startswith("worker (pid 100) exited (killed by SIGKILL) after ")
    assert said[0].endswith("; restart 1 in 0.01 s")
    assert said[1] == "worker ready again on 127.0.0.1:7001 (pid 101)"
    assert supervisor.current is factory.made[1]
    supervisor.stop()
    assert factory.made[1].terminated and len(factory.made) == 2  # stopped, not restarted


def test_a_restart_that_fails_is_reported_and_retried_with_a_longer_wait() -> None:
    factory = Factory(True, False)  # the first restart fails (its port is taken)
    supervisor, said = supervised(factory, Backoff(initial_s=0.01))
    supervisor.start()
    factory.made[0].end(1)
    eventually_sync(lambda: len(said) == 3, what="exit, failed restart, ready again")
    assert said[1] == ("worker failed to start (exit code 1: duplexvoice worker: port in "
                       "use); restart 2 in 0.02 s")
    assert said[2] == "worker ready again on 127.0.0.1:7001 (pid 102)"
    supervisor.stop()


def test_stop_during_the_backoff_starts_nothing() -> None:
    factory = Factory()
    supervisor, said = supervised(factory, Backoff(initial_s=3600.0))
    supervisor.start()
    factory.made[0].end(-signal.SIGKILL)
    eventually_sync(lambda: len(said) == 1, what="the exit line")
    supervisor.stop()  # returns at once: the back-off waits on the stop event
    assert len(factory.made) == 1


def test_a_first_start_that_fails_raises() -> None:
    supervisor, _said = supervised(Factory(False), Backoff())
    with pytest.raises(NotReadyError) as exc:
        supervisor.start()
    assert exc.value.reason == "duplexvoice worker: port in use"


# -- the child's side: exit with the parent -------------------------------------------


def test_parent_to_follow_reads_only_a_pid() -> None:
    assert parent_to_follow({launcher.PARENT_PID_ENV: "4242"}) == 4242
    assert parent_to_follow({launcher.PARENT_PID_ENV: "x"}) is None
    assert parent_to_follow({}) is None


async def test_the_child_stops_when_its_parent_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    parents = iter([4242, 4242, 1])  # reparented to init on the third look
    signals: list[int] = []
    monkeypatch.setattr(launcher.os, "getppid", lambda: next(parents, 1))
    monkeypatch.setattr(launcher, "_set_parent_death_signal", signals.append)
    monkeypatch.setattr(launcher, "PARENT_CHECK_INTERVAL_S", 0.001)
    stop = asyncio.Event()
    await asyncio.wait_for(launcher.exit_with_parent(4242, stop), 5)
    assert stop.is_set() and signals == [signal.SIGTERM]


async def test_an_orphan_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher.os, "getppid", lambda: 1)
    monkeypatch.setattr(launcher, "_set_parent_death_signal", lambda sig: None)
    monkeypatch.setattr(launcher, "PARENT_CHECK_INTERVAL_S", 3600.0)
    stop = asyncio.Event()
    await asyncio.wait_for(launcher.exit_with_parent(4242, stop), 5)
    assert stop.is_set()
