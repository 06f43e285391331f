"""CPU priority for model threads.

Synthesis runs well ahead of real time, so a few milliseconds of delay to a model
thread cost nothing, while the same delay to the event loop delays every session's
frames and Control replies. On Linux, niceness is per thread and inherited by the
threads a thread creates: raising it on the synthesis threads, and on the thread that
loads a model (onnxruntime creates its intra-op pool there), lets the I/O threads
always win the CPU. Raising niceness needs no privilege; lowering it would, which is
why models are loaded on a fresh thread instead of lowering a pool thread's priority
back afterwards.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def lower_thread_priority(niceness: int) -> None:
    """Raise the calling OS thread's niceness by ``niceness`` (best effort)."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))
    except OSError as exc:  # e.g. a platform without per-thread priorities
        log.debug("cannot lower thread priority: %s", exc)


def call_at_low_priority(fn: Callable[[], T], niceness: int) -> T:
    """Run ``fn`` on a fresh thread with raised niceness and return its result."""
    if niceness <= 0:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        lower_thread_priority(niceness)
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="model-load", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
