"""Conversation history (bounds, truncation, chat format) and the heard-prefix estimate."""

from __future__ import annotations

import math

import pytest

from duplexvoice.replies.history import History, Turn, heard_prefix

pytestmark = pytest.mark.unit


def test_messages_in_chat_completions_format() -> None:
    history = History()
    assert history.add_user("Hello  there\n") == 0
    assert history.add_assistant("Hi! How can I help?") == 1
    assert history.add_user("What time is it?") == 2
    assert history.messages("Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "What time is it?"},
    ]
    assert history.messages() == history.messages("")[:]  # no system prompt: none sent
    assert history.messages()[0]["role"] == "user"


def test_truncate_assistant_keeps_what_was_heard_and_marks_it() -> None:
    history = History()
    history.add_user("Tell me a story.")
    index = history.add_assistant("Once upon a time, there was a fox. It was red.")
    assert history.truncate_assistant(index, "Once upon a time,")
    assert history.turn(index) == Turn("assistant", "Once upon a time…", cut_off=True)
    assert history.messages()[-1] == {"role": "assistant", "content": "Once upon a time…"}
    # Only once: a second call (e.g. a late playback report) changes nothing.
    assert not history.truncate_assistant(index, "Once")
    assert history.turn(index) == Turn("assistant", "Once upon a time…", cut_off=True)


@pytest.mark.parametrize(
    ("heard", "kept"),
    [
        ("", "…"),
        ("   ", "…"),
        ("Once upon a time, there was a fox.", "Once upon a time, there was a fox. …"),
        ("Once upon a time, there", "Once upon a time, there…"),
        ("Once upon a time —", "Once upon a time…"),
    ],
)
def test_truncated_text(heard: str, kept: str) -> None:
    history = History()
    history.add_user("Story?")
    index = history.add_assistant("Once upon a time — there was a fox. It was red.")
    assert history.truncate_assistant(index, heard)
    turn = history.turn(index)
    assert turn is not None and turn.text == kept and turn.cut_off


def test_truncate_to_everything_is_no_change() -> None:
    history = History()
    history.add_user("Hi")
    index = history.add_assistant("Hello there.")
    assert not history.truncate_assistant(index, " Hello   there. ")
    assert history.turn(index) == Turn("assistant", "Hello there.")


def test_heard_text_is_never_longer_than_the_turn() -> None:
    history = History()
    history.add_user("Hi")
    index = history.add_assistant("Hello there.")
    history.truncate_assistant(index, "Hello there. And something never said at all")
    turn = history.turn(index)
    assert turn is not None and len(turn.text) <= len("Hello there.") + 2


def test_truncate_bad_indices() -> None:
    history = History()
    user = history.add_user("Hi")
    with pytest.raises(ValueError, match="user"):
        history.truncate_assistant(user, "")
    with pytest.raises(ValueError, match="ever added"):
        history.truncate_assistant(5, "")
    with pytest.raises(ValueError):
        history.truncate_assistant(-1, "")


def test_bounded_by_turns_oldest_first_and_indices_stay_stable() -> None:
    history = History(max_turns=4)
    indices = []
    for i in range(5):
        indices.append(history.add_user(f"question {i}"))
        indices.append(history.add_assistant(f"answer {i}"))
    assert indices == list(range(10))
    assert [t.text for t in history.turns] == ["question 3", "answer 3", "question 4",
                                               "answer 4"]
    assert history.turn(0) is None  # dropped
    assert not history.truncate_assistant(1, "ans")  # dropped: no-op
    assert history.truncate_assistant(9, "answer")
    assert history.turns[-1].text == "answer…"
    assert history.next_index == 10


def test_bounded_by_chars_and_never_starts_with_the_assistant() -> None:
    history = History(max_turns=100, max_chars=100)
    history.add_user("u" * 40)
    history.add_assistant("a" * 40)
    history.add_user("v" * 40)  # 120 > 100: the first user turn goes, then the orphan answer
    assert [t.role for t in history.turns] == ["user"]
    assert history.turns[0].text == "v" * 40
    history.add_assistant("b" * 50)
    assert sum(len(t.text) for t in history.turns) <= 100
    assert history.messages("system prompt, never dropped")[0]["role"] == "system"


def test_newest_turn_alone_longer_than_the_bound_is_cut() -> None:
    history = History(max_chars=100)
    history.add_user("earlier")
    history.add_user("x" * 500)
    assert [t.text for t in history.turns] == ["x" * 100]


