"""A pool of HTTP/2 connections keyed by ``(scheme, host, port)``, TLS context and timeouts.

Streams to one endpoint share a connection while it is healthy and below its concurrent-stream
limit; a new connection is opened otherwise. Concurrent first requests share ONE new connection:
the first caller connects and the others wait for it (the AWS SDK opens one connection per
concurrent first request). Dead and GOAWAY'd connections leave the pool at once, and are closed
once their last stream is done; idle ones are closed after ``idle_timeout``.

Lifetime: ``async with ConnectionPool() as pool`` owns a task group that runs every connection's
reader task (and one sweeper task). Callers, such as many ``FluxClient`` instances in their own
task groups, only call ``open_stream``: a reader never belongs to a caller's task group, so one
client leaving cannot kill a connection that other clients share.

The per-event-loop default pool (:func:`default_pool`) cannot borrow anyone's task group either,
so it enters itself inside a background task that lives as long as the event loop: a trio system
task, or an asyncio task. Both are cancelled when the loop finishes (``trio.run`` cancels system
tasks after the main task; ``asyncio.run`` cancels leftover tasks), and the pool's exit then
closes its connections.
"""

from __future__ import annotations

import ssl
import sys
import weakref
from collections.abc import Callable, Collection, Coroutine
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc
import attrs

from flux_sagemaker import errors
from flux_sagemaker.core.proxy import Proxy
from flux_sagemaker.core.validators import check_number
from flux_sagemaker.h2core import DEFAULT_RECEIVE_WINDOW, MAX_WINDOW, fresh_error
from flux_sagemaker.transport import H2Connection, H2Stream, Timeouts, connect

__all__ = ["ConnectionPool", "EndpointKey", "PoolStats", "default_pool"]

EndpointKey = tuple[str, str, int]
"""``(scheme, host, port)``."""
# The limits a connection applies to every stream on it (Timeouts' transport fields).
_TransportLimits = tuple[float | None, float | None, float | None, float | None, float]
# What a connection is shared by: the endpoint, for https the TLS context that verified it,
# and the transport's limits. A caller with other trust settings (a stricter CA bundle, say)
# must not ride on a connection verified under someone else's, nor be handed their TLS
# failure; one with another read limit or PING setting must not get the first caller's.
_ConnectionKey = tuple[str, str, int, ssl.SSLContext | None, _TransportLimits, Proxy | None]

_OPEN_ATTEMPTS = 3  # a connection may die between being picked and sending the headers


class _EndpointLike(Protocol):
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


@attrs.frozen
class PoolStats:
    """Counters of a :class:`ConnectionPool`."""

    connections_opened: int
    """Connections opened since the pool started."""
    streams_opened: int
    """Streams opened since the pool started."""
    connections: int
    """Connections in the pool now."""


