"""The listening core of a conversation session, pure: scripted VAD edges, transcripts,
machine actions and playback reports in, decisions out; time and the audio clock are
plain numbers (no event loop, no audio)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from duplexvoice.orchestrator.sessions.events import (
    CancelReply,
    TranscribeTurn,
    TurnClosed,
    UserSpeechEnded,
    UserSpeechPaused,
    UserSpeechResumed,
    UserSpeechStarted,
    UserTranscript,
    UserTurnScore,
)
from duplexvoice.orchestrator.sessions.listening import (
    NOT_LISTENING,
    PREROLL_S,
    RATE_LIMITED,
    AudioBudget,
    CancelEarlyFinal,
    Decision,
    Dropped,
    EarlyFinal,
    Listening,
    ListeningConfig,
    NotListening,
    Score,
    Transcribe,
    holding,
    system_speaking,
)
from duplexvoice.orchestrator.sessions.state import State
from duplexvoice.replies.history import CUT_MARK
from duplexvoice.speech.vad_gate import GateEvent, SpeechOffset, SpeechOnset

pytestmark = pytest.mark.unit

RATE = 16_000
FRAME = 320  # 20 ms
CONFIG = ListeningConfig(partial_interval_ms=400, barge_in_words_ms=200, max_turn_ms=30_000,
                         max_audio_rate=2.0, max_audio_burst_s=5.0, lead_ms=100.0)
T0 = 1000.0  # the fake clock at the session's start


class Mic:
    """A listening core fed 20 ms at a time; the fake clock runs with the audio."""

    def __init__(self, config: ListeningConfig = CONFIG, heard_s: float = 1.0) -> None:
        self.core = Listening(config, T0)
        self.end = samples(heard_s)  # samples heard (silence: nothing to decide)

    @property
    def now(self) -> float:
        return T0 + self.end / RATE

    @property
    def s(self) -> float:
        return self.end / RATE

    def hear(self, *edges: GateEvent, quiet_s: float | None = None,
             holding: bool = False) -> list[Decision]:
        self.end += FRAME
        state = State.BARGED_IN if holding else State.SPEAKING
        return list(self.core.audio(self.end, edges, quiet_s, state, self.now))

    def frames(self, n: int, *, holding: bool = False) -> list[Decision]:
        out: list[Decision] = []
        for _ in range(n):
            out += self.hear(holding=holding)
        return out

    def onset(self, ago_s: float = 0.1, *, holding: bool = False) -> list[Decision]:
        """Speech confirmed now that began ``ago_s`` before the end of this frame."""
        end_s = (self.end + FRAME) / RATE
        return self.hear(SpeechOnset(end_s - ago_s, end_s), holding=holding)

    def offset(self, ago_s: float = 0.16, *, holding: bool = False) -> list[Decision]:
        end_s = (self.end + FRAME) / RATE
        return self.hear(SpeechOffset(end_s - ago_s, end_s), holding=holding)


def jobs(decisions: list[Decision]) -> list[Transcribe]:
    return [d for d in decisions if isinstance(d, Transcribe)]


def samples(seconds: float) -> int:
    return int(seconds * RATE)


# -- turn audio --------------------------------------------------------------------


def test_an_onset_opens_the_turn_with_its_preroll_and_says_when_speech_began() -> None:
    mic = Mic(replace(CONFIG, partial_interval_ms=0))
    assert mic.frames(50) == []  # 1 s of silence
    out = mic.onset(0.12)
    assert out == [UserSpeechStarted(pytest.approx(0.12))]
    assert mic.core.speech_started_at == pytest.approx(mic.now - 0.12)
    began = mic.s - 0.12
    mic.frames(10)
    assert mic.core.act(TranscribeTurn(1)) == [
        Transcribe(1, int((began - PREROLL_S) * RATE), mic.end, final=True)]


def test_the_preroll_never_reaches_before_the_first_sample() -> None:
    mic = Mic(replace(CONFIG, partial_interval_ms=0), heard_s=0.0)
    mic.frames(4)
    mic.onset(0.1)
    assert mic.core.act(TranscribeTurn(1))[0].start == 0


def test_an_offset_says_how_long_the_silence_already_is_and_when_speech_ended() -> None:
    mic = Mic(replace(CONFIG, partial_interval_ms=0))
    mic.onset()
    mic.frames(20)
    assert mic.offset(0.16) == [UserSpeechEnded(pytest.approx(0.16), checking_words=False)]
    assert mic.core.speech_ended_at == pytest.approx(mic.now - 0.16)


def test_turn_closed_after_the_speech_opens_the_next_turn_at_the_next_onset() -> None:
    mic = Mic(replace(CONFIG, partial_interval_ms=0))
    mic.frames(50)
    mic.onset()
    mic.frames(10)
    mic.offset()
    mic.frames(10)
    assert mic.core.act(TurnClosed(1)) == []
    # No open turn: a final now has no audio.
    assert mic.core.act(TranscribeTurn(1)) == [Transcribe(1, mic.end, mic.end, final=True)]
    mic.frames(50)
    mic.onset(0.1)
    began = mic.s - 0.1
    assert mic.core.act(TranscribeTurn(2))[0].start == int((began - PREROLL_S) * RATE)


def test_turn_closed_while_speaking_starts_the_next_turn_at_once() -> None:
    # A turn ended by force (max_turn_ms): the speech going on is the next turn's,
    # with no pre-roll (the closed turn had that audio) and a fresh partial interval.
    mic = Mic()
    mic.onset()
    mic.frames(5)
    mic.core.transcribed(1, "so", final=False)
    closed_at = mic.end
    assert mic.core.act(TurnClosed(1)) == []
    assert jobs(mic.frames(19)) == []  # 380 ms of the new turn: no partial yet
    assert jobs(mic.hear()) == [Transcribe(None, closed_at, mic.end, final=False)]
    assert mic.core.act(TranscribeTurn(2))[0].start == closed_at


# -- partials ----------------------------------------------------------------------


def test_partials_come_every_interval_of_new_speech_one_at_a_time() -> None:
    mic = Mic()
    mic.frames(50)
    out = mic.onset(0.04)
    start = int((mic.s - 0.04 - PREROLL_S) * RATE)
    # The pre-roll counts as heard: 340 ms of the turn so far, the first partial at 400.
    assert jobs(out) == []
    assert mic.frames(2) == []
    assert mic.frames(1) == [Transcribe(None, start, mic.end, final=False)]
    assert mic.end - start >= samples(0.4) > mic.end - FRAME - start
    # One at a time: however much speech comes, nothing more while it runs.
    assert jobs(mic.frames(60)) == []
    # Its answer is posted, and the next one starts at once: its interval has passed.
    assert mic.core.transcribed(1, "hello", final=False) == [UserTranscript(1, "hello", False)]
    assert mic.hear() == [Transcribe(None, start, mic.end, final=False)]
    mic.core.transcribed(1, "hello there", final=False)
    assert jobs(mic.frames(19)) == []
    assert jobs(mic.hear()) == [Transcribe(None, start, mic.end, final=False)]


def test_an_empty_partial_is_posted() -> None:
    # A held barge-in may be waiting for "no words".
    mic = Mic()
    mic.onset()
    mic.frames(20)
    assert mic.core.transcribed(1, "", final=False) == [UserTranscript(1, "", False)]


def test_no_partials_without_speech_nor_when_switched_off() -> None:
    mic = Mic()
    mic.onset()
    mic.frames(15)
    mic.core.transcribed(1, "hi", final=False)
    mic.offset()
    assert jobs(mic.frames(100)) == []  # silence after the offset
    off = Mic(replace(CONFIG, partial_interval_ms=0))
    off.onset()
    assert jobs(off.frames(100, holding=True)) == []
    # No partials: a held speech's words cannot be checked.
    assert off.offset(holding=True) == [UserSpeechEnded(pytest.approx(0.16),
                                                        checking_words=False)]


def test_partials_come_sooner_while_holding() -> None:
    # 320 ms of the turn with its pre-roll: not yet a partial, but one when holding.
    assert jobs(Mic().onset(0.02)) == []
    mic = Mic()
    assert len(jobs(mic.onset(0.02, holding=True))) == 1
    mic.core.transcribed(1, "", final=False)
    assert jobs(mic.frames(9, holding=True)) == []
    assert len(jobs(mic.hear(holding=True))) == 1  # 200 ms later


def test_a_held_speech_that_stops_is_checked_for_words_at_once() -> None:
    mic = Mic()
    start = jobs(mic.onset(holding=True))[0].start
    mic.core.transcribed(1, "", final=False)
    assert jobs(mic.frames(5, holding=True)) == []  # 100 ms: not yet the next one
    out = mic.offset(0.16, holding=True)
    assert out == [UserSpeechEnded(pytest.approx(0.16), checking_words=True),
                   Transcribe(None, start, mic.end, final=False)]


def test_a_words_check_asked_while_a_partial_runs_follows_it() -> None:
    mic = Mic()
    out = mic.onset(holding=True) + mic.frames(8, holding=True)
    assert len(jobs(out)) == 1  # running: it did not hear the end of the speech
    start = jobs(out)[0].start
    out = mic.offset(holding=True)
    assert out == [UserSpeechEnded(pytest.approx(0.16), checking_words=True)]
    mic.frames(3, holding=True)
    # The partial that missed the end heard nothing: not posted (the hold waits for
    # the real check), which starts now, over the whole speech.
    assert mic.core.transcribed(1, "", final=False) == [
        Transcribe(None, start, mic.end, final=False)]
    assert mic.core.transcribed(1, "", final=False) == [UserTranscript(1, "", False)]
    assert jobs(mic.frames(50, holding=True)) == []  # nothing more: the speech is over


def test_words_from_the_partial_that_missed_the_end_are_posted_and_checked_again() -> None:
    mic = Mic()
    mic.onset(holding=True)
    mic.frames(8, holding=True)
    mic.offset(holding=True)
    out = mic.core.transcribed(1, "wait", final=False)
    assert out[0] == UserTranscript(1, "wait", False)
    assert [job.final for job in jobs(out)] == [False]


def test_no_words_check_follows_once_the_turn_is_closed() -> None:
    mic = Mic()
    mic.onset(holding=True)
    mic.frames(8, holding=True)
    mic.offset(holding=True)
    mic.core.act(TurnClosed(1))
    assert mic.core.transcribed(1, "", final=False) == []


def test_a_partial_the_recognizer_dropped_is_no_answer() -> None:
    # Busy with finals, it dropped the words check: not "no words" (which would let a
    # held "Wait," resume); the hold waits for its cap instead.
    mic = Mic()
    mic.onset(holding=True)
    mic.core.transcribed(1, "", final=False)
    mic.frames(5, holding=True)
    assert len(jobs(mic.offset(holding=True))) == 1
    assert mic.core.transcribed(1, "", final=False, answered=False) == []
    # A partial dropped while a words check waits for it: the check still follows.
    mic = Mic()
    mic.onset(holding=True)
    mic.frames(8, holding=True)
    mic.offset(holding=True)
    assert jobs(mic.core.transcribed(1, "", final=False, answered=False))


# -- the end-of-turn score -----------------------------------------------------------


def scoring() -> Mic:
    mic = Mic(replace(CONFIG, partial_interval_ms=0, score_turns=True))
    mic.onset()
    mic.frames(20)
    mic.offset()
    return mic


def test_the_final_at_an_offset_comes_with_a_score_of_the_same_audio() -> None:
    mic = scoring()
    final, score = mic.core.act(TranscribeTurn(1))
    assert isinstance(final, Transcribe) and final.final
    assert score == Score(1, final.start, final.end, onsets=1)
    assert mic.core.scored(score, 0.8) == [UserTurnScore(1, 0.8)]
    assert mic.core.scored(score, None) == []  # no answer: nothing to post
    # Not asked when switched off, nor for a turn ended by force mid-speech.
    off = Mic(replace(CONFIG, partial_interval_ms=0))
    off.onset()
    off.frames(20)
    off.offset()
    assert [type(d) for d in off.core.act(TranscribeTurn(1))] == [Transcribe]
    mic = Mic(replace(CONFIG, partial_interval_ms=0, score_turns=True))
    mic.onset()
    mic.frames(20)
    assert [type(d) for d in mic.core.act(TranscribeTurn(1))] == [Transcribe]


def test_a_score_of_speech_that_went_on_is_not_posted() -> None:
    mic = scoring()
    score = mic.core.act(TranscribeTurn(1))[1]
    assert isinstance(score, Score)
    mic.frames(5)
    mic.onset()  # the user went on before the model answered
    assert mic.core.scored(score, 0.9) == []
    mic.frames(10)
    mic.offset()
    newer = mic.core.act(TranscribeTurn(1))[1]
    assert isinstance(newer, Score)
    assert mic.core.scored(newer, 0.9) == [UserTurnScore(1, 0.9)]


def test_finals_are_always_posted_and_leave_partials_alone() -> None:
    mic = Mic()
    assert len(jobs(mic.onset() + mic.frames(3))) == 1
    assert mic.core.transcribed(1, "", final=True) == [UserTranscript(1, "", True)]
    assert jobs(mic.frames(30)) == []  # the partial still runs


# -- pauses ------------------------------------------------------------------------


def test_pauses_within_speech_are_told_once_each_way() -> None:
    mic = Mic(replace(CONFIG, partial_interval_ms=0))
    mic.onset()
    assert mic.hear(quiet_s=0.02) == []
    assert mic.hear(quiet_s=0.05) == [UserSpeechPaused(0.05)]
    assert mic.hear(quiet_s=0.07) == []
    assert mic.hear(quiet_s=None) == []  # not within speech: nothing changes
    assert mic.hear(quiet_s=0.0) == [UserSpeechResumed()]
    assert mic.hear(quiet_s=0.01) == []
    assert mic.hear(quiet_s=0.06) == [UserSpeechPaused(0.06)]
    # An edge starts afresh: the offset ends the pause without a resume.
    end_s = (mic.end + FRAME) / RATE
    assert mic.hear(SpeechOffset(end_s - 0.16, end_s)) == [
        UserSpeechEnded(pytest.approx(0.16))]
    mic.onset()
    assert mic.hear(quiet_s=0.05) == [UserSpeechPaused(0.05)]


# -- early finals ------------------------------------------------------------------


def early(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if isinstance(d, EarlyFinal | CancelEarlyFinal)]


def test_a_pause_asks_for_the_turns_audio_so_far_as_an_early_final_once() -> None:
    mic = Mic(replace(CONFIG, partial_interval_ms=0, early_final_ms=48))
    mic.onset(ago_s=0.1)
    start = samples(mic.s - 0.1 - PREROLL_S)
    mic.frames(20)
    assert early(mic.hear(quiet_s=0.04)) == []  # not yet
    assert early(mic.hear(quiet_s=0.06)) == [EarlyFinal(start, mic.end)]
    assert early(mic.hear(quiet_s=0.08)) == []  # once per pause
    # The offset's final takes it over: nothing withdrawn, and the next turn starts afresh.
    assert early(mic.offset()) == []
    assert early(mic.hear(quiet_s=None)) == []


def test_voice_again_withdraws_the_early_final_and_the_next_pause_asks_again() -> None:
    mic = Mic(replace(CONFIG, partial_interval_ms=0, early_final_ms=48))
    mic.onset()
    assert len(early(mic.hear(quiet_s=0.05))) == 1
    assert early(mic.hear(quiet_s=0.0)) == [CancelEarlyFinal()]
    assert early(mic.hear(quiet_s=0.02)) == []
    again = early(mic.hear(quiet_s=0.05))
    assert len(again) == 1 and isinstance(again[0], EarlyFinal) and again[0].end == mic.end


def test_no_early_final_when_switched_off_nor_while_holding_nor_outside_a_turn() -> None:
    off = Mic(replace(CONFIG, partial_interval_ms=0))
    off.onset()
    assert early(off.hear(quiet_s=0.5)) == []
    held = Mic(replace(CONFIG, partial_interval_ms=0, early_final_ms=48))
    held.onset(holding=True)
    assert early(held.hear(quiet_s=0.2, holding=True)) == []  # the words check needs the ASR
    closed = Mic(replace(CONFIG, partial_interval_ms=0, early_final_ms=48))
    closed.core.act(TurnClosed(1))
    assert early(closed.hear(quiet_s=0.2)) == []  # no turn open


# -- microphone audio budget -------------------------------------------------------


def test_the_budget_allows_real_time_and_a_burst_but_not_a_flood() -> None:
    budget = AudioBudget(rate=2.0, burst_s=5.0, now=0.0)
    assert budget.take(5.0, 0.0)  # the burst
    assert not budget.take(0.02, 0.0)
    # Real time afterwards is fine forever: 20 ms every 20 ms.
    t = 0.0
    for _ in range(500):
        t += 0.02
        assert budget.take(0.02, t)
    assert not budget.take(30.0, t + 1.0)  # a minute at once is not
    assert budget.take(1.0, t + 1.0)  # and did not cost anything


def test_a_flood_is_dropped_with_one_error_a_second_and_the_budget_refills() -> None:
    core = Listening(CONFIG, T0)
    assert core.admit(5.0, T0) is None
    assert core.admit(0.02, T0) == Dropped(RATE_LIMITED)
    assert core.admit(2.0, T0 + 0.5) == Dropped(None)  # told already this second
    assert core.admit(0.02, T0 + 0.5) is None  # refilling at twice real time
    assert core.admit(5.0, T0 + 0.99) == Dropped(None)
    assert core.admit(5.0, T0 + 1.0) == Dropped(RATE_LIMITED)
    assert core.admit(4.0, T0 + 3.0) is None  # 2 s at 2x: full again


def test_audio_outside_conversation_mode_is_refused_once_a_second() -> None:
    refusals = NotListening()
    assert refusals.refuse(5.0) == NOT_LISTENING
    assert NOT_LISTENING.code == "INVALID_STATE"
    assert [refusals.refuse(5.0 + i * 0.02) for i in range(1, 50)] == [None] * 49
    assert refusals.refuse(6.0) == NOT_LISTENING


@pytest.mark.parametrize("state", list(State))
def test_which_states_count_as_the_system_speaking_and_holding(state: State) -> None:
    assert system_speaking(state) is (state in (State.SPEAKING, State.BARGED_IN, State.PAUSED))
    assert holding(state) is (state is State.BARGED_IN)


# -- what was heard of an interrupted reply ----------------------------------------

REPLY = "one two three four five six seven"


def answered(core: Listening, turn: int = 1, user: str = "count for me") -> int:
    """The reply engine's part: the user's words, then the reply's, in the history."""
    core.reply_asked(turn)
    core.history.add_user(user)
    index = core.history.add_assistant(REPLY)
    core.reply_said(turn, index)
    return index


