"""Turn-taking: when the user's turn ends, and what the system's speech does when the
user speaks over it. Pure code: VAD edges and transcripts in, decisions out; time is a
parameter (a fake clock in tests). The session machine carries the decisions out.

**The user's turn.** Speech onset opens a turn (numbered 1, 2, ...). At each speech
offset the turn's audio so far is transcribed at once (``Transcribe``): the end-of-turn
silence is spent decoding, not waiting. The turn ends when the silence after the
last speech reaches ``end_of_turn_ms`` (``Confirm``); speech before that continues the
same turn (``Abandon`` drops what was started for the shorter version: its transcript
and its speculative reply). With ``adaptive`` on, the transcript of the silence so far
moves the deadline: a complete sentence ends the turn after ``complete_end_ms``; a
trailing conjunction or filler ("and", "so", "um") waits ``trailing_end_ms``. A turn
whose speech is shorter than ``min_turn_ms`` is noise: ``Abandon``, never transcribed.
A turn longer than ``max_turn_ms`` is ended by force, and the speech goes on as the
next turn. A typed turn (``typed``) is a whole turn at once: it takes the floor as a
real barge-in would, drops a spoken turn still open, and is answered at once.

**Speculative replies.** When the transcript is ready before the turn is confirmed,
``Reply(confirmed=False)`` starts the reply at once; the machine keeps its audio back
until ``Confirm``. If the user goes on instead, ``Abandon`` cancels it.

**Barge-in, in two steps** (WIRE §1.2). Speech onset while the system speaks (a
confirmed reply playing or being generated, or any utterance) is ``HoldSpeech`` at once: the
machine pauses playback (client ``pause``, worker PAUSE). Then:

- ``InterruptSpeech``: the user has spoken ``interrupt_after_ms`` in all since the hold, or a
  partial transcript has words after ``words_after_ms`` of speech: a real turn. The
  system's utterance is dropped and the user's speech is their new turn.
- ``ResumeSpeech``: the speech stopped before that, and ``resume_after_ms`` of silence went
  by: a cough, a click. Playback goes on where it stopped; the noise is no turn
  (``Abandon``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from duplexvoice.text import speakable

_EPS = 1e-6


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class TurnConfig:
    """The turn-taking settings: ``conversation.turns`` of the orchestrator's config
    (flags ``--turns-<option>``), validated on creation, frozen. A dataclass, not a
    model: its fields are read on every event, and a model's attributes cost more."""

    end_of_turn_ms: int = Field(
        default=500, ge=0, le=10_000, description="silence after speech that ends the user's turn")
    adaptive: bool = Field(
        default=True, description="end sooner after a complete sentence, later after a trailing "
        "'and'/'um' (see complete_end_ms, trailing_end_ms)")
    complete_end_ms: int = Field(
        default=250, ge=0, le=10_000, description="adaptive: silence after a complete sentence")
    trailing_end_ms: int = Field(
        default=1000, ge=0, le=10_000, description="adaptive: silence after a trailing conjunction "
        "or filler ('and', 'um', ...)")
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
    speculative_reply: bool = Field(
        default=True, description="start the reply during the end-of-turn silence; heard only if "
        "the turn really ended")


class Ending(enum.Enum):
    COMPLETE = "complete"  # a finished sentence: the turn is probably over
    TRAILING = "trailing"  # ends on a conjunction or a filler: more is coming
    NEUTRAL = "neutral"


_TRAILING_WORDS = frozenset((
    "and", "or", "but", "so", "because", "um", "uh", "er", "erm", "hmm", "like", "the",
    "a", "an", "to", "of", "with", "if", "that", "then", "which", "who", "when", "while",
    "although", "though", "since", "as", "for", "my", "your", "our", "their",
))
_WORD = re.compile(r"[A-Za-z']+")


