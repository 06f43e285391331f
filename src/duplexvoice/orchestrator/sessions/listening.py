"""What one conversation-mode session does with what it hears: pure code, no I/O, no
clock, no audio (only sample counts at 16 kHz). Time is a parameter; the asyncio
:class:`~.listener.Listener` runs the resampler, the VAD, the recognizer and the reply
engine, and carries out what this returns.

Inputs: :meth:`Listening.admit` (a client's audio message, before anything else),
:meth:`Listening.audio` (the VAD's edges once it took the new audio),
:meth:`Listening.transcribed`, :meth:`Listening.act` (the machine's ``TranscribeTurn``
and ``TurnClosed``), :meth:`Listening.playback`, and the reply bookkeeping
(:meth:`Listening.reply_asked`, :meth:`Listening.reply_said`,
:meth:`Listening.reply_stopped`). Decisions out, in order: machine events to post,
and :class:`Transcribe` (recognize samples ``[start, end)``) and :class:`Score` (ask the
acoustic end-of-turn model about them).

- **Turn audio.** A turn's audio runs from ``PREROLL_S`` before its first onset
  (Whisper needs the attack; the VAD confirms speech after it began) to the moment it
  is transcribed. After ``TurnClosed`` the next turn starts at the next onset, or at
  once if the speech goes on (a turn ended by force at ``max_turn_ms``).
- **Partials.** Every ``partial_interval_ms`` of new speech (0: none), at most one at a
  time. While the system's speech is held for a possible barge-in its words decide,
  so partials come at least every ``barge_in_words_ms``, and when that speech stops a
  words check starts at once (``UserSpeechEnded(checking_words=True)``); one asked
  while a partial runs follows it, and the partial that missed the end of the speech
  is then not posted if it heard nothing (the hold waits for the real answer). Other
  empty partials are posted: a held barge-in may be waiting for "no words"; a partial
  the recognizer dropped (busy with finals) is no answer, and is not posted.
- **End-of-turn score.** With ``score_turns``, each final asked for at an offset is
  joined by a :class:`Score` of the same audio (the model sees its last 8 s). Its
  answer is posted (``UserTurnScore``) only if no speech began since it was asked: it
  speaks of that offset, not of a later one.
- **Early final.** After ``early_final_ms`` without voice within speech (0: never),
  the turn's audio so far is sent to the recognizer as an early final
  (:class:`EarlyFinal`): the offset is confirmed only ``min_silence_ms`` after the
  voice ends, and its final, the same audio plus silence, then joins the early one or
  finds it done. Voice again withdraws it (:class:`CancelEarlyFinal`). Not while the
  system's speech is held: the words check needs the recognizer then.
- **Pauses.** No voice for ``_QUIET_S`` within speech is ``UserSpeechPaused`` (the
  offset is confirmed only later), voice again ``UserSpeechResumed``: a barge-in's
  speech is measured to the last voice.
- **Budget.** Microphone audio faster than ``max_audio_rate`` seconds per second
  (after a burst of ``max_audio_burst_s``) is dropped, with one ``RATE_LIMITED``
  error a second; outside conversation mode audio is refused with one
  ``INVALID_STATE`` a second (:class:`NotListening`).
- **What was heard** of an interrupted reply stays in the history: the client's
  ``playback`` report for that utterance if it sent one, else what the server
  released minus the client's lead (``lead_ms``, still buffered there). A speculative
  reply nobody heard leaves no trace: the user turn it answered is retracted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from duplexvoice.orchestrator.sessions.events import (
    Action,
    CancelReply,
    Event,
    TranscribeTurn,
    TurnClosed,
    UserSpeechEnded,
    UserSpeechPaused,
    UserSpeechResumed,
    UserSpeechStarted,
    UserTranscript,
    UserTurnScore,
)
from duplexvoice.orchestrator.sessions.state import State
from duplexvoice.replies import History, heard_prefix
from duplexvoice.speech import SPEECH_RATE
from duplexvoice.speech.vad_gate import GateEvent, SpeechOnset
from duplexvoice.wire.messages import Error, ErrorCode

PREROLL_S: Final = 0.3  # audio kept before an onset: the VAD confirms speech after it began
_QUIET_S: Final = 0.048  # no voice this long within speech: a pause (not yet an offset)
_ERROR_EVERY_S: Final = 1.0
_KEEP_TURNS: Final = 4  # replies remembered: only the last one or two can still be playing
_KEEP_PLAYED: Final = 8  # playback reports remembered (utterance ids only grow)

RATE_LIMITED: Final = Error(
    ErrorCode.RATE_LIMITED, "microphone audio arrives faster than real time; audio dropped")
NOT_LISTENING: Final = Error(
    ErrorCode.INVALID_STATE, "microphone audio needs conversation mode: "
    'send {"type": "config", "mode": "conversation"} first')

# The machine's states in which the system is speaking (VAD onsets need more), and the
# one in which its speech is held for a possible barge-in (words decide it).
_SPEAKING: Final = frozenset((State.SPEAKING, State.BARGED_IN, State.PAUSED))


def system_speaking(state: State) -> bool:
    return state in _SPEAKING


def holding(state: State) -> bool:
    return state is State.BARGED_IN


@dataclass(frozen=True)
class ListeningConfig:
    """Built from the orchestrator's settings in one place
    (:func:`~.listener.listening_config`); their defaults live there."""

    partial_interval_ms: int  # a partial every this much new speech (0: none)
    barge_in_words_ms: int  # ... at least this often while a barge-in is held
    max_turn_ms: int  # the longest turn: how much audio must be kept
    max_audio_rate: float  # microphone audio accepted, seconds per second ...
    max_audio_burst_s: float  # ... after a burst of this much
    lead_ms: float  # audio the client holds unplayed (the server's playout lead)
    score_turns: bool = False  # ask the acoustic end-of-turn model at each offset
    early_final_ms: int = 0  # an early final after this long without voice (0: never)

    def __post_init__(self) -> None:
        if (self.partial_interval_ms < 0 or self.barge_in_words_ms < 0 or self.lead_ms < 0
                or self.early_final_ms < 0):
            raise ValueError("partial_interval_ms, barge_in_words_ms, lead_ms and "
                             "early_final_ms must be >= 0")
        if self.max_turn_ms <= 0 or self.max_audio_rate <= 0 or self.max_audio_burst_s <= 0:
            raise ValueError("max_turn_ms, max_audio_rate and max_audio_burst_s must be > 0")

    @property
    def ring_samples(self) -> int:
        """Audio to keep: the longest turn, its pre-roll, and 2 s for the end-of-turn
        silence and a final still being asked for."""
        return int((self.max_turn_ms / 1000 + 2 + PREROLL_S) * SPEECH_RATE)


@dataclass(frozen=True)
class Transcribe:
    """Recognize samples ``[start, end)`` of the session's audio and report it with
    :meth:`Listening.transcribed`. ``turn`` None (a partial): the turn the machine has
    open when it starts."""

    turn: int | None
    start: int
    end: int
    final: bool


@dataclass(frozen=True)
class EarlyFinal:
    """The speaker paused: ask the recognizer for samples ``[start, end)`` as an early
    final (nothing is reported: the turn's final, asked at the offset, reuses it)."""

    start: int
    end: int


@dataclass(frozen=True)
class CancelEarlyFinal:
    """The voice came back: the early final asked at the pause is not needed."""


@dataclass(frozen=True)
class Score:
    """Ask the end-of-turn model about ``turn``'s samples ``[start, end)`` and report
    its answer with :meth:`Listening.scored`."""

    turn: int
    start: int
    end: int
    onsets: int  # the onsets heard when it was asked (a later one makes it stale)


Decision = Event | Transcribe | Score | EarlyFinal | CancelEarlyFinal
_NOTHING: Final[tuple[Decision, ...]] = ()
_V = TypeVar("_V")


@dataclass(frozen=True)
class Dropped:
    """Audio refused by the budget; ``error`` to send (None: told within the second)."""

    error: Error | None = None


_DROPPED: Final = Dropped()


class OncePer:
    """True at most once every ``every_s`` (an error repeated per frame is noise)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._at = -math.inf

    def due(self, now: float) -> bool:
        if now - self._at < self.every_s:
            return False
        self._at = now
        return True


class NotListening:
    """Microphone audio outside conversation mode: one ``INVALID_STATE`` a second."""

    def __init__(self) -> None:
        self._once = OncePer(_ERROR_EVERY_S)

    def refuse(self, now: float) -> Error | None:
        return NOT_LISTENING if self._once.due(now) else None


class AudioBudget:
    """Token bucket in seconds of audio: a client may not send audio much faster than
    real time (a flood would cost every session CPU)."""

    def __init__(self, rate: float, burst_s: float, now: float) -> None:
        self.rate, self.burst = rate, burst_s
        self._tokens, self._at = burst_s, now

    def take(self, seconds: float, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)
        if seconds > self._tokens:
            return False
        self._tokens -= seconds
        return True


class Listening:
    """One session's listening decisions (conversation mode); see the module docstring."""

    def __init__(self, config: ListeningConfig, now: float,
                 history: History | None = None) -> None:
        self.config = config
        # The session's conversation, as the reply engine sees it.
        self.history = history if history is not None else History()
        self._budget = AudioBudget(config.max_audio_rate, config.max_audio_burst_s, now)
        self._rate_errors = OncePer(_ERROR_EVERY_S)
        self._end = 0  # samples heard so far (the audio clock)
        self._turn_start: int | None = None  # sample index; None: no open turn
        self._speaking = False  # the VAD's view
        self._quiet = False  # within speech, no voice for a while (told to the machine)
        self._early = False  # an early final was asked in this pause
        self._partial_at = 0  # sample index of the last partial asked
        self._partial_running = False
        self._forced_pending = False  # a words check waits for the running partial
        self._onsets = 0  # speech onsets heard so far
        self._played: dict[int, float] = {}  # utterance id -> ms the client reports played
        self._asked: dict[int, int] = {}  # turn -> history index of the user's words
        self._said: dict[int, int] = {}  # turn -> history index of the reply's words
        self.speech_started_at: float | None = None  # when the last onset's speech began
        self.speech_ended_at: float | None = None  # when the last offset's speech ended

    # -- audio in -------------------------------------------------------------------

    def admit(self, seconds: float, now: float) -> Dropped | None:
        """A client audio message of ``seconds``: None to take it, else dropped."""
        if self._budget.take(seconds, now):
            return None
        return Dropped(RATE_LIMITED) if self._rate_errors.due(now) else _DROPPED

    def audio(self, end: int, edges: Sequence[GateEvent], quiet_s: float | None,
              state: State, now: float) -> Sequence[Decision]:
        """The VAD took audio up to sample ``end`` and found ``edges``; ``quiet_s``: how
        long it has heard no voice within speech (None: not within speech); ``state``:
        the machine's."""
        self._end = end
        if not edges and quiet_s is None and not self._speaking:
            return _NOTHING  # silence, the common case: kept cheap (every 20 ms)
        held = holding(state)
        out: list[Decision] = []
        for edge in edges:
            audio_now = end / SPEECH_RATE
            if isinstance(edge, SpeechOnset):
                self._speaking = True
                self._onsets += 1
                if self._turn_start is None:
                    start = int(max(0.0, edge.start_s - PREROLL_S) * SPEECH_RATE)
                    self._turn_start = self._partial_at = start
                # When the speech began, on ``now``'s clock (the VAD confirmed it later).
                lead = max(0.0, audio_now - edge.start_s)
                self.speech_started_at = now - lead
                out.append(UserSpeechStarted(lead))
            else:
                self._speaking = False
                self.speech_ended_at = now - max(0.0, audio_now - edge.end_s)
                # "Wait," is short: while holding, its words decide, so they are
                # checked now and the hold waits for the answer.
                checking = held and bool(self.config.partial_interval_ms)
                out.append(UserSpeechEnded(max(0.0, edge.confirmed_s - edge.end_s),
                                           checking_words=checking))
                if checking:
                    self._maybe_partial(out, force=True)
            self._quiet = False
            self._early = False  # the offset's final takes it over (or a new turn began)
        if quiet_s is not None:
            if not self._quiet and quiet_s >= _QUIET_S:
                self._quiet = True
                out.append(UserSpeechPaused(quiet_s))
            elif self._quiet and quiet_s < _QUIET_S:
                self._quiet = False
                out.append(UserSpeechResumed())
            self._maybe_early(out, quiet_s, held)
        self._maybe_partial(out, sooner=held)
        return out

    def _maybe_early(self, out: list[Decision], quiet_s: float, held: bool) -> None:
        early_s = self.config.early_final_ms / 1000
        if self._early and quiet_s < early_s:  # quiet only shrinks when voice comes back
            self._early = False
            out.append(CancelEarlyFinal())
        elif (early_s and not self._early and quiet_s >= early_s and not held
              and self._turn_start is not None):
            self._early = True
            out.append(EarlyFinal(self._turn_start, self._end))

    def _maybe_partial(self, out: list[Decision], *, sooner: bool = False,
                       force: bool = False) -> None:
        interval_ms = self.config.partial_interval_ms
        if sooner and interval_ms:
            interval_ms = min(interval_ms, self.config.barge_in_words_ms)
        interval = interval_ms * SPEECH_RATE // 1000
        if not interval or self._turn_start is None:
            return
        if self._partial_running:
            # The one running did not hear the end: a forced check follows it.
            self._forced_pending = self._forced_pending or force
            return
        if not force and (not self._speaking or self._end - self._partial_at < interval):
            return
        out.append(self._start_partial(self._turn_start))

    def _start_partial(self, start: int) -> Transcribe:
        self._partial_at = self._end
        self._partial_running = True
        return Transcribe(None, start, self._end, final=False)

    def transcribed(self, turn: int, text: str, *, final: bool,
                    answered: bool = True) -> list[Decision]:
        """What a :class:`Transcribe` heard (``""`` too when recognition failed). Not
        ``answered``: the recognizer dropped the partial (no answer, not "no words")."""
        if final:
            return [UserTranscript(turn, text, True)]
        self._partial_running = False
        out: list[Decision] = []
        forced, self._forced_pending = self._forced_pending, False
        if answered and (text or not forced):
            out.append(UserTranscript(turn, text, False))
        if forced and self._turn_start is not None:
            out.append(self._start_partial(self._turn_start))
        return out

    # -- the machine's actions --------------------------------------------------------

    def act(self, action: Action) -> list[Decision]:
        """``TranscribeTurn``: the turn's audio so far, as its final. ``TurnClosed``: its
        audio may go (speech going on past a forced end belongs to the next turn)."""
        if isinstance(action, TranscribeTurn):
            start = self._end if self._turn_start is None else self._turn_start
            out: list[Decision] = [Transcribe(action.turn, start, self._end, final=True)]
            if self.config.score_turns and not self._speaking:
                out.append(Score(action.turn, start, self._end, self._onsets))
            return out
        if isinstance(action, TurnClosed):
            self._turn_start = self._end if self._speaking else None
            self._partial_at = self._end
        return []

    def scored(self, score: Score, p_complete: float | None) -> list[Decision]:
        """The end-of-turn model's answer to ``score`` (None: none came)."""
        if p_complete is None or score.onsets != self._onsets:
            return []
        return [UserTurnScore(score.turn, p_complete)]

    def stopped(self) -> list[Decision]:
        """Listening stops (``mode: tts``): speech the VAD was hearing ends here, so a
        hold over it does not last."""
        return [UserSpeechEnded()]

    # -- replies and what was heard of them ------------------------------------------

    def playback(self, utterance_id: int, played_ms: float) -> None:
        """The client's report of what it has played of an utterance."""
        self._played[utterance_id] = played_ms
        _bound(self._played, _KEEP_PLAYED)

    def reply_asked(self, turn: int) -> None:
        """A reply to ``turn`` is asked for now: the engine adds the user's words next."""
        self._asked[turn] = self.history.next_index
        self._said.pop(turn, None)  # an older reply's words are not this one's
        _bound(self._asked, _KEEP_TURNS)

    def reply_said(self, turn: int, index: int | None) -> None:
        """The reply to ``turn`` closed, its words at history ``index`` (None: none)."""
        if index is None:
            self._said.pop(turn, None)
        else:
            self._said[turn] = index
            _bound(self._said, _KEEP_TURNS)

    def reply_stopped(self, action: CancelReply) -> None:
        """The machine cancelled the reply to ``action.turn``, and it has closed: keep in
        the history only what the user heard of it."""
        history = self.history
        if action.unheard:
            # A speculative reply never heard leaves no trace, nor does the shorter
            # version of the turn it answered.
            self._said.pop(action.turn, None)
            asked = self._asked.pop(action.turn, None)
            if asked is not None and asked < history.next_index:
                turn = history.turn(asked)
                if turn is not None and turn.role == "user":
                    history.retract(asked)
            return
        index = self._said.get(action.turn)
        if index is None or action.utterance_id is None or index >= history.next_index:
            return
        said = history.turn(index)
        if said is None or said.role != "assistant":
            return
        history.truncate_assistant(index, heard_prefix(action.text, self.heard_ms(action), None))

    def heard_ms(self, action: CancelReply) -> float:
        """How much of the cancelled reply's audio the user heard, as far as we know."""
        played = None if action.utterance_id is None else self._played.get(action.utterance_id)
        return max(0.0, action.released_ms - self.config.lead_ms) if played is None else played


def _bound(table: dict[int, _V], keep: int) -> None:
    while len(table) > keep:
        del table[min(table)]
