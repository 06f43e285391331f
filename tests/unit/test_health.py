"""Worker health: who is routed around, and what brings a worker back. No clock, no I/O:
times are passed in, workers come from real records (``build_record``)."""

from __future__ import annotations

import pytest

from duplexvoice.orchestrator.workers.health import WorkerHealth
from tests.support.fake_orchestrator import NOW, worker_info

pytestmark = pytest.mark.unit


def test_nothing_is_excluded_until_a_failure() -> None:
    health = WorkerHealth()
    workers = [worker_info("w1"), worker_info("w2")]
    assert health.excluded(workers) == set()
    assert not health.is_down("w1")


def test_a_failure_excludes_the_worker_for_everyone_until_it_answers() -> None:
    health = WorkerHealth()
    workers = [worker_info("w1"), worker_info("w2")]
    assert health.mark_down("w1", NOW + 5) is True  # it was up: the caller logs once
    assert health.is_down("w1")
    assert health.excluded(workers) == {"w1"}
    assert health.excluded(workers) == {"w1"}  # asking again changes nothing
    assert health.mark_down("w1", NOW + 6) is False  # already down: no second log
    assert health.mark_up("w1") is True
    assert not health.is_down("w1") and health.excluded(workers) == set()
    assert health.mark_up("w1") is False  # was not down


def test_a_heartbeat_newer_than_the_failure_brings_the_worker_back() -> None:
    # Catches a worker restarted under the same name staying excluded until a probe.
    health = WorkerHealth()
    health.mark_down("w1", NOW)
    restarted = worker_info("w1", heartbeat=NOW + 1)
    assert health.excluded([restarted]) == set()
    assert not health.is_down("w1")  # cleared, not just hidden once


@pytest.mark.parametrize("heartbeat", [NOW - 10, NOW])
def test_a_heartbeat_not_newer_than_the_failure_keeps_it_down(heartbeat: float) -> None:
    # Catches >= instead of >: a record written in the same instant as the failure
    # says nothing about the worker answering since.
    health = WorkerHealth()
    health.mark_down("w1", NOW)
    assert health.excluded([worker_info("w1", heartbeat=heartbeat)]) == {"w1"}
    assert health.is_down("w1")


def test_a_second_failure_moves_the_time_a_heartbeat_must_beat() -> None:
    health = WorkerHealth()
    health.mark_down("w1", NOW)
    health.mark_down("w1", NOW + 10)  # failed again after a heartbeat at NOW + 5
    assert health.excluded([worker_info("w1", heartbeat=NOW + 5)]) == {"w1"}
    assert health.excluded([worker_info("w1", heartbeat=NOW + 11)]) == set()


def test_only_the_failed_worker_is_excluded() -> None:
    health = WorkerHealth()
    health.mark_down("w2", NOW)
    workers = [worker_info("w1"), worker_info("w2", heartbeat=NOW - 1), worker_info("w3")]
    assert health.excluded(workers) == {"w2"}
    assert not health.is_down("w1") and not health.is_down("w3")


def test_a_worker_no_longer_listed_is_forgotten() -> None:
    # Catches a stale entry kept forever: a worker that comes back under its old name
    # (with an old-looking record) must not be excluded for a failure of long ago.
    health = WorkerHealth()
    health.mark_down("gone", NOW)
    health.mark_down("w1", NOW)
    assert health.excluded([worker_info("w1", heartbeat=NOW - 1)]) == {"w1"}
    assert not health.is_down("gone")
    assert health.is_down("w1")
    assert health.excluded([worker_info("gone", heartbeat=NOW - 1)]) == set()
    assert not health.is_down("w1")  # not listed that time: forgotten too


def test_an_empty_listing_forgets_everyone() -> None:
    health = WorkerHealth()
    health.mark_down("w1", NOW)
    assert health.excluded([]) == set()
    assert not health.is_down("w1")