def cancel(turn: int = 1, uid: int | None = 3, released_ms: float = 0.0,
           unheard: bool = False) -> CancelReply:
    return CancelReply(turn, uid, REPLY, released_ms, unheard)


def test_the_clients_playback_report_says_what_was_heard() -> None:
    core = Listening(CONFIG, T0)
    index = answered(core)
    core.playback(3, 400.0)  # 6 characters at 15 a second: "one two"
    core.reply_stopped(cancel(released_ms=5000.0))
    said = core.history.turn(index)
    assert said is not None and said.text == "one two" + CUT_MARK and said.cut_off


def test_without_a_report_what_the_server_released_minus_the_lead_was_heard() -> None:
    core = Listening(CONFIG, T0)
    index = answered(core)
    core.playback(2, 5000.0)  # another utterance's report
    core.reply_stopped(cancel(released_ms=1100.0))  # 1 s heard: 15 characters
    said = core.history.turn(index)
    assert said is not None and said.text == "one two three" + CUT_MARK


def test_audio_still_in_the_clients_lead_was_not_heard() -> None:
    core = Listening(CONFIG, T0)
    index = answered(core)
    core.reply_stopped(cancel(released_ms=80.0))
    said = core.history.turn(index)
    assert said is not None and said.text == CUT_MARK