def test_consecutive_turns_of_one_role_are_merged_in_messages() -> None:
    history = History()
    history.add_user("First question")  # its reply failed: no assistant turn
    history.add_user("Second question")
    history.add_assistant("Answer")
    assert history.messages() == [
        {"role": "user", "content": "First question\nSecond question"},
        {"role": "assistant", "content": "Answer"},
    ]


def test_empty_turns_are_refused_and_limits_checked() -> None:
    history = History()
    with pytest.raises(ValueError):
        history.add_user(" \n ")
    with pytest.raises(ValueError):
        history.add_assistant("")
    with pytest.raises(ValueError):
        History(max_turns=1)
    with pytest.raises(ValueError):
        History(max_chars=99)


def test_clear_forgets_but_keeps_counting() -> None:
    history = History()
    history.add_user("a")
    history.add_assistant("b")
    history.clear()
    assert history.turns == () and history.messages("s") == [{"role": "system", "content": "s"}]
    assert history.add_user("c") == 2
    assert history.turn(0) is None


# -- heard_prefix ---------------------------------------------------------------------------

TEXT = "The quick brown fox jumps over the lazy dog."  # 44 characters


@pytest.mark.parametrize(
    ("played", "total", "heard"),
    [
        (0, 1000, ""),
        (-5, 1000, ""),
        (1000, 1000, TEXT),
        (5000, 1000, TEXT),
        (500, 1000, "The quick brown fox"),  # position 22: 19 and 25 as near; the earlier
        (520, 1000, "The quick brown fox jumps"),  # 22.9: 25 is nearer
        (100, 1000, "The"),  # 4.4 -> the space at 3
        (50, 1000, "The"),  # 2.2 -> 3 is nearer than 0
        (20, 1000, ""),  # 0.88 -> 0
        (990, 1000, TEXT),  # 43.6 -> the end
    ],
)
def test_heard_prefix_proportional_when_the_duration_is_known(
    played: float, total: float, heard: str
) -> None:
    assert heard_prefix(TEXT, played, total) == heard


def test_heard_prefix_at_speech_rate_when_the_duration_is_unknown() -> None:
    # 1 s at 15 chars/s: position 15 -> the space at 15 ("The quick brown|").
    assert heard_prefix(TEXT, 1000, None) == "The quick brown"
    assert heard_prefix(TEXT, 1000, 0) == "The quick brown"  # not positive: unknown
    assert heard_prefix(TEXT, 1000, None, chars_per_second=10) == "The quick"
    assert heard_prefix(TEXT, 60_000, None) == TEXT


def test_heard_prefix_is_monotonic_and_whole_words() -> None:
    words = TEXT.split()
    previous = ""
    for played in range(0, 1200, 7):
        heard = heard_prefix(TEXT, played, 1000)
        assert len(heard) >= len(previous)
        assert TEXT.startswith(heard)
        assert heard.split() == words[: len(heard.split())]
        previous = heard


def test_heard_prefix_normalizes_whitespace_and_handles_empty_text() -> None:
    assert heard_prefix("  one   two \n three ", 10_000, None) == "one two three"
    assert heard_prefix("", 500, 1000) == ""


@pytest.mark.parametrize(
    "args",
    [(math.nan, 1000.0), (100.0, math.inf), (math.inf, None)],
)
def test_heard_prefix_refuses_non_numbers(args: tuple[float, float | None]) -> None:
    with pytest.raises(ValueError):
        heard_prefix(TEXT, *args)
    with pytest.raises(ValueError):
        heard_prefix(TEXT, 100, None, chars_per_second=0)


def test_retract_forgets_an_unheard_exchange_and_reissues_its_indices() -> None:
    h = History()
    h.add_user("Hello.")
    h.add_assistant("Hi there.")
    asked = h.add_user("I would like")
    h.add_assistant("I would like…")
    h.retract(asked)
    assert [t.text for t in h.turns] == ["Hello.", "Hi there."]
    assert h.add_user("I would like a coffee.") == asked
    assert h.messages()[-1] == {"role": "user", "content": "I would like a coffee."}


def test_without_cut_marks_only_what_was_heard_is_sent() -> None:
    history = History()
    history.add_user("tell me a story")
    told = history.add_assistant("Once upon a time there was a dragon.")
    history.truncate_assistant(told, "Once upon a time")
    history.add_user("stop")
    unheard = history.add_assistant("Sure, I will stop now.")
    history.truncate_assistant(unheard, "")
    history.add_user("what time is it")
    assert history.messages("sys")[2]["content"].endswith("…")
    assert history.messages("sys", cut_marks=False) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": "Once upon a time"},
        {"role": "user", "content": "stop\nwhat time is it"},
    ]
