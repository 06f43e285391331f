"""Thread priority: the recognizer's heavy threads yield the CPU to the event loop.

The event loop paces audio out (a WebRTC track sends a frame every 20 ms) and reads
the microphone; a Whisper decode on every core delays it, and the browser's jitter
buffer grows to absorb the late packets. So the recognizer's threads run a few
steps lower (``nice``): under load the loop goes first, and it needs little.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading


def lower_priority(nice: int) -> None:
    """Run the calling thread (and the threads it starts) ``nice`` steps below the rest
    of the process. Linux only (elsewhere the call would change the whole process);
    lowering one's own priority needs no privilege."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
