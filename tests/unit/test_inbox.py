"""The session inbox: inputs before frames, bounded lanes, ``post`` never waits.

"Waits" is checked without a clock: a producer is a task, the loop is given a few
turns (``settle``), and the task must still be pending; only making room can finish
it, and that is awaited with a deadline.
"""

from __future__ import annotations

import asyncio

import pytest

from duplexvoice.orchestrator.sessions.inbox import Inbox

pytestmark = pytest.mark.unit

DEADLINE_S = 5.0


async def settle(turns: int = 10) -> None:
    """Let every ready task run a few steps (no wall-clock time involved)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def drain(inbox: Inbox[str]) -> list[str]:
    out: list[str] = []
    while (event := inbox.get_nowait()) is not None:
        out.append(event)
    return out


async def test_inputs_are_taken_before_frames_that_came_first() -> None:
    # Catches a single FIFO lane: a STOP would wait behind a backlog of audio.
    inbox: Inbox[str] = Inbox()
    await inbox.put_frame("f1")
    await inbox.put_frame("f2")
    await inbox.put_input("i1")
    inbox.post("i2")
    await inbox.put_frame("f3")
    assert len(inbox) == 5
    assert drain(inbox) == ["i1", "i2", "f1", "f2", "f3"]
    assert len(inbox) == 0 and inbox.get_nowait() is None


async def test_an_input_arriving_between_frames_jumps_the_frames_left() -> None:
    inbox: Inbox[str] = Inbox()
    for i in range(3):
        await inbox.put_frame(f"f{i}")
    assert inbox.get_nowait() == "f0"
    inbox.post("tick")
    assert drain(inbox) == ["tick", "f1", "f2"]


async def test_get_waits_for_an_event_and_wakes_on_either_lane() -> None:
    inbox: Inbox[str] = Inbox()
    getter = asyncio.ensure_future(inbox.get())
    await settle()
    assert not getter.done()  # nothing to get: it waits
    await inbox.put_frame("f")
    assert await asyncio.wait_for(getter, DEADLINE_S) == "f"
    getter = asyncio.ensure_future(inbox.get())
    await settle()
    assert not getter.done()
    inbox.post("p")
    assert await asyncio.wait_for(getter, DEADLINE_S) == "p"


async def test_a_frame_producer_waits_while_its_lane_is_full_and_goes_on_with_room() -> None:
    # Catches an unbounded frame lane (a fast worker filling memory) and a producer
    # that is never woken up again once room is made (a stalled stream).
    inbox: Inbox[str] = Inbox(max_frames=2)
    await inbox.put_frame("f1")
    await inbox.put_frame("f2")
    producer = asyncio.ensure_future(inbox.put_frame("f3"))
    await settle()
    assert not producer.done()
    assert len(inbox) == 2
    # A full frame lane holds up neither inputs nor the consumer.
    await asyncio.wait_for(inbox.put_input("i1"), DEADLINE_S)
    assert inbox.get_nowait() == "i1"
    await settle()
    assert not producer.done()  # taking an input made no room in the frame lane
    assert inbox.get_nowait() == "f1"
    await asyncio.wait_for(producer, DEADLINE_S)
    assert drain(inbox) == ["f2", "f3"]


async def test_an_input_producer_waits_while_its_lane_is_full_and_goes_on_with_room() -> None:
    inbox: Inbox[str] = Inbox(max_inputs=1)
    await inbox.put_input("i1")
    producer = asyncio.ensure_future(inbox.put_input("i2"))
    await settle()
    assert not producer.done()
    await asyncio.wait_for(inbox.put_frame("f1"), DEADLINE_S)  # the other lane is free
    assert inbox.get_nowait() == "i1"
    await asyncio.wait_for(producer, DEADLINE_S)
    assert drain(inbox) == ["i2", "f1"]


async def test_several_waiting_producers_all_get_in_in_order_as_room_is_made() -> None:
    inbox: Inbox[str] = Inbox(max_frames=1)
    await inbox.put_frame("f0")
    producers = [asyncio.ensure_future(inbox.put_frame(f"f{i}")) for i in (1, 2, 3)]
    got: list[str] = []
    for _ in range(4):
        await settle()
        event = await asyncio.wait_for(inbox.get(), DEADLINE_S)
        got.append(event)
        assert len(inbox) <= 1  # never above the bound
    await asyncio.wait_for(asyncio.gather(*producers), DEADLINE_S)
    assert got == ["f0", "f1", "f2", "f3"]


async def test_post_never_waits_even_with_the_input_lane_full() -> None:
    # ``post`` is synchronous by type; this pins that it neither refuses nor drops.
    inbox: Inbox[str] = Inbox(max_inputs=1, max_frames=1)
    await inbox.put_input("i1")
    await inbox.put_frame("f1")
    for i in range(5):
        inbox.post(f"p{i}")
    assert len(inbox) == 7
    assert drain(inbox) == ["i1", "p0", "p1", "p2", "p3", "p4", "f1"]


async def test_a_waiting_input_producer_gets_in_after_posted_events_drain() -> None:
    inbox: Inbox[str] = Inbox(max_inputs=1)
    await inbox.put_input("i1")
    inbox.post("tick")  # above the bound, on purpose
    producer = asyncio.ensure_future(inbox.put_input("i2"))
    await settle()
    assert not producer.done()
    assert inbox.get_nowait() == "i1"
    await settle()
    assert not producer.done()  # one event still in the lane: still full
    assert inbox.get_nowait() == "tick"
    await asyncio.wait_for(producer, DEADLINE_S)
    assert drain(inbox) == ["i2"]


@pytest.mark.parametrize("kwargs", [{"max_inputs": 0}, {"max_frames": 0}])
def test_lanes_hold_at_least_one_event(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        Inbox(**kwargs)
