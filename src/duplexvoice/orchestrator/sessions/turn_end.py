"""When the user's turn ends: the turn-taking settings (:class:`TurnConfig`) and the
rule that turns what is known at the end of speech into a silence to wait
(:func:`end_wait_ms`). Pure; :mod:`.turns` applies it as events come.

What is known after the speech stops: the silence so far (the clock), the final
transcript's ending (:func:`classify_ending`, once the speculative final is ready) and
p(complete) from the acoustic end-of-turn model (:mod:`duplexvoice.speech.endturn`, run
at the same offset). ``end_mode`` picks which of them count; with ``adaptive`` off only
the silence does (``end_of_turn_ms``). The wait, by mode:

- ``silence``: ``end_of_turn_ms``.
- ``text``: ``complete_end_ms`` after a complete sentence, ``trailing_end_ms`` after a
  trailing "and"/"um"/comma, else ``end_of_turn_ms``.
- ``acoustic``: ``acoustic_complete_ms`` when p >= ``complete_p``,
  ``acoustic_incomplete_ms`` when p < ``incomplete_p``, else ``end_of_turn_ms``.
- ``fused``: the acoustic wait, which the text can lengthen, and shorten only with the
  model's agreement: a trailing word makes it at least ``trailing_end_ms`` (the model
  hears no words), a complete sentence at most ``complete_end_ms`` when p >=
  ``complete_p`` too. Whisper writes a period after most fragments (on the cut-off
  probes of ``bench/endturn.py`` it wrote "Can you add milk in?" for "Can you add milk
  and"), so a "complete" transcript alone ends nothing sooner; before the model's answer
  the wait is ``end_of_turn_ms`` (or ``trailing_end_ms`` after a trailing word).

**Default mode: ``text``**, measured live (``bench/conversation.py --set both``, 2-core
EPYC, same hour): with ``fused`` the model's 70-200 ms of CPU at each offset runs beside
the final transcript on the same two cores and delays it (its p50 294 -> 443-510 ms),
so every turn's voice to voice got longer (synthetic p50 784 -> 882 ms, human 717 ->
737 ms) though fewer speakers are cut off. ``fused`` is for machines where the model
does not compete with the recognizer (more cores, or the recognizer on a GPU).

**Thresholds** (``bench/endturn.py``, 29 turns: 13 synthetic sentences, 7 cut-off
probes, 9 turns of a real telephone call): ``fused``, p >= 0.9 ends after 200 ms,
p < 0.1 waits 1200 ms, else 600 ms; a complete sentence 250 ms (with the model's
agreement), a trailing word 1000 ms. Wait after the voice p50 310 ms and 2 of 29
turns cut off, against 405 ms and 5 of 29 for the text rule at its old defaults (500 /
250 / 1000 ms) and 310 ms and 4 of 29 for the text rule at its best. With the final
transcript ready about 50 ms after the offset (the early final), 150 ms instead of
250 cut off 3 of 38 human turns against 1 of 38 live, for no gain at p50 (482 against
483 ms): it stays 250. The price: on the
telephone call Smart-Turn is unsure of most finished turns (p 0.01-0.57 on 6 of 9), so
they wait 600-1200 ms (p50 600) where the text rule waits 500.

Whatever is not known yet counts as not there: no mode waits for an answer. The model's
answer comes about 150 ms after the offset and the transcript's 150-350 ms; an answer
that comes after the wait it would have changed changes nothing (the turn has ended),
so neither can hold a turn past the longest wait of the settings. Without the model
(not installed), the orchestrator runs ``fused`` as ``text`` (:mod:`.shared`).
"""

from __future__ import annotations

import enum
import re
from typing import Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

