"""ConnectionPool: sharing, limits, dead and idle connections, the default pool."""

from __future__ import annotations

import contextlib
import ssl

import anyio
import anyio.abc
import pytest
import trustme

from flux_sagemaker import FluxClient, errors, transport
from flux_sagemaker.pool import ConnectionPool, default_pool
from flux_sagemaker.testing import MockFluxEndpoint, RequestFailure
from flux_sagemaker.testing.h2server import H2Server, ServerStream
from flux_sagemaker.transport import H2Connection, H2Stream, Timeouts

pytestmark = pytest.mark.anyio

TIMEOUTS = Timeouts(ping_interval=None)


async def echo(stream: ServerStream) -> None:
    await stream.send_headers(200)
    while (chunk := await stream.receive()) is not None:
        await stream.send_data(chunk)
    await stream.end()


async def open_to(
    pool: ConnectionPool,
    server: H2Server,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeouts: Timeouts = TIMEOUTS,
) -> H2Stream:
    """A stream to ``server`` (https when given an ``ssl_context``)."""
    return await pool.open_stream(
        ("https" if ssl_context is not None else "http", "127.0.0.1", server.port),
        authority=f"127.0.0.1:{server.port}",
        path="/",
        headers=[],
        ssl_context=ssl_context,
        timeouts=timeouts,
    )


