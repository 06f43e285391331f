"""In-process helpers for the CSM family tests."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from duplexvoice.worker.adapters.base import SynthesisOptions, TTSAdapter
from duplexvoice.worker.voicepacks import VoicePack, scan_voicepacks


def packs(folder: Path) -> dict[str, VoicePack]:
    return scan_voicepacks([folder], ["csm"]).packs


def speak(
    adapter: TTSAdapter, text: str, seed: int | None = 7, cancel: threading.Event | None = None,
    memory: dict[str, Any] | None = None, **extra: str,
) -> list[np.ndarray[Any, Any]]:
    if seed is not None:
        extra["seed"] = str(seed)
    options = SynthesisOptions(extra=extra, memory={} if memory is None else memory)
    return list(adapter.stream(text, options, cancel or threading.Event()))


def audio(chunks: list[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
