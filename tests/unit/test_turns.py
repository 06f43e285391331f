"""The turn-taking core: scripted VAD edges and transcripts, a fake clock."""

from __future__ import annotations

import random

import pytest

from duplexvoice.orchestrator.sessions.turns import (
    Abandon,
    Confirm,
    Decision,
    Ending,
    Heard,
    HoldSpeech,
    InterruptSpeech,
    Reply,
    ResumeSpeech,
    Transcribe,
    TurnConfig,
    TurnTaking,
    classify_ending,
)

pytestmark = pytest.mark.unit


def taking(**kw: object) -> TurnTaking:
    kw.setdefault("adaptive", False)  # the plain silence timeout unless a test says
    kw.setdefault("end_mode", "text")  # adaptive: the text rule (test_turn_end.py: the rest)
    kw.setdefault("end_of_turn_ms", 500)
    return TurnTaking(TurnConfig(**kw))  # type: ignore[arg-type]


def speaking(**kw: object) -> TurnTaking:
    core = taking(**kw)
    core.system_speaking(True)
    return core


# -- the user's turn while the system is silent ------------------------------------------

def test_a_turn_is_transcribed_at_the_offset_and_confirmed_after_the_silence() -> None:
    core = taking(end_of_turn_ms=500)
    assert core.speech_started(1.0) == [] and core.turn == 1
    # The offset comes 0.1 s after the last speech (the VAD's hangover).
    assert core.speech_ended(2.1, silence_s=0.1) == [Transcribe(1)]
    assert core.next_deadline == pytest.approx(2.5)
    assert core.transcript(1, "Hello there.", True, 2.2) == [Reply(1, "Hello there.", False)]
    assert core.tick(2.49) == []
    assert core.tick(2.5) == [Confirm(1, "Hello there.")]
    assert core.next_deadline is None


def test_speech_before_the_end_of_turn_continues_the_same_turn() -> None:
    core = taking()
    core.speech_started(1.0)
    core.speech_ended(2.0)
    core.transcript(1, "I went to the", True, 2.1)
    assert core.speech_started(2.3) == [Abandon(1)]  # drop the shorter version's reply
    assert core.turn == 1
    assert core.transcript(1, "I went to the", True, 2.4) == []  # stale: the turn went on
    assert core.speech_ended(3.0) == [Transcribe(1)]
    assert core.transcript(1, "I went to the shop.", True, 3.1) == [
        Reply(1, "I went to the shop.", False)]
    assert core.tick(3.5) == [Confirm(1, "I went to the shop.")]
    assert core.speech_started(5.0) == [] and core.turn == 2


def test_a_short_noise_is_no_turn() -> None:
    core = taking(min_turn_ms=150)
    core.speech_started(1.0)
    assert core.speech_ended(1.1) == [Abandon(1, closed=True)]
    assert core.next_deadline is None
    core.speech_started(2.0)
    assert core.turn == 2


def test_a_transcript_later_than_the_end_of_turn_replies_when_it_comes() -> None:
    core = taking(end_of_turn_ms=300)
    core.speech_started(1.0)
    core.speech_ended(2.0)
    assert core.tick(2.3) == [Confirm(1, None)]
    assert core.transcript(1, "Late words.", True, 2.6) == [Reply(1, "Late words.", True)]
    assert core.transcript(1, "Late words.", True, 2.7) == []  # once


def test_an_empty_transcript_gets_no_reply() -> None:
    core = taking()
    core.speech_started(1.0)
    core.speech_ended(2.0)
    assert core.transcript(1, "", True, 2.1) == []
    assert core.tick(2.5) == [Confirm(1, "")]


def test_without_speculation_the_reply_waits_for_the_end_of_turn() -> None:
    core = taking(speculative_reply=False)
    core.speech_started(1.0)
    core.speech_ended(2.0)
    assert core.transcript(1, "Hi there you.", True, 2.1) == []
    assert core.tick(2.5) == [Confirm(1, "Hi there you."), Reply(1, "Hi there you.", True)]


