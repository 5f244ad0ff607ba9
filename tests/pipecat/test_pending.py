"""The adapter's audio hand-over queue: order kept, bytes bounded, close markers never dropped."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.pipecat.pending import CLOSE, Close, PendingAudio, max_pending_bytes

_items = st.lists(st.binary(min_size=1, max_size=50) | st.just(CLOSE), max_size=40)


@given(items=_items, limit=st.integers(0, 200))
def test_keeps_order_and_markers_and_drops_only_the_oldest_audio(
    items: list[bytes | Close], limit: int
) -> None:
    queue = PendingAudio()
    queue.set_limit(limit)
    dropped = sum(queue.put(item) for item in items)
    kept: list[bytes | Close] = []

    async def drain() -> None:
        while len(queue):
            kept.append(await queue.get())

    anyio.run(drain)
    # What is kept is what was put, minus some audio from the front of runs before a marker.
    assert [i for i in kept if isinstance(i, Close)] == [i for i in items if isinstance(i, Close)]
    assert sum(len(i) for i in kept if isinstance(i, bytes)) + dropped == sum(
        len(i) for i in items if isinstance(i, bytes)
    )
    it = iter(items)
    assert all(any(k is i for i in it) for k in kept)  # kept is a subsequence of items


@given(items=_items, limit=st.integers(0, 200))
def test_counts_the_audio_dropped_until_the_queue_runs_empty(
    items: list[bytes | Close], limit: int
) -> None:
    # The adapter warns at the first drop of a backlog (dropped == dropped_since_empty) and
    # gives the total once the session has caught up: one warning per backlog, not per frame.
    queue = PendingAudio()
    queue.set_limit(limit)
    total = 0
    for item in items:  # never empty here unless an item alone passes the limit
        dropped = queue.put(item)
        total += dropped
        assert queue.dropped_since_empty == total
        if len(queue):
            assert queue.caught_up() == 0  # audio is still queued
    taken = 0

    async def drain() -> None:
        nonlocal taken
        while len(queue):
            await queue.get()
            taken += 1
            if len(queue):
                assert queue.caught_up() == 0

    anyio.run(drain)
    assert queue.caught_up() == total
    assert queue.caught_up() == 0
    assert queue.dropped_since_empty == 0


@pytest.mark.anyio
async def test_get_waits_for_a_put() -> None:
    queue = PendingAudio()
    got: list[bytes | Close] = []
    async with anyio.create_task_group() as tg:

        async def take() -> None:
            got.append(await queue.get())
            got.append(await queue.get())

        tg.start_soon(take)
        await anyio.lowlevel.checkpoint()
        queue.put(b"ab")
        queue.put(CLOSE)
    assert got == [b"ab", CLOSE]


@pytest.mark.parametrize(
    ("encoding", "rate", "expected"),
    [
        ("linear16", 16000, 320_000),
        ("linear32", 16000, 640_000),
        ("mulaw", 8000, 80_000),  # one byte a sample, not two
        ("alaw", 8000, 80_000),
        ("opus", 48000, 960_000),  # no fixed size: bounded as linear16
    ],
)
def test_the_bound_is_seconds_at_the_encodings_byte_rate(
    encoding: str, rate: int, expected: int
) -> None:
    assert max_pending_bytes(encoding, rate, 10.0) == expected
