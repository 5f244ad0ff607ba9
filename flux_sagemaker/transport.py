"""HTTP/2 client transport over anyio and h2: one connection, many long-lived bidirectional streams.

Design (per connection, not per stream, so thousands of streams stay cheap):

- One reader task (:meth:`H2Connection.run`) feeds h2 and routes events to the streams. It also
  sends PING after ``ping_interval`` of silence and fails the connection when no answer comes
  within ``ping_timeout``. Whoever owns the connection runs it in their task group.
- Writes go straight through under one write lock; every lock holder flushes *all* of h2's
  pending bytes before releasing it. The reader never waits for the lock: when it is held, the
  holder will flush the reader's frames (WINDOW_UPDATE, PING ACK) too. So the reader keeps
  draining the socket even while a writer is blocked, and two peers built this way cannot
  deadlock with both send buffers full.
- Socket writes are shielded from cancellation and bounded by ``Timeouts.write``: a half-written
  frame would corrupt the connection, and a write that times out fails the connection.
- Receive flow control is acknowledged as the consumer reads, so a stream buffers at most its
  receive window (``receive_window``). The connection window is the maximum, so one slow stream
  never stalls its siblings; per-stream windows bound memory.
- The first connection failure is stored and raised to every stream; a per-stream failure
  (RST_STREAM, GOAWAY above ``last_stream_id``) goes to that stream only. Every wait ends when the
  connection fails or a timeout expires.

h2 moves to CLOSED on GOAWAY and then rejects every frame (python-hyper/h2#1181), even the rest
of the same read. :class:`DrainingH2Connection` reopens its state machine as the GOAWAY frame is
processed, so streams at or below ``last_stream_id`` can finish; we open no new streams there.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from anyio.streams.tls import TLSAttribute

from flux_sagemaker import errors


class _NoHeaderTracing(logging.Filter):
    """Drop hpack's DEBUG records: they print every header, ``authorization`` included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


# Credentials and signatures must never reach logs; hpack traces header blocks at DEBUG.
for _name in ("hpack.hpack", "hpack.table"):
    logging.getLogger(_name).addFilter(_NoHeaderTracing())

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

#: Default per-stream receive window: the most a stream buffers when its reader is slow.
DEFAULT_RECEIVE_WINDOW = 1 << 20
_MAX_WINDOW = 2**31 - 1
_READ_SIZE = 65536
_NETWORK_ERRORS = (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError)
_CLOSE_TIMEOUT = 5.0


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (isinstance(value, int | float) and value > 0):
        msg = (
            f"Timeouts.{attribute.name} must be a positive number of seconds or None, got {value!r}"
        )
        raise errors.ValidationError(msg)


@attrs.frozen
class Timeouts:
    """Time limits, in seconds; ``None`` means no limit.

    The single definition shared by the transport, the pool and ``FluxClient`` (which re-exports
    it). The transport uses ``connect``, ``read``, ``write``, ``ping_interval`` and
    ``ping_timeout``; ``connected`` and ``close`` are the client's.
    """

    connect: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    """TCP connect, TLS handshake and the server's first SETTINGS frame, together."""
    read: float | None = attrs.field(default=None, validator=_positive_or_none)
    """Longest wait in ``H2Stream.receive()`` for the next chunk (PING still detects dead peers)."""
    write: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    """Longest socket write, and longest wait for the peer's flow-control window to open."""
    ping_interval: float | None = attrs.field(default=20.0, validator=_positive_or_none)
    """Send a PING after this much silence from the peer; ``None`` disables keepalive."""
    ping_timeout: float = attrs.field(default=10.0, validator=_positive_or_none)
    """A PING unanswered for this long fails the connection with ``ConnectionLost``."""
    connected: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    """Client level: longest wait after opening a stream for the response and ``Connected``."""
    close: float = attrs.field(default=10.0, validator=_positive_or_none)
    """Client level: longest graceful close (draining after ``CloseStream``, releasing streams)."""


def _fresh(exc: errors.FluxError) -> errors.FluxError:
    """A copy of a stored error, so tasks raising it concurrently do not share one traceback."""
    try:
        new = copy.copy(exc)
    except Exception:  # an error class that cannot be rebuilt from its args
        return exc.with_traceback(None)
    new.__cause__ = exc.__cause__
    return new


def error_code_name(code: int) -> str:
    """Name an HTTP/2 error code (``CANCEL``), or show it in hex when unknown."""
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


