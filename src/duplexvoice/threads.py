"""Thread priority: heavy model threads yield the CPU to the event loop.

The event loop paces audio (a frame every 20 ms per session), reads microphones and
answers controls; a Whisper decode or a synthesis on every core would delay it, and
clients' jitter buffers grow to absorb the late packets. The model threads can wait a
few milliseconds at no cost (they run well ahead of real time), so they run a few
steps lower (``nice``): under load the loop goes first, and it needs little.

On Linux niceness is per thread and inherited by the threads a thread creates, so a
model loaded on a lowered thread computes on lowered threads too (onnxruntime and
CTranslate2 start their pools there). Raising one's niceness needs no privilege;
lowering it back would, hence :func:`call_at_low_priority` loads on a fresh thread
rather than lowering a pool thread and restoring it afterwards.

numpy's BLAS runs on one thread (:func:`single_threaded_blas`) wherever a model computes
its features with numpy and then runs on its own pool: OpenBLAS's threads spin for a
while after each call, and took the cores from the model's threads that came next
(a Whisper encode of 5 s right after its log-mel: 115-135 ms instead of 25 ms, on 2
cores; the features themselves cost 2.5 ms on one thread).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_blas_limited = False


def lower_thread_priority(niceness: int) -> None:
    """Run the calling thread (and the threads it starts) ``niceness`` steps below the
    rest of the process; best effort. Linux only: elsewhere the call would change the
    whole process, or another one."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))
    except OSError as exc:
        log.debug("cannot lower thread priority: %s", exc)


def call_at_low_priority(fn: Callable[[], T], niceness: int, name: str = "model-load") -> T:
    """Run ``fn`` on a fresh thread ``name``, ``niceness`` steps lower, and return its
    result or raise its exception. With ``niceness`` <= 0, ``fn`` runs here."""
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

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def single_threaded_blas() -> None:
    """numpy's BLAS (OpenBLAS) on one thread, for the whole process (see the module
    docstring); idempotent, best effort."""
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    from threadpoolctl import threadpool_limits

    try:
        threadpool_limits(1, user_api="blas")
    except Exception as exc:  # a BLAS threadpoolctl cannot drive: leave it as it is
        log.debug("cannot limit BLAS threads: %s", exc)
