"""Small reference-set items for the conversation benchmark's tests: a timeline of
tones (or given parts) in the shape of ``bench/conversation_set.py``'s items."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import conversation_set as cs

from tests.support import speech


def bench_item(id: str, kind: str, text: str, parts: tuple[tuple[str, Any, str], ...] = (),
               offset: float = 0.0) -> cs.Item:
    audio, pieces = speech.timeline(*(parts or (("speech", tone(0.1), text),)))
    return cs.Item(id, kind, "test", text, "", audio, tuple(pieces), offset)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
