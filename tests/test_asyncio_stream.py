"""The asyncio byte stream under the client's connections, over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import trustme
from anyio.streams.tls import TLSAttribute

from flux_sagemaker.asyncio_stream import (
    READ_HIGH_WATER,
    AsyncioStream,
    connect_asyncio,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the stream is asyncio's (test_transport checks where it is used)


@contextlib.asynccontextmanager
async def peer_and_stream() -> AsyncIterator[tuple[socket.socket, AsyncioStream]]:
    """A plain blocking socket as the peer (it reads only when told to) and our stream.

    The peer's receive buffer is fixed at 64 KiB (no autotuning), so that what the kernel
    can hold for a peer that does not read is small and known: the client's send buffer
    (``tcp_wmem``, 4 MiB at most) plus that.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stream = await connect_asyncio("127.0.0.1", listener.getsockname()[1], ssl_context=None)
        peer, _ = listener.accept()
        with peer:
            try:
                yield peer, stream
            finally:
                await stream.aclose()


async def in_thread(func: Callable[..., object], *args: object) -> object:
    return await anyio.to_thread.run_sync(func, *args)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (polling the loop) until ``condition()`` holds; fail after 10 s."""
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - polling the stream's state
            await anyio.sleep(0.001)
    assert condition(), what


async def test_receive_returns_everything_queued_in_one_piece_and_splits_at_max_bytes() -> None:
    async with peer_and_stream() as (peer, stream):
        peer.sendall(b"a" * 10)
        await until(lambda: stream._protocol.buffered == 10, "first chunk queued")
        peer.sendall(b"b" * 10)
        await until(lambda: stream._protocol.buffered == 20, "second chunk queued")
        assert len(stream._protocol.chunks) == 2
        assert await stream.receive() == b"a" * 10 + b"b" * 10  # one read, both arrivals
        peer.sendall(b"0123456789")
        assert await stream.receive(4) == b"0123"
        assert await stream.receive(4) == b"4567"
        assert await stream.receive() == b"89"
        assert stream._protocol.buffered == 0


async def test_reading_stops_past_the_high_water_mark_and_resumes_when_taken() -> None:
    total = 3 * READ_HIGH_WATER
    data = bytes(range(256)) * (total // 256)
    async with peer_and_stream() as (peer, stream):
        async with anyio.create_task_group() as tg:
            tg.start_soon(in_thread, peer.sendall, data)
            await until(lambda: stream._protocol.reading_paused, "reading paused")
            # One socket read may land past the mark, no more: then the socket stays unread.
            assert stream._protocol.buffered < READ_HIGH_WATER + 256 * 1024
            received = bytearray()
            while len(received) < total:
                received += await stream.receive()
            assert not stream._protocol.reading_paused
        assert received == data


async def test_send_waits_while_the_peer_does_not_read() -> None:
    chunk = b"x" * (1 << 20)
    count = 16
    sent = anyio.Event()

    async def sender(stream: AsyncioStream) -> None:
        for _ in range(count):
            await stream.send(chunk)
        sent.set()

    async with peer_and_stream() as (peer, stream):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender, stream)
            await until(lambda: stream._protocol.write_paused, "the transport asked to wait")
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert not sent.is_set()  # blocked in send(), not buffering all 16 MB
            received = 0
            while received < count * len(chunk):
                received += len(await anyio.to_thread.run_sync(peer.recv, 1 << 20))
            await sent.wait()
        assert received == count * len(chunk)


async def test_the_peer_closing_gives_its_last_bytes_then_end_of_stream() -> None:
    async with peer_and_stream() as (peer, stream):
        peer.sendall(b"bye")
        peer.close()
        assert await stream.receive() == b"bye"
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()  # and again: the state is kept
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"too late")


async def test_a_reset_connection_is_a_broken_resource() -> None:
    async with peer_and_stream() as (peer, stream):
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # linger 0: the kernel sends RST
        with pytest.raises(anyio.BrokenResourceError) as caught:
            await stream.receive()
        assert isinstance(caught.value.__cause__, ConnectionResetError)
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"x")


async def test_aclose_wakes_a_blocked_sender_and_receiver_and_refuses_later_calls() -> None:
    async with peer_and_stream() as (_, stream):
        closed: list[str] = []

        async def receiver() -> None:
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()
            closed.append("receive")

        async def sender() -> None:
            with pytest.raises(anyio.ClosedResourceError):
                # More than the kernel can hold while the peer does not read (see
                # peer_and_stream): the transport keeps the rest and send() waits.
                await stream.send(bytes(16 << 20))
            closed.append("send")

        with anyio.fail_after(10):  # without the abort the waits would last for ever
            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver)
                tg.start_soon(sender)
                await until(lambda: stream._protocol.readable.waiting, "receiver waiting")
                await until(lambda: stream._protocol.writable.waiting, "sender waiting")
                await stream.aclose()
                assert stream._transport.is_closing()
        assert sorted(closed) == ["receive", "send"]
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        await stream.aclose()  # idempotent


async def test_a_cancelled_receive_leaves_the_stream_usable() -> None:
    async with peer_and_stream() as (peer, stream):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await stream.receive()
        assert scope.cancelled_caught
        with anyio.move_on_after(0.01) as late:
            await stream.receive()
        assert late.cancelled_caught
        assert not stream._protocol.readable.waiting
        peer.sendall(b"after")
        assert await stream.receive() == b"after"


async def test_concurrent_waits_on_one_side_are_refused() -> None:
    # One reader and one writer at a time, as with anyio's streams: the second waiter would
    # otherwise replace the first one's wake-up.
    async with peer_and_stream() as (_, stream), anyio.create_task_group() as tg:
        tg.start_soon(stream.receive)
        await until(lambda: stream._protocol.readable.waiting, "first reader")
        with pytest.raises(anyio.BusyResourceError):
            await stream.receive()
        tg.start_soon(stream.send, bytes(16 << 20))  # blocks: the peer does not read
        await until(lambda: stream._protocol.writable.waiting, "first writer")
        with pytest.raises(anyio.BusyResourceError):
            await stream.send(b"x")
        tg.cancel_scope.cancel()


async def test_an_address_that_does_not_answer_does_not_hold_up_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A listener whose accept queue is full drops SYNs: a connect to it hangs, like a dead
    # IPv6 route. The name resolves to it first, then to a listener that works.
    with socket.socket() as dead, socket.create_server(("127.0.0.1", 0)) as alive:
        dead.bind(("127.0.0.1", 0))
        dead.listen(0)
        fillers = []
        for _ in range(4):  # fill the backlog (never accepted)
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(dead.getsockname())
            fillers.append(filler)
        loop = asyncio.get_running_loop()

        async def resolve(host: str, port: int, **kwargs: object) -> list[tuple[Any, ...]]:
            tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
            return [(*tcp, dead.getsockname()), (*tcp, alive.getsockname())]

        monkeypatch.setattr(loop, "getaddrinfo", resolve)
        try:
            with anyio.fail_after(10):  # trying one address at a time: the OS's connect timeout
                stream = await connect_asyncio("flux.test", 0, ssl_context=None)
            peer, _ = alive.accept()
            with peer:
                peer.sendall(b"hello")
                assert await stream.receive() == b"hello"
            await stream.aclose()
        finally:
            for filler in fillers:
                filler.close()


async def test_send_eof_ends_our_side_and_a_plain_stream_has_no_alpn() -> None:
    async with peer_and_stream() as (peer, stream):
        assert stream.extra(TLSAttribute.alpn_protocol, None) is None  # no TLS here
        await stream.send(b"last")
        await stream.send_eof()
        received = b""
        while chunk := await anyio.to_thread.run_sync(peer.recv, 1024):
            received += chunk
        assert received == b"last"  # then EOF
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"after eof")
        peer.sendall(b"still readable")
        assert await stream.receive() == b"still readable"


async def test_start_tls_runs_tls_over_the_connection_with_back_pressure_on_the_tls_side() -> None:
    """A proxy's tunnel: plain TCP first, then TLS over it. Reading pauses and resumes as on a
    direct TLS connection (the protocol must pause the TLS transport, not the socket under it).
    """
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server_context.set_alpn_protocols(["h2"])
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["h2"])
    total = 3 * READ_HIGH_WATER
    data = bytes(range(256)) * (total // 256)
    async with peer_and_stream() as (peer, plain):
        peer.sendall(b"tunnel open")
        assert await plain.receive() == b"tunnel open"

        def serve_tls() -> None:
            peer.settimeout(10)  # a client that stops reading fails the test, not hangs it
            with server_context.wrap_socket(peer, server_side=True) as tls:
                tls.sendall(data)
                tls.recv(1)  # until the client closes

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_thread, serve_tls)
            stream = await plain.start_tls(client_context, server_hostname="127.0.0.1")
            assert stream.extra(TLSAttribute.alpn_protocol) == "h2"
            with pytest.raises(anyio.ClosedResourceError):
                await plain.receive()  # spent: the TLS stream reads from now on
            await until(lambda: stream._protocol.reading_paused, "reading paused")
            received = bytearray()
            with anyio.fail_after(10):
                while len(received) < total:
                    received += await stream.receive()
            assert not stream._protocol.reading_paused
            await stream.aclose()
        assert received == data