class _Connecting:
    """A connect in progress for one key; waiters share its outcome."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: errors.FluxError | None = None


class ConnectionPool:
    """HTTP/2 connections shared by endpoint; use as ``async with ConnectionPool() as pool``.

    Args:
        max_streams_per_connection: Cap on concurrent streams per connection; ``None`` uses the
            server's SETTINGS_MAX_CONCURRENT_STREAMS alone.
        idle_timeout: Close a connection after this many seconds without streams (``None``: never).
        receive_window: Per-stream receive window, the most a slow stream buffers.
    """

    def __init__(
        self,
        *,
        max_streams_per_connection: int | None = None,
        idle_timeout: float | None = 60.0,
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
    ) -> None:
        if max_streams_per_connection is not None:
            check_number("max_streams_per_connection", max_streams_per_connection, 1, integer=True)
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, int | float)
            or not idle_timeout > 0  # inf is allowed: never idle out
        ):
            raise errors.ValidationError(f"idle_timeout must be positive, got {idle_timeout!r}")
        # 0 would let the server send nothing (a stream would time out waiting for Connected);
        # past HTTP/2's largest window the SETTINGS frame itself is invalid.
        check_number("receive_window", receive_window, 1, MAX_WINDOW, integer=True)
        self.max_streams_per_connection = max_streams_per_connection
        self.idle_timeout = idle_timeout
        self.receive_window = receive_window
        self._by_key: dict[_ConnectionKey, list[H2Connection]] = {}
        self._keys: dict[H2Connection, _ConnectionKey] = {}
        self._connecting: dict[_ConnectionKey, _Connecting] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._connections_opened = 0
        self._streams_opened = 0

    @property
    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters."""
        return PoolStats(
            connections_opened=self._connections_opened,
            streams_opened=self._streams_opened,
            connections=len(self._keys),
        )

    async def __aenter__(self) -> ConnectionPool:
        if self._tg is not None or self._closed:
            raise errors.UsageError("a ConnectionPool can be entered only once")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._sweep)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Close every connection (GOAWAY) and stop the readers; open streams fail."""
        assert self._tg is not None
        self._closed = True
        # Together: each close may wait its whole limit for a socket write in progress.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as closing:
                for conn in list(self._keys):
                    closing.start_soon(conn.aclose)
        self._by_key.clear()
        self._keys.clear()
        self._tg.cancel_scope.cancel()
        # Not given the body's exception: anyio and trio would raise it wrapped in an
        # ExceptionGroup, and `except AccessDeniedError` around the pool would miss it. It
        # propagates as it is; the readers and the sweeper never raise.
        await self._tg.__aexit__(None, None, None)
        return None

    async def open_stream(
        self,
        endpoint: EndpointKey | _EndpointLike,
        *,
        method: str = "POST",
        authority: str,
        path: str,
        headers: Collection[tuple[str, str]],
        ssl_context: ssl.SSLContext | None,
        timeouts: Timeouts | None = None,
        proxy: Proxy | None = None,
    ) -> H2Stream:
        """Open a stream to ``endpoint`` (``(scheme, host, port)`` or an object with those).

        Reuses a connection with a free stream slot, or opens one (sharing it with concurrent
        callers). Only callers with the same ``ssl_context`` object share an https connection:
        pass the same context to share. Likewise only callers with the same transport limits of
        ``timeouts`` (``connect``, ``read``, ``write``, ``ping_interval``, ``ping_timeout``):
        a connection applies them to all its streams. With ``proxy``, connections are tunnelled
        through that HTTP proxy (and shared only among callers naming the same one). Raises
        ``ConnectError``/``TimeoutError`` when connecting fails, and ``UsageError`` when the pool
        is not running.
        """
        if isinstance(endpoint, tuple):
            scheme, host, port = endpoint
        else:
            scheme, host, port = endpoint.scheme, endpoint.host, endpoint.port
        timeouts = timeouts or Timeouts()
        limits = (
            timeouts.connect,
            timeouts.read,
            timeouts.write,
            timeouts.ping_interval,
            timeouts.ping_timeout,
        )
        key = (scheme, host, port, ssl_context if scheme == "https" else None, limits, proxy)
        for attempt in range(_OPEN_ATTEMPTS):
            conn = await self._acquire(key, timeouts)
            try:
                # No checkpoint since _acquire chose conn: open_stream reserves its slot at once.
                stream = await conn.open_stream(method, key[0], authority, path, headers)
            except errors.TransportError as exc:
                # The connection went away (GOAWAY, lost, a socket write past Timeouts.write)
                # before these headers went out: another connection may take the request. A
                # healthy one that had no stream slot free in time is the caller's answer.
                if (
                    not isinstance(exc, errors.GoAway | errors.ConnectionLost)
                    and conn.error is None
                ):
                    raise
                self._drop_unavailable(conn)
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise
                continue
            self._streams_opened += 1
            return stream
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acquire(self, key: _ConnectionKey, timeouts: Timeouts) -> H2Connection:
        while True:
            if self._tg is None or self._closed:
                raise errors.UsageError("use the ConnectionPool inside `async with`")
            conns = self._by_key.get(key, [])
            for conn in conns:
                if conn.has_capacity:
                    return conn
            for conn in [c for c in conns if not c.is_available]:
                self._drop_unavailable(conn)
            pending = self._connecting.get(key)
            if pending is not None:
                await pending.done.wait()
                if pending.error is not None:
                    raise fresh_error(pending.error)
                continue
            return await self._connect(key, timeouts)

    async def _connect(self, key: _ConnectionKey, timeouts: Timeouts) -> H2Connection:
        assert self._tg is not None
        pending = self._connecting[key] = _Connecting()
        try:
            scheme, host, port, ssl_context, _, proxy = key
            if scheme == "https" and ssl_context is None:
                ssl_context = ssl.create_default_context()
            conn = await connect(
                host,
                port,
                ssl_context=ssl_context,
                timeouts=timeouts,
                receive_window=self.receive_window,
                max_streams=self.max_streams_per_connection,
                proxy=proxy,
            )
            try:
                if self._closed:  # while we connected: its task group takes no reader now
                    raise errors.UsageError("the ConnectionPool was closed while connecting")
                await self._tg.start(conn.run)
            except BaseException:
                await conn.aclose()
                raise
            self._by_key.setdefault(key, []).append(conn)
            self._keys[conn] = key
            self._connections_opened += 1
            return conn
        except errors.FluxError as exc:
            pending.error = exc
            raise
        finally:
            del self._connecting[key]
            pending.done.set()  # on cancellation, waiters retry with a connect of their own

    def _drop_unavailable(self, conn: H2Connection) -> None:
        """Take a dead or GOAWAY'd connection out of rotation (the sweeper closes it)."""
        key = self._keys.get(conn)
        if key is not None and conn in self._by_key.get(key, ()):
            self._by_key[key].remove(conn)
            if not self._by_key[key]:
                del self._by_key[key]

    async def _sweep(self) -> None:
        """Close idle connections, and unavailable ones once their streams are done."""
        interval = 5.0 if self.idle_timeout is None else min(self.idle_timeout / 2, 5.0)
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            for conn in list(self._keys):
                idle = conn.idle_since
                limit = self.idle_timeout
                expired = idle is not None and limit is not None and now - idle >= limit
                if expired or (not conn.is_available and conn.stream_count == 0):
                    self._drop_unavailable(conn)
                    del self._keys[conn]
                    assert self._tg is not None
                    self._tg.start_soon(conn.aclose)


