"""The HTTP/2 client transport against the test server, over real TCP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux_sagemaker import errors, transport
from flux_sagemaker.asyncio_stream import AsyncioStream, on_stdlib_asyncio_loop
from flux_sagemaker.h2core import MAX_WINDOW, H2ConnectionBase
from flux_sagemaker.testing.h2server import H2Server, Handler, ServerStream
from flux_sagemaker.transport import (
    _BATCH_HIGH_WATER,
    _BATCH_YIELD,
    H2Connection,
    H2Stream,
    Timeouts,
    connect,
    open_connection,
)

pytestmark = pytest.mark.anyio

CANCEL = 0x8
INTERNAL_ERROR = 0x2
NO_PING = Timeouts(ping_interval=None)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@contextlib.asynccontextmanager
async def serve_and_connect(
    handler: Callable[[ServerStream], Awaitable[None]],
    *,
    timeouts: Timeouts = NO_PING,
    server_tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
    server_receive_window: int | None = None,
    **kwargs: int,
) -> AsyncIterator[tuple[H2Server, H2Connection]]:
    server_kwargs = {k: v for k, v in kwargs.items() if k == "max_concurrent_streams"}
    client_kwargs = {k: v for k, v in kwargs.items() if k != "max_concurrent_streams"}
    if server_receive_window is not None:
        server_kwargs["receive_window"] = server_receive_window
    async with (
        H2Server(handler, ssl_context=server_tls, **server_kwargs) as server,
        open_connection(
            "127.0.0.1", server.port, ssl_context=client_tls, timeouts=timeouts, **client_kwargs
        ) as conn,
    ):
        yield server, conn


async def open_post(conn: H2Connection, path: str = "/") -> H2Stream:
    return await conn.open_stream("POST", "http", "localhost", path, [("x-test", "1")])


async def read_all(stream: H2Stream) -> bytes:
    out = bytearray()
    while (chunk := await stream.receive()) is not None:
        out += chunk
    return bytes(out)


async def echo(stream: ServerStream) -> None:
    await stream.send_headers(200, [("content-type", "application/octet-stream")])
    while (chunk := await stream.receive()) is not None:
        await stream.send_data(chunk)
    await stream.end()


def pattern(n: int, seed: int = 7) -> bytes:
    return bytes((i * seed + i // 251) % 256 for i in range(n))


@pytest.mark.parametrize("tls", [False, True])
async def test_bidirectional_echo_exceeds_windows(
    tls: bool, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    data = pattern(3 * 1024 * 1024 + 17)
    with anyio.fail_after(10):
        async with serve_and_connect(
            echo,
            server_tls=server_tls if tls else None,
            client_tls=client_tls if tls else None,
        ) as (server, conn):
            stream = await open_post(conn)
            status, headers = await stream.response(timeout=5)
            assert status == 200
            assert ("content-type", "application/octet-stream") in headers
            received = bytearray()

            async def reader() -> None:
                received.extend(await read_all(stream))

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                for i in range(0, len(data), 100_000):
                    await stream.send(data[i : i + 100_000])
                await stream.end_input()
            assert bytes(received) == data
            assert conn.stream_count == 0
            assert server.handler_errors == []


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(st.binary(max_size=70_000), max_size=12))
async def test_request_body_arrives_intact(chunks: list[bytes]) -> None:
    async def collect(stream: ServerStream) -> None:
        body = bytearray()
        while (chunk := await stream.receive()) is not None:
            body += chunk
        await stream.send_headers(200, [("x-len", str(len(body)))])
        await stream.send_data(bytes(body), end_stream=True)

    with anyio.fail_after(10):
        async with serve_and_connect(collect, receive_window=65_535) as (_, conn):
            stream = await open_post(conn)
            for chunk in chunks:
                await stream.send(chunk)
            await stream.end_input()
            _, headers = await stream.response()
            assert dict(headers)["x-len"] == str(sum(map(len, chunks)))
            assert await read_all(stream) == b"".join(chunks)


async def test_a_small_window_mixes_whole_frames_and_frames_cut_by_h2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 1000-byte stream window: some 600-byte sends fit and go out as one frame framed by us,
    # others are cut at the window by h2 and wait for WINDOW_UPDATE. Order and bytes must hold.
    chunks = [pattern(600, seed=i + 1) for i in range(40)]
    framed = {"ours": 0, "h2": 0}
    ours, theirs = H2ConnectionBase._frame_data_fast, h2.connection.H2Connection.send_data

    def count_ours(self: H2ConnectionBase, *args: Any) -> bool:
        done = ours(self, *args)
        framed["ours"] += done
        return done

    def count_h2(self: h2.connection.H2Connection, *args: Any, **kwargs: Any) -> None:
        framed["h2"] += self.config.client_side
        theirs(self, *args, **kwargs)

    monkeypatch.setattr(H2ConnectionBase, "_frame_data_fast", count_ours)
    monkeypatch.setattr(h2.connection.H2Connection, "send_data", count_h2)

    async def collect(stream: ServerStream) -> None:
        await stream.send_headers(200)  # after the server's SETTINGS: the window is in force
        body = bytearray()
        while (chunk := await stream.receive()) is not None:
            body += chunk
        await stream.send_data(bytes(body), end_stream=True)

    with anyio.fail_after(10):
        async with serve_and_connect(collect, server_receive_window=1000) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            for chunk in chunks:
                await stream.send(chunk)
            await stream.end_input()
            assert await read_all(stream) == b"".join(chunks)
    assert framed["ours"] > 0  # whole frames framed by us
    assert framed["h2"] > 0  # frames cut at the window by h2


async def test_slow_reader_bounds_client_buffer() -> None:
    window = 32_768
    data = pattern(1024 * 1024)
    sent_all = anyio.Event()

    async def firehose(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await stream.send_data(data, end_stream=True)
        sent_all.set()

    with anyio.fail_after(10):
        async with serve_and_connect(firehose, receive_window=window) as (_, conn):
            stream = await open_post(conn)
            await stream.end_input()
            await stream.response()
            while stream.buffered < window:  # noqa: ASYNC110 - polling a counter
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # give an unbounded transport time to overfill
            assert stream.buffered == window
            assert not sent_all.is_set()  # the server is blocked on our closed window
            assert await read_all(stream) == data
            await sent_all.wait()


async def test_rst_stream_raises_stream_reset_after_buffered_data() -> None:
    async def reset_after_data(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await stream.send_data(b"partial")
        await stream.reset(INTERNAL_ERROR)

    with anyio.fail_after(10):
        async with serve_and_connect(reset_after_data) as (_, conn):
            stream = await open_post(conn)
            assert (await stream.response())[0] == 200
            assert await stream.receive() == b"partial"
            with pytest.raises(errors.StreamReset) as info:
                await stream.receive()
            assert info.value.error_code == INTERNAL_ERROR
            assert info.value.retryable
            with pytest.raises(errors.StreamReset):
                await stream.send(b"more")
            await stream.aclose()
            assert conn.is_available  # one stream's reset leaves the connection usable


async def test_goaway_drains_lower_streams_and_fails_higher_ones() -> None:
    both_started = anyio.Event()
    started: list[int] = []

    async def handler(stream: ServerStream) -> None:
        started.append(stream.stream_id)
        await stream.send_headers(200)
        if len(started) == 2:
            both_started.set()
        if stream.stream_id == 1:
            await both_started.wait()
            await stream.connection.goaway(last_stream_id=1)
            await stream.send_data(b"finished after goaway", end_stream=True)
            assert await stream.receive() is None
        else:
            await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with serve_and_connect(handler) as (_, conn):
            low, high = await open_post(conn), await open_post(conn)
            assert (low.stream_id, high.stream_id) == (1, 3)
            with pytest.raises(errors.GoAway) as info:
                await read_all(high)
            assert info.value.retryable
            assert info.value.error_code == 0
            assert info.value.unprocessed  # above last_stream_id: safe to send again
            assert not conn.is_available
            with pytest.raises(errors.GoAway) as info:
                await open_post(conn)
            assert info.value.unprocessed  # its headers never went out: send it elsewhere
            await low.end_input()
            assert await read_all(low) == b"finished after goaway"


@pytest.mark.parametrize("tls", [False, True])
async def test_aborted_tcp_fails_every_stream_with_connection_lost(
    tls: bool, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # Over TLS the server drops TCP without close_notify: a truncated TLS stream is a lost
    # connection too, not a hang and not a clean end.
    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        if stream.stream_id == 3:
            await stream.connection.abort()
        await anyio.sleep_forever()

    served = serve_and_connect(
        handler,
        timeouts=NO_PING,
        server_tls=server_tls if tls else None,
        client_tls=client_tls if tls else None,
    )
    with anyio.fail_after(10):  # no PING: only the EOF can end these waits
        async with served as (_, conn):
            first = await open_post(conn)
            await first.response()
            second = await open_post(conn)
            for stream in (first, second):
                with pytest.raises(errors.ConnectionLost):
                    await stream.receive()
            assert isinstance(conn.error, errors.ConnectionLost)
            with pytest.raises(errors.ConnectionLost):
                await first.send(b"x")
            with pytest.raises(errors.ConnectionLost):
                await open_post(conn)


async def test_abort_still_sends_what_a_handler_already_queued() -> None:
    # A handler's send returned while another task was writing (it joined that write); an
    # abort that follows must not drop those bytes: they were sent before the fault.
    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        conn = stream.connection

        async def busy_writer() -> None:
            async with conn._write_lock:  # a socket write in progress elsewhere
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(busy_writer)
            await anyio.sleep(0.05)
            await stream.send_data(b"last words")  # queued for the busy writer
            await conn.abort()

    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=NO_PING) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            assert await stream.receive() == b"last words"
            with pytest.raises(errors.ConnectionLost):
                await stream.receive()


async def test_silent_peer_fails_by_ping_timeout() -> None:
    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        stream.connection.pause()
        await anyio.sleep_forever()

    timeouts = Timeouts(ping_interval=0.2, ping_timeout=0.3)
    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=timeouts) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            with pytest.raises(errors.ConnectionLost, match="PING"):
                await stream.receive()
            assert not conn.is_available


@pytest.mark.parametrize("write", [None, 60.0])
async def test_silent_peer_fails_by_ping_timeout_while_a_write_is_stuck(
    write: float | None,
) -> None:
    """The peer stops reading while we send: the writer task is stuck in its socket write.
    The PING timeout still fails the streams, as ConnectionLost, long before any write limit."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        stream.connection.pause()
        await anyio.sleep_forever()

    async def fill_the_socket(stream: H2Stream) -> None:
        with contextlib.suppress(errors.FluxError):
            while True:
                await stream.send(bytes(16_000))

    timeouts = Timeouts(ping_interval=0.2, ping_timeout=0.3, write=write)
    with anyio.fail_after(10):  # a hang bound: write=60 would otherwise end it at 60 s
        async with (
            serve_and_connect(handler, timeouts=timeouts, server_receive_window=MAX_WINDOW) as (
                _,
                conn,
            ),
            anyio.create_task_group() as tg,
        ):
            stream = await open_post(conn)
            await stream.response()
            tg.start_soon(fill_the_socket, stream)
            with pytest.raises(errors.ConnectionLost, match="PING"):
                await stream.receive()
            assert not conn.is_available


