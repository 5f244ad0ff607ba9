"""HTTP/2 client transport over anyio and h2: one connection, many long-lived bidirectional streams.

The client side of the HTTP/2 core it shares with the test server (:mod:`flux_sagemaker.h2core`,
which explains the design: one reader task per connection, one write lock, flow control
acknowledged as the consumer reads, the first failure raised to every stream). On top of it:

- :func:`connect` opens TCP, then TLS with ALPN ``h2`` (or plaintext prior knowledge), and waits
  for the server's SETTINGS; :func:`open_connection` also runs the reader in its own task group.
  On asyncio's own loop the socket is an :class:`~flux_sagemaker.asyncio_stream.AsyncioStream`
  (asyncio's transports, cheaper per read and write); on trio and uvloop, anyio's streams.
- :class:`H2Connection` opens streams within the server's concurrent-stream limit, sends PING
  after ``Timeouts.ping_interval`` of silence and fails the connection when no answer comes within
  ``Timeouts.ping_timeout``. Whoever owns the connection runs :meth:`H2Connection.run` in their
  task group.
- :class:`H2Stream` is one request whose body and response body are both open byte streams.

After the server's GOAWAY, streams at or below ``last_stream_id`` can finish
(:class:`~flux_sagemaker.h2core.DrainingH2Connection`); we open no new streams there.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Collection
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import h2.config
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from anyio.streams.tls import TLSAttribute, TLSStream

from flux_sagemaker import errors
from flux_sagemaker.asyncio_stream import AsyncioStream, connect_asyncio, on_stdlib_asyncio_loop
from flux_sagemaker.core.proxy import Proxy, parse_connect_response
from flux_sagemaker.core.validators import number_in_range
from flux_sagemaker.h2core import (
    CLOSE_TIMEOUT,
    DEFAULT_RECEIVE_WINDOW,
    MAX_WINDOW,
    NETWORK_ERRORS,
    READ_SIZE,
    DrainingH2Connection,
    H2ConnectionBase,
    error_code_name,
    fresh_error,
    header_fields,
    wait_event,
)
from flux_sagemaker.h2inbound import FRAME_HEADER_SIZE, OPEN_CONNECTION_STATES
from flux_sagemaker.h2stream import H2StreamBase

__all__ = [
    "DEFAULT_RECEIVE_WINDOW",
    "DrainingH2Connection",
    "H2Connection",
    "H2Stream",
    "Timeouts",
    "connect",
    "error_code_name",
    "open_connection",
]


_SECONDS = number_in_range(0, above_low=True, unit="seconds")
_SECONDS_OR_NONE = number_in_range(0, above_low=True, optional=True, unit="seconds")


#: After an unanswered PING's timeout, one more read this long before the connection is
#: declared lost: the answer may have waited in the socket while the event loop was blocked.
PING_GRACE = 0.25
#: A sender that has waited this long for a stream's flow-control window asks the server
#: whether it is still there, with a PING it must answer within WINDOW_PROBE_TIMEOUT. A peer
#: that vanished without FIN or RST (a NAT or load-balancer drop) would otherwise hold every
#: sender on the connection until ``Timeouts.write``; a healthy one answers at once, however
#: slowly its application reads.
WINDOW_PROBE_AFTER = 1.0
WINDOW_PROBE_TIMEOUT = 2.0
# Queued bytes beyond which a sender writes itself instead of leaving it to the writer task.
_BATCH_HIGH_WATER = 256 * 1024
# Queued bytes beyond which a sender yields once so that the writer task sends them. Each
# socket write costs the sender and wakes the peer: at 16 KiB, 100 streams fed by one task
# made five writes per 20 ms round; at 64 KiB one or two (client CPU -12 to -20% at N=100).
_BATCH_YIELD = 64 * 1024


@attrs.frozen
class Timeouts:
    """Time limits, in seconds; ``None`` means no limit (``ping_timeout`` and ``close`` have one).

    The single definition shared by the transport, the pool and ``FluxClient`` (which re-exports
    it). The transport uses ``connect``, ``read``, ``write``, ``ping_interval`` and
    ``ping_timeout``; ``connected`` and ``close`` are the client's.
    """

    connect: float | None = attrs.field(default=10.0, validator=_SECONDS_OR_NONE)
    """TCP connect, TLS handshake and the server's first SETTINGS frame, together."""
    read: float | None = attrs.field(default=None, validator=_SECONDS_OR_NONE)
    """Longest wait in ``H2Stream.receive()`` for the next chunk (PING still detects dead peers)."""
    write: float | None = attrs.field(default=10.0, validator=_SECONDS_OR_NONE)
    """Longest socket write, and longest wait for the peer's flow-control window to open (a
    wait past ``WINDOW_PROBE_AFTER`` also checks the peer is alive with a PING). That wait has
    no limit while the stream's response data waits unread (a consumer behind): a peer that
    answers and reads in one task waits for us; it runs once the data is read, once the
    ``send_audio()`` call waiting was cancelled, or once the session is over."""
    ping_interval: float | None = attrs.field(default=20.0, validator=_SECONDS_OR_NONE)
    """Send a PING after this much silence from the peer; ``None`` disables keepalive."""
    ping_timeout: float = attrs.field(default=10.0, validator=_SECONDS)
    """A PING unanswered for this long fails the connection with ``ConnectionLost``."""
    connected: float | None = attrs.field(default=10.0, validator=_SECONDS_OR_NONE)
    """Client level: longest wait after opening a stream for the response and ``Connected``."""
    close: float = attrs.field(default=10.0, validator=_SECONDS)
    """Client level: longest graceful close (draining after ``CloseStream``, releasing streams)."""


