"""Turn-taking: when the user's turn ends, and what the system's speech does when the
user speaks over it. Pure code: VAD edges and transcripts in, decisions out; time is a
parameter (a fake clock in tests). The session machine carries the decisions out.

**The user's turn.** Speech onset opens a turn (numbered 1, 2, ...). At each speech
offset the turn's audio so far is transcribed at once (``Transcribe``): the end-of-turn
silence is spent decoding, not waiting. The turn ends when the silence after the
last speech reaches the wait of :func:`~.turn_end.end_wait_ms` (``Confirm``); speech
before that continues the same turn (``Abandon`` drops what was started for the shorter
version: its transcript and its speculative reply). The wait is ``end_of_turn_ms``
until what the session learns during the silence moves it (``end_mode``): the
transcript's ending (a complete sentence: sooner; a trailing "and"/"um": later) and the
acoustic end-of-turn model's p(complete) (:meth:`TurnTaking.acoustic`), each as it
comes; one that comes after the turn ended changes nothing. A turn
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
  (``Abandon``). A held speech whose words are being checked waits for them up to
  ``words_wait_ms`` more.
- **Late words still interrupt.** "Wait," is short, and its words check can answer after
  playback resumed (a busy recognizer). Words for a speech that was resumed over, up to
  ``late_words_ms`` after the resume and while the system still speaks, are a real
  barge-in after all: ``InterruptSpeech`` (the resumed audio is dropped; speech going on
  by then is the user's turn). A real interruption never depends on winning that race.
"""

from __future__ import annotations

from dataclasses import dataclass

from duplexvoice.orchestrator.sessions.turn_end import (
    END_MODES,
    WORD,
    Ending,
    EndMode,
    TurnConfig,
    classify_ending,
    end_wait_ms,
)
from duplexvoice.text import speakable

__all__ = [
    "END_MODES", "Abandon", "Confirm", "Decision", "EndMode", "Ending", "HoldSpeech",
    "InterruptSpeech", "Reply", "ResumeSpeech", "Transcribe", "TurnConfig", "TurnTaking",
    "classify_ending",
]

_EPS = 1e-6


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


@dataclass(frozen=True)
class Heard:
    """A confirmed turn's late final transcript that gets no reply (no words in it, or
    a typed turn took the floor meanwhile): the client still gets its final
    transcript, so no turn ends in silence."""

    turn: int
    text: str


Decision = (HoldSpeech | InterruptSpeech | ResumeSpeech | Transcribe | Abandon | Reply | Confirm
            | Heard)


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
        # Turns confirmed before their final transcript came: every one is answered when
        # it comes (a loaded recognizer may be late past the next turn's confirmation);
        # True: with a reply, False: transcript only (a typed turn took the floor).
        self._awaiting: dict[int, bool] = {}
        self._system = False  # the system is speaking (or about to)
        self._held = False
        self._held_voiced_s = 0.0  # user speech since the hold, before the current run
        self._resume_at: float | None = None
        self._last_end: float | None = None  # when the last speech ended
        self._quiet_since: float | None = None  # no voice since, offset not yet confirmed
        self._words_until: float | None = None  # a held speech's words being checked
        self._p: float | None = None  # the acoustic p(complete) of the speech's end
        # A held speech resumed over: (its turn, until when its words still interrupt).
        self._resumed: tuple[int, float] | None = None

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
        if not speaking:
            self._resumed = None  # nothing left to interrupt
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
        if final and turn in self._awaiting:
            if self._awaiting.pop(turn) and speakable(text):
                return [Reply(turn, text, confirmed=True)]
            return [Heard(turn, text)]
        if (not final and self._resumed is not None and self._resumed[0] == turn
                and _has_words(text)):
            until = self._resumed[1]
            self._resumed = None
            if self._system and now <= until + _EPS:
                return self._interrupt()  # words that lost the race to the resume
            return []
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

    def acoustic(self, turn: int, p_complete: float, now: float) -> list[Decision]:
        """The end-of-turn model's p(complete) for ``turn``'s speech as it stopped (asked
        at the offset, beside the final transcript). Stale ones are ignored: another
        turn's, or one the speech went on after."""
        if (turn != self.turn or not self._open or self._speech_end is None
                or self.user_speaking or not 0.0 <= p_complete <= 1.0):
            return []
        self._p = p_complete
        return self.tick(now)

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
        # A spoken turn's late transcript no longer gets a reply (only its transcript).
        self._awaiting = dict.fromkeys(self._awaiting, False)
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
            if (self.config.late_words_ms and self._words_until is not None
                    and self._voiced_s >= self.config.words_after_ms / 1000 - _EPS):
                # Its words check has not answered: if it hears words, they interrupt.
                self._resumed = (self.turn, now + self.config.late_words_ms / 1000)
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
        self._p = None
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
        return self._speech_end + end_wait_ms(self.config, self._text, self._p) / 1000

    def _confirm(self, *, forced: bool) -> list[Decision]:
        turn, text = self.turn, self._text
        self._open = False
        self._speech_end = None
        out: list[Decision] = [Confirm(turn, text, forced)]
        if text is None:
            self._awaiting[turn] = True
        elif not self._replied and speakable(text):
            self._replied = True
            out.append(Reply(turn, text, confirmed=True))
        return out

    def _force_end(self, now: float) -> list[Decision]:
        """The turn ran too long: it ends now and the speech goes on as the next turn."""
        turn = self.turn
        out: list[Decision] = [Transcribe(turn), Confirm(turn, None, forced=True)]
        self._awaiting[turn] = True
        self._open_turn(now)
        self._speaking_since = now
        return out

    def _forget(self, *, closed: bool) -> list[Decision]:
        out: list[Decision] = [Abandon(self.turn, closed=closed)]
        self._text = None
        self._p = None
        self._replied = False
        return out

    def _interrupt(self) -> list[Decision]:
        self._held = False
        self._resumed = None
        self._resume_at = None
        self._words_until = None
        self._system = False
        return [InterruptSpeech()]


def _has_words(text: str) -> bool:
    """Not ``speakable``: barge-in evidence, so a real word, not a stray "a" or "5"."""
    return any(len(w) >= 2 for w in WORD.findall(text))
