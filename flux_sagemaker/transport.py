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

h2 moves to CLOSED on GOAWAY and then rejects every frame (python-hyper/h2#1181). We reopen its
state machine after a GOAWAY so streams at or below ``last_stream_id`` can finish; no new streams
are opened on such a connection.
"""

from __future__ import annotations

import collections
import math
import ssl
from collections.abc import Sequence

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

__all__ = ["DEFAULT_RECEIVE_WINDOW", "H2Connection", "H2Stream", "Timeouts", "connect"]

#: Default per-stream receive window: the most a stream buffers when its reader is slow.
DEFAULT_RECEIVE_WINDOW = 1 << 20
_MAX_WINDOW = 2**31 - 1
_READ_SIZE = 65536
_NETWORK_ERRORS = (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError)
_CLOSE_TIMEOUT = 5.0


def _positive_or_none(instance: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    if value is not None and not (isinstance(value, int | float) and value > 0):
        msg = f"Timeouts.{attribute.name} must be a positive number of seconds or None, got {value!r}"
        raise errors.ValidationError(msg)


@attrs.frozen
class Timeouts:
    """Time limits of the transport, in seconds; ``None`` means no limit."""

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


def error_code_name(code: int) -> str:
    """Name an HTTP/2 error code (``CANCEL``), or show it in hex when unknown."""
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


@attrs.define(eq=False)
class _StreamBase:
    """Per-stream state shared by client and server streams: a receive queue and flow control."""

    _conn: _H2Base = attrs.field(repr=False)
    stream_id: int
    _chunks: collections.deque[bytes] = attrs.field(init=False, factory=collections.deque, repr=False)
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

    async def _receive(self, timeout: float | None) -> bytes | None:
        while not self._chunks:
            if self._closed:
                raise errors.UsageError(f"receive() on stream {self.stream_id} after aclose()")
            if self._remote_ended:
                return None
            if self._error is not None:
                raise self._error.with_traceback(None)
            if self._recv_event is None:
                self._recv_event = anyio.Event()
            try:
                with anyio.fail_after(timeout):
                    await self._recv_event.wait()
            except TimeoutError as exc:
                msg = f"no data on stream {self.stream_id} for {timeout} s"
                raise errors.TimeoutError(msg) from exc
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        await self._conn._acknowledge(self.stream_id, len(chunk))
        return chunk

    def _check_sendable(self) -> None:
        if self._closed:
            raise errors.UsageError(f"send on stream {self.stream_id} after aclose()")
        if self._local_ended:
            raise errors.UsageError(f"send on stream {self.stream_id} after its end")
        if self._error is not None:
            raise self._error.with_traceback(None)

    async def _send(self, data: bytes, end_stream: bool) -> None:
        conn, h2c = self._conn, self._conn._h2
        view = memoryview(data)
        while True:
            event = None
            async with conn._write_lock:
                try:
                    self._check_sendable()
                    if not view and end_stream:
                        h2c.end_stream(self.stream_id)
                        self._local_ended = True
                        conn._on_local_end(self)
                        return
                    window = h2c.local_flow_control_window(self.stream_id)
                    n = min(len(view), window, h2c.max_outbound_frame_size)
                    if n > 0:
                        last = end_stream and n == len(view)
                        h2c.send_data(self.stream_id, bytes(view[:n]), end_stream=last)
                        view = view[n:]
                        if last:
                            self._local_ended = True
                            conn._on_local_end(self)
                        if not view and not end_stream or last:
                            return
                    elif view:
                        event = self._send_event = self._send_event or anyio.Event()
                finally:
                    await conn._flush_locked()
            if event is not None:
                await conn._wait_window(event, self.stream_id)

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
        self, stream: anyio.abc.ByteStream, h2conn: h2.connection.H2Connection, write_timeout: float | None
    ) -> None:
        self._stream = stream
        self._h2 = h2conn
        self._write_timeout = write_timeout
        self._write_lock = anyio.Lock()
        self._outbox = bytearray()
        self._streams: dict[int, _StreamBase] = {}
        self._error: errors.FluxError | None = None
        self._closing = False
        self._reader_scope: anyio.CancelScope | None = None

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
            try:
                # Shielded: a cancelled half-written frame would corrupt the connection.
                with anyio.CancelScope(shield=True), anyio.fail_after(self._write_timeout):
                    await self._stream.send(data)
            except TimeoutError as exc:
                msg = f"writing to the {self._peer} took longer than {self._write_timeout} s"
                raise self._fail(errors.TimeoutError(msg)) from exc
            except _NETWORK_ERRORS as exc:
                msg = f"connection to the {self._peer} lost while writing: {exc!r}"
                raise self._fail(errors.ConnectionLost(msg)) from exc

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
            msg = f"the {self._peer} kept stream {stream_id}'s flow-control window closed for {self._write_timeout} s"
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
                    data = await self._stream.receive(_READ_SIZE)
            except anyio.EndOfStream as exc:
                raise errors.ConnectionLost(f"the {self._peer} closed the connection") from exc
            except _NETWORK_ERRORS as exc:
                if self._closing:
                    return
                raise errors.ConnectionLost(f"connection to the {self._peer} lost: {exc!r}") from exc
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
                        exc = errors.StreamReset(f"the {self._peer} reset stream {sid} ({name})", error_code=code)
                    else:
                        exc = errors.RemoteProtocolError(f"stream {sid} broke the HTTP/2 protocol ({error_code_name(code)})")
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

    async def response(self, timeout: float | None = None) -> tuple[int, list[tuple[str, str]]]:
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
            raise self._error.with_traceback(None)
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
        """End the request body (END_STREAM); the response can still be read."""
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


from flux_sagemaker._h2client import H2Connection, connect  # noqa: E402