def test_a_reply_never_released_keeps_its_words() -> None:
    core = Listening(CONFIG, T0)
    index = answered(core)
    core.reply_stopped(cancel(uid=None))
    said = core.history.turn(index)
    assert said is not None and said.text == REPLY and not said.cut_off


def test_only_the_last_playback_reports_are_kept() -> None:
    core = Listening(CONFIG, T0)
    index = answered(core)
    core.playback(3, 400.0)
    for uid in range(4, 12):
        core.playback(uid, 0.0)
    core.reply_stopped(cancel(released_ms=1100.0))  # uid 3's report was forgotten
    said = core.history.turn(index)
    assert said is not None and said.text == "one two three" + CUT_MARK


def test_an_unheard_speculative_reply_takes_the_user_turn_with_it() -> None:
    core = Listening(CONFIG, T0)
    answered(core, 1, "first turn")
    answered(core, 2, "count")  # speculative: the user went on
    core.reply_stopped(cancel(2, uid=None, unheard=True))
    assert [t.text for t in core.history.turns] == ["first turn", REPLY]
    # The longer version of the turn is answered in its place.
    answered(core, 2, "count for me")
    assert [t.text for t in core.history.turns] == ["first turn", REPLY, "count for me", REPLY]


def test_an_unheard_reply_whose_engine_added_nothing_retracts_nothing() -> None:
    core = Listening(CONFIG, T0)
    answered(core, 1)
    core.reply_asked(2)  # cancelled before the engine added the user's words
    core.reply_stopped(cancel(2, uid=None, unheard=True))
    assert len(core.history.turns) == 2


def test_a_newer_reply_to_the_same_turn_is_not_cut_by_the_older_ones_words() -> None:
    core = Listening(CONFIG, T0)
    answered(core)
    core.reply_asked(1)  # asked again: its words are not known yet
    core.reply_stopped(cancel(released_ms=1100.0))
    assert not any(t.cut_off for t in core.history.turns)


def test_stopping_ends_the_speech_being_heard() -> None:
    assert Listening(CONFIG, T0).stopped() == [UserSpeechEnded()]


def test_the_config_is_checked_and_sizes_the_audio_kept() -> None:
    assert CONFIG.ring_samples == int((30 + 2 + PREROLL_S) * RATE)
    for bad in ({"partial_interval_ms": -1}, {"lead_ms": -1.0}, {"max_turn_ms": 0},
                {"early_final_ms": -1},
                {"max_audio_rate": 0.0}, {"max_audio_burst_s": 0.0}):
        with pytest.raises(ValueError):
            replace(CONFIG, **bad)
