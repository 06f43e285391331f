"""The thread-priority helper the recognizer and the worker's model threads use."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from duplexvoice.threads import call_at_low_priority, lower_thread_priority

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness"),
]


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_runs_on_a_fresh_thread_with_lower_priority_and_leaves_the_caller_alone() -> None:
    before = niceness()
    inner = call_at_low_priority(niceness, 5)
    assert inner == min(19, before + 5)
    assert niceness() == before  # the calling thread is untouched
    name = call_at_low_priority(lambda: threading.current_thread().name, 1, name="asr-load")
    assert name == "asr-load"


def test_threads_created_by_a_low_priority_thread_inherit_it() -> None:
    # onnxruntime creates its intra-op pool on the loading thread: it must inherit.
    def spawn_and_read() -> int:
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(niceness()))
        child.start()
        child.join()
        return seen[0]

    assert call_at_low_priority(spawn_and_read, 3) == min(19, niceness() + 3)


def test_errors_propagate_and_zero_means_inline() -> None:
    def boom() -> int:
        raise ValueError("load failed")

    with pytest.raises(ValueError, match="load failed"):
        call_at_low_priority(boom, 5)
    assert call_at_low_priority(threading.get_native_id, 0) == threading.get_native_id()


def test_lower_thread_priority_on_a_pool_thread_and_its_children() -> None:
    result: list[tuple[int, int, int]] = []

    def run() -> None:
        start = niceness()
        lower_thread_priority(2)
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(niceness()))
        child.start()
        child.join()
        result.append((start, niceness(), seen[0]))

    here = niceness()
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    [(start, after, child)] = result
    assert after == child == min(19, start + 2)
    assert niceness() == here  # the other threads are untouched


def test_zero_or_another_platform_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def lowered_by(niceness_steps: int) -> int:
        seen: list[int] = []

        def run() -> None:
            start = niceness()
            lower_thread_priority(niceness_steps)
            seen.append(niceness() - start)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        return seen[0]

    assert lowered_by(0) == 0 and lowered_by(-3) == 0
    # Elsewhere a native thread id is no process id: setpriority must not be called.
    monkeypatch.setattr(sys, "platform", "darwin")
    assert lowered_by(4) == 0