async def test_ping_keeps_a_quiet_connection_alive() -> None:
    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        assert await stream.receive() == b"late"
        await stream.send_data(b"ok", end_stream=True)

    timeouts = Timeouts(ping_interval=0.05, ping_timeout=0.5)
    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=timeouts) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            await anyio.sleep(0.4)  # several PING rounds, all answered
            await stream.send(b"late")
            await stream.end_input()
            assert await read_all(stream) == b"ok"
            assert conn.error is None


def _h2_ping_answerer(listener: socket.socket, stop: threading.Event) -> None:
    """A server in its own thread: HTTP/2 handshake, then answer every PING at once."""
    listener.settimeout(10)
    sock, _ = listener.accept()
    sock.settimeout(0.05)
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2conn.initiate_connection()
    with sock, contextlib.suppress(ConnectionError):  # the client may reset at the end
        sock.sendall(h2conn.data_to_send())
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            h2conn.receive_data(data)  # h2 queues the PING ACKs itself
            sock.sendall(h2conn.data_to_send())


async def test_a_blocked_event_loop_is_not_taken_for_a_silent_peer() -> None:
    """The PING's answer arrived while our loop was blocked: the connection lives on."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_h2_ping_answerer, args=(listener, stop), daemon=True)
    thread.start()
    timeouts = Timeouts(ping_interval=0.1, ping_timeout=0.2)
    try:
        with anyio.fail_after(10):
            async with open_connection(
                "127.0.0.1", listener.getsockname()[1], ssl_context=None, timeouts=timeouts
            ) as conn:
                for _ in range(5):
                    await anyio.sleep(0.15)  # a PING is out; the thread answers it at once
                    time.sleep(0.5)  # noqa: ASYNC251 - the point: a blocked event loop
                    await anyio.sleep(0.05)
                    assert conn.error is None
    finally:
        stop.set()
        thread.join()
        listener.close()


def _h2_ping_flooder(listener: socket.socket, pings: int, stop: threading.Event) -> None:
    """A server in its own thread: answer one request, then never read again; send ``pings``
    PINGs (the client's ACKs fill the socket buffers), then one DATA frame, then nothing."""
    listener.settimeout(10)
    sock, _ = listener.accept()
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2conn.initiate_connection()
    with sock, contextlib.suppress(OSError):  # the client may reset at the end
        sock.sendall(h2conn.data_to_send())
        events: list[h2.events.Event] = []
        while not any(isinstance(e, h2.events.RequestReceived) for e in events):
            events = h2conn.receive_data(sock.recv(65536))
        h2conn.send_headers(1, [(":status", "200")])
        sock.sendall(h2conn.data_to_send())
        for _ in range(pings):
            h2conn.ping(bytes(8))
        h2conn.send_data(1, b"an event")
        sock.sendall(h2conn.data_to_send())
        stop.wait(timeout=5)  # a hang guard: closing the socket ends a client stuck writing


async def test_data_and_the_ping_timeout_go_on_while_the_server_does_not_read() -> None:
    """A server that stops reading and sends PINGs: our ACKs fill the socket. The reader must
    not wait for that write: it goes on delivering data, and the PING timeout still fires."""
    listener = socket.socket()
    # Small socket buffers on both ends: a few thousand PING ACKs fill them.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()
    args = (listener, 10_000, stop)
    thread = threading.Thread(target=_h2_ping_flooder, args=args, daemon=True)
    thread.start()
    timeouts = Timeouts(ping_interval=0.2, ping_timeout=0.3, write=None)
    try:
        with anyio.fail_after(10):
            sock = await anyio.connect_tcp("127.0.0.1", listener.getsockname()[1])
            raw = sock.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            conn = H2Connection(sock, timeouts=timeouts)
            await conn._handshake()
            async with anyio.create_task_group() as tg:
                await tg.start(conn.run)
                stream = await open_post(conn)
                await stream.response()
                assert await stream.receive() == b"an event"
                with pytest.raises(errors.ConnectionLost, match="PING"):
                    await stream.receive()
                await conn.aclose()
    finally:
        stop.set()
        thread.join()
        listener.close()


async def test_tls_with_wrong_ca_is_connect_error(server_tls: ssl.SSLContext) -> None:
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    with anyio.fail_after(10):
        async with H2Server(echo, ssl_context=server_tls) as server:
            with pytest.raises(errors.ConnectError, match="certificate"):
                await connect("127.0.0.1", server.port, ssl_context=other)


async def test_server_without_h2_alpn_is_connect_error(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with anyio.fail_after(10):
        async with H2Server(echo, ssl_context=server_tls, alpn_protocols=("http/1.1",)) as server:
            with pytest.raises(errors.ConnectError, match="ALPN gave None"):
                await connect("127.0.0.1", server.port, ssl_context=client_tls)


async def test_plaintext_http1_server_is_connect_error() -> None:
    async def http1(sock: anyio.abc.SocketStream) -> None:
        async with sock:
            await sock.send(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, http1)
            with pytest.raises(errors.ConnectError):
                await connect("127.0.0.1", port, ssl_context=None)
            tg.cancel_scope.cancel()


async def test_refused_connection_is_connect_error() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    with anyio.fail_after(10), pytest.raises(errors.ConnectError):
        await connect("127.0.0.1", port, ssl_context=None)


@pytest.mark.parametrize(
    ("host", "refused_on"),
    [
        ("a" * 64 + ".example.com", "asyncio"),
        ("runtime..example.com", "asyncio"),
        ("ab\u200d.example.com", "trio"),  # a joiner where IDNA 2008 forbids it
    ],
    ids=["long-label", "empty-label", "joiner"],
)
async def test_a_host_name_dns_cannot_carry_is_a_connect_error(
    host: str, refused_on: str, anyio_backend: str
) -> None:
    """The IDNA encoding before the DNS query refuses these names (asyncio uses Python's codec,
    anyio on trio the idna package); its raw UnicodeError escaped."""
    # The other backend asks DNS, which may answer "not found" or not at all.
    with anyio.fail_after(10), pytest.raises(errors.TransportError) as caught:
        await connect(host, 443, ssl_context=None, timeouts=Timeouts(connect=5))
    if anyio_backend == refused_on:
        assert isinstance(caught.value, errors.ConnectError)
        assert "not a valid host name" in str(caught.value)
        assert not caught.value.retryable  # it would fail the same way again


async def test_a_server_that_never_answers_the_preface_is_a_connect_timeout() -> None:
    async def mute(sock: anyio.abc.SocketStream) -> None:
        async with sock:
            await anyio.sleep_forever()

    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, mute)
            with pytest.raises(errors.TimeoutError, match=r"took longer than 0\.2 s"):
                await connect("127.0.0.1", port, ssl_context=None, timeouts=Timeouts(connect=0.2))
            tg.cancel_scope.cancel()


async def test_the_os_giving_up_on_tcp_is_a_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """ETIMEDOUT from the kernel, well within our own deadline: unreachable, not our timeout."""

    async def kernel_gives_up(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError(110, "Connection timed out")

    monkeypatch.setattr(transport, "connect_asyncio", kernel_gives_up)
    monkeypatch.setattr(anyio, "connect_tcp", kernel_gives_up)
    with anyio.fail_after(10), pytest.raises(errors.ConnectError, match="timed out"):
        await connect("127.0.0.1", 9, ssl_context=None, timeouts=Timeouts(connect=60))


def _answer_with_raw_headers(fields: list[tuple[bytes, bytes]]) -> Handler:
    """A server handler that sends ``fields`` as the response headers, unchecked."""

    async def handler(stream: ServerStream) -> None:
        conn = stream._conn
        async with conn._write_lock:
            conn._h2.send_headers(stream.stream_id, fields)
            await conn._flush_locked()
        await anyio.sleep_forever()

    return handler


@pytest.mark.parametrize(
    "fields",
    [[(b":status", b"abc")], [(b":status", b"2000")]],
    ids=["not-a-number", "four-digits"],
)
async def test_a_broken_status_fails_only_its_stream(fields: list[tuple[bytes, bytes]]) -> None:
    with anyio.fail_after(10):
        async with serve_and_connect(_answer_with_raw_headers(fields)) as (_, conn):
            first, second = await open_post(conn), await open_post(conn)
            for stream in (first, second):
                with pytest.raises(errors.RemoteProtocolError, match=":status"):
                    await stream.response()
            assert conn.is_available  # the connection goes on


async def test_a_response_header_that_is_not_utf8_is_read_with_replacement_characters() -> None:
    fields = [(b":status", b"200"), (b"x-name", b"caf\xe9")]
    with anyio.fail_after(10):
        async with serve_and_connect(_answer_with_raw_headers(fields)) as (_, conn):
            stream = await open_post(conn)
            assert await stream.response() == (200, [("x-name", "caf\ufffd")])
            assert conn.is_available


async def test_peer_max_concurrent_streams_is_respected() -> None:
    active = 0
    peak = 0
    release = anyio.Event()

    async def handler(stream: ServerStream) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await stream.send_headers(200)
        await release.wait()
        await stream.send_data(b"done", end_stream=True)
        await stream.receive()
        active -= 1

    with anyio.fail_after(10):
        async with serve_and_connect(handler, max_concurrent_streams=2) as (_, conn):
            assert conn.max_concurrent_streams == 2
            streams = [await open_post(conn), await open_post(conn)]
            assert not conn.has_capacity
            third: list[H2Stream] = []

            async def open_third() -> None:
                third.append(await open_post(conn))

            async with anyio.create_task_group() as tg:
                tg.start_soon(open_third)
                await anyio.wait_all_tasks_blocked()
                assert third == []  # waiting for a slot
                release.set()
                for stream in streams:
                    await stream.end_input()
                    assert await read_all(stream) == b"done"
            await third[0].end_input()
            assert await read_all(third[0]) == b"done"
            assert peak == 2


async def test_response_timeout() -> None:
    async def silent(stream: ServerStream) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with serve_and_connect(silent) as (_, conn):
            stream = await open_post(conn)
            with pytest.raises(errors.TimeoutError):
                await stream.response(timeout=0.1)


async def test_stream_aclose_resets_and_is_idempotent() -> None:
    seen: list[BaseException] = []
    got_reset = anyio.Event()

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        try:
            await stream.receive()
        except errors.StreamReset as exc:
            seen.append(exc)
            got_reset.set()

    with anyio.fail_after(10):
        async with serve_and_connect(handler) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            await stream.aclose()
            await stream.aclose()
            await got_reset.wait()
            assert isinstance(seen[0], errors.StreamReset)
            assert seen[0].error_code == CANCEL
            with pytest.raises(errors.UsageError):
                await stream.send(b"x")
            assert conn.stream_count == 0


async def test_aclose_while_a_socket_write_is_stuck_still_frees_the_stream_slot() -> None:
    """Another task's socket write is stuck (a peer that reads slowly; the write timeout is
    longer than the close limit): aclose() must not wait for it, and must still release the
    stream in h2 and reset it at the peer. A stream only forgotten by us would hold one of the
    peer's concurrent-stream slots for good: the next open_stream failed with h2's
    TooManyStreamsError as a LocalProtocolError, and the peer never heard of the reset."""
    reset_seen = anyio.Event()

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        with contextlib.suppress(errors.StreamReset):
            await stream.receive()
        reset_seen.set()

    release = anyio.Event()
    held = anyio.Event()

    async def stuck_writer(conn: H2Connection) -> None:
        async with conn._write_lock:  # a socket write in progress elsewhere
            held.set()
            await release.wait()

    with anyio.fail_after(10):
        async with (
            serve_and_connect(handler, max_concurrent_streams=1) as (_, conn),
            anyio.create_task_group() as tg,
        ):
            first = await open_post(conn)
            await first.response()
            tg.start_soon(stuck_writer, conn)
            await held.wait()
            await first.aclose()  # returns without waiting for the stuck write
            release.set()
            second = await open_post(conn)  # the one slot is free again
            assert (await second.response())[0] == 200
            await reset_seen.wait()


async def test_response_after_aclose_is_a_usage_error() -> None:
    """Closed before its headers came: asking for them is the caller's mistake, not the peer's."""

    async def handler(stream: ServerStream) -> None:
        await anyio.sleep_forever()  # never answers

    with anyio.fail_after(10):
        async with serve_and_connect(handler) as (_, conn):
            stream = await open_post(conn)
            await stream.aclose()
            with pytest.raises(errors.UsageError, match="after aclose"):
                await stream.response()
            with pytest.raises(errors.UsageError, match="after aclose"):
                await stream.receive()


async def test_connection_aclose_fails_open_streams() -> None:
    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with serve_and_connect(handler) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            await conn.aclose()
            await conn.aclose()
            with pytest.raises(errors.ConnectionLost):
                await stream.receive()
            assert not conn.is_available


async def test_many_streams_on_one_connection() -> None:
    async def handler(stream: ServerStream) -> None:
        body = await stream.receive()
        await stream.send_headers(200)
        await stream.send_data((body or b"") * 2, end_stream=True)

    results: dict[int, bytes] = {}
    with anyio.fail_after(10):
        async with serve_and_connect(handler) as (server, conn):

            async def one(i: int) -> None:
                stream = await open_post(conn)
                await stream.send(str(i).encode())
                await stream.end_input()
                results[i] = await read_all(stream)

            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(one, i)
            assert server.stats.connections_accepted == 1
            assert server.stats.streams_started == 300
    assert results == {i: str(i).encode() * 2 for i in range(300)}


def test_timeouts_are_validated() -> None:
    with pytest.raises(errors.ValidationError, match="connect"):
        Timeouts(connect=0)
    with pytest.raises(errors.ValidationError, match="ping_timeout"):
        Timeouts(ping_timeout=-1)
    assert Timeouts(read=None).read is None
    # These two always have a limit: an unanswered PING and a close must end.
    for name in ("ping_timeout", "close"):
        with pytest.raises(errors.ValidationError, match=name):
            Timeouts(**{name: None})


class _CountingStream:
    """Wraps the client's socket stream and records every write."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner
        self.writes: list[int] = []

    async def send(self, data: bytes) -> None:
        self.writes.append(len(data))
        await self.inner.send(data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_frames_queued_by_many_streams_leave_in_one_socket_write() -> None:
    with anyio.fail_after(10):
        async with serve_and_connect(echo) as (_server, conn):
            streams = [await open_post(conn) for _ in range(20)]
            await anyio.sleep(0.05)  # the HEADERS are out
            counting = _CountingStream(conn._stream)
            conn._stream = counting
            for i, stream in enumerate(streams):  # one event-loop iteration: no send yields
                await stream.send(b"frame %d" % i)
            assert counting.writes == []  # queued: the writer task sends them together
            for i, stream in enumerate(streams):
                assert await stream.receive() == b"frame %d" % i
            assert len(counting.writes) == 1
            assert counting.writes[0] >= sum(9 + len(b"frame %d" % i) for i in range(20))  # 20 DATA
            await streams[0].end_input()  # END_STREAM is written before end_input returns
            assert len(counting.writes) == 2
            for stream in streams:
                await stream.aclose()


async def test_a_long_burst_is_written_in_parts_as_it_is_queued() -> None:
    """Past ``_BATCH_YIELD`` queued, a sender lets the writer go: the peer is not kept waiting."""
    n_streams = 2 * _BATCH_YIELD // 1024  # a burst of twice the threshold
    with anyio.fail_after(10):
        async with serve_and_connect(echo) as (_server, conn):
            streams = [await open_post(conn) for _ in range(n_streams)]
            await anyio.sleep(0.05)
            counting = _CountingStream(conn._stream)
            conn._stream = counting
            for stream in streams:
                await stream.send(b"x" * 1024)
            for stream in streams:
                assert await stream.receive() == b"x" * 1024
            assert len(counting.writes) >= 2
            assert sum(counting.writes) >= n_streams * (9 + 1024)
            for stream in streams:
                await stream.aclose()


@pytest.mark.parametrize(("code", "unprocessed"), [(0x7, True), (0x8, False), (0x2, False)])
def test_only_refused_stream_resets_mark_the_request_unprocessed(
    code: int, unprocessed: bool
) -> None:
    assert errors.StreamReset("reset", error_code=code).unprocessed is unprocessed
    assert errors.GoAway("goaway").unprocessed is False  # a drained stream may have been handled


async def test_probe_finds_a_silent_peer_long_before_the_ping_interval() -> None:
    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        if stream.path == "/silent":
            stream.connection.pause()
        await anyio.sleep_forever()

    timeouts = Timeouts(ping_interval=30, ping_timeout=10)
    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=timeouts) as (_, conn):
            await (await open_post(conn)).response()
            await conn.probe(0.2)  # a live peer answers: nothing happens
            await anyio.sleep(0.6)
            assert conn.error is None
            silent = await open_post(conn, "/silent")
            await silent.response()
            await conn.probe(0.2)  # fail_after(10): the 30 s interval + 10 s would be too late
            with pytest.raises(errors.ConnectionLost, match=r"PING within 0\.2 s"):
                await silent.receive()


async def _send_after_go(stream: ServerStream) -> None:
    """Wait for the client's "go", then send 5 x 1000 bytes and end the response."""
    await stream.send_headers(200)
    assert await stream.receive() == b"go"
    for _ in range(5):
        await stream.send_data(b"x" * 1000)
    await stream.end()


async def test_a_data_hook_takes_the_chunks_while_the_receiver_waits() -> None:
    taken = bytearray()

    def hook(chunk: bytes) -> bool:
        taken.extend(chunk)
        return True

    with anyio.fail_after(10):
        # 5000 bytes through a 1000-byte window: the hooked chunks must be acknowledged.
        async with serve_and_connect(_send_after_go, receive_window=1000) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            stream.set_data_hook(hook)
            await stream.send(b"go")
            assert await stream.receive() is None  # all data went to the hook; the end did not
    assert taken == b"x" * 5000


async def test_a_hook_that_declines_leaves_the_chunk_to_receive() -> None:
    offered: list[int] = []

    def hook(chunk: bytes) -> bool:
        offered.append(len(chunk))
        return False

    with anyio.fail_after(10):
        async with serve_and_connect(_send_after_go) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            stream.set_data_hook(hook)
            await stream.send(b"go")
            assert await read_all(stream) == b"x" * 5000
    assert offered  # the receiver was waiting for the first chunk at least


async def test_data_arriving_while_nobody_waits_is_buffered_not_hooked() -> None:
    hooked: list[bytes] = []
    with anyio.fail_after(10):
        async with serve_and_connect(_send_after_go) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            stream.set_data_hook(lambda chunk: hooked.append(chunk) is None)
            await stream.send(b"go")
            while stream.buffered < 5000:  # noqa: ASYNC110 - polling the buffer is the point
                await anyio.sleep(0.01)
            assert await read_all(stream) == b"x" * 5000
    assert hooked == []


async def test_a_receive_with_a_time_limit_is_never_bypassed() -> None:
    hooked: list[bytes] = []
    timeouts = Timeouts(ping_interval=None, read=5)
    with anyio.fail_after(10):
        async with serve_and_connect(_send_after_go, timeouts=timeouts) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            stream.set_data_hook(lambda chunk: hooked.append(chunk) is None)
            await stream.send(b"go")
            assert await read_all(stream) == b"x" * 5000
    assert hooked == []


BACKENDS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None,
            reason="uvloop is not installed (the test group installs it except on Windows)",
        ),
    ),
    pytest.param("trio", id="trio"),
]


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_connections_use_asyncio_stream_on_asyncios_own_loop_only(
    anyio_backend: str | tuple[str, dict[str, bool]],
) -> None:
    # uvloop's transports are not asyncio's (its create_connection has no Happy Eyeballs), so
    # there, as on trio, the connection keeps anyio's streams; it works the same either way.
    ours = anyio_backend == "asyncio"
    assert on_stdlib_asyncio_loop() == ours
    async with serve_and_connect(echo) as (_, conn):
        assert isinstance(conn._stream, AsyncioStream) == ours
        stream = await open_post(conn)
        await stream.send(b"ping")
        await stream.end_input()
        assert await read_all(stream) == b"ping"


