"""The talk client's view of the conversation: end of speech by energy, client-side
voice to voice, when a session has settled; and what it prints."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from duplexvoice.client.talk_state import ConversationTracker, Latency, SpeechEnd
from duplexvoice.client.talk_view import TalkView, describe, describe_latency

pytestmark = pytest.mark.unit

SPEECH = (np.sin(np.arange(320) / 3.0) * 0.3).astype(np.float32)
QUIET = np.full(320, 1e-4, np.float32)


def test_speech_end_is_the_last_loud_frame_sent() -> None:
    speech = SpeechEnd()
    assert not speech.observe(QUIET, 1.0) and speech.last_speech_at is None
    assert speech.observe(SPEECH, 1.02) and speech.observe(SPEECH, 1.04)
    assert not speech.observe(QUIET, 1.06)
    assert speech.last_speech_at == 1.04 and not speech.speaking


def test_speech_end_ignores_frames_far_under_the_loudest() -> None:
    speech = SpeechEnd(below_peak_db=30)
    speech.observe(SPEECH, 1.0)
    assert not speech.observe(SPEECH * 0.01, 1.02)  # -40 dB: breath, room tone
    assert speech.observe(SPEECH * 0.1, 1.04)  # -20 dB: a soft word
    assert not speech.observe(np.zeros(0, np.float32), 1.06)


def talk(tracker: ConversationTracker, *messages: tuple[float, dict[str, Any]]) -> None:
    for at, message in messages:
        tracker.on_message(message, at)


def test_client_voice_to_voice_is_speech_end_to_the_first_reply_frame() -> None:
    tracker, speech = ConversationTracker(), SpeechEnd()
    speech.observe(SPEECH, 2.0)
    speech.observe(QUIET, 2.02)
    talk(tracker, (2.8, {"type": "transcript", "text": "hi", "final": True, "turn": 1}),
         (2.8, {"type": "reply", "utterance_id": 3, "text": "hi", "turn": 1}))
    latency = tracker.on_frame(3, 2.65, speech)
    assert latency == Latency(1, "voice_to_voice", pytest.approx(650.0), "client")
    assert tracker.on_frame(3, 2.7, speech) is None  # only the first frame
    assert tracker.on_frame(4, 2.7, speech) is None  # not a reply (a --say text)
    assert "voice-to-voice 650 ms (client" in describe_latency(latency)


def test_server_metrics_are_collected() -> None:
    tracker = ConversationTracker()
    talk(tracker, (1.0, {"type": "metrics", "turn": 2, "voice_to_voice_ms": 610,
                         "transcript_ms": 290.5}))
    assert [(x.turn, x.kind, x.ms, x.source) for x in tracker.latencies] == [
        (2, "transcript", 290.5, "server"), (2, "voice_to_voice", 610.0, "server")]


def settled(tracker: ConversationTracker, now: float, speech: SpeechEnd,
            idle: bool = True, done: float | None = 10.0) -> bool:
    return tracker.settled(now, input_done_at=done, playback_idle=idle, speech=speech)


def test_settles_after_a_quiet_spell_once_the_input_ended() -> None:
    tracker, speech = ConversationTracker(quiet_s=1.5), SpeechEnd()
    talk(tracker, (9.0, {"type": "state", "state": "LISTENING"}))
    assert not settled(tracker, 20.0, speech, done=None)  # the input goes on
    assert not settled(tracker, 11.0, speech)  # quiet only since the input ended
    assert settled(tracker, 11.5, speech)
    assert not settled(tracker, 20.0, speech, idle=False)  # audio still to play
    talk(tracker, (12.0, {"type": "state", "state": "SPEAKING"}))
    assert not settled(tracker, 20.0, speech)


def test_a_turn_in_progress_waits_longer() -> None:
    tracker, speech = ConversationTracker(quiet_s=1.5, pending_quiet_s=5.0), SpeechEnd()
    speech.observe(SPEECH, 9.0)
    assert tracker.pending(speech)  # the user spoke, no final yet
    assert not settled(tracker, 12.0, speech)
    talk(tracker, (9.5, {"type": "transcript", "text": "book a", "final": False, "turn": 1}))
    assert not settled(tracker, 14.9, speech)  # 5 s from the input's end (10.0)
    assert settled(tracker, 15.1, speech)  # nothing came: noise, give up waiting
    talk(tracker, (15.2, {"type": "transcript", "text": "book a table", "final": True,
                          "turn": 1}))
    assert tracker.pending(speech)  # a final with words: its reply is coming
    talk(tracker, (15.3, {"type": "reply", "utterance_id": 1, "text": "x", "turn": 1}))
    assert not tracker.pending(speech)
    assert settled(tracker, 16.9, speech)


def test_a_failed_reply_or_an_empty_final_is_not_waited_for() -> None:
    tracker, speech = ConversationTracker(), SpeechEnd()
    talk(tracker, (1.0, {"type": "transcript", "text": "hello", "final": True, "turn": 1}),
         (1.1, {"type": "error", "code": "REPLY_FAILED", "message": "down"}))
    assert not tracker.pending(speech)
    talk(tracker, (2.0, {"type": "transcript", "text": " ", "final": True, "turn": 2}))
    assert not tracker.pending(speech)


def test_failed_utterances_and_session_end_are_noted() -> None:
    tracker = ConversationTracker()
    talk(tracker, (1.0, {"type": "utterance_end", "utterance_id": 1, "reason": "error",
                         "frames": 0}),
         (2.0, {"type": "session_end", "reason": "idle_timeout"}))
    assert tracker.failed_utterances == 1 and tracker.closed_reason == "idle_timeout"


def test_describe_lines() -> None:
    assert describe({"type": "transcript", "text": " a b ", "final": True, "turn": 1}) == "you: a b"
    assert describe({"type": "reply", "utterance_id": 2, "text": "ok", "turn": 1}) == "bot: ok"
    assert describe({"type": "interrupt", "utterance_id": 2, "reason": "interrupted"}) == (
        "interrupt utterance 2 (interrupted)")
    assert describe({"type": "metrics", "turn": 1, "voice_to_voice_ms": 612.4,
                     "barge_in_ms": 33}) == (
        "latency turn 1: voice-to-voice 612 ms (server), barge-in 33 ms (server)")
    assert describe({"type": "error", "code": "ASR_BUSY", "message": "busy"}) == (
        "error ASR_BUSY: busy")
    assert describe({"type": "binary"}) is None
    assert describe({"type": "metrics", "turn": 1}) is None


def test_partials_overwrite_one_line_on_a_terminal() -> None:
    out: list[str] = []
    view = TalkView(out.append, tty=True, start=0.0)
    view.message({"type": "transcript", "text": "book", "final": False, "turn": 1}, 1.0)
    view.message({"type": "transcript", "text": "book a", "final": False, "turn": 1}, 1.4)
    view.message({"type": "transcript", "text": "book a table", "final": True, "turn": 1}, 2.0)
    text = "".join(out)
    assert text.count("\n") == 1 and text.endswith("you: book a table\n")
    assert "\r\x1b[K[   1.40] you … book a" in text


def test_partials_are_plain_lines_in_a_pipe() -> None:
    out: list[str] = []
    view = TalkView(out.append, tty=False, start=0.0)
    view.message({"type": "transcript", "text": "book", "final": False, "turn": 1}, 1.0)
    view.message({"type": "state", "state": "SPEAKING"}, 2.0)
    assert out == ["[   1.00] you … book\n", "[   2.00] state SPEAKING\n"]


def test_problems_make_the_exit_code_every_error_and_every_owed_turn() -> None:
    tracker = ConversationTracker()
    assert tracker.problems() == []
    # The issue: every turn failed with REPLY_FAILED and talk exited 0.
    talk(tracker, (1.0, {"type": "transcript", "text": "hi", "final": True, "turn": 1}),
         (1.1, {"type": "error", "code": "REPLY_FAILED", "message": "down"}),
         (2.0, {"type": "transcript", "text": "again", "final": True, "turn": 2}),
         (2.1, {"type": "error", "code": "REPLY_FAILED", "message": "down"}),
         (3.0, {"type": "error", "code": "ASR_BUSY", "message": "busy"}))
    assert tracker.problems() == ["the server reported 3 error(s) (ASR_BUSY, REPLY_FAILED x2)"]
    # Turns that vanished: a partial and nothing after it; a final and no reply.
    quiet = ConversationTracker()
    talk(quiet, (1.0, {"type": "transcript", "text": "book a", "final": False, "turn": 3}),
         (2.0, {"type": "transcript", "text": "hello", "final": True, "turn": 4}))
    assert quiet.problems() == [
        "turn 3: a partial transcript, then no final transcript, reply or error",
        "turn 4: a final transcript, then no reply or error"]
    talk(quiet, (3.0, {"type": "reply", "utterance_id": 1, "text": "x", "turn": 4}),
         (3.1, {"type": "transcript", "text": "book a table", "final": True, "turn": 3}),
         (3.2, {"type": "reply", "utterance_id": 2, "text": "x", "turn": 3}))
    assert quiet.problems() == []
    # Speech after the last final and nothing at all from the server about it.
    speech = SpeechEnd()
    speech.observe(SPEECH, 4.0)
    assert quiet.problems(speech) == [
        "speech after the last final transcript got no transcript, reply or error"]
    talk(quiet, (5.0, {"type": "transcript", "text": "dogs", "final": True, "turn": 5}),
         (5.1, {"type": "error", "code": "REPLY_FAILED", "message": "down"}))
    assert quiet.problems(speech) == ["the server reported 1 error(s) (REPLY_FAILED)"]