def test_adaptive_end_of_turn_follows_the_transcript() -> None:
    core = taking(adaptive=True, end_of_turn_ms=500, complete_end_ms=200, trailing_end_ms=900)
    core.speech_started(1.0)
    core.speech_ended(2.0)
    assert core.next_deadline == pytest.approx(2.5)  # no transcript yet: the default
    core.transcript(1, "I would like a coffee.", True, 2.1)
    assert core.next_deadline == pytest.approx(2.2)
    # A complete sentence whose transcript came after its short wait: at once.
    core2 = taking(adaptive=True, complete_end_ms=200)
    core2.speech_started(1.0)
    core2.speech_ended(2.0)
    out = core2.transcript(1, "I would like a coffee.", True, 2.3)
    assert out == [Reply(1, "I would like a coffee.", False), Confirm(1, "I would like a coffee.")]
    core3 = taking(adaptive=True, end_of_turn_ms=500, trailing_end_ms=900)
    core3.speech_started(1.0)
    core3.speech_ended(2.0)
    core3.transcript(1, "I would like a coffee and", True, 2.1)
    assert core3.tick(2.5) == [] and core3.next_deadline == pytest.approx(2.9)


def test_adaptive_off_ignores_the_transcript() -> None:
    core = taking(adaptive=False, end_of_turn_ms=500)
    core.speech_started(1.0)
    core.speech_ended(2.0)
    core.transcript(1, "I would like a coffee.", True, 2.1)
    assert core.next_deadline == pytest.approx(2.5)


@pytest.mark.parametrize(("text", "ending"), [
    ("I would like a coffee.", Ending.COMPLETE),
    ("What time is it?", Ending.COMPLETE),
    ("Yes.", Ending.NEUTRAL),  # too short to tell
    ("I went there and", Ending.TRAILING),
    ("I went there, and...", Ending.TRAILING),
    ("So, um.", Ending.TRAILING),
    ("I think that the", Ending.TRAILING),
    ("Well I went there,", Ending.TRAILING),
    ("I went there", Ending.NEUTRAL),
    ("", Ending.NEUTRAL),
])
def test_classify_ending(text: str, ending: Ending) -> None:
    assert classify_ending(text) is ending


def test_a_turn_too_long_is_ended_by_force_and_the_speech_goes_on() -> None:
    core = taking(max_turn_ms=10_000)
    core.speech_started(0.0)
    assert core.next_deadline == pytest.approx(10.0)
    assert core.tick(10.0) == [Transcribe(1), Confirm(1, None, forced=True)]
    assert core.turn == 2 and core.user_speaking
    assert core.transcript(1, "A long speech.", True, 10.5) == [Reply(1, "A long speech.", True)]
    assert core.speech_ended(12.0) == [Transcribe(2)]


# -- barge-in ------------------------------------------------------------------------------

def test_speech_over_the_system_holds_then_interrupts_after_the_minimum() -> None:
    core = speaking(interrupt_after_ms=400)
    assert core.speech_started(10.0) == [HoldSpeech()]
    assert core.holding and core.next_deadline == pytest.approx(10.4)
    assert core.tick(10.39) == []
    assert core.tick(10.4) == [InterruptSpeech()]
    assert not core.holding
    # The speech is the user's new turn.
    assert core.speech_ended(11.0) == [Transcribe(1)]


def test_a_short_noise_over_the_system_resumes_after_a_short_silence() -> None:
    core = speaking(interrupt_after_ms=400, resume_after_ms=250)
    core.speech_started(10.0)
    assert core.speech_ended(10.2, silence_s=0.1) == []
    assert core.next_deadline == pytest.approx(10.35)  # last speech 10.1 + 0.25
    assert core.tick(10.35) == [ResumeSpeech(), Abandon(1, closed=True)]
    assert not core.holding and core.next_deadline is None


def test_coughs_add_up_to_a_real_interruption() -> None:
    core = speaking(interrupt_after_ms=400, resume_after_ms=250)
    core.speech_started(10.0)
    core.speech_ended(10.25)  # 0.25 s
    assert core.speech_started(10.4) == []  # within the resume wait: still held
    assert core.next_deadline == pytest.approx(10.55)  # 0.15 s more makes 0.4
    assert core.tick(10.55) == [InterruptSpeech()]


def test_speech_ending_late_without_a_tick_still_interrupts() -> None:
    core = speaking(interrupt_after_ms=400)
    core.speech_started(10.0)
    assert core.speech_ended(10.5) == [InterruptSpeech(), Transcribe(1)]


def test_words_interrupt_once_enough_speech_was_heard() -> None:
    core = speaking(interrupt_after_ms=400, words_after_ms=200)
    core.speech_started(10.0)
    assert core.transcript(1, "stop", False, 10.1) == []  # too soon: could be a noise
    assert core.transcript(1, "uh", False, 10.25) == [InterruptSpeech()]
    assert core.holding is False


