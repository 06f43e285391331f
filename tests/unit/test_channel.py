from __future__ import annotations

import asyncio

import pytest

from duplexvoice.worker.channel import Channel, ChannelAborted
from tests.support.aio import settle

pytestmark = pytest.mark.unit

# Bounds a wait that only a broken channel would reach; a passing test never waits this.
WAIT_S = 5.0


async def test_items_in_order_then_none_after_finish() -> None:
    ch: Channel[int] = Channel(4)
    for i in range(3):
        await ch.put(i)
    ch.finish()
    assert [await ch.get() for _ in range(4)] == [0, 1, 2, None]


async def test_get_waits_for_an_item_and_finish_wakes_it() -> None:
    ch: Channel[int] = Channel(2)
    reader = asyncio.create_task(ch.get())
    await settle()
    assert not reader.done()  # empty: it waits...
    await ch.put(7)
    assert await asyncio.wait_for(reader, WAIT_S) == 7  # ...and takes the item when it comes
    last = asyncio.create_task(ch.get())
    await settle()
    assert not last.done()
    ch.finish()
    assert await asyncio.wait_for(last, WAIT_S) is None


async def test_put_waits_for_room() -> None:
    ch: Channel[int] = Channel(2)
    await ch.put(1)
    await ch.put(2)
    blocked = asyncio.create_task(ch.put(3))
    await settle()
    assert not blocked.done() and len(ch) == 2  # full: the third put waits...
    assert await ch.get() == 1
    await asyncio.wait_for(blocked, WAIT_S)  # ...and goes in once there is room
    ch.finish()
    assert [await ch.get() for _ in range(3)] == [2, 3, None]


async def test_abort_drops_items_and_wakes_both_ends() -> None:
    full: Channel[int] = Channel(1)
    await full.put(1)
    writer = asyncio.create_task(full.put(2))
    empty: Channel[int] = Channel(1)
    reader = asyncio.create_task(empty.get())
    await settle()
    assert not writer.done() and not reader.done()  # both blocked before the abort
    full.abort()
    empty.abort()
    with pytest.raises(ChannelAborted):
        await asyncio.wait_for(writer, WAIT_S)
    assert await asyncio.wait_for(reader, WAIT_S) is None
    assert len(full) == 0 and await full.get() is None
    with pytest.raises(ChannelAborted):
        await full.put(3)


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Channel(0)


async def test_wait_below_returns_once_the_reader_drains_and_on_abort() -> None:
    ch: Channel[int] = Channel(10)
    for i in range(5):
        await ch.put(i)
    await asyncio.wait_for(ch.wait_below(6), WAIT_S)  # already below: no wait
    waiter = asyncio.create_task(ch.wait_below(3))
    await settle()
    assert not waiter.done()
    await ch.get()
    await ch.get()
    await settle()
    assert not waiter.done()  # 3 left: not below 3 yet
    await ch.get()
    await asyncio.wait_for(waiter, WAIT_S)  # 2 left: below 3
    blocked = asyncio.create_task(ch.wait_below(1))
    await settle()
    assert not blocked.done()
    ch.abort()
    with pytest.raises(ChannelAborted):
        await asyncio.wait_for(blocked, WAIT_S)