@attrs.define(eq=False)
class H2Stream(H2StreamBase):
    """One HTTP/2 request whose body and response body are both open byte streams.

    Open it with :meth:`H2Connection.open_stream` (or the pool). All methods raise only
    :mod:`flux_sagemaker.errors`: the stream's own failure (``StreamReset``, ``GoAway``) or the
    connection's (``ConnectionLost``, ``TimeoutError``, ``RemoteProtocolError``).
    """

    _headers_event: anyio.Event = attrs.field(init=False, factory=anyio.Event, repr=False)
    status: int | None = attrs.field(init=False, default=None)
    """The response status, once the response headers arrived."""
    headers: list[tuple[str, str]] = attrs.field(init=False, factory=list, repr=False)
    """The response headers (without pseudo-headers), once they arrived."""
    trailers: list[tuple[str, str]] | None = attrs.field(init=False, default=None, repr=False)
    """The response trailers, if the server sent any."""

    def _fail(self, exc: errors.FluxError) -> None:
        super()._fail(exc)
        self._headers_event.set()

    @property
    def connection(self) -> H2Connection:
        """The connection carrying this stream."""
        conn = self._conn
        assert isinstance(conn, H2Connection)
        return conn

    async def response(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - part of the stream API
    ) -> tuple[int, list[tuple[str, str]]]:
        """Wait up to ``timeout`` seconds for the response headers; return ``(status, headers)``."""
        if self.status is None:
            msg = f"no response headers on stream {self.stream_id} within {timeout} s"
            await wait_event(self._headers_event, timeout, msg)
        if self.status is None:
            if self._closed:
                raise errors.UsageError(f"response() on stream {self.stream_id} after aclose()")
            if self._error is None:
                msg = f"stream {self.stream_id} ended without response headers"
                raise errors.RemoteProtocolError(msg)
            raise fresh_error(self._error)
        return self.status, self.headers

    async def send(self, data: bytes) -> None:
        """Send request body bytes: split to the peer's frame size, never past its window."""
        if data:
            await self._send(data, end_stream=False)

    async def receive(self) -> bytes | None:
        """Return the next chunk of response body, or ``None`` once the server ended it cleanly."""
        conn = self._conn
        assert isinstance(conn, H2Connection)
        return await self._receive(conn.timeouts.read)

    async def end_input(self) -> None:
        """End the request body (END_STREAM); the response can still be read.

        After a complete response followed by RST_STREAM(NO_ERROR) (RFC 9113 section 8.1) there
        is nothing left to end, and this returns quietly.
        """
        await self._send(b"", end_stream=True)

    async def aclose(self) -> None:
        """Release the stream: RST_STREAM(CANCEL) unless closed both ways. Idempotent, bounded."""
        if self._closed:
            return
        self._closed = True
        await self._reset(h2.errors.ErrorCodes.CANCEL)
        self._wake_recv()
        self._wake_send()
        self._headers_event.set()