def test_noise_transcribed_as_a_letter_does_not_interrupt() -> None:
    core = speaking(words_after_ms=0)
    core.speech_started(10.0)
    assert core.transcript(1, "I.", False, 10.3) == []
    assert core.holding


def test_the_system_ending_during_a_hold_leaves_the_users_turn() -> None:
    core = speaking()
    core.speech_started(10.0)
    assert core.system_speaking(False) == []
    assert not core.holding
    assert core.speech_ended(11.0) == [Transcribe(1)]


def test_the_system_ending_while_a_noise_waits_to_be_resumed_drops_the_noise() -> None:
    core = speaking(resume_after_ms=250)
    core.speech_started(10.0)
    core.speech_ended(10.1)
    assert core.system_speaking(False) == [Abandon(1, closed=True)]
    assert core.next_deadline is None


def test_speech_during_a_speculative_reply_cancels_it_without_a_hold() -> None:
    core = taking()
    core.speech_started(1.0)
    core.speech_ended(2.0)
    core.transcript(1, "Hello there friend.", True, 2.1)
    # The reply is speculative: the system is not speaking yet.
    assert core.speech_started(2.2) == [Abandon(1)]
    assert not core.holding


def test_speech_while_a_confirmed_reply_is_generated_holds() -> None:
    core = taking()
    core.speech_started(1.0)
    core.speech_ended(2.0)
    core.tick(2.5)
    core.system_speaking(True)  # the machine: a confirmed reply is being generated
    assert core.speech_started(2.6) == [HoldSpeech()]


def test_stale_transcripts_are_ignored() -> None:
    core = taking()
    core.speech_started(1.0)
    core.speech_ended(2.0)
    core.tick(2.5)
    core.transcript(1, "one", True, 2.6)
    core.speech_started(3.0)
    assert core.transcript(1, "one again", True, 3.1) == []
    assert core.transcript(7, "nobody", False, 3.1) == []


@pytest.mark.parametrize("seed", range(40))
def test_random_timelines_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    core = TurnTaking(TurnConfig(adaptive=rng.random() < 0.5, max_turn_ms=3000))
    now = 0.0
    holds = 0
    resumed = False  # a resume whose late words may still interrupt
    confirmed: set[int] = set()
    transcribed: set[int] = set()
    for _ in range(300):
        now += rng.choice([0.0, 0.01, 0.05, 0.2, 0.6])
        roll = rng.random()
        out: list[Decision]
        if roll < 0.2:
            out = core.speech_started(now)
        elif roll < 0.4:
            out = core.speech_ended(now, rng.choice([0.0, 0.1]),
                                    checking_words=rng.random() < 0.5)
        elif roll < 0.55:
            out = core.transcript(rng.choice([core.turn, core.turn - 1]),
                                  rng.choice(["", "and", "Hello there friend.", "um"]),
                                  rng.random() < 0.5, now)
        elif roll < 0.65:
            out = core.system_speaking(rng.random() < 0.5)
        else:
            deadline = core.next_deadline
            if deadline is not None and deadline > now:
                now = deadline
            out = core.tick(now)
        for d in out:
            if isinstance(d, HoldSpeech):
                assert holds == 0
                holds = 1
            elif isinstance(d, InterruptSpeech):
                assert holds == 1 or resumed
                holds, resumed = 0, False
            elif isinstance(d, ResumeSpeech):
                assert holds == 1
                holds, resumed = 0, True
            elif isinstance(d, Transcribe):
                transcribed.add(d.turn)
            elif isinstance(d, Confirm):
                assert d.turn not in confirmed
                assert d.turn in transcribed
                confirmed.add(d.turn)
        if not core.holding:
            holds = 0  # the system stopped speaking: the hold is moot
        deadline = core.next_deadline
        assert deadline is None or deadline >= now - 30  # no deadline far in the past


def test_a_barge_in_counts_its_speech_from_when_it_began() -> None:
    # The VAD confirmed the onset 0.1 s after the speech began: 0.4 s of speech is
    # reached 0.3 s after the hold.
    core = speaking(interrupt_after_ms=400)
    assert core.speech_started(10.0, lead_s=0.1) == [HoldSpeech()]
    assert core.next_deadline == pytest.approx(10.3)
    assert core.tick(10.3) == [InterruptSpeech()]


