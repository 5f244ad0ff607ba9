"""A lean anyio byte stream on asyncio's own transports, for the client's connections.

anyio's asyncio socket stream turns reading on and off around every ``receive()`` (two
``epoll_ctl`` calls and selector bookkeeping per read), its TLS stream runs the TLS object in
Python on top of that, and every ``send()`` ends with a checkpoint: one more task step per
write. With hundreds of real-time streams on one connection those are a large share of the
client's CPU (see ``docs/benchmarks.md``). This stream keeps the socket readable while little is
buffered, lets asyncio's transport do TLS, and yields in ``send()`` only when the transport asks
for back-pressure. It behaves as an anyio :class:`~anyio.abc.ByteStream` (the same exceptions,
cancellable waits) and is used only on asyncio's own event loop; on trio and on other loops
(uvloop) the client keeps anyio's streams.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSAttribute

__all__ = ["AsyncioStream", "connect_asyncio", "on_stdlib_asyncio_loop"]

#: Stop reading from the socket while this much has arrived and not been taken. HTTP/2 flow
#: control bounds what the server may send anyway; this only caps what sits in our queue.
READ_HIGH_WATER = 1 << 20
#: Seconds before the next address is tried while one is still connecting (anyio's value).
HAPPY_EYEBALLS_DELAY = 0.25


def on_stdlib_asyncio_loop() -> bool:
    """Whether the current task runs on asyncio's own event loop.

    False on trio, and on other asyncio loops such as uvloop: their transports differ (uvloop's
    ``create_connection`` has no Happy Eyeballs), so the client keeps anyio's streams there.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no asyncio loop in this thread
        return False
    return isinstance(loop, asyncio.BaseEventLoop) and asyncio.current_task(loop) is not None


class _Wakeup:
    """One task waiting for a transport callback.

    A second waiter is refused, as anyio refuses a second concurrent reader or writer: it would
    replace the first one's wake-up.
    """

    def __init__(self, side: str) -> None:
        self._side = side
        self._future: asyncio.Future[None] | None = None

    @property
    def waiting(self) -> bool:
        """Whether a task waits."""
        return self._future is not None

    def wake(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        if self._future is not None:
            raise anyio.BusyResourceError(self._side)
        future = self._future = asyncio.get_running_loop().create_future()
        try:
            await future
        finally:
            self._future = None


class _StreamProtocol(asyncio.Protocol):
    """Queues what the transport receives and wakes the one reader and the one writer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.reading_paused = False
        self.at_eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.write_paused = False
        self.readable = _Wakeup("reading from")
        self.writable = _Wakeup("writing to")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self.readable.wake()

    def eof_received(self) -> bool | None:
        self.at_eof = True
        self.readable.wake()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.at_eof = True
        self.error = exc
        self.readable.wake()
        self.writable.wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writable.wake()


class AsyncioStream(anyio.abc.ByteStream):
    """An anyio byte stream over an asyncio transport (plain TCP or asyncio's TLS).

    ``receive()`` returns at once, without a task switch, when bytes are queued; ``send()``
    hands the bytes to the transport (which tries the socket right away) and waits only while
    the transport's buffer is over its high-water mark.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        ssl_object: ssl.SSLObject | None = self._transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return {}
        return {TLSAttribute.alpn_protocol: ssl_object.selected_alpn_protocol}

    def _check_usable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        error = self._protocol.error
        if error is not None:
            raise anyio.BrokenResourceError from error

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        if not chunks:
            self._check_usable()
            if not protocol.at_eof:
                await protocol.readable.wait()
            if not chunks:
                self._check_usable()
                raise anyio.EndOfStream
        data = chunks.popleft()
        if chunks and len(data) < max_bytes:
            # Everything that arrived since the last read, in one piece: one parse, not many.
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= max_bytes:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        elif len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.buffered -= len(data)
        if protocol.reading_paused and protocol.buffered <= READ_HIGH_WATER // 2:
            protocol.reading_paused = False
            if not protocol.lost:
                self._transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closed or protocol.at_eof:  # an HTTP/2 peer that ends its side is gone
            self._check_usable()
            raise anyio.BrokenResourceError
        try:
            self._transport.write(item)  # tries the socket at once; buffers the rest
        except RuntimeError as exc:  # the transport is closing
            raise anyio.BrokenResourceError from exc
        while protocol.write_paused and not protocol.lost:
            await protocol.writable.wait()
        if protocol.lost:  # aborted: the bytes may not have left
            self._check_usable()
            raise anyio.BrokenResourceError

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str) -> AsyncioStream:
        """Run TLS over this connection (a proxy's tunnel); use the returned stream from now on.

        Raises:
            anyio.BrokenResourceError: bytes came before the handshake (they would be lost).
        """
        protocol = self._protocol
        if protocol.chunks:
            raise anyio.BrokenResourceError("bytes arrived before the TLS handshake")
        transport = await asyncio.get_running_loop().start_tls(
            self._transport, protocol, ssl_context, server_hostname=server_hostname
        )
        assert transport is not None
        # start_tls does not call connection_made again: back-pressure must pause and resume
        # the TLS transport, the one the new stream reads through.
        protocol.transport = transport
        self._closed = True
        return AsyncioStream(transport, protocol)

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        self._transport.close()  # over TLS this sends close_notify
        try:
            await anyio.lowlevel.checkpoint()
        finally:
            # Like anyio's own streams: one loop iteration for the buffered bytes, then the
            # socket goes, so that waiting tasks wake now (a peer that does not read would
            # keep a closing transport open) and aclose_forcefully() does not leak it.
            self._transport.abort()


async def connect_asyncio(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None
) -> AsyncioStream:
    """Open TCP (and TLS when ``ssl_context`` is given) with asyncio's own transports.

    Addresses are tried as anyio's ``connect_tcp`` tries them: Happy Eyeballs (RFC 8305),
    the next one 250 ms after the last, so a dead IPv6 route does not cost the connect timeout.
    """
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        _StreamProtocol,
        host,
        port,
        ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
        happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
    )
    assert isinstance(transport, asyncio.Transport)
    return AsyncioStream(transport, protocol)