@pytest.mark.parametrize(
    ("headers", "fast"),
    [([], True), ([("content-length", "5000")], False)],
    ids=["no-content-length", "content-length"],
)
async def test_response_data_skips_h2_unless_it_declares_a_length(
    headers: list[tuple[str, str]], fast: bool
) -> None:
    """A response without content-length has its DATA taken past h2 (h2 checks the length)."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200, headers)
        assert await stream.receive() == b"go"
        for _ in range(5):
            await stream.send_data(b"x" * 1000)
        await stream.end()

    with anyio.fail_after(10):
        async with serve_and_connect(handler) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            assert (stream.stream_id in conn._inbound.fast_streams) is fast
            await stream.send(b"go")
            assert await read_all(stream) == b"x" * 5000
            await stream.aclose()
            assert stream.stream_id not in conn._inbound.fast_streams


async def test_send_nowait_queues_for_the_writer_task_in_order() -> None:
    with anyio.fail_after(10):
        async with serve_and_connect(echo) as (_server, conn):
            stream = await open_post(conn)
            await anyio.sleep(0.05)  # the HEADERS are out
            assert stream.send_nowait(b"alone")
            assert await stream.receive() == b"alone"  # it woke the writer task
            counting = _CountingStream(conn._stream)
            conn._stream = counting
            assert stream.send_nowait(b"first")
            await stream.send(b" second")
            assert stream.send_nowait(b" third")
            assert counting.writes == []  # queued: the writer task sends them together
            body = b""
            while len(body) < len(b"first second third"):
                body += await stream.receive()
            assert body == b"first second third"
            assert len(counting.writes) == 1
            await stream.aclose()


async def test_send_nowait_declines_what_would_wait_and_queues_nothing() -> None:
    """Past the stream's window it declines; ``send`` then waits for the window."""
    chunk = b"y" * 16_384
    with anyio.fail_after(10):
        async with serve_and_connect(echo, server_receive_window=40_000) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            assert not stream.send_nowait(b"z" * 16_385)  # past the frame size h2 was told
            assert stream.send_nowait(chunk)
            assert stream.send_nowait(chunk)
            queued = bytes(conn._outbox)
            assert not stream.send_nowait(chunk)  # the third is past the window (40,000)
            assert conn._outbox == queued
            await stream.send(chunk)  # waits for the window that the echo reopens
            await stream.end_input()
            assert not stream.send_nowait(b"after the end")
            assert await read_all(stream) == chunk * 3