async def exchange(pool: ConnectionPool, server: H2Server, payload: bytes) -> bytes:
    stream = await open_to(pool, server)
    out = bytearray()

    async def reader() -> None:
        while (chunk := await stream.receive()) is not None:
            out.extend(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await stream.send(payload)
        await stream.end_input()
    return bytes(out)


async def test_100_concurrent_streams_share_one_connection() -> None:
    results: dict[int, bytes] = {}
    with anyio.fail_after(10):
        async with H2Server(echo) as server, ConnectionPool() as pool:

            async def one(i: int) -> None:
                results[i] = await exchange(pool, server, f"stream {i} ".encode() * (i + 1) * 50)

            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
            assert pool.stats.connections_opened == 1
            assert pool.stats.streams_opened == 100
            assert server.stats.connections_accepted == 1
    assert results == {i: f"stream {i} ".encode() * (i + 1) * 50 for i in range(100)}


async def test_connection_is_reused_after_streams_end() -> None:
    with anyio.fail_after(10):
        async with H2Server(echo) as server, ConnectionPool() as pool:
            assert await exchange(pool, server, b"one") == b"one"
            assert await exchange(pool, server, b"two") == b"two"
            assert pool.stats.connections_opened == 1
            assert pool.stats.streams_opened == 2
            assert server.stats.connections_accepted == 1


@pytest.mark.parametrize(("server_limit", "pool_limit"), [(2, None), (1000, 2)])
async def test_stream_limit_opens_more_connections(
    server_limit: int, pool_limit: int | None
) -> None:
    release = anyio.Event()

    async def held(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await release.wait()
        await stream.end()

    with anyio.fail_after(10):
        async with (
            H2Server(held, max_concurrent_streams=server_limit) as server,
            ConnectionPool(max_streams_per_connection=pool_limit) as pool,
        ):
            streams: list[H2Stream] = []

            async def one() -> None:
                streams.append(await open_to(pool, server))

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(one)
            assert len(streams) == 5
            assert pool.stats.connections_opened == 3
            assert server.stats.connections_accepted == 3
            release.set()
            for stream in streams:
                assert await stream.receive() is None
                await stream.aclose()


async def test_exactly_the_limit_fits_one_connection() -> None:
    release = anyio.Event()

    async def held(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await release.wait()
        await stream.end()

    with anyio.fail_after(10):
        async with H2Server(held, max_concurrent_streams=10) as server, ConnectionPool() as pool:
            streams: list[H2Stream] = []

            async def one() -> None:
                streams.append(await open_to(pool, server))

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one)
            assert pool.stats.connections_opened == 1
            release.set()
            for stream in streams:
                assert await stream.receive() is None


async def test_goaway_connection_is_replaced() -> None:
    async def goaway_then_echo(stream: ServerStream) -> None:
        await stream.connection.goaway()
        await echo(stream)

    with anyio.fail_after(10):
        async with H2Server(goaway_then_echo) as server, ConnectionPool() as pool:
            assert await exchange(pool, server, b"drained") == b"drained"
            assert await exchange(pool, server, b"fresh") == b"fresh"
            assert pool.stats.connections_opened == 2


async def test_dead_connection_is_replaced() -> None:
    async def abort_first(stream: ServerStream) -> None:
        if server.stats.connections_accepted == 1:
            await stream.connection.abort()
        else:
            await echo(stream)

    with anyio.fail_after(10):
        async with H2Server(abort_first) as server, ConnectionPool() as pool:
            lost = await open_to(pool, server)
            with pytest.raises(errors.ConnectionLost):
                await lost.receive()
            assert await exchange(pool, server, b"again") == b"again"
            assert pool.stats.connections_opened == 2


async def test_idle_connection_is_closed() -> None:
    with anyio.fail_after(10):
        async with H2Server(echo) as server, ConnectionPool(idle_timeout=0.1) as pool:
            assert await exchange(pool, server, b"x") == b"x"
            while server.connections or pool.stats.connections:  # noqa: ASYNC110 - polling
                await anyio.sleep(0.02)
            assert await exchange(pool, server, b"y") == b"y"
            assert pool.stats.connections_opened == 2


async def test_concurrent_first_requests_share_one_failed_connect() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    wrong_trust = ssl.create_default_context()
    trustme.CA().configure_trust(wrong_trust)
    failures: list[BaseException] = []
    with anyio.fail_after(10):
        async with H2Server(echo, ssl_context=server_ctx) as server, ConnectionPool() as pool:

            async def one() -> None:
                try:
                    await pool.open_stream(
                        ("https", "127.0.0.1", server.port),
                        authority="x",
                        path="/",
                        headers=[],
                        ssl_context=wrong_trust,
                        timeouts=TIMEOUTS,
                    )
                except errors.ConnectError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one)
            assert len(failures) == 10
            assert server.stats.connections_accepted == 1
            assert pool.stats.connections_opened == 0


async def test_https_connections_are_shared_only_under_the_same_tls_context() -> None:
    """A connection verified under one caller's trust settings is not lent to a caller with
    other ones: that caller connects (and verifies) for itself."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    other_ca = ssl.create_default_context()
    trustme.CA().configure_trust(other_ca)

    with anyio.fail_after(10):
        async with H2Server(echo, ssl_context=server_ctx) as server, ConnectionPool() as pool:
            first = await open_to(pool, server, ssl_context=trusting)
            second = await open_to(pool, server, ssl_context=trusting)
            assert second.connection is first.connection
            with pytest.raises(errors.ConnectError, match="certificate"):
                await open_to(pool, server, ssl_context=other_ca)
            assert pool.stats.connections_opened == 1
            assert server.stats.connections_accepted == 2


async def test_a_callers_timeouts_hold_on_a_shared_connection() -> None:
    """Clients with other timeouts (one with no read limit and no PING, one with both) shared
    one connection, which kept the first caller's: the second's read limit and PINGs were
    silently dropped, and a dead peer went unnoticed for it. Callers with equal transport
    timeouts still share; those with other ones get a connection of their own."""

    async def hold(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await anyio.sleep_forever()

    strict = Timeouts(read=0.2, ping_interval=5.0)
    with anyio.fail_after(10):
        async with H2Server(hold) as server, ConnectionPool() as pool:
            lax = await open_to(pool, server)
            # Only the client-level limits differ: the same connection.
            same = await open_to(pool, server, timeouts=Timeouts(ping_interval=None, connected=1))
            assert same.connection is lax.connection
            stream = await open_to(pool, server, timeouts=strict)
            assert stream.connection.timeouts == strict
            await stream.response()
            with pytest.raises(errors.TimeoutError, match="no data"):
                await stream.receive()
            assert pool.stats.connections_opened == 2


async def test_pool_must_be_entered() -> None:
    pool = ConnectionPool()
    with pytest.raises(errors.UsageError):
        await pool.open_stream(
            ("http", "127.0.0.1", 1), authority="x", path="/", headers=[], ssl_context=None
        )


async def test_pool_exit_fails_open_streams() -> None:
    async def hold(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with H2Server(hold) as server:
            async with ConnectionPool() as pool:
                stream = await open_to(pool, server)
                await stream.response()
            with pytest.raises(errors.ConnectionLost):
                await stream.receive()


async def test_pool_exit_closes_its_connections_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection's close waits (up to its close limit) for a socket write in progress.
    One after another, a pool of stuck connections took that limit per connection to close: at
    5 s each, longer than a container's shutdown grace. They now close together."""
    monkeypatch.setattr(transport, "CLOSE_TIMEOUT", 60.0)  # a close in turn would hang the test

    async def hold(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await anyio.sleep_forever()

    both_closing, both_held = anyio.Event(), anyio.Event()
    held: list[H2Connection] = []

    async def stuck_writer(conn: H2Connection) -> None:
        async with conn._write_lock:  # a socket write in progress
            held.append(conn)
            if len(held) == 2:
                both_held.set()
            while not all(c._closing for c in conns):  # noqa: ASYNC110 - a plain flag
                await anyio.sleep(0.01)
            both_closing.set()

    with anyio.fail_after(10):
        async with (
            H2Server(hold, max_concurrent_streams=1) as server,
            anyio.create_task_group() as tg,
        ):
            async with ConnectionPool() as pool:
                for _ in range(2):
                    await (await open_to(pool, server)).response()
                conns = list(pool._keys)
                assert len(conns) == 2
                for conn in conns:
                    tg.start_soon(stuck_writer, conn)
                await both_held.wait()
            assert both_closing.is_set()
            tg.cancel_scope.cancel()


async def test_an_error_in_the_pool_body_is_not_wrapped_in_a_group() -> None:
    # An application's `except AccessDeniedError` around its pool got an ExceptionGroup.
    async def session(endpoint: MockFluxEndpoint, error: Exception | None = None) -> None:
        async with (
            ConnectionPool() as pool,
            FluxClient("any", pool=pool, **endpoint.client_kwargs()),
        ):
            if error is not None:
                raise error

    with anyio.fail_after(10):
        async with MockFluxEndpoint() as endpoint:
            endpoint.fail_requests(RequestFailure.access_denied())
            with pytest.raises(errors.AccessDeniedError):
                await session(endpoint)
            with pytest.raises(KeyError):
                await session(endpoint, KeyError("the application's own error"))


async def test_default_pool_is_shared_per_event_loop() -> None:
    with anyio.fail_after(10):
        async with H2Server(echo) as server:
            pool = await default_pool()
            assert await default_pool() is pool
            assert await exchange(pool, server, b"default") == b"default"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_streams_per_connection", 0),
        ("max_streams_per_connection", "2"),  # was a TypeError
        ("idle_timeout", 0),
        ("idle_timeout", "60"),  # was a TypeError
        ("receive_window", 0),  # was accepted: streams then timed out waiting for Connected
        ("receive_window", 2**31),  # was accepted: the SETTINGS frame failed at connect
        ("receive_window", "1048576"),
    ],
)
def test_pool_arguments_are_validated(name: str, value: object) -> None:
    with pytest.raises(errors.ValidationError, match=f"^{name} must be"):
        ConnectionPool(**{name: value})