class H2Connection(H2ConnectionBase):
    """A client HTTP/2 connection; create it with :func:`connect`, then run :meth:`run`.

    Lifetime: ``connect()`` returns a connection whose handshake is done but whose reader is not
    running. Start it in a task group you own (``tg.start_soon(conn.run)``) before opening streams;
    :func:`open_connection` does both for a single connection, and ``ConnectionPool`` does it in
    its own task group. ``run()`` returns (never raises) once the connection is dead, and a
    cancelled ``run()`` fails every stream with ``ConnectionLost`` and closes the socket.
    """

    _peer = "server"

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        timeouts: Timeouts,
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
        max_streams: int | None = None,
    ) -> None:
        # Headers stay bytes in h2, decoded per stream (see header_fields).
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._suspect = False  # a stream here stalled: the peer may be gone without a word
        self._write_wanted: anyio.Event | None = None  # set while the writer task runs
        h2conn = DrainingH2Connection(config)
        h2conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: receive_window,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        # h2 adds ENABLE_CONNECT_PROTOCOL to the initial SETTINGS; some servers balk at it.
        del h2conn.local_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]
        h2conn.initiate_connection()
        h2conn.increment_flow_control_window(MAX_WINDOW - 65535)
        super().__init__(stream, h2conn, timeouts.write)
        self.timeouts = timeouts
        self.max_streams = max_streams
        self._running = False
        self._settings_seen = False
        self._goaway: tuple[int, int] | None = None
        self._opening = 0
        self._capacity_event: anyio.Event | None = None
        self._idle_since: float | None = None
        self._last_received = 0.0
        self._ping_deadline: float | None = None
        self._ping_grace_used = False
        self._ping_count = 0
        self._ping_wait = 0.0  # how long the PING in flight may wait for its answer

    # -- properties used by the pool ---------------------------------------------------------------

    @property
    def max_concurrent_streams(self) -> int:
        """How many streams may be open at once: the peer's limit, capped by ``max_streams``."""
        peer = self._h2.remote_settings.max_concurrent_streams
        return peer if self.max_streams is None else min(peer, self.max_streams)

    @property
    def is_available(self) -> bool:
        """Whether new streams may be opened here (healthy, no GOAWAY, not closing)."""
        return (
            self._error is None and self._goaway is None and not self._closing and not self._suspect
        )

    def stop_new_streams(self) -> None:
        """Open no new stream here; streams already open go on, and the pool connects afresh."""
        self._suspect = True

    @property
    def has_capacity(self) -> bool:
        """Available, and below the concurrent-stream limit (counting streams being opened)."""
        return (
            self.is_available and len(self._streams) + self._opening < self.max_concurrent_streams
        )

    @property
    def idle_since(self) -> float | None:
        """``anyio.current_time()`` when the last stream closed; ``None`` while streams are open."""
        return self._idle_since if not self._streams and not self._opening else None

    # -- streams ----------------------------------------------------------------------------------

    async def open_stream(
        self,
        method: str,
        scheme: str,
        authority: str,
        path: str,
        headers: Collection[tuple[str, str]],
    ) -> H2Stream:
        """Send a request's headers (without END_STREAM) and return its stream.

        Waits (up to ``Timeouts.connect``) while the peer's concurrent-stream limit is reached.
        Raises ``GoAway`` after the peer's GOAWAY, or the connection's error.
        """
        self._opening += 1  # before any await: the pool counts it in has_capacity
        reserved = True
        # One limit for the whole wait: a wake that finds no slot (another opener took it, a
        # SETTINGS frame) must not start it over, or openers could wait for ever.
        limit = self.timeouts.connect
        deadline = None if limit is None else anyio.current_time() + limit
        try:
            while True:
                async with self._write_lock:
                    try:
                        self._check_open()
                        if len(self._streams) < self.max_concurrent_streams:
                            sid = self._h2.get_next_available_stream_id()
                            request = [
                                (":method", method),
                                (":scheme", scheme),
                                (":authority", authority),
                                (":path", path),
                            ]
                            self._h2.send_headers(sid, [*request, *headers])
                            stream = H2Stream(self, sid)
                            self._streams[sid] = stream
                            self._opening -= 1  # now counted in _streams
                            reserved = False
                            return stream
                        event = self._capacity_event = self._capacity_event or anyio.Event()
                    except h2.exceptions.H2Error as exc:
                        raise errors.LocalProtocolError(f"cannot open a stream: {exc}") from exc
                    finally:
                        await self._flush_locked()
                msg = (
                    f"no free stream slot within {self.timeouts.connect} s "
                    f"(the server allows {self.max_concurrent_streams})"
                )
                left = None if deadline is None else deadline - anyio.current_time()
                await wait_event(event, left, msg)
        finally:
            if reserved:
                self._opening -= 1
            if not self._streams and not self._opening:
                self._idle_since = anyio.current_time()

    def _check_open(self) -> None:
        if self._error is not None:
            raise fresh_error(self._error)
        if self._goaway is not None:
            code = self._goaway[0]
            raise errors.GoAway(
                f"the server sent GOAWAY ({error_code_name(code)}); open a new connection",
                error_code=code,
                unprocessed=True,  # checked before a request's headers go out
            )
        if self._closing:
            raise errors.UsageError("the connection is closed")
        if not self._running:
            raise errors.UsageError(
                "start H2Connection.run() in a task group before opening streams"
            )

    def _forget(self, stream: H2StreamBase) -> None:
        known = stream.stream_id in self._streams
        super()._forget(stream)
        if known:
            if not self._streams:
                self._idle_since = anyio.current_time()
            self._wake_capacity()

    def _wake_capacity(self) -> None:
        if self._capacity_event is not None:
            self._capacity_event.set()
            self._capacity_event = None

    def _on_failed(self) -> None:
        self._wake_capacity()

    # -- reader -----------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read and dispatch frames until the connection ends; never raises (streams get errors)."""
        try:
            with anyio.CancelScope() as scope:
                self._reader_scope = scope
                self._running = True
                self._last_received = anyio.current_time()
                task_status.started()
                error: errors.FluxError | None = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop)
                    try:
                        await self._read_loop()
                    except errors.FluxError as exc:
                        error = exc
                    except Exception as exc:  # a bug here must not take the pool's group down
                        error = errors.ConnectionLost(f"the HTTP/2 reader failed: {exc!r}")
                    if error is not None:
                        # Now, not once the writer task is done: it may be stuck in a shielded
                        # write to a peer that stopped reading, which only closing the socket
                        # ends. Until then the streams would not hear of the failure.
                        self._fail(error)
                        with anyio.CancelScope(shield=True):
                            await anyio.aclose_forcefully(self._stream)
                    tg.cancel_scope.cancel()
        finally:
            self._fail(errors.ConnectionLost("the connection was closed"))
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)

    async def _after_queue(self, *, urgent: bool = False) -> None:
        # Batching: the frames every stream queues during one event-loop iteration leave in one
        # socket write (one TLS record run, one syscall) from the writer task, instead of one
        # write per audio event. Past the high-water mark a sender writes itself: back-pressure.
        wanted = self._write_wanted
        if wanted is None:  # no writer task (not started yet, or stopped)
            await self._flush_or_join()
            return
        self._take_h2_output()  # usually nothing: _frame_data_fast took it already
        outbox = self._outbox
        if urgent or len(outbox) >= _BATCH_HIGH_WATER:
            await self._write_now()
        else:
            wanted.set()
            if len(outbox) >= _BATCH_YIELD:
                # Let the writer start on this batch while we queue the next: the peer
                # gets frames as they are made, not after a long burst (latency).
                await anyio.lowlevel.checkpoint()

    async def _flush_soon(self) -> None:
        # The reader's frames (PING, PING ACK, WINDOW_UPDATE) and the consumers' go to the
        # writer task: a reader waiting for a socket write to a peer that stopped reading would
        # stop delivering data on every stream, and no PING timeout could fire. After a
        # protocol error h2 has closed the connection: its GOAWAY is written at once, as the
        # reader stops next.
        wanted = self._write_wanted
        if wanted is None or self._h2.state_machine.state not in OPEN_CONNECTION_STATES:
            await super()._flush_soon()
        elif self._take_h2_output() or self._outbox:
            wanted.set()

    def _frame_nowait(self, stream_id: int, data: bytes) -> bool:
        # Below the high-water mark, _after_queue only wakes the writer (and past the yield
        # mark yields once, which the caller does on seeing _backlogged): do that here, with
        # no coroutine per audio event (the client's hot path). At 100 streams one tick's
        # events cross the yield mark, and a sender that fell back to send() there cost the
        # client a task per crossing.
        wanted = self._write_wanted
        if (
            wanted is None
            or len(self._outbox) + len(data) + FRAME_HEADER_SIZE >= _BATCH_HIGH_WATER
            or not self._frame_data_fast(stream_id, data)
        ):
            return False
        wanted.set()
        return True

    def _backlogged(self) -> bool:
        return self._write_wanted is not None and len(self._outbox) >= _BATCH_YIELD

    async def _write_loop(self) -> None:
        """The writer task: flush what the streams queued, once per wake-up."""
        self._write_wanted = anyio.Event()
        try:
            while self._error is None:
                await self._write_wanted.wait()
                self._write_wanted = anyio.Event()  # later sends wake the next round
                async with self._write_lock:
                    await self._flush_locked()
        except errors.FluxError:
            pass  # stored by _fail, which also stops the reader
        finally:
            self._write_wanted = None

    def _timer_deadline(self) -> float:
        if self._ping_deadline is not None:
            return self._ping_deadline
        interval = self.timeouts.ping_interval
        return math.inf if interval is None else self._last_received + interval

    async def _on_timer(self) -> None:
        now = anyio.current_time()
        if self._ping_deadline is not None:
            if now >= self._ping_deadline and not self._ping_grace_used:
                # A blocked event loop looks like a silent peer: the answer may be waiting in
                # the socket (trio can run this timer before the read that would find it).
                # Read once more before blaming the server.
                self._ping_grace_used = True
                self._ping_deadline = now + PING_GRACE
                return
            if now >= self._ping_deadline:
                msg = f"the server did not answer a PING within {self._ping_wait:g} s"
                raise errors.ConnectionLost(msg)
            return
        await self._send_ping(self.timeouts.ping_timeout)

    async def _send_ping(self, wait: float) -> None:
        self._ping_count += 1
        try:
            self._h2.ping(self._ping_count.to_bytes(8, "big"))
        except h2.exceptions.ProtocolError:
            return  # h2 closed on the peer's protocol error: the reader reports it next
        self._ping_wait = wait
        self._ping_deadline = anyio.current_time() + wait
        await self._flush_soon()

    async def _wait_window(self, event: anyio.Event, stream_id: int, since: float | None) -> None:
        # Probe after WINDOW_PROBE_AFTER without a wake (a wake came with bytes from the
        # server), unless the write limit comes first.
        limit = self._write_timeout
        probe_at = anyio.current_time() + WINDOW_PROBE_AFTER
        if limit is None or since is None or probe_at < since + limit:
            with anyio.CancelScope(deadline=probe_at):
                await event.wait()
            if event.is_set():
                return
            await self.probe(WINDOW_PROBE_TIMEOUT)
        await super()._wait_window(event, stream_id, since)

    async def probe(self, answer_within: float) -> None:
        """Check now that the server is alive: a PING it must answer within ``answer_within`` s.

        For when silence matters before the PING interval is up (a stream draining after
        ``CloseStream``). A PING already in flight keeps its own, earlier deadline. No answer
        in time fails the connection with ``ConnectionLost``, like the periodic PING.
        """
        if self._error is not None or self._closing:
            return
        wait = min(answer_within, self.timeouts.ping_timeout)
        if self._ping_deadline is None:
            await self._send_ping(wait)
        else:
            deadline = anyio.current_time() + wait
            if deadline < self._ping_deadline and not self._ping_grace_used:
                self._ping_wait = wait
                self._ping_deadline = deadline
        scope = self._read_scope
        if scope is not None and self._ping_deadline is not None:
            scope.deadline = min(scope.deadline, self._ping_deadline)  # the read in progress

    def _on_bytes_received(self) -> None:
        self._last_received = anyio.current_time()
        self._ping_deadline = None
        self._ping_grace_used = False

    def _on_event(self, event: h2.events.Event) -> None:
        match event:
            case h2.events.ResponseReceived(stream_id=int(sid)):
                if isinstance(stream := self._streams.get(sid), H2Stream):
                    headers = header_fields(event.headers)
                    status = next((v for k, v in headers if k == ":status"), "")
                    if not (len(status) == 3 and status.isascii() and status.isdigit()):
                        # This stream's answer is broken, not the connection's other streams.
                        self._h2.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                        msg = f"the server answered stream {sid} with :status {status!r}"
                        stream._fail(errors.RemoteProtocolError(msg))
                        self._forget(stream)
                        stream._headers_event.set()
                        return
                    stream.status = int(status)
                    stream.headers = [(k, v) for k, v in headers if not k.startswith(":")]
                    stream._headers_event.set()
            case h2.events.TrailersReceived(stream_id=int(sid)):
                if isinstance(stream := self._streams.get(sid), H2Stream):
                    stream.trailers = header_fields(event.headers)
            case h2.events.RemoteSettingsChanged():
                self._settings_seen = True
                self._wake_capacity()
            case h2.events.ConnectionTerminated():
                self._on_goaway(int(event.error_code or 0), event.last_stream_id)

    def _on_goaway(self, code: int, last_stream_id: int | None) -> None:
        self._goaway = (code, last_stream_id or 0)
        last = last_stream_id or 0
        for sid, stream in list(self._streams.items()):
            if sid > last:
                msg = (
                    f"the server sent GOAWAY ({error_code_name(code)}) before handling stream {sid}"
                )
                stream._fail(errors.GoAway(msg, error_code=code, unprocessed=True))
                self._forget(stream)
        self._wake_capacity()

    async def _handshake(self) -> None:
        """Send our preface and wait for the server's SETTINGS (it proves the server speaks h2)."""
        async with self._write_lock:
            await self._flush_locked()
        while not self._settings_seen:
            if self._error is not None:
                raise fresh_error(self._error)
            try:
                data = await self._stream.receive(READ_SIZE)
            except anyio.EndOfStream as exc:
                raise errors.ConnectError(
                    "the server closed the connection during the HTTP/2 handshake"
                ) from exc
            await self._feed(data)

    async def aclose(self) -> None:
        """Send GOAWAY, close the socket; open streams fail with ``ConnectionLost``. Idempotent."""
        if self._closing:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            if self._error is None:
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    async with self._write_lock:
                        with contextlib.suppress(h2.exceptions.H2Error):
                            self._h2.close_connection()
                        with contextlib.suppress(errors.FluxError):
                            await self._flush_locked()
            self._fail(errors.ConnectionLost("the connection was closed locally"))
            await anyio.aclose_forcefully(self._stream)


