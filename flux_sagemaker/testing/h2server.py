"""A small generic HTTP/2 server over anyio and h2, for the mock endpoint and transport tests.

``H2Server(handler)`` listens on 127.0.0.1, port 0, plaintext (prior knowledge) or TLS with
ALPN ``h2``. Each connection gets one reader task, and each request one task running
``handler(stream)``. Streams use the same flow control and buffering as the client (the
shared core, :mod:`flux_sagemaker.h2core`): request body bytes are acknowledged as the handler
reads them, and ``send_data`` waits for the client's window, so a slow client blocks the handler.

Fault injection sits on :attr:`ServerStream.connection`: ``goaway()`` (graceful drain of the
streams at or below ``last_stream_id``; the ``admit`` hook sends one as a request arrives),
``abort()`` (drop TCP without a frame), ``pause()`` (stop reading the socket and answering
PINGs) and ``resume()``.

When a handler returns, a stream that is not closed both ways is reset: ``NO_ERROR`` when the
response was complete (so the client stops sending), ``INTERNAL_ERROR`` otherwise. A handler
exception resets its stream with ``INTERNAL_ERROR`` and is kept in ``H2Server.handler_errors``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import anyio
import anyio.abc
import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from flux_sagemaker import errors
from flux_sagemaker.h2core import (
    CLOSE_TIMEOUT,
    DEFAULT_RECEIVE_WINDOW,
    MAX_WINDOW,
    DrainingH2Connection,
    H2ConnectionBase,
    header_fields,
)
from flux_sagemaker.h2stream import H2StreamBase

__all__ = ["H2Server", "Handler", "ServerConnection", "ServerStats", "ServerStream"]

Handler = Callable[["ServerStream"], Awaitable[None]]
_TLS_HANDSHAKE_TIMEOUT = 10.0


@attrs.frozen
class ServerStats:
    """Counters of an :class:`H2Server`."""

    connections_accepted: int
    """TCP connections accepted (including failed TLS handshakes)."""
    streams_started: int
    """Requests received (handlers started)."""


@attrs.define(eq=False)
class ServerStream(H2StreamBase):
    """One request as the handler sees it."""

    method: str = attrs.field(kw_only=True)
    """The ``:method`` pseudo-header."""
    path: str = attrs.field(kw_only=True)
    """The ``:path`` pseudo-header."""
    authority: str = attrs.field(kw_only=True)
    """The ``:authority`` pseudo-header."""
    scheme: str = attrs.field(kw_only=True)
    """The ``:scheme`` pseudo-header."""
    headers: list[tuple[str, str]] = attrs.field(kw_only=True, repr=False)
    """The regular request headers, in order."""

    @property
    def connection(self) -> ServerConnection:
        """The connection carrying this stream (for fault injection)."""
        conn = self._conn
        assert isinstance(conn, ServerConnection)
        return conn

    async def receive(self) -> bytes | None:
        """Return the next chunk of request body, or ``None`` at the client's END_STREAM."""
        return await self._receive(None)

    async def send_headers(
        self, status: int, headers: Sequence[tuple[str, str]] = (), *, end_stream: bool = False
    ) -> None:
        """Send the response headers (optionally ending the response)."""
        conn = self._conn
        async with conn._write_lock:
            try:
                self._check_sendable()
                fields = [(":status", str(status)), *headers]
                conn._h2.send_headers(self.stream_id, fields, end_stream=end_stream)
                if end_stream:
                    self._local_ended = True
                    conn._on_local_end(self)
            finally:
                await conn._flush_locked()

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send response body bytes; waits while the client's flow-control window is closed."""
        if data or end_stream:
            await self._send(data, end_stream)

    async def end(self) -> None:
        """End the response (END_STREAM)."""
        await self._send(b"", end_stream=True)

    async def reset(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Reset the stream with RST_STREAM(``error_code``)."""
        await self._reset(error_code)


class ServerConnection(H2ConnectionBase):
    """The server side of one HTTP/2 connection; handlers reach it as ``stream.connection``."""

    _peer = "client"

    def __init__(self, stream: anyio.abc.ByteStream, server: H2Server) -> None:
        # Headers stay bytes in h2 (decoded in _on_event): with header_encoding set, h2 decodes
        # them inside receive_data, and one request's non-UTF-8 header would end the server.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        h2conn = DrainingH2Connection(config)
        h2conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: server.receive_window,
            },
        )
        h2conn.initiate_connection()
        h2conn.increment_flow_control_window(MAX_WINDOW - 65535)
        super().__init__(stream, h2conn, server.write_timeout)
        self._server = server
        self._tg: anyio.abc.TaskGroup | None = None
        self._paused: anyio.Event | None = None
        self._goaway_last: int | None = None

    async def run(self) -> None:
        """Serve the connection until it ends; cancels its handlers when it does."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                with anyio.CancelScope() as scope:
                    self._reader_scope = scope
                    try:
                        async with self._write_lock:
                            await self._flush_locked()
                        await self._read_loop()
                    except errors.FluxError as exc:
                        self._fail(exc)
                self._fail(errors.ConnectionLost("the connection was closed"))
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)

    # -- fault injection --------------------------------------------------------------------------

    async def goaway(self, error_code: int = 0, last_stream_id: int | None = None) -> None:
        """Send GOAWAY; streams up to ``last_stream_id`` (default: the highest seen) may finish."""
        async with self._write_lock:
            try:
                self._queue_goaway(error_code, last_stream_id)
            finally:
                await self._flush_locked()

    def _queue_goaway(self, error_code: int, last_stream_id: int | None) -> None:
        self._h2.close_connection(error_code, last_stream_id=last_stream_id)
        self._goaway_last = (
            self._h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        )
        # h2 closes on GOAWAY (python-hyper/h2#1181); reopen it to drain the others.
        self._h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN

    async def abort(self) -> None:
        """Drop the TCP connection without sending any frame of its own.

        Frames already queued go out first: a handler whose send joined another task's write
        has seen its send return, so they were sent before the fault.
        """
        self._closing = True
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(errors.FluxError), anyio.move_on_after(CLOSE_TIMEOUT):
                async with self._write_lock:
                    await self._flush_locked()
            await anyio.aclose_forcefully(self._stream)
        self._fail(errors.ConnectionLost("the connection was aborted"))

    def pause(self) -> None:
        """Stop reading the socket (so no PING is answered) until :meth:`resume`."""
        if self._paused is None:
            self._paused = anyio.Event()
        if self._read_scope is not None:
            self._read_scope.cancel()  # stop the read already in progress

    stop_reading = pause

    def resume(self) -> None:
        """Read the socket again after :meth:`pause`."""
        if self._paused is not None:
            self._paused.set()
            self._paused = None

    async def _before_read(self) -> None:
        while self._paused is not None:
            await self._paused.wait()

    # -- requests ---------------------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        if not isinstance(event, h2.events.RequestReceived) or event.stream_id is None:
            return
        sid = event.stream_id
        admit = self._server._admit
        if self._goaway_last is None and admit is not None and not admit(sid, event):
            # Decided here, in arrival order: a request that came in the same read, after
            # this one, is refused below too instead of being served behind the GOAWAY.
            self._queue_goaway(0, max(0, sid - 2))
        if self._goaway_last is not None and sid > self._goaway_last:
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        # Not UTF-8: U+FFFD, so the request fails its checks (signature, fields) like any other.
        fields = header_fields(event.headers)
        pseudo = {k: v for k, v in fields if k.startswith(":")}
        stream = ServerStream(
            self,
            sid,
            method=pseudo.get(":method", ""),
            path=pseudo.get(":path", ""),
            authority=pseudo.get(":authority", ""),
            scheme=pseudo.get(":scheme", ""),
            headers=[(k, v) for k, v in fields if not k.startswith(":")],
        )
        self._streams[sid] = stream
        self._server._streams_started += 1
        assert self._tg is not None
        self._tg.start_soon(self._run_handler, stream)

    async def _run_handler(self, stream: ServerStream) -> None:
        code = h2.errors.ErrorCodes.INTERNAL_ERROR
        try:
            await self._server._handler(stream)
            code = h2.errors.ErrorCodes.NO_ERROR if stream._local_ended else code
        except errors.FluxError:
            pass  # the stream or the connection broke under the handler
        except Exception as exc:
            self._server.handler_errors.append(exc)
        finally:
            await stream._reset(code)