def test_an_onset_never_reaches_back_before_the_last_speech_ended() -> None:
    core = speaking(interrupt_after_ms=400, resume_after_ms=250)
    core.speech_started(10.0)
    core.speech_ended(10.2)  # 0.2 s
    core.speech_started(10.3, lead_s=0.5)  # counts from 10.2 at the earliest
    assert core.next_deadline == pytest.approx(10.4)


def test_a_short_voice_whose_offset_comes_late_is_not_an_interruption() -> None:
    # "mm" for 0.3 s: the voice stops at 10.3, the offset is confirmed 0.16 s later.
    core = speaking(interrupt_after_ms=400, resume_after_ms=250)
    core.speech_started(10.0)
    assert core.speech_paused(10.35, silence_s=0.05) == []
    assert core.next_deadline is None or core.next_deadline > 10.4
    assert core.tick(10.4) == []  # 0.4 s since the onset, but only 0.3 s of voice
    assert core.speech_ended(10.46, silence_s=0.16) == []
    assert core.tick(10.55) == [ResumeSpeech(), Abandon(1, closed=True)]


def test_voice_coming_back_counts_on_towards_an_interruption() -> None:
    core = speaking(interrupt_after_ms=400)
    core.speech_started(10.0)
    core.speech_paused(10.2, silence_s=0.05)
    assert core.speech_resumed(10.25) == []
    assert core.next_deadline == pytest.approx(10.4)
    assert core.tick(10.4) == [InterruptSpeech()]


def test_a_pause_after_enough_voice_still_interrupts() -> None:
    core = speaking(interrupt_after_ms=400)
    core.speech_started(10.0)
    assert core.speech_paused(10.5, silence_s=0.05) == [InterruptSpeech()]  # 0.45 s of voice


def test_a_held_speech_waits_for_its_words_before_resuming() -> None:
    core = speaking(interrupt_after_ms=400, resume_after_ms=250, words_wait_ms=300,
                    words_after_ms=200)
    core.speech_started(10.0)
    assert core.speech_ended(10.46, silence_s=0.16, checking_words=True) == []  # 0.3 s
    assert core.tick(10.55) == []  # the resume is due, but the words are not in yet
    assert core.transcript(1, "Wait,", False, 10.6) == [InterruptSpeech()]


def test_no_words_resume_at_once_and_no_answer_resumes_at_the_cap() -> None:
    core = speaking(resume_after_ms=250, words_wait_ms=300)
    core.speech_started(10.0)
    core.speech_ended(10.36, silence_s=0.16, checking_words=True)
    assert core.transcript(1, "", False, 10.6) == [ResumeSpeech(), Abandon(1, closed=True)]
    core2 = speaking(resume_after_ms=250, words_wait_ms=300)
    core2.speech_started(10.0)
    core2.speech_ended(10.36, silence_s=0.16, checking_words=True)
    assert core2.next_deadline == pytest.approx(10.75)
    assert core2.tick(10.75) == [ResumeSpeech(), Abandon(1, closed=True)]


# -- typed turns ---------------------------------------------------------------------------

def test_a_typed_turn_is_answered_at_once() -> None:
    core = taking()
    assert core.typed(1.0, "What time is it?") == [Reply(1, "What time is it?", True)]
    assert core.turn == 1 and core.next_deadline is None
    # The next spoken turn is the next number.
    core.speech_started(2.0)
    assert core.turn == 2


def test_a_typed_turn_takes_the_floor_from_the_system() -> None:
    core = speaking()
    assert core.typed(1.0, "Stop, tell me the weather.") == [
        InterruptSpeech(), Reply(1, "Stop, tell me the weather.", True)]
    assert not core.holding


def test_a_typed_turn_during_a_hold_interrupts_instead_of_resuming() -> None:
    core = speaking()
    assert core.speech_started(1.0) == [HoldSpeech()]
    core.speech_ended(1.1)  # a short noise: would resume at 1.35
    out = core.typed(1.2, "Go on.")
    assert out == [InterruptSpeech(), Abandon(1, closed=True), Reply(2, "Go on.", True)]
    assert core.tick(2.0) == []  # no ResumeSpeech after the floor was taken


def test_a_typed_turn_drops_a_spoken_turn_waiting_for_its_end() -> None:
    core = taking()
    core.speech_started(1.0)
    core.speech_ended(2.0)
    assert core.transcript(1, "I want", True, 2.1) == [Reply(1, "I want", False)]
    out = core.typed(2.2, "A coffee please.")
    assert out == [Abandon(1, closed=True), Reply(2, "A coffee please.", True)]
    assert core.tick(5.0) == []  # the spoken turn never ends on its own


