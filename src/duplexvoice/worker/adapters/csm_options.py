"""CSM session options and the conversation prompt.

Session options (``SynthesisOptions.extra``, all strings):

* ``speaker``: the speaker id (int, 0-1023) the utterance is spoken as.
* ``context``: previous turns, a JSON list of ``{"speaker": int, "text": str,
  "audio": base64 of pcm_s16le mono 24 kHz}``; at most :data:`MAX_CONTEXT_TURNS` turns
  and :data:`MAX_CONTEXT_SECONDS` of audio in all.
* ``seed``: an int; the utterance's sampling is then reproducible.

The prompt is what the checkpoint's chat template renders (the conversion script's
template): per turn ``<bos>[speaker]text<eos>`` followed, for turns with audio, by
``<|AUDIO|><|audio_eos|>`` whose audio the processor expands to one token per Mimi
frame. It is rendered here rather than through ``apply_chat_template`` so a checkpoint
without a template file still loads, and context audio stays numpy (no file I/O).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from duplexvoice.worker.adapters.base import AdapterError

MAX_CONTEXT_TURNS = 8
MAX_CONTEXT_SECONDS = 30.0
MAX_TURN_TEXT_CHARS = 2000
MAX_SPEAKER = 1023
SAMPLE_RATE = 24000
MEMORY_KEY = "csm_turns"
_CACHE_KEY = "csm_context_cache"


@dataclass(frozen=True)
class ContextTurn:
    speaker: int
    text: str
    audio: npt.NDArray[np.float32]  # mono float32 at 24 kHz


def parse_int(extra: dict[str, str], key: str, low: int, high: int) -> int | None:
    raw = extra.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise AdapterError(f"csm: option {key}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise AdapterError(f"csm: option {key}={value} out of range [{low}, {high}]")
    return value


def parse_context(raw: str) -> list[ContextTurn]:
    """Validate the ``context`` option; :class:`AdapterError` with the reason."""
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"csm: option context is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise AdapterError("csm: option context must be a JSON list of turns")
    if len(items) > MAX_CONTEXT_TURNS:
        raise AdapterError(
            f"csm: option context has {len(items)} turns; at most {MAX_CONTEXT_TURNS}"
        )
    turns: list[ContextTurn] = []
    total = 0
    for i, item in enumerate(items):
        turns.append(_turn(i, item))
        total += turns[-1].audio.size
    if total > MAX_CONTEXT_SECONDS * SAMPLE_RATE:
        raise AdapterError(
            f"csm: option context holds {total / SAMPLE_RATE:.1f} s of audio; "
            f"at most {MAX_CONTEXT_SECONDS:.0f} s"
        )
    return turns


def _turn(i: int, item: Any) -> ContextTurn:
    where = f"csm: option context[{i}]"
    if not isinstance(item, dict) or set(item) != {"speaker", "text", "audio"}:
        raise AdapterError(f"{where} must be an object with speaker, text and audio")
    speaker, text, audio = item["speaker"], item["text"], item["audio"]
    if not isinstance(speaker, int) or isinstance(speaker, bool) or not 0 <= speaker <= MAX_SPEAKER:
        raise AdapterError(f"{where}.speaker must be an integer in [0, {MAX_SPEAKER}]")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TURN_TEXT_CHARS:
        raise AdapterError(f"{where}.text must be non-empty text of <= {MAX_TURN_TEXT_CHARS} chars")
    if not isinstance(audio, str):
        raise AdapterError(f"{where}.audio must be base64 text (pcm_s16le mono 24 kHz)")
    if len(audio) > MAX_CONTEXT_SECONDS * SAMPLE_RATE * 2 * 4 // 3 + 8:
        raise AdapterError(f"{where}.audio is longer than {MAX_CONTEXT_SECONDS:.0f} s")
    try:
        pcm = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AdapterError(f"{where}.audio is not valid base64: {exc}") from None
    if len(pcm) % 2 or not pcm:
        raise AdapterError(f"{where}.audio must be non-empty pcm_s16le (an even byte count)")
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return ContextTurn(speaker, text, samples)


def session_context(extra: dict[str, str], memory: dict[str, Any]) -> list[ContextTurn]:
    """The session's ``context`` option, parsed once per session (cached in memory)."""
    raw = extra.get("context")
    if not raw:
        return []
    cached = memory.get(_CACHE_KEY)
    if cached is not None and cached[0] == raw:
        turns: list[ContextTurn] = cached[1]
        return turns
    turns = parse_context(raw)
    memory[_CACHE_KEY] = (raw, turns)
    return turns


def own_turns(memory: dict[str, Any]) -> list[ContextTurn]:
    turns: list[ContextTurn] = memory.get(MEMORY_KEY, [])
    return turns


def remember(memory: dict[str, Any], turn: ContextTurn, keep: int) -> None:
    """Keep the session's last ``keep`` turns (text and the audio it spoke), no more
    audio than :func:`bounded` would ever feed back (30 s in all, not 30 s a turn)."""
    turns = [*own_turns(memory), turn]
    memory[MEMORY_KEY] = bounded(turns[-keep:]) if keep > 0 else []


def bounded(turns: list[ContextTurn]) -> list[ContextTurn]:
    """The most recent turns that fit :data:`MAX_CONTEXT_SECONDS` of audio."""
    kept: list[ContextTurn] = []
    total = 0
    for turn in reversed(turns[-MAX_CONTEXT_TURNS:]):
        total += turn.audio.size
        if total > MAX_CONTEXT_SECONDS * SAMPLE_RATE:
            break
        kept.append(turn)
    return kept[::-1]


def render_prompt(
    bos: str, eos: str, audio_token: str, audio_eos: str,
    context: list[ContextTurn], speaker: int, text: str,
) -> tuple[str, list[npt.NDArray[np.float32]]]:
    """The chat template's rendering of ``context`` then the turn to speak."""
    parts = [f"{bos}[{t.speaker}]{t.text}{eos}{audio_token}{audio_eos}" for t in context]
    parts.append(f"{bos}[{speaker}]{text}{eos}")
    return "".join(parts), [t.audio for t in context]