async def test_an_opener_caught_by_its_connections_write_timeout_goes_to_another() -> None:
    """The connection's socket write is stuck, and the connection fails at ``Timeouts.write``
    while an opener waits to send its headers there: that request never left, so the pool
    opens it on a new connection instead of raising the write's TimeoutError."""

    async def handler(stream: ServerStream) -> None:
        await stream.send_headers(200)
        await stream.end()

    async with H2Server(handler) as server, ConnectionPool() as pool:
        with anyio.fail_after(10):
            first = await open_to(pool, server)
            await first.response()
            conn = first.connection
            held, release = anyio.Event(), anyio.Event()

            async def stuck_writer() -> None:
                async with conn._write_lock:  # a socket write that does not end
                    held.set()
                    await release.wait()
                    conn._fail(errors.TimeoutError("the socket write took longer than 0.5 s"))

            opened: list[H2Stream] = []

            async def opener() -> None:
                opened.append(await open_to(pool, server))

            async with anyio.create_task_group() as tg:
                tg.start_soon(stuck_writer)
                await held.wait()
                tg.start_soon(opener)
                await anyio.wait_all_tasks_blocked()  # the opener waits for the write lock
                release.set()
            (second,) = opened
            assert second.connection is not conn
            assert (await second.response())[0] == 200


async def test_a_pool_closed_while_connecting_raises_usage_error_and_closes_the_socket() -> None:
    """The connect finished after the pool's exit: starting its reader in the finished task
    group raised a raw RuntimeError, and the new socket was left to the garbage collector."""
    accepted, answer, client_gone = anyio.Event(), anyio.Event(), anyio.Event()

    async def slow_server(sock: anyio.abc.SocketStream) -> None:
        async with sock:
            accepted.set()
            await answer.wait()
            await sock.send(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # SETTINGS, empty
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await sock.receive()
            client_gone.set()

    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, slow_server)
            outcome: list[BaseException] = []

            async def opener(pool: ConnectionPool) -> None:
                try:
                    await pool.open_stream(
                        ("http", "127.0.0.1", port),
                        authority="x",
                        path="/",
                        headers=[],
                        ssl_context=None,
                        timeouts=TIMEOUTS,
                    )
                except Exception as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as openers:
                async with ConnectionPool() as pool:
                    openers.start_soon(opener, pool)
                    await accepted.wait()
                answer.set()
            (error,) = outcome
            assert isinstance(error, errors.UsageError)
            await client_gone.wait()  # the client closed the connection it had made
            assert pool.stats.connections == 0
            tg.cancel_scope.cancel()