def classify_ending(text: str) -> Ending:
    """How a transcript ends. Whisper punctuates every fragment, so a final period
    alone proves little: a sentence is complete only with a few words and no trailing
    conjunction, article or filler (which Whisper may also follow with "..." or ",")."""
    words = _WORD.findall(text.lower())
    if not words:
        return Ending.NEUTRAL
    stripped = text.rstrip()
    if words[-1] in _TRAILING_WORDS or stripped.endswith(("...", "…", ",", "-", "—")):
        return Ending.TRAILING
    if len(words) >= 3 and stripped.endswith((".", "?", "!")):
        return Ending.COMPLETE
    return Ending.NEUTRAL


# -- decisions ---------------------------------------------------------------------

@dataclass(frozen=True)
class HoldSpeech:
    """Pause the system's speech now (keep its audio): the user may be barging in."""


@dataclass(frozen=True)
class InterruptSpeech:
    """A real barge-in: drop the system's speech."""


@dataclass(frozen=True)
class ResumeSpeech:
    """A false interruption: play on from where the hold stopped."""


@dataclass(frozen=True)
class Transcribe:
    """Transcribe the turn's audio so far as its final transcript."""

    turn: int


@dataclass(frozen=True)
class Abandon:
    """Forget the turn's transcript and speculative reply: the user went on, or it was
    noise (``closed``: the turn is over and has no reply)."""

    turn: int
    closed: bool = False


@dataclass(frozen=True)
class Reply:
    """Start the reply to the turn. Not ``confirmed``: keep its audio back until
    ``Confirm`` (or drop it on ``Abandon``)."""

    turn: int
    text: str
    confirmed: bool


@dataclass(frozen=True)
class Confirm:
    """The turn is over (``forced``: it ran past ``max_turn_ms``)."""

    turn: int
    text: str | None  # its final transcript, if already known
    forced: bool = False


Decision = HoldSpeech | InterruptSpeech | ResumeSpeech | Transcribe | Abandon | Reply | Confirm


