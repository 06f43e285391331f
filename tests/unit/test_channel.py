from __future__ import annotations

import asyncio

import pytest

from duplexvoice.worker.channel import Channel, ChannelAborted

pytestmark = pytest.mark.unit


async def test_items_in_order_then_none_after_finish() -> None:
    ch: Channel[int] = Channel(4)
    for i in range(3):
        await ch.put(i)
    ch.finish()
    assert [await ch.get() for _ in range(4)] == [0, 1, 2, None]


async def test_put_waits_for_room() -> None:
    ch: Channel[int] = Channel(2)
    await ch.put(1)
    await ch.put(2)
    blocked = asyncio.create_task(ch.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done() and len(ch) == 2
    assert await ch.get() == 1
    await asyncio.wait_for(blocked, 1)
    assert len(ch) == 2


async def test_abort_drops_items_and_wakes_both_ends() -> None:
    full: Channel[int] = Channel(1)
    await full.put(1)
    writer = asyncio.create_task(full.put(2))
    empty: Channel[int] = Channel(1)
    reader = asyncio.create_task(empty.get())
    await asyncio.sleep(0.01)
    full.abort()
    empty.abort()
    with pytest.raises(ChannelAborted):
        await asyncio.wait_for(writer, 1)
    assert await asyncio.wait_for(reader, 1) is None
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
    await asyncio.wait_for(ch.wait_below(6), 1)  # already below: no wait
    waiter = asyncio.create_task(ch.wait_below(3))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await ch.get()
    await ch.get()
    await asyncio.sleep(0.01)
    assert not waiter.done()  # 3 left: not below 3 yet
    await ch.get()
    await asyncio.wait_for(waiter, 1)
    blocked = asyncio.create_task(ch.wait_below(1))
    await asyncio.sleep(0.01)
    ch.abort()
    with pytest.raises(ChannelAborted):
        await asyncio.wait_for(blocked, 1)
