"""The queue between a session's readers and the application's iterator."""

from __future__ import annotations

import anyio
import pytest

from flux_sagemaker.event_queue import EventQueue

pytestmark = pytest.mark.anyio


async def test_items_come_out_in_order_and_a_ready_get_does_not_checkpoint() -> None:
    queue: EventQueue[int] = EventQueue(4)
    for i in range(3):
        queue.put_nowait(i)
    with anyio.CancelScope() as scope:
        scope.cancel()
        # A checkpoint here would raise the cancellation: a ready item costs no event-loop round.
        got = [await queue.get() for _ in range(3)]
    assert got == [0, 1, 2]
    assert len(queue) == 0


async def test_a_waiting_get_is_woken_by_a_put() -> None:
    queue: EventQueue[str] = EventQueue(1)
    got: list[str] = []

    async def consume() -> None:
        got.append(await queue.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            queue.put_nowait("event")
    assert got == ["event"]


async def test_a_full_queue_holds_puts_back_until_a_get_makes_room() -> None:
    queue: EventQueue[int] = EventQueue(2)
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert queue.full
    with pytest.raises(anyio.WouldBlock):
        queue.put_nowait(3)
    put_done = anyio.Event()

    async def produce() -> None:
        await queue.put(3)
        put_done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await anyio.wait_all_tasks_blocked()
            assert not put_done.is_set()  # back-pressure
            assert await queue.get() == 1
            await put_done.wait()
    assert [await queue.get(), await queue.get()] == [2, 3]


async def test_close_drains_what_is_left_then_ends() -> None:
    queue: EventQueue[int] = EventQueue(4)
    queue.put_nowait(1)
    queue.close()
    queue.close()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        queue.put_nowait(2)
    assert await queue.get() == 1
    with pytest.raises(anyio.EndOfStream):
        await queue.get()


async def test_close_with_discard_ends_at_once() -> None:
    queue: EventQueue[int] = EventQueue(4)
    queue.put_nowait(1)
    queue.close(discard=True)
    with pytest.raises(anyio.EndOfStream):
        await queue.get()


async def test_close_wakes_a_waiting_getter_and_a_waiting_putter() -> None:
    empty: EventQueue[int] = EventQueue(1)
    full: EventQueue[int] = EventQueue(1)
    full.put_nowait(0)
    outcomes: list[str] = []

    async def get() -> None:
        with pytest.raises(anyio.EndOfStream):
            await empty.get()
        outcomes.append("getter ended")

    async def put() -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await full.put(1)
        outcomes.append("putter refused")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(get)
            tg.start_soon(put)
            await anyio.wait_all_tasks_blocked()
            empty.close()
            full.close()
    assert sorted(outcomes) == ["getter ended", "putter refused"]


async def test_waiting_puts_get_in_in_order_and_a_forced_put_goes_after_them() -> None:
    """Two producers wait on a full queue, then a forced put comes (the client's Reconnected
    while an old stream's reader still holds its last event): nothing overtakes."""
    queue: EventQueue[str] = EventQueue(1)
    queue.put_nowait("first")

    async def produce(item: str) -> None:
        await queue.put(item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for item in ("old-1", "old-2"):
                tg.start_soon(produce, item)
                await anyio.wait_all_tasks_blocked()
            queue.put_nowait("forced", force=True)
            got = [await queue.get() for _ in range(4)]
    assert got == ["first", "old-1", "old-2", "forced"]


async def test_room_goes_to_the_longest_waiting_put() -> None:
    queue: EventQueue[int] = EventQueue(1)
    queue.put_nowait(0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in (1, 2, 3):
                tg.start_soon(queue.put, i)
                await anyio.wait_all_tasks_blocked()
            got = [await queue.get() for _ in range(4)]
    assert got == [0, 1, 2, 3]


async def test_a_put_cancelled_while_waiting_is_not_put() -> None:
    queue: EventQueue[str] = EventQueue(1)
    queue.put_nowait("kept")
    with anyio.fail_after(5):
        with anyio.move_on_after(0.05):
            await queue.put("cancelled")
        queue.close()
        assert [await queue.get()] == ["kept"]
        with pytest.raises(anyio.EndOfStream):
            await queue.get()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventQueue(0)