_default_pools: weakref.WeakKeyDictionary[object, tuple[ConnectionPool, anyio.Event]] = (
    weakref.WeakKeyDictionary()
)


async def default_pool() -> ConnectionPool:
    """The current event loop's shared pool, started on first use (see the module docstring).

    For ``FluxClient`` instances given no pool. Works on asyncio and trio.
    """
    key, spawn = _loop_key_and_spawner()
    entry = _default_pools.get(key)
    if entry is None:
        pool = ConnectionPool()
        ready = anyio.Event()
        entry = _default_pools[key] = (pool, ready)
        spawn(lambda: _run_default_pool(pool, ready))
    await entry[1].wait()
    if entry[0]._closed:
        raise errors.UsageError("the event loop's default ConnectionPool has shut down")
    return entry[0]


async def _run_default_pool(pool: ConnectionPool, ready: anyio.Event) -> None:
    try:
        async with pool:
            ready.set()
            await anyio.sleep_forever()
    except Exception:  # noqa: S110 - a system task must not crash the event loop
        pass
    finally:
        pool._closed = True
        ready.set()


_Spawner = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
_asyncio_tasks: set[object] = set()  # strong references: asyncio only keeps weak ones


def _running_trio() -> bool:
    """Whether the caller runs under trio (anyio no longer ships sniffio)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _loop_key_and_spawner() -> tuple[object, _Spawner]:
    if _running_trio():
        import trio

        def spawn_trio(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
            trio.lowlevel.spawn_system_task(fn, name="flux_sagemaker default pool")

        return trio.lowlevel.current_root_task(), spawn_trio

    import asyncio

    loop = asyncio.get_running_loop()

    def spawn_asyncio(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = loop.create_task(fn(), name="flux_sagemaker default pool")
        _asyncio_tasks.add(task)
        task.add_done_callback(_asyncio_tasks.discard)

    return loop, spawn_asyncio
