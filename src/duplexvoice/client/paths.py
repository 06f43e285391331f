"""Where a client writes its audio: checked before any work, so a bad ``--out`` is one
line at once, not an error after the utterance was spoken."""

from __future__ import annotations

import os
from pathlib import Path


def out_path_error(out: Path) -> str | None:
    """Why a file cannot be written at ``out``, or None; checked before any work."""
    if out.is_dir():
        return f"{out} is a folder"
    parent = out.parent
    if not parent.is_dir():
        return f"no such folder: {parent}"
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        return f"{out} is not writable"
    return None
