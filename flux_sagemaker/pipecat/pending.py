"""The audio hand-over queue: audio waits here while no session accepts it."""

from __future__ import annotations

from collections import deque
from typing import Final

import anyio

from ..core.audio import AudioFormat

__all__ = ["CLOSE", "Close", "PendingAudio", "max_pending_bytes"]

# Bytes per sample assumed where the encoding has no fixed size (Opus): linear16's, an upper
# bound for compressed audio.
_FALLBACK_SAMPLE_WIDTH: Final = 2


class Close:
    """The queue marker that ends the current session after the audio queued before it."""


CLOSE: Final = Close()


def max_pending_bytes(encoding: str, sample_rate: int, seconds: float) -> int:
    """The bytes ``seconds`` of audio take in ``encoding`` at ``sample_rate`` Hz.

    G.711 (``mulaw``, ``alaw``) is one byte a sample, ``linear32`` four; encodings without a
    fixed size (Opus) are bounded as if they were ``linear16``.
    """
    rate = AudioFormat(encoding=encoding, sample_rate=sample_rate).bytes_per_second
    return int((rate or sample_rate * _FALLBACK_SAMPLE_WIDTH) * seconds)


class PendingAudio:
    """Audio waiting for a session, bounded in bytes (oldest audio dropped first)."""

    def __init__(self) -> None:
        self._items: deque[bytes | Close] = deque()
        self._bytes = 0
        self._limit = 0
        self._dropped = 0  # bytes of audio dropped since the queue was last empty
        self._ready = anyio.Event()

    def set_limit(self, limit: int) -> None:
        """Hold at most ``limit`` bytes of audio (0: no bound)."""
        self._limit = limit

    def __len__(self) -> int:
        """The number of queued items (audio chunks and close markers)."""
        return len(self._items)

    def put(self, item: bytes | Close) -> int:
        """Queue ``item``; return how many bytes of older audio were dropped for it."""
        self._items.append(item)
        dropped = 0
        if isinstance(item, bytes):
            self._bytes += len(item)
            while self._limit and self._bytes > self._limit and isinstance(self._items[0], bytes):
                old = self._items.popleft()
                assert isinstance(old, bytes)
                self._bytes -= len(old)
                dropped += len(old)
            self._dropped += dropped
        self._ready.set()
        return dropped

    @property
    def dropped_since_empty(self) -> int:
        """Bytes of audio dropped since :meth:`caught_up` last found the queue empty."""
        return self._dropped

    def caught_up(self) -> int:
        """If the queue is empty, how much audio it dropped since it last was (then 0 again).

        Returns 0 while audio is still queued, or when nothing was dropped.
        """
        if self._items:
            return 0
        dropped, self._dropped = self._dropped, 0
        return dropped

    def clear(self) -> None:
        """Drop everything queued."""
        self._items.clear()
        self._bytes = 0
        self._dropped = 0

    async def get(self) -> bytes | Close:
        """The oldest item, waiting for one."""
        while not self._items:
            self._ready = anyio.Event()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, bytes):
            self._bytes -= len(item)
        return item