def test_speech_going_on_while_the_user_types_becomes_the_next_turn() -> None:
    core = taking()
    core.speech_started(1.0)
    out = core.typed(1.5, "Hello.")
    assert out == [Abandon(1, closed=True), Reply(2, "Hello.", True)]
    assert core.turn == 3 and core.user_speaking
    assert core.speech_ended(2.5) == [Transcribe(3)]


def test_a_late_transcript_of_a_forced_turn_gets_no_reply_after_a_typed_turn() -> None:
    core = taking(max_turn_ms=1000)
    core.speech_started(0.0)
    out = core.tick(1.0)
    assert Confirm(1, None, forced=True) in out  # waiting for turn 1's transcript
    core.typed(1.1, "Never mind.")
    # Its transcript still reaches the client, with no reply.
    assert core.transcript(1, "A long story", True, 1.2) == [Heard(1, "A long story")]


# -- a short interruption's words against the resume (the race, in both orders) -----------

def short_wait() -> TurnTaking:
    """'Wait,' over the system: 0.3 s of speech, its words being checked; the resume is
    due at 10.3 + 0.25 and the words check's cap at 10.85."""
    core = speaking(interrupt_after_ms=400, resume_after_ms=250, words_wait_ms=300,
                    words_after_ms=200, late_words_ms=1000)
    assert core.speech_started(10.0) == [HoldSpeech()]
    assert core.speech_ended(10.46, silence_s=0.16, checking_words=True) == []
    return core


def test_words_before_the_resume_interrupt() -> None:
    core = short_wait()
    assert core.tick(10.55) == []
    assert core.transcript(1, "Wait,", False, 10.7) == [InterruptSpeech()]
    assert core.tick(11.0) == []


def test_words_after_the_resume_still_interrupt() -> None:
    core = short_wait()
    assert core.tick(10.85) == [ResumeSpeech(), Abandon(1, closed=True)]
    assert not core.holding
    # The recognizer was busy: the words come after playback resumed.
    assert core.transcript(1, "Wait,", False, 11.0) == [InterruptSpeech()]
    assert core.transcript(1, "Wait,", False, 11.1) == []  # once


def test_late_words_interrupt_a_new_hold_and_its_speech_is_the_users_turn() -> None:
    core = short_wait()
    core.tick(10.85)
    # "... that's not what I asked": a new hold, turn 2; then turn 1's words arrive.
    assert core.speech_started(10.9) == [HoldSpeech()]
    assert core.turn == 2
    assert core.transcript(1, "Wait,", False, 11.0) == [InterruptSpeech()]
    assert not core.holding
    assert core.speech_ended(12.0) == [Transcribe(2)]


def test_no_late_words_no_interruption() -> None:
    core = short_wait()
    core.tick(10.85)
    assert core.transcript(1, "", False, 11.0) == []  # a cough after all
    assert core.transcript(1, "I.", False, 11.05) == []  # a stray letter is no word
    # Words past late_words_ms: the moment is gone.
    core = short_wait()
    core.tick(10.85)
    assert core.transcript(1, "Wait,", False, 11.86) == []
    # The system stopped speaking meanwhile: nothing to interrupt.
    core = short_wait()
    core.tick(10.85)
    assert core.system_speaking(False) == []
    assert core.transcript(1, "Wait,", False, 11.0) == []


def test_a_check_that_answered_no_words_leaves_nothing_pending() -> None:
    core = short_wait()
    assert core.transcript(1, "", False, 10.6) == [ResumeSpeech(), Abandon(1, closed=True)]
    assert core.transcript(1, "Wait,", False, 10.9) == []


def test_speech_too_short_for_words_or_late_words_off_resumes_for_good() -> None:
    core = speaking(resume_after_ms=250, words_wait_ms=300, words_after_ms=200)
    core.speech_started(10.0)
    core.speech_ended(10.25, silence_s=0.1, checking_words=True)  # 0.15 s of speech
    core.tick(10.7)
    assert core.transcript(1, "Hey", False, 10.8) == []
    core = speaking(resume_after_ms=250, words_wait_ms=300, late_words_ms=0)
    core.speech_started(10.0)
    core.speech_ended(10.46, silence_s=0.16, checking_words=True)
    assert core.tick(10.85) == [ResumeSpeech(), Abandon(1, closed=True)]
    assert core.transcript(1, "Wait,", False, 11.0) == []