async def connect(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    timeouts: Timeouts | None = None,
    receive_window: int = DEFAULT_RECEIVE_WINDOW,
    max_streams: int | None = None,
    proxy: Proxy | None = None,
) -> H2Connection:
    """Open an HTTP/2 connection: TCP, then TLS with ALPN ``h2`` (or plaintext prior knowledge).

    ``ssl_context`` decides certificate verification; its ALPN protocols are set to ``["h2"]``.
    ``None`` means plaintext HTTP/2 with prior knowledge (only for explicit ``http://`` endpoints).
    With ``proxy``, the TCP connection goes to the proxy, which tunnels it (``CONNECT``).
    The whole connect, TLS handshake and SETTINGS exchange is bounded by ``timeouts.connect``.
    The returned connection's reader is not running yet: start :meth:`H2Connection.run`.

    Raises:
        ConnectError: refused, unreachable, TLS failure, or the server does not speak HTTP/2;
            not retryable for a host name DNS cannot carry (an empty or too long label, a
            code point IDNA forbids); not retryable for a proxy that refuses the tunnel with
            a 4xx answer (407: its credentials).
        TimeoutError: it took longer than ``timeouts.connect``.
    """
    timeouts = timeouts or Timeouts()
    target = f"{host}:{port}" if proxy is None else f"{host}:{port} through proxy {proxy.address}"
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
    deadline = anyio.CancelScope()  # replaced by the connect's own deadline below
    try:
        with anyio.fail_after(timeouts.connect) as deadline:
            stream: anyio.abc.ByteStream
            if proxy is not None:
                stream = await _connect_through(proxy, host, port, ssl_context)
            elif on_stdlib_asyncio_loop():
                stream = await connect_asyncio(host, port, ssl_context=ssl_context)
            elif ssl_context is None:
                stream = await anyio.connect_tcp(host, port)
            else:
                stream = await anyio.connect_tcp(
                    host, port, ssl_context=ssl_context, tls_standard_compatible=False
                )
            try:
                if ssl_context is not None:
                    _check_alpn(stream, target)
                conn = H2Connection(
                    stream,
                    timeouts=timeouts,
                    receive_window=receive_window,
                    max_streams=max_streams,
                )
                await conn._handshake()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(stream)
                raise
    except errors.ConnectError:
        raise
    except TimeoutError as exc:
        if not deadline.cancel_called:
            # The OS gave up on the TCP handshake (ETIMEDOUT) before our deadline.
            raise errors.ConnectError(f"could not connect to {target}: {exc!r}") from exc
        raise errors.TimeoutError(
            f"connecting to {target} took longer than {timeouts.connect} s"
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        raise errors.ConnectError(
            f"TLS certificate verification failed for {target}: {exc.verify_message}"
        ) from exc
    except errors.FluxError as exc:
        raise errors.ConnectError(f"{target} does not speak HTTP/2: {exc.message}") from exc
    except (*NETWORK_ERRORS, ssl.SSLError) as exc:
        raise errors.ConnectError(f"could not connect to {target}: {exc!r}") from exc
    except UnicodeError as exc:
        # The resolver's IDNA encoding (asyncio: Python's codec, anyio: the idna package)
        # refused the name: an empty or too long label, a code point IDNA forbids.
        msg = f"{host!r} is not a valid host name: {exc}"
        raise errors.ConnectError(msg, retryable=False) from exc
    return conn


async def _connect_through(
    proxy: Proxy, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> anyio.abc.ByteStream:
    """A connection to ``host:port`` tunnelled by ``proxy`` (``CONNECT``), then TLS."""
    on_asyncio = on_stdlib_asyncio_loop()
    tunnel: anyio.abc.ByteStream
    if on_asyncio:
        tunnel = await connect_asyncio(proxy.host, proxy.port, ssl_context=None)
    else:
        tunnel = await anyio.connect_tcp(proxy.host, proxy.port)
    try:
        await _open_tunnel(tunnel, proxy, host, port)
        if ssl_context is None:
            return tunnel
        if isinstance(tunnel, AsyncioStream):
            return await tunnel.start_tls(ssl_context, server_hostname=host)
        return await TLSStream.wrap(
            tunnel, hostname=host, ssl_context=ssl_context, standard_compatible=False
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(tunnel)
        raise


async def _open_tunnel(stream: anyio.abc.ByteStream, proxy: Proxy, host: str, port: int) -> None:
    """Ask ``proxy`` for a tunnel to ``host:port`` and read its answer."""
    where = f"proxy {proxy.address}"
    await stream.send(proxy.connect_request(host, port))
    received = b""
    try:
        while (answer := parse_connect_response(received)) is None:
            try:
                received += await stream.receive()
            except anyio.EndOfStream:
                raise errors.ConnectError(
                    f"{where} closed the connection before answering CONNECT {host}:{port}"
                ) from None
    except errors.ProtocolError as exc:
        raise errors.ConnectError(f"{where}: {exc.message}") from None
    if not answer.ok:
        # 407 and 403 are the proxy's policy, and 4xx the request: another try gets the same.
        # 5xx (502: the proxy could not reach the endpoint, 503, 504) may pass later.
        raise errors.ConnectError(
            f"{where} refused the tunnel to {host}:{port}: {answer.status} {answer.reason}",
            retryable=answer.status >= 500,
        )
    if answer.end != len(received):
        raise errors.ConnectError(f"{where} sent bytes after its answer, before TLS began")


def _check_alpn(stream: anyio.abc.ByteStream, target: str) -> None:
    alpn = stream.extra(TLSAttribute.alpn_protocol, None)  # noqa: S610 - anyio, not Django
    if alpn != "h2":
        raise errors.ConnectError(f"{target} did not negotiate HTTP/2 (ALPN gave {alpn!r})")


@contextlib.asynccontextmanager
async def open_connection(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    timeouts: Timeouts | None = None,
    **kwargs: Any,
) -> AsyncIterator[H2Connection]:
    """``connect()`` and run the reader in a task group owned here; close on exit."""
    conn = await connect(host, port, ssl_context=ssl_context, timeouts=timeouts, **kwargs)
    async with anyio.create_task_group() as tg:
        await tg.start(conn.run)
        try:
            yield conn
        finally:
            await conn.aclose()