async def test_send_nowait_queues_to_the_high_water_mark_and_reports_a_backlog() -> None:
    """Past the yield mark ``send_nowait`` still queues but reports a backlog, which one
    checkpoint lets the writer take; at the high-water mark (the sender writes itself) it
    declines and queues nothing."""
    chunk = b"y" * 16_384
    with anyio.fail_after(10):
        async with serve_and_connect(echo) as (_server, conn):
            stream = await open_post(conn)
            await stream.response()
            while len(conn._outbox) + 2 * (9 + len(chunk)) < _BATCH_YIELD:
                assert stream.send_nowait(chunk)
                assert not stream.backlogged
            assert stream.send_nowait(chunk)
            assert stream.send_nowait(chunk)
            assert stream.backlogged  # past the yield mark, and queued all the same
            await anyio.wait_all_tasks_blocked()  # trio may run us again before the writer
            assert not stream.backlogged  # the writer took the burst
            assert not conn._outbox
            queued = 0
            while _BATCH_HIGH_WATER - queued > 2 * 9 + len(chunk) + 10:
                assert stream.send_nowait(chunk)
                queued += 9 + len(chunk)
            assert len(conn._outbox) == queued
            assert _BATCH_HIGH_WATER - queued - 9 <= 16_384  # declined for the mark, not the size
            assert not stream.send_nowait(b"x" * (_BATCH_HIGH_WATER - queued - 9))
            assert len(conn._outbox) == queued
            assert stream.send_nowait(b"x" * (_BATCH_HIGH_WATER - queued - 10))
            await stream.aclose()
            assert not stream.send_nowait(b"after aclose")