class TurnTaking:
    def __init__(self, config: TurnConfig | None = None) -> None:
        self.config = config or TurnConfig()
        self.turn = 0  # the current (or last) user turn
        self._open = False  # the turn has not ended
        self._speaking_since: float | None = None  # the user is speaking (VAD)
        self._turn_since = 0.0
        self._voiced_s = 0.0  # speech in the open turn, not counting the current run
        self._speech_end: float | None = None  # last speech of a turn waiting to end
        self._text: str | None = None  # the transcript of the turn as it ended
        self._replied = False  # a reply to the current transcript was started
        self._awaiting: int | None = None  # a turn confirmed before its transcript came
        self._system = False  # the system is speaking (or about to)
        self._held = False
        self._held_voiced_s = 0.0  # user speech since the hold, before the current run
        self._resume_at: float | None = None
        self._last_end: float | None = None  # when the last speech ended
        self._quiet_since: float | None = None  # no voice since, offset not yet confirmed
        self._words_until: float | None = None  # a held speech's words being checked

    # -- what the session tells ------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self._held

    @property
    def user_speaking(self) -> bool:
        return self._speaking_since is not None

    def system_speaking(self, speaking: bool) -> list[Decision]:
        """Whether a confirmed utterance is live. When it ends during a hold, the hold
        has nothing left to decide about: speech goes on as the user's turn, and a
        noise waiting to be resumed over is no turn."""
        self._system = speaking
        if speaking or not self._held:
            return []
        self._held = False
        if self._resume_at is not None:
            self._resume_at = None
            self._words_until = None
            self._open = False
            return self._forget(closed=True)
        return []

    @property
    def next_deadline(self) -> float | None:
        times: list[float] = []
        if self._speaking_since is not None:
            times.append(self._turn_since + self.config.max_turn_ms / 1000)
            if self._held and self._quiet_since is None:
                left = self.config.interrupt_after_ms / 1000 - self._held_voiced_s
                times.append(self._speaking_since + left)
        if self._resume_at is not None:
            times.append(self._resume_due())
        elif self._open and self._speech_end is not None and not self._held:
            times.append(self._end_deadline())
        return min(times, default=None)

    # -- events ------------------------------------------------------------------------

    def speech_started(self, now: float, lead_s: float = 0.0) -> list[Decision]:
        """The VAD's onset, confirmed ``lead_s`` after the speech began: the speech
        counts from its beginning (a barge-in's minimum speech too)."""
        out: list[Decision] = []
        if self._speaking_since is not None:
            return out
        begin = now - max(0.0, lead_s)
        if self._last_end is not None:
            begin = max(begin, self._last_end)
        self._speaking_since = begin
        self._quiet_since = None
        self._resume_at = None
        self._words_until = None
        if self._open and self._speech_end is not None:
            # Speech before the end of turn: the same turn goes on.
            self._speech_end = None
            out += self._forget(closed=False)
        elif not self._open:
            self._open_turn(now)
        if self._system and not self._held:
            self._held = True
            self._held_voiced_s = 0.0
            out.append(HoldSpeech())
        return out + self.tick(now)

    def speech_paused(self, now: float, silence_s: float) -> list[Decision]:
        """No voice for ``silence_s``, the offset not confirmed yet: a held barge-in's
        speech is not counted past it (a 300 ms "mm" is not 400 ms of speech because
        the offset is confirmed later)."""
        if self._speaking_since is not None:
            self._quiet_since = max(self._speaking_since, now - max(0.0, silence_s))
        return self.tick(now)

    def speech_resumed(self, now: float) -> list[Decision]:
        self._quiet_since = None
        return self.tick(now)

    def speech_ended(self, now: float, silence_s: float = 0.0,
                     checking_words: bool = False) -> list[Decision]:
        """The VAD's offset, ``silence_s`` after the last speech (its hangover).
        ``checking_words``: a transcript of the speech is on its way; a held speech
        waits for it (up to ``words_wait_ms``) before resuming: "Wait," is short."""
        if self._speaking_since is None:
            return []
        end = max(self._speaking_since, now - max(0.0, silence_s))
        run = end - self._speaking_since
        self._speaking_since = None
        self._quiet_since = None
        self._last_end = end
        self._voiced_s += run
        if self._held:
            self._held_voiced_s += run
            if self._held_voiced_s >= self.config.interrupt_after_ms / 1000 - _EPS:
                return self._interrupt() + self._end_speech(end, now)
            self._resume_at = end + self.config.resume_after_ms / 1000
            self._words_until = (self._resume_at + self.config.words_wait_ms / 1000
                                 if checking_words else None)
            return self.tick(now)
        return self._end_speech(end, now)

    def transcript(self, turn: int, text: str, final: bool, now: float) -> list[Decision]:
        """A transcript of ``turn``: partial (while speaking) or final (from a
        ``Transcribe``). Stale ones (an older turn, or a turn that went on) are ignored."""
        if final and turn == self._awaiting:
            self._awaiting = None
            return [Reply(turn, text, confirmed=True)] if speakable(text) else []
        if turn != self.turn or not self._open:
            return []
        if not final:
            self._words_until = None  # the words check has its answer
            speech = self._voiced_s + self._current_run(now)
            if (self._held and _has_words(text)
                    and speech >= self.config.words_after_ms / 1000 - _EPS):
                return self._interrupt()
            return self.tick(now)
        if self._speech_end is None or self.user_speaking:
            return []  # the turn went on after this transcript was asked for
        self._text = text
        out: list[Decision] = []
        if (self.config.speculative_reply and speakable(text) and not self._held
                and not self._replied):
            self._replied = True
            out.append(Reply(turn, text, confirmed=False))
        return out + self.tick(now)

    def typed(self, now: float, text: str) -> list[Decision]:
        """The user typed ``text`` instead of speaking: a whole turn, confirmed now.
        The system stops speaking (the user took the floor, as a real barge-in); a
        spoken turn still open is dropped (its transcript and speculative reply);
        speech still going on becomes the next turn, as after a forced end."""
        out: list[Decision] = []
        if self._system or self._held:
            out += self._interrupt()
        if self._open:
            self._open = False
            self._speech_end = None
            out += self._forget(closed=True)
        self._awaiting = None  # a spoken turn's late transcript no longer gets a reply
        speaking = self._speaking_since is not None
        self._open_turn(now)
        self._open = False
        self._replied = True
        out.append(Reply(self.turn, text, confirmed=True))
        if speaking:
            self._open_turn(now)
            self._speaking_since = now
            self._quiet_since = None
        return out

    def tick(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        if self._speaking_since is not None:
            if self._held:
                left = self.config.interrupt_after_ms / 1000 - self._held_voiced_s
                voiced_until = now if self._quiet_since is None else self._quiet_since
                if voiced_until >= self._speaking_since + left - _EPS:
                    out += self._interrupt()
            if now >= self._turn_since + self.config.max_turn_ms / 1000 - _EPS:
                out += self._force_end(now)
            return out
        if self._resume_at is not None and now >= self._resume_due() - _EPS:
            self._resume_at = None
            self._words_until = None
            self._held = False
            self._speech_end = None
            out.append(ResumeSpeech())
            out += self._forget(closed=True)  # the noise was no turn
            self._open = False
            return out
        if (self._open and self._speech_end is not None and not self._held
                and now >= self._end_deadline() - _EPS):
            out += self._confirm(forced=False)
        return out

    # -- internals ---------------------------------------------------------------------

    def _resume_due(self) -> float:
        assert self._resume_at is not None
        return self._resume_at if self._words_until is None else self._words_until

    def _open_turn(self, now: float) -> None:
        self.turn += 1
        self._open = True
        self._turn_since = now
        self._voiced_s = 0.0
        self._text = None
        self._replied = False
        self._speech_end = None

    def _current_run(self, now: float) -> float:
        return 0.0 if self._speaking_since is None else max(0.0, now - self._speaking_since)

    def _end_speech(self, end: float, now: float) -> list[Decision]:
        if self._voiced_s < self.config.min_turn_ms / 1000 - _EPS:
            self._open = False
            return [Abandon(self.turn, closed=True)]
        self._speech_end = end
        return [Transcribe(self.turn), *self.tick(now)]

    def _end_deadline(self) -> float:
        assert self._speech_end is not None
        config = self.config
        wait = config.end_of_turn_ms
        if config.adaptive and self._text is not None:
            ending = classify_ending(self._text)
            if ending is Ending.COMPLETE:
                wait = config.complete_end_ms
            elif ending is Ending.TRAILING:
                wait = config.trailing_end_ms
        return self._speech_end + wait / 1000

    def _confirm(self, *, forced: bool) -> list[Decision]:
        turn, text = self.turn, self._text
        self._open = False
        self._speech_end = None
        out: list[Decision] = [Confirm(turn, text, forced)]
        if text is None:
            self._awaiting = turn
        elif not self._replied and speakable(text):
            self._replied = True
            out.append(Reply(turn, text, confirmed=True))
        return out

    def _force_end(self, now: float) -> list[Decision]:
        """The turn ran too long: it ends now and the speech goes on as the next turn."""
        turn = self.turn
        out: list[Decision] = [Transcribe(turn), Confirm(turn, None, forced=True)]
        self._awaiting = turn
        self._open_turn(now)
        self._speaking_since = now
        return out

    def _forget(self, *, closed: bool) -> list[Decision]:
        out: list[Decision] = [Abandon(self.turn, closed=closed)]
        self._text = None
        self._replied = False
        return out

    def _interrupt(self) -> list[Decision]:
        self._held = False
        self._resume_at = None
        self._words_until = None
        self._system = False
        return [InterruptSpeech()]


def _has_words(text: str) -> bool:
    """Not ``speakable``: barge-in evidence, so a real word, not a stray "a" or "5"."""
    return any(len(w) >= 2 for w in _WORD.findall(text))