class H2Server:
    """An HTTP/2 server on 127.0.0.1 (port 0) running ``handler`` for every request.

    Args:
        handler: ``async def handler(stream: ServerStream) -> None``.
        ssl_context: A server-side context for TLS (ALPN set to ``alpn_protocols``), or ``None``
            for plaintext HTTP/2 with prior knowledge.
        max_concurrent_streams: Advertised SETTINGS_MAX_CONCURRENT_STREAMS.
        receive_window: Per-stream receive window (request body bytes buffered per stream).
        write_timeout: Socket write and flow-control wait limit; ``None`` waits for ever.
        alpn_protocols: ALPN protocols offered under TLS (tests pass ``("http/1.1",)``).
        admit: ``admit(stream_id, event)``, called by the connection's reader as each request
            arrives, in order; ``False`` answers it with a GOAWAY whose last stream id is
            below it, which leaves it and every later request on the connection unprocessed.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_concurrent_streams: int = 1000,
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
        write_timeout: float | None = None,
        alpn_protocols: Sequence[str] = ("h2",),
        admit: Callable[[int, h2.events.RequestReceived], bool] | None = None,
    ) -> None:
        self._handler = handler
        self._admit = admit
        self.ssl_context = ssl_context
        self.max_concurrent_streams = max_concurrent_streams
        self.receive_window = receive_window
        self.write_timeout = write_timeout
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(list(alpn_protocols))
        self.connections: list[ServerConnection] = []
        """Live connections, oldest first."""
        self.handler_errors: list[Exception] = []
        """Exceptions raised by handlers (other than flux_sagemaker errors)."""
        self._connections_accepted = 0
        self._streams_started = 0
        self._port = 0
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def port(self) -> int:
        """The listening port."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port`` or ``https://127.0.0.1:port``."""
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the server's counters."""
        return ServerStats(
            connections_accepted=self._connections_accepted, streams_started=self._streams_started
        )

    async def __aenter__(self) -> H2Server:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self._listener = listener
        self._port = listener.extra(SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(listener.serve, self._serve_connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        assert self._listener is not None
        self._tg.cancel_scope.cancel()
        try:
            # Not given the body's exception, which anyio and trio would raise wrapped in an
            # ExceptionGroup (`pytest.raises(AccessDeniedError)` around the endpoint would
            # miss it): it propagates as it is. A connection task's own failure still raises.
            await self._tg.__aexit__(None, None, None)
            return None
        finally:
            with anyio.CancelScope(shield=True):
                await self._listener.aclose()

    async def _serve_connection(self, sock: anyio.abc.SocketStream) -> None:
        self._connections_accepted += 1
        try:
            stream: anyio.abc.ByteStream = sock
            if self.ssl_context is not None:
                with anyio.fail_after(_TLS_HANDSHAKE_TIMEOUT):
                    stream = await TLSStream.wrap(
                        sock,
                        server_side=True,
                        ssl_context=self.ssl_context,
                        standard_compatible=False,
                    )
            conn = ServerConnection(stream, self)
            self.connections.append(conn)
            try:
                await conn.run()
            finally:
                self.connections.remove(conn)
        except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass  # the client refused our certificate, or left during the handshake
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(sock)