async def test_the_server_side_always_awaits_its_sends() -> None:
    declined: list[bool] = []

    async def handler(stream: ServerStream) -> None:
        declined.append(not stream.send_nowait(b"x"))
        await echo(stream)

    with anyio.fail_after(10):
        async with serve_and_connect(handler) as (_server, conn):
            stream = await open_post(conn)
            await stream.send(b"ping")
            assert await stream.receive() == b"ping"
            await stream.aclose()
    assert declined == [True]


async def test_a_sender_held_by_a_shut_window_probes_a_silent_peer() -> None:
    """A peer gone without FIN or RST (a NAT drop) keeps the window shut: the sender it holds
    asks with a PING after WINDOW_PROBE_AFTER, and the connection fails when no answer
    comes, not at the write limit (or, without one, never)."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        stream.connection.pause()
        await anyio.sleep_forever()

    timeouts = Timeouts(ping_interval=None, write=None)
    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=timeouts, server_receive_window=1024) as (
            _,
            conn,
        ):
            stream = await open_post(conn)
            await stream.response()
            with pytest.raises(errors.ConnectionLost, match=r"PING within 2 s"):
                await stream.send(bytes(4096))
            assert not conn.is_available


async def test_a_shut_window_on_a_live_peer_still_waits_out_the_write_limit() -> None:
    """A peer that answers PING but does not read the stream: the probe leaves the connection
    alone, and the sender fails at ``Timeouts.write``."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await anyio.sleep_forever()  # never reads: the window stays shut

    timeouts = Timeouts(ping_interval=None, write=1.5)
    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=timeouts, server_receive_window=1024) as (
            _,
            conn,
        ):
            stream = await open_post(conn)
            await stream.response()
            with pytest.raises(errors.TimeoutError, match=r"window closed for 1\.5 s"):
                await stream.send(bytes(4096))
            assert conn.error is None
            assert conn.is_available
            assert conn._ping_count == 1  # probed once, answered