EndMode = Literal["silence", "text", "acoustic", "fused"]
END_MODES: tuple[EndMode, ...] = ("silence", "text", "acoustic", "fused")


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class TurnConfig:
    """The turn-taking settings: ``conversation.turns`` of the orchestrator's config
    (flags ``--turns-<option>``), validated on creation, frozen. A dataclass, not a
    model: its fields are read on every event, and a model's attributes cost more."""

    end_of_turn_ms: int = Field(
        default=600, ge=0, le=10_000, description="silence after speech that ends the user's "
        "turn (adaptive: unless what was heard moves it)")
    adaptive: bool = Field(
        default=True, description="the end of turn listens to the speech (end_mode); false: "
        "end_of_turn_ms of silence, whatever end_mode says")
    end_mode: EndMode = Field(
        default="text", description="what moves the end of turn, when adaptive: 'silence' "
        "(end_of_turn_ms only), 'text' (the transcript's ending), 'acoustic' (the end-of-turn "
        "model), 'fused' (both; fewer speakers cut off, but on 2 cores the model slows each "
        "turn's final transcript: see docs/protocol.md)")
    complete_end_ms: int = Field(
        default=250, ge=0, le=10_000, description="text: silence after a complete sentence")
    trailing_end_ms: int = Field(
        default=1000, ge=0, le=10_000, description="text: silence after a trailing conjunction "
        "or filler ('and', 'um', ...)")
    complete_p: float = Field(
        default=0.9, ge=0.0, le=1.0, description="acoustic: p(complete) from which the "
        "model says the turn is over")
    incomplete_p: float = Field(
        default=0.1, ge=0.0, le=1.0, description="acoustic: p(complete) under which the model "
        "says more is coming")
    acoustic_complete_ms: int = Field(
        default=200, ge=0, le=10_000, description="acoustic: silence when p >= complete_p")
    acoustic_incomplete_ms: int = Field(
        default=1200, ge=0, le=10_000, description="acoustic: silence when p < incomplete_p "
        "(the longest wait the model can ask for)")
    min_turn_ms: int = Field(
        default=150, ge=0, le=5000, description="speech shorter than this is noise, not a turn")
    max_turn_ms: int = Field(
        default=30_000, ge=1000, le=300_000, description="a turn this long is ended by force")
    interrupt_after_ms: int = Field(
        default=400, ge=0, le=5000,
        description="speech over the system this long is a real interruption (barge-in)")
    words_after_ms: int = Field(
        default=200, ge=0, le=5000, description="... or recognized words after this much speech")
    resume_after_ms: int = Field(
        default=250, ge=0, le=5000,
        description="silence after a short noise before the held speech resumes")
    words_wait_ms: int = Field(
        default=300, ge=0, le=5000, description="a short speech over the system waits up to this "
        "much more for its words before playback resumes ('Wait,' is short)")
    late_words_ms: int = Field(
        default=1000, ge=0, le=5000, description="words of a short speech over the system that "
        "come after playback resumed still interrupt it, this long after the resume (0: never)")
    speculative_reply: bool = Field(
        default=True, description="start the reply during the end-of-turn silence; heard only if "
        "the turn really ended")

    @model_validator(mode="after")
    def _bands(self) -> TurnConfig:
        if self.incomplete_p > self.complete_p:
            raise ValueError(f"incomplete_p ({self.incomplete_p}) must be <= complete_p "
                             f"({self.complete_p})")
        return self

    @property
    def uses_text(self) -> bool:
        return self.adaptive and self.end_mode in ("text", "fused")

    @property
    def uses_acoustic(self) -> bool:
        """The end-of-turn model is asked at each offset."""
        return self.adaptive and self.end_mode in ("acoustic", "fused")


class Ending(enum.Enum):
    COMPLETE = "complete"  # a finished sentence: the turn is probably over
    TRAILING = "trailing"  # ends on a conjunction or a filler: more is coming
    NEUTRAL = "neutral"


_TRAILING_WORDS = frozenset((
    "and", "or", "but", "so", "because", "um", "uh", "er", "erm", "hmm", "like", "the",
    "a", "an", "to", "of", "with", "if", "that", "then", "which", "who", "when", "while",
    "although", "though", "since", "as", "for", "my", "your", "our", "their",
))
WORD = re.compile(r"[A-Za-z']+")


def classify_ending(text: str) -> Ending:
    """How a transcript ends. Whisper punctuates every fragment, so a final period
    alone proves little: a sentence is complete only with a few words and no trailing
    conjunction, article or filler (which Whisper may also follow with "..." or ",")."""
    words = WORD.findall(text.lower())
    if not words:
        return Ending.NEUTRAL
    stripped = text.rstrip()
    if words[-1] in _TRAILING_WORDS or stripped.endswith(("...", "…", ",", "-", "—")):
        return Ending.TRAILING
    if len(words) >= 3 and stripped.endswith((".", "?", "!")):
        return Ending.COMPLETE
    return Ending.NEUTRAL


def acoustic_wait_ms(config: TurnConfig, p: float) -> int:
    if p >= config.complete_p:
        return config.acoustic_complete_ms
    if p < config.incomplete_p:
        return config.acoustic_incomplete_ms
    return config.end_of_turn_ms


def end_wait_ms(config: TurnConfig, text: str | None, p: float | None) -> int:
    """The silence after the last speech that ends the turn, given its final transcript
    and the model's p(complete) when they are known (None: not yet, or not asked)."""
    wait = config.end_of_turn_ms
    use_p = p is not None and config.uses_acoustic
    if use_p:
        assert p is not None
        wait = acoustic_wait_ms(config, p)
    if text is None or not config.uses_text:
        return wait
    ending = classify_ending(text)
    if ending is Ending.TRAILING:
        return max(wait, config.trailing_end_ms) if config.uses_acoustic \
            else config.trailing_end_ms
    if ending is Ending.COMPLETE:
        if not config.uses_acoustic:
            return config.complete_end_ms
        if p is not None and p >= config.complete_p:
            return min(wait, config.complete_end_ms)
    return wait
