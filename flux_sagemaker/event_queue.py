"""The bounded queue between a session's readers and the application's event iterator.

Internal. anyio's memory object stream would do, but its ``receive()`` checkpoints before it
even looks, so a consumer that waits for each event (the usual case: Flux sends a few events a
second) paid an extra event-loop round and two ``WouldBlock`` exceptions per event. Here a
getter only waits when the queue is empty, and a put wakes it directly.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

import anyio

__all__ = ["EventQueue"]

T = TypeVar("T")


class EventQueue(Generic[T]):
    """A FIFO of at most ``capacity`` items; ``put`` waits while it is full (back-pressure).

    After :meth:`close`, puts raise ``anyio.ClosedResourceError`` and gets return what is
    left, then raise ``anyio.EndOfStream``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._items: collections.deque[T] = collections.deque()
        self._closed = False
        self._not_empty: anyio.Event | None = None
        self._not_full: anyio.Event | None = None

    @property
    def full(self) -> bool:
        """Whether a put would wait."""
        return len(self._items) >= self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T, *, force: bool = False) -> None:
        """Append ``item``; raise ``anyio.WouldBlock`` when full, unless ``force``."""
        if self._closed:
            raise anyio.ClosedResourceError
        if len(self._items) >= self._capacity and not force:
            raise anyio.WouldBlock
        self._items.append(item)
        if self._not_empty is not None:
            self._not_empty.set()
            self._not_empty = None

    async def put(self, item: T) -> None:
        """Append ``item``, waiting while the queue is full."""
        while True:
            try:
                self.put_nowait(item)
                return
            except anyio.WouldBlock:
                if self._not_full is None:
                    self._not_full = anyio.Event()
                await self._not_full.wait()

    async def get(self) -> T:
        """Take the oldest item, waiting while the queue is empty (no checkpoint otherwise)."""
        items = self._items
        while not items:
            if self._closed:
                raise anyio.EndOfStream
            if self._not_empty is None:
                self._not_empty = anyio.Event()
            await self._not_empty.wait()
        item = items.popleft()
        if self._not_full is not None:
            self._not_full.set()
            self._not_full = None
        return item

    def close(self, *, discard: bool = False) -> None:
        """No more puts; waiting getters and putters wake up. Idempotent.

        With ``discard``, what is left is dropped too: gets end at once.
        """
        self._closed = True
        if discard:
            self._items.clear()
        for event in (self._not_empty, self._not_full):
            if event is not None:
                event.set()
        self._not_empty = self._not_full = None