async def test_no_write_limit_while_the_peers_data_waits_unread_then_it_runs() -> None:
    """A peer that answers and reads in one task stops reading while its data waits unread
    here: that shut window is ours to open (a consumer behind), so ``Timeouts.write`` does not
    run; it failed the stream of a consumer that fell behind. Once the data is read, it does,
    from then on."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await stream.send_data(bytes(1024))  # the client's whole window
        await anyio.sleep_forever()  # and never reads

    outcome: list[BaseException] = []

    async def send(stream: H2Stream) -> None:
        try:
            await stream.send(bytes(4096))
        except errors.FluxError as exc:
            outcome.append(exc)

    timeouts = Timeouts(ping_interval=None, write=0.3)
    with anyio.fail_after(10):
        async with serve_and_connect(
            handler, timeouts=timeouts, receive_window=1024, server_receive_window=1024
        ) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            while stream.buffered < 1024:  # noqa: ASYNC110 - the server fills our window
                await anyio.sleep(0.01)
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, stream)
                # The probe's PING after WINDOW_PROBE_AFTER (1 s) of waiting, past the limit.
                while not (conn._ping_count or outcome):  # noqa: ASYNC110 - polling
                    await anyio.sleep(0.01)
                assert outcome == []
                assert await stream.receive() == bytes(1024)
            (error,) = outcome
            assert isinstance(error, errors.TimeoutError)
            assert "window closed for 0.3 s" in str(error)
            assert conn.error is None


async def wake_the_client_again_and_again(
    stream: ServerStream, frame: Callable[[], object]
) -> None:
    """The server side of a peer that keeps waking the client: ``frame`` queues one frame in
    h2, sent every 50 ms (for about 10 s, past the tests' hang bound)."""
    conn = stream._conn
    for _ in range(200):
        async with conn._write_lock:
            frame()
            await conn._flush_locked()
        await anyio.sleep(0.05)
    await anyio.sleep_forever()


async def test_connection_window_updates_do_not_restart_a_shut_streams_write_limit() -> None:
    """The server keeps the stream's window shut but sends WINDOW_UPDATE on the connection
    now and then (as its other streams are read): each wakes the sender, which must not
    start its ``Timeouts.write`` wait over, or it would wait for ever."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        while stream.buffered < 1024:  # noqa: ASYNC110 - the client fills the stream window
            await anyio.sleep(0.01)
        # The connection's bytes, opened again one at a time.
        h2c = stream._conn._h2
        await wake_the_client_again_and_again(stream, lambda: h2c.increment_flow_control_window(1))

    timeouts = Timeouts(ping_interval=None, write=0.5)
    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=timeouts, server_receive_window=1024) as (
            _,
            conn,
        ):
            stream = await open_post(conn)
            await stream.response()
            with pytest.raises(errors.TimeoutError, match=r"window closed for 0\.5 s"):
                await stream.send(bytes(4096))


async def test_settings_frames_do_not_restart_the_wait_for_a_stream_slot() -> None:
    """At the server's limit of one stream, the server keeps sending SETTINGS: each wakes the
    opener waiting for a slot, which must not start its ``Timeouts.connect`` wait over."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        h2c = stream._conn._h2
        limit = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}
        await wake_the_client_again_and_again(stream, lambda: h2c.update_settings(limit))

    timeouts = Timeouts(ping_interval=None, connect=0.5)
    with anyio.fail_after(10):
        async with serve_and_connect(handler, timeouts=timeouts, max_concurrent_streams=1) as (
            _,
            conn,
        ):
            first = await open_post(conn)
            await first.response()
            with pytest.raises(errors.TimeoutError, match=r"no free stream slot within 0\.5 s"):
                await open_post(conn)


async def test_a_probe_in_the_instant_h2_closed_gets_no_raw_h2_error() -> None:
    """On the peer's protocol error h2 closes at once, and the reader stores the error only
    after writing its GOAWAY: a sender's window probe made meanwhile must not raise h2's own
    ProtocolError (not a FluxError) to the sender."""
    with anyio.fail_after(10):
        async with serve_and_connect(echo) as (_, conn):
            stream = await open_post(conn)
            await stream.response()
            conn._h2.close_connection()  # as h2 does on the protocol error, before the reader
            await conn.probe(1.0)