class DrainingH2Connection(h2.connection.H2Connection):
    """h2's connection with graceful GOAWAY: frames after a received GOAWAY are still processed.

    Uses h2 internals (the per-frame handler, ``state_machine``, ``_data_to_send``); h2 4.x.
    """

    def _receive_goaway_frame(self, frame: Any) -> Any:
        state, pending = self.state_machine.state, bytes(self._data_to_send)
        result = super()._receive_goaway_frame(frame)
        self.state_machine.state = state  # h2 set CLOSED
        self._data_to_send[:0] = pending  # h2 dropped our queued WINDOW_UPDATEs and PING ACKs
        return result


@attrs.define(eq=False)
class _StreamBase:
    """Per-stream state shared by client and server streams: a receive queue and flow control."""

    _conn: _H2Base = attrs.field(repr=False)
    stream_id: int
    _chunks: collections.deque[bytes] = attrs.field(
        init=False, factory=collections.deque, repr=False
    )
    _buffered: int = attrs.field(init=False, default=0)
    _remote_ended: bool = attrs.field(init=False, default=False)
    _local_ended: bool = attrs.field(init=False, default=False)
    _closed: bool = attrs.field(init=False, default=False)
    _error: errors.FluxError | None = attrs.field(init=False, default=None)
    _recv_event: anyio.Event | None = attrs.field(init=False, default=None, repr=False)
    _send_event: anyio.Event | None = attrs.field(init=False, default=None, repr=False)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read; never more than the stream's receive window."""
        return self._buffered

    def _wake_recv(self) -> None:
        if self._recv_event is not None:
            self._recv_event.set()
            self._recv_event = None

    def _wake_send(self) -> None:
        if self._send_event is not None:
            self._send_event.set()
            self._send_event = None

    def _fail(self, exc: errors.FluxError) -> None:
        if self._error is None:
            self._error = exc
        self._wake_recv()
        self._wake_send()

    async def _receive(self, limit: float | None) -> bytes | None:
        while not self._chunks:
            if self._closed:
                raise errors.UsageError(f"receive() on stream {self.stream_id} after aclose()")
            if self._remote_ended:
                return None
            if self._error is not None:
                raise _fresh(self._error)
            if self._recv_event is None:
                self._recv_event = anyio.Event()
            if limit is None:
                await self._recv_event.wait()
                continue
            try:
                with anyio.fail_after(limit):
                    await self._recv_event.wait()
            except TimeoutError as exc:
                msg = f"no data on stream {self.stream_id} for {limit} s"
                raise errors.TimeoutError(msg) from exc
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        await self._conn._acknowledge(self.stream_id, len(chunk))
        return chunk

    def _finished_then_reset(self) -> bool:
        """A complete response then RST_STREAM(NO_ERROR) (RFC 9113 section 8.1): nothing to end."""
        exc = self._error
        return self._remote_ended and isinstance(exc, errors.StreamReset) and exc.error_code == 0

    def _check_sendable(self) -> None:
        if self._closed:
            raise errors.UsageError(f"send on stream {self.stream_id} after aclose()")
        if self._local_ended:
            raise errors.UsageError(f"send on stream {self.stream_id} after its end")
        if self._error is not None:
            raise _fresh(self._error)

    async def _send(self, data: bytes, end_stream: bool) -> None:
        conn, h2c, sid = self._conn, self._conn._h2, self.stream_id
        view = memoryview(data)
        while True:
            event = None
            async with conn._write_lock:
                try:
                    if end_stream and not view and self._finished_then_reset():
                        return
                    self._check_sendable()
                    window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                    if view and window <= 0:
                        event = self._send_event = self._send_event or anyio.Event()
                    else:
                        n = min(len(view), window)
                        last = end_stream and n == len(view)
                        if n:
                            h2c.send_data(sid, bytes(view[:n]), end_stream=last)
                        elif last:
                            h2c.end_stream(sid)
                        view = view[n:]
                        if last:
                            self._local_ended = True
                            conn._on_local_end(self)
                        if not view:
                            return
                except h2.exceptions.H2Error as exc:
                    if self._error is not None:
                        raise _fresh(self._error) from exc
                    raise errors.LocalProtocolError(f"cannot send on stream {sid}: {exc}") from exc
                finally:
                    await conn._flush_locked()
            if event is not None:
                await conn._wait_window(event, sid)

    async def _reset(self, error_code: int) -> None:
        """Reset the stream unless it is already closed both ways; never raises, never hangs."""
        conn = self._conn
        if not (self._local_ended and self._remote_ended) and self._error is None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                async with conn._write_lock:
                    try:
                        if conn._error is None:
                            conn._h2.reset_stream(self.stream_id, error_code)
                    except h2.exceptions.H2Error:
                        pass  # h2 already considers the stream closed
                    finally:
                        await conn._flush_locked()
        self._local_ended = self._remote_ended = True
        if self._buffered:  # hand unread bytes back to the connection window
            await conn._acknowledge(self.stream_id, self._buffered)
        self._chunks.clear()
        self._buffered = 0
        conn._forget(self)


