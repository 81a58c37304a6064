"""The spill mailbox: never drops, counts what is over its bound, wakes its receiver once."""

from __future__ import annotations

import trio
import trio.testing

from actors.mailbox import Mailbox


def test_put_many_keeps_order_and_counts_the_spill_like_one_by_one() -> None:
    one, many = Mailbox[int]("one", capacity=3), Mailbox[int]("many", capacity=3)
    one.put_nowait(0)
    many.put_nowait(0)
    for i in range(1, 6):
        one.put_nowait(i)
    many.put_many_nowait([1, 2, 3, 4, 5])
    assert list(many._items) == list(one._items) == [0, 1, 2, 3, 4, 5]
    assert many.spilled == one.spilled == 3
    assert many.high_water == one.high_water == 6 and many.over


async def test_put_many_wakes_the_waiting_receiver_with_the_whole_batch() -> None:
    box = Mailbox[str]("box")
    got: list[list[str]] = []

    async def receive() -> None:
        got.append(await box.get_batch())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        box.put_many_nowait(["a", "b", "c"])
    assert got == [["a", "b", "c"]]
