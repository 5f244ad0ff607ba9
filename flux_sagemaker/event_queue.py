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


class _Putter(Generic[T]):
    """A put waiting for room: its item, and whether it is in (or the queue closed)."""

    __slots__ = ("admitted", "closed", "item")

    def __init__(self, item: T) -> None:
        self.item = item
        self.admitted = anyio.Event()
        self.closed = False


class EventQueue(Generic[T]):
    """A FIFO of at most ``capacity`` items; ``put`` waits while it is full (back-pressure).

    Puts that wait get in in the order they came, and a forced put goes in after them: the
    items of one producer never overtake another's earlier ones. After :meth:`close`, puts
    raise ``anyio.ClosedResourceError`` and gets return what is left, then raise
    ``anyio.EndOfStream``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._items: collections.deque[T] = collections.deque()
        self._putters: collections.deque[_Putter[T]] = collections.deque()
        self._closed = False
        self._not_empty: anyio.Event | None = None

    @property
    def full(self) -> bool:
        """Whether a put would wait."""
        return len(self._items) >= self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T, *, force: bool = False) -> None:
        """Append ``item``; raise ``anyio.WouldBlock`` when full, unless ``force`` (which lets
        the waiting puts in first, past the capacity)."""
        if self._closed:
            raise anyio.ClosedResourceError
        if force:
            self._admit(everyone=True)
        elif len(self._items) >= self._capacity:
            raise anyio.WouldBlock
        self._items.append(item)
        self._wake_getter()

    async def put(self, item: T) -> None:
        """Append ``item``, waiting while the queue is full."""
        try:
            self.put_nowait(item)
            return
        except anyio.WouldBlock:
            pass
        putter = _Putter(item)
        self._putters.append(putter)
        try:
            await putter.admitted.wait()
        except BaseException:
            if not putter.admitted.is_set():
                self._putters.remove(putter)  # cancelled before its turn: not put
            raise
        if putter.closed:
            raise anyio.ClosedResourceError

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
        if self._putters:
            self._admit()
        return item

    def close(self, *, discard: bool = False) -> None:
        """No more puts; waiting getters and putters wake up. Idempotent.

        With ``discard``, what is left is dropped too: gets end at once.
        """
        self._closed = True
        if discard:
            self._items.clear()
        while self._putters:
            putter = self._putters.popleft()
            putter.closed = True
            putter.admitted.set()
        if self._not_empty is not None:
            self._not_empty.set()  # to find the queue closed
            self._not_empty = None

    def _admit(self, *, everyone: bool = False) -> None:
        """Move waiting puts in, oldest first, while there is room (``everyone``: all)."""
        putters, items = self._putters, self._items
        while putters and (everyone or len(items) < self._capacity):
            putter = putters.popleft()
            items.append(putter.item)
            putter.admitted.set()
        self._wake_getter()

    def _wake_getter(self) -> None:
        if self._not_empty is not None and self._items:
            self._not_empty.set()
            self._not_empty = None