class _H2Base:
    """A connection's state shared by the client and the test server (see the module docstring)."""

    _peer = "peer"

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        h2conn: h2.connection.H2Connection,
        write_timeout: float | None,
    ) -> None:
        self._stream = stream
        self._h2 = h2conn
        self._write_timeout = write_timeout
        self._write_lock = anyio.Lock(fast_acquire=True)  # no yield when uncontended
        self._outbox = bytearray()
        self._streams: dict[int, _StreamBase] = {}
        self._error: errors.FluxError | None = None
        self._closing = False
        self._reader_scope: anyio.CancelScope | None = None
        self._read_scope: anyio.CancelScope | None = None  # the current socket read (wakes timers)

    @property
    def error(self) -> errors.FluxError | None:
        """The error that failed the connection, or ``None`` while it is healthy."""
        return self._error

    @property
    def stream_count(self) -> int:
        """Streams currently open (not yet closed both ways or reset)."""
        return len(self._streams)

    def _fail(self, exc: errors.FluxError) -> errors.FluxError:
        """Store the first connection error, give it to every stream, stop the reader."""
        if self._error is None:
            self._error = exc
            for stream in self._streams.values():
                stream._fail(exc)
            self._streams.clear()
            self._on_failed()
            if self._reader_scope is not None:
                self._reader_scope.cancel()
        return self._error

    def _on_failed(self) -> None:
        """Hook: wake anything else waiting on the connection."""

    def _forget(self, stream: _StreamBase) -> None:
        self._streams.pop(stream.stream_id, None)

    def _on_local_end(self, stream: _StreamBase) -> None:
        if stream._remote_ended:
            self._forget(stream)

    async def _flush_locked(self) -> None:
        """Send everything h2 has queued; call with the write lock held."""
        while True:
            data = self._h2.data_to_send()
            if self._outbox:
                data = bytes(self._outbox) + data
                self._outbox.clear()
            if not data or self._error is not None:
                return
            timeout = self._write_timeout
            deadline = math.inf if timeout is None else anyio.current_time() + timeout
            try:
                # Shielded: a cancelled half-written frame would corrupt the connection. One
                # scope for shield and deadline: cancel scopes are the hot path's main cost.
                with anyio.CancelScope(shield=True, deadline=deadline) as scope:
                    await self._stream.send(data)
            except _NETWORK_ERRORS as exc:
                msg = f"connection to the {self._peer} lost while writing: {exc!r}"
                raise self._fail(errors.ConnectionLost(msg)) from exc
            if scope.cancelled_caught:
                msg = f"writing to the {self._peer} took longer than {timeout} s"
                raise self._fail(errors.TimeoutError(msg))

    async def _flush_soon(self) -> None:
        """Flush from the reader or a consumer without ever waiting for the lock."""
        if self._write_lock.locked():
            return  # the holder flushes everything before releasing
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                await self._flush_locked()

    async def _acknowledge(self, stream_id: int, size: int) -> None:
        if self._error is not None or size == 0:
            return
        self._h2.acknowledge_received_data(size, stream_id)
        pending = self._h2.data_to_send()
        if pending:
            self._outbox += pending
            await self._flush_soon()

    async def _wait_window(self, event: anyio.Event, stream_id: int) -> None:
        try:
            with anyio.fail_after(self._write_timeout):
                await event.wait()
        except TimeoutError as exc:
            msg = (
                f"the {self._peer} kept stream {stream_id}'s flow-control window closed "
                f"for {self._write_timeout} s"
            )
            raise errors.TimeoutError(msg) from exc

    def _timer_deadline(self) -> float:
        return math.inf

    async def _on_timer(self) -> None:
        """Hook: called by the reader when ``_timer_deadline()`` passes."""

    async def _before_read(self) -> None:
        """Hook: called by the reader before each socket read."""

    async def _read_loop(self) -> None:
        while self._error is None:
            await self._before_read()
            try:
                with anyio.CancelScope(deadline=self._timer_deadline()) as timer:
                    self._read_scope = timer
                    data = await self._stream.receive(_READ_SIZE)
            except anyio.EndOfStream as exc:
                raise errors.ConnectionLost(f"the {self._peer} closed the connection") from exc
            except _NETWORK_ERRORS as exc:
                if self._closing:
                    return
                raise errors.ConnectionLost(
                    f"connection to the {self._peer} lost: {exc!r}"
                ) from exc
            if timer.cancelled_caught:
                await self._on_timer()
                continue
            await self._feed(data)

    async def _feed(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            await self._flush_soon()  # h2 queued a GOAWAY explaining the error
            msg = f"the {self._peer} broke the HTTP/2 protocol: {exc}"
            raise errors.RemoteProtocolError(msg) from exc
        self._on_bytes_received()
        for event in events:
            self._dispatch(event)
        await self._flush_soon()

    def _on_bytes_received(self) -> None:
        """Hook: any bytes from the peer prove it is alive."""

    def _dispatch(self, event: h2.events.Event) -> None:
        streams = self._streams
        match event:
            case h2.events.DataReceived(stream_id=int(sid), data=bytes(data)):
                fcl = event.flow_controlled_length or 0
                stream = streams.get(sid)
                if stream is None or stream._closed:
                    self._h2.acknowledge_received_data(fcl, sid)
                    return
                if fcl > len(data):  # padding is not the consumer's to acknowledge
                    self._h2.acknowledge_received_data(fcl - len(data), sid)
                if data:
                    stream._chunks.append(data)
                    stream._buffered += len(data)
                    stream._wake_recv()
            case h2.events.StreamEnded(stream_id=int(sid)):
                if (stream := streams.get(sid)) is not None:
                    stream._remote_ended = True
                    stream._wake_recv()
                    if stream._local_ended:
                        self._forget(stream)
            case h2.events.StreamReset(stream_id=int(sid)):
                if (stream := streams.get(sid)) is not None:
                    code = int(event.error_code or 0)
                    exc: errors.FluxError
                    if event.remote_reset:
                        name = error_code_name(code)
                        exc = errors.StreamReset(
                            f"the {self._peer} reset stream {sid} ({name})", error_code=code
                        )
                    else:
                        exc = errors.RemoteProtocolError(
                            f"stream {sid} broke the HTTP/2 protocol ({error_code_name(code)})"
                        )
                    stream._fail(exc)
                    self._forget(stream)
            case h2.events.WindowUpdated(stream_id=int(sid)):
                if sid == 0:
                    for stream in streams.values():
                        stream._wake_send()
                elif (stream := streams.get(sid)) is not None:
                    stream._wake_send()
            case h2.events.RemoteSettingsChanged():
                for stream in streams.values():
                    stream._wake_send()
                self._on_event(event)
            case _:
                self._on_event(event)

    def _on_event(self, event: h2.events.Event) -> None:
        """Hook: events the shared dispatcher does not handle."""


@attrs.define(eq=False)
class H2Stream(_StreamBase):
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

    async def response(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - part of the stream API
    ) -> tuple[int, list[tuple[str, str]]]:
        """Wait up to ``timeout`` seconds for the response headers; return ``(status, headers)``."""
        if self.status is None:
            try:
                with anyio.fail_after(timeout):
                    await self._headers_event.wait()
            except TimeoutError as exc:
                msg = f"no response headers on stream {self.stream_id} within {timeout} s"
                raise errors.TimeoutError(msg) from exc
        if self.status is None:
            if self._error is None:
                msg = f"stream {self.stream_id} ended without response headers"
                raise errors.RemoteProtocolError(msg)
            raise _fresh(self._error)
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


class H2Connection(_H2Base):
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
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
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
        h2conn.increment_flow_control_window(_MAX_WINDOW - 65535)
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
        self._ping_count = 0

    # -- properties used by the pool ---------------------------------------------------------------

    @property
    def max_concurrent_streams(self) -> int:
        """How many streams may be open at once: the peer's limit, capped by ``max_streams``."""
        peer = self._h2.remote_settings.max_concurrent_streams
        return peer if self.max_streams is None else min(peer, self.max_streams)

    @property
    def is_available(self) -> bool:
        """Whether new streams may be opened here (healthy, no GOAWAY, not closing)."""
        return self._error is None and self._goaway is None and not self._closing

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
        headers: Sequence[tuple[str, str]],
    ) -> H2Stream:
        """Send a request's headers (without END_STREAM) and return its stream.

        Waits (up to ``Timeouts.connect``) while the peer's concurrent-stream limit is reached.
        Raises ``GoAway`` after the peer's GOAWAY, or the connection's error.
        """
        self._opening += 1  # before any await: the pool counts it in has_capacity
        reserved = True
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
                try:
                    with anyio.fail_after(self.timeouts.connect):
                        await event.wait()
                except TimeoutError as exc:
                    msg = (
                        f"no free stream slot within {self.timeouts.connect} s "
                        f"(the server allows {self.max_concurrent_streams})"
                    )
                    raise errors.TimeoutError(msg) from exc
        finally:
            if reserved:
                self._opening -= 1
            if not self._streams and not self._opening:
                self._idle_since = anyio.current_time()

    def _check_open(self) -> None:
        if self._error is not None:
            raise _fresh(self._error)
        if self._goaway is not None:
            code = self._goaway[0]
            raise errors.GoAway(
                f"the server sent GOAWAY ({error_code_name(code)}); open a new connection",
                error_code=code,
            )
        if self._closing:
            raise errors.UsageError("the connection is closed")
        if not self._running:
            raise errors.UsageError(
                "start H2Connection.run() in a task group before opening streams"
            )

    def _forget(self, stream: _StreamBase) -> None:
        if self._streams.pop(stream.stream_id, None) is not None:
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
                try:
                    await self._read_loop()
                except errors.FluxError as exc:
                    self._fail(exc)
                except Exception as exc:  # a bug here must not take the pool's task group down
                    self._fail(errors.ConnectionLost(f"the HTTP/2 reader failed: {exc!r}"))
        finally:
            self._fail(errors.ConnectionLost("the connection was closed"))
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)

    def _timer_deadline(self) -> float:
        if self._ping_deadline is not None:
            return self._ping_deadline
        interval = self.timeouts.ping_interval
        return math.inf if interval is None else self._last_received + interval

    async def _on_timer(self) -> None:
        now = anyio.current_time()
        if self._ping_deadline is not None:
            if now >= self._ping_deadline:
                msg = f"the server did not answer a PING within {self.timeouts.ping_timeout} s"
                raise errors.ConnectionLost(msg)
            return
        self._ping_count += 1
        self._h2.ping(self._ping_count.to_bytes(8, "big"))
        self._ping_deadline = now + self.timeouts.ping_timeout
        await self._flush_soon()

    def _on_bytes_received(self) -> None:
        self._last_received = anyio.current_time()
        self._ping_deadline = None

    def _on_event(self, event: h2.events.Event) -> None:
        match event:
            case h2.events.ResponseReceived(stream_id=int(sid)):
                if isinstance(stream := self._streams.get(sid), H2Stream):
                    headers = [(str(k), str(v)) for k, v in event.headers or ()]
                    stream.status = int(next(v for k, v in headers if k == ":status"))
                    stream.headers = [(k, v) for k, v in headers if not k.startswith(":")]
                    stream._headers_event.set()
            case h2.events.TrailersReceived(stream_id=int(sid)):
                if isinstance(stream := self._streams.get(sid), H2Stream):
                    stream.trailers = [(str(k), str(v)) for k, v in event.headers or ()]
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
                stream._fail(errors.GoAway(msg, error_code=code))
                self._forget(stream)
        self._wake_capacity()

    async def _handshake(self) -> None:
        """Send our preface and wait for the server's SETTINGS (it proves the server speaks h2)."""
        async with self._write_lock:
            await self._flush_locked()
        while not self._settings_seen:
            if self._error is not None:
                raise _fresh(self._error)
            try:
                data = await self._stream.receive(_READ_SIZE)
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
                with anyio.move_on_after(_CLOSE_TIMEOUT):
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
) -> H2Connection:
    """Open an HTTP/2 connection: TCP, then TLS with ALPN ``h2`` (or plaintext prior knowledge).

    ``ssl_context`` decides certificate verification; its ALPN protocols are set to ``["h2"]``.
    ``None`` means plaintext HTTP/2 with prior knowledge (only for explicit ``http://`` endpoints).
    The whole connect, TLS handshake and SETTINGS exchange is bounded by ``timeouts.connect``.
    The returned connection's reader is not running yet: start :meth:`H2Connection.run`.

    Raises:
        ConnectError: refused, unreachable, TLS failure, or the server does not speak HTTP/2.
        TimeoutError: it took longer than ``timeouts.connect``.
    """
    timeouts = timeouts or Timeouts()
    target = f"{host}:{port}"
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
    try:
        with anyio.fail_after(timeouts.connect):
            stream: anyio.abc.ByteStream
            if ssl_context is None:
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
        raise errors.TimeoutError(
            f"connecting to {target} took longer than {timeouts.connect} s"
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        raise errors.ConnectError(
            f"TLS certificate verification failed for {target}: {exc.verify_message}"
        ) from exc
    except errors.FluxError as exc:
        raise errors.ConnectError(f"{target} does not speak HTTP/2: {exc.message}") from exc
    except (*_NETWORK_ERRORS, ssl.SSLError) as exc:
        raise errors.ConnectError(f"could not connect to {target}: {exc!r}") from exc
    return conn


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
