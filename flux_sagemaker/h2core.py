"""The HTTP/2 core the client transport and the test server share: one connection, many streams.

Internal (like :mod:`flux_sagemaker.core`, not part of the public API): the client
(:mod:`flux_sagemaker.transport`) and the mock endpoint's server
(:mod:`flux_sagemaker.testing.h2server`) subclass :class:`H2ConnectionBase` and
:class:`~flux_sagemaker.h2stream.H2StreamBase`, so both peers have the same flow control,
buffering and failure handling. Design (per connection, not per stream, so thousands of streams
stay cheap):

- One reader task (:meth:`H2ConnectionBase._read_loop`) feeds h2 and routes events to the
  streams; subclasses add their own events (responses, requests) and timers (PING) via hooks.
  Reads pass through :class:`~flux_sagemaker.h2inbound.InboundFrames`, which takes the plain
  DATA frames of streams without ``content-length`` past h2 (same windows, same order).
- Socket writes happen under one write lock; every lock holder flushes *all* of h2's pending
  bytes before releasing it. The reader never waits for the lock: when it is held, the holder
  will flush the reader's frames (WINDOW_UPDATE, PING ACK) too. So the reader keeps draining
  the socket even while a writer is blocked, and two peers built this way cannot deadlock with
  both send buffers full. The client adds a writer task (:meth:`_after_queue`): the DATA frames
  every stream queues in one event-loop iteration leave in one socket write, and the reader's
  own frames go to it too, so the client's reader never waits for the socket at all.
- Socket writes are shielded from cancellation and bounded by the write timeout: a half-written
  frame would corrupt the connection, and a write that times out fails the connection.
- Receive flow control is acknowledged as the consumer reads, so a stream buffers at most its
  receive window. The connection window is the maximum, so one slow stream never stalls its
  siblings; per-stream windows bound memory.
- The first connection failure is stored and raised to every stream; a per-stream failure
  (RST_STREAM, GOAWAY above ``last_stream_id``) goes to that stream only. Every wait ends when the
  connection fails or a timeout expires.

h2 moves to CLOSED on GOAWAY and then rejects every frame (python-hyper/h2#1181), even the rest
of the same read. :class:`DrainingH2Connection` reopens its state machine as the GOAWAY frame is
processed, so streams at or below ``last_stream_id`` can finish.

Importing this module also keeps hpack's header tracing (``authorization`` included) out of logs.
"""

from __future__ import annotations

import copy
import logging
import math
import struct
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream

from flux_sagemaker import errors
from flux_sagemaker.h2inbound import OPEN_CONNECTION_STATES, InboundFrames, declares_length

if TYPE_CHECKING:
    from flux_sagemaker.h2stream import H2StreamBase


class _NoHeaderTracing(logging.Filter):
    """Drop hpack's DEBUG records: they print every header, ``authorization`` included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


# Credentials and signatures must never reach logs; hpack traces header blocks at DEBUG.
for _name in ("hpack.hpack", "hpack.table"):
    logging.getLogger(_name).addFilter(_NoHeaderTracing())

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_RECEIVE_WINDOW",
    "MAX_WINDOW",
    "NETWORK_ERRORS",
    "READ_SIZE",
    "DrainingH2Connection",
    "H2ConnectionBase",
    "error_code_name",
    "fresh_error",
    "header_fields",
    "wait_event",
]

#: Default per-stream receive window: the most a stream buffers when its reader is slow.
DEFAULT_RECEIVE_WINDOW = 1 << 20
#: The largest flow-control window HTTP/2 allows; the connection window is opened to it.
MAX_WINDOW = 2**31 - 1
#: Bytes asked of the socket per read.
READ_SIZE = 65536
#: What a broken or closed socket raises; the core turns them into ``ConnectionLost``.
NETWORK_ERRORS = (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError)
#: Longest wait for the write lock and the last frames when a stream or connection closes.
CLOSE_TIMEOUT = 5.0


def fresh_error(exc: errors.FluxError) -> errors.FluxError:
    """A copy of a stored error, so tasks raising it concurrently do not share one traceback."""
    try:
        new = copy.copy(exc)
    except Exception:  # an error class that cannot be rebuilt from its args
        return exc.with_traceback(None)
    new.__cause__ = exc.__cause__
    return new


def header_fields(headers: Any) -> list[tuple[str, str]]:
    """A header block from h2 as text, bytes that are not UTF-8 shown as U+FFFD.

    Both sides keep h2's headers as bytes (``header_encoding=None``): h2 would decode them
    inside ``receive_data``, and one peer's stray byte would fail the whole connection.
    """
    return [(_header_text(k), _header_text(v)) for k, v in headers or ()]


def _header_text(field: bytes | str) -> str:
    return field.decode("utf-8", "replace") if isinstance(field, bytes) else field


def error_code_name(code: int) -> str:
    """Name an HTTP/2 error code (``CANCEL``), or show it in hex when unknown."""
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


async def wait_event(event: anyio.Event, limit: float | None, message: str) -> None:
    """Wait for ``event`` up to ``limit`` seconds (``None``: no limit).

    Raises:
        TimeoutError: (``flux_sagemaker.errors``) with ``message`` when the time is up.
    """
    if limit is None:
        await event.wait()
        return
    try:
        with anyio.fail_after(limit):
            await event.wait()
    except TimeoutError as exc:
        raise errors.TimeoutError(message) from exc


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


# A DATA frame header: 24-bit length, type 0, no flags, stream id (RFC 9113 section 6.1).
_DATA_HEADER: Final = struct.Struct(">BHBBL")
# SETTINGS_MAX_FRAME_SIZE can only be raised from this (RFC 9113 section 6.5.2).
_MIN_MAX_FRAME_SIZE: Final = 16_384
# The stream states in which h2 itself lets a DATA frame go, without changing state.
_DATA_STREAM_STATES: Final = frozenset(
    {h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE}
)


class H2ConnectionBase:
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
        self._inbound = InboundFrames(h2conn)
        self._write_timeout = write_timeout
        self._write_lock = anyio.Lock(fast_acquire=True)  # no yield when uncontended
        self._outbox = bytearray()
        self._streams: dict[int, H2StreamBase] = {}
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

    def _forget(self, stream: H2StreamBase) -> None:
        self._streams.pop(stream.stream_id, None)
        self._inbound.fast_streams.discard(stream.stream_id)

    def _on_local_end(self, stream: H2StreamBase) -> None:
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
            except NETWORK_ERRORS as exc:
                msg = f"connection to the {self._peer} lost while writing: {exc!r}"
                raise self._fail(errors.ConnectionLost(msg)) from exc
            if scope.cancelled_caught:
                msg = f"writing to the {self._peer} took longer than {timeout} s"
                raise self._fail(errors.TimeoutError(msg))

    async def _after_queue(self, *, urgent: bool = False) -> None:
        """A stream queued frames in h2: have them written (the client batches them).

        ``urgent`` (a stream's END_STREAM) returns only once the frames were written.
        """
        await self._flush_or_join()

    def _frame_nowait(self, stream_id: int, data: bytes) -> bool:
        """Queue ``data`` as one DATA frame if nothing needs awaiting; ``False``: nothing queued.

        Only a connection with a writer task (the client's) lets a sender queue and go on;
        here every send awaits its own write.
        """
        return False

    def _backlogged(self) -> bool:
        """Whether queued frames wait for a writer task that a sender should let run."""
        return False

    async def _flush_or_join(self) -> None:
        """Write what h2 has queued, unless a writer is at it: then it writes ours too.

        The writer holding the lock loops until h2 has nothing left, and framing never awaits,
        so frames queued while it awaits the socket go out in its next write.
        """
        if self._write_lock.locked():
            return
        await self._write_now()

    async def _write_now(self) -> None:
        """Write what h2 has queued, waiting for the lock if need be; raise if it failed."""
        async with self._write_lock:
            await self._flush_locked()
        if self._error is not None:
            raise fresh_error(self._error)

    def _take_h2_output(self) -> bool:
        """Move what h2 has queued to the outbox; return whether there was anything.

        Checks h2's buffer first: ``data_to_send()`` copies and replaces it even when empty, and
        the DATA fast path asks once per audio event.
        """
        if not self._h2._data_to_send:
            return False
        self._outbox += self._h2.data_to_send()
        return True

    def _frame_data_fast(self, stream_id: int, data: bytes) -> bool:
        """Frame ``data`` as one DATA frame without h2's per-frame objects; False if h2 must.

        This is the hot path (one frame per audio event), and h2's ``send_data`` costs about a
        fifth of the client's CPU there. It does what h2 does in the states where sending DATA
        changes no state: charge both flow-control windows and queue the frame bytes. Frames h2
        queued earlier go to the outbox first, so the order on the wire is unchanged. Data that
        is empty, does not fit both windows or exceeds the peer's frame size is left to h2 as
        well (split, or waited for), with nothing taken.
        """
        h2c = self._h2
        stream = h2c.streams.get(stream_id)
        n = len(data)
        if (
            stream is None
            or not 0 < n <= stream.outbound_flow_control_window
            or n > h2c.outbound_flow_control_window
            # Every peer takes frames of 16 KiB (RFC 9113 section 4.2); only look further above.
            or (n > _MIN_MAX_FRAME_SIZE and n > h2c.max_outbound_frame_size)
            or stream.state_machine.state not in _DATA_STREAM_STATES
            or h2c.state_machine.state not in OPEN_CONNECTION_STATES
        ):
            return False
        stream.outbound_flow_control_window -= n
        h2c.outbound_flow_control_window -= n
        self._take_h2_output()  # frames h2 queued earlier go first
        outbox = self._outbox
        outbox += _DATA_HEADER.pack(n >> 16, n & 0xFFFF, 0, 0, stream_id)
        outbox += data
        return True

    async def _flush_soon(self) -> None:
        """Flush from the reader or a consumer without ever waiting for the lock."""
        if self._write_lock.locked():
            return  # the holder flushes everything before releasing
        self._take_h2_output()
        if not self._outbox:
            return  # most reads need no answer: spare the lock and the shield
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                await self._flush_locked()

    async def _acknowledge(self, stream_id: int, size: int) -> None:
        if self._error is not None or size == 0:
            return
        self._h2.acknowledge_received_data(size, stream_id)
        if self._take_h2_output():
            await self._flush_soon()

    async def _wait_window(self, event: anyio.Event, stream_id: int, since: float | None) -> None:
        """Wait for the peer to open ``stream_id``'s flow-control window (``event``).

        ``since``: when the stream found the window shut. The write limit runs from then, so a
        peer that keeps waking the sender without opening the window cannot hold it for ever.
        ``None``: no limit (the peer's data waits unread here, so the peer may wait for us).
        """
        if event.is_set():
            return
        limit = self._write_timeout
        left = None if limit is None or since is None else since + limit - anyio.current_time()
        msg = f"the {self._peer} kept stream {stream_id}'s flow-control window closed for {limit} s"
        await wait_event(event, left, msg)

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
                    data = await self._stream.receive(READ_SIZE)
            except anyio.EndOfStream as exc:
                raise errors.ConnectionLost(f"the {self._peer} closed the connection") from exc
            except NETWORK_ERRORS as exc:
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
            items = self._inbound.receive(data)
        except h2.exceptions.ProtocolError as exc:
            await self._flush_soon()  # h2 queued a GOAWAY explaining the error
            msg = f"the {self._peer} broke the HTTP/2 protocol: {exc}"
            raise errors.RemoteProtocolError(msg) from exc
        self._on_bytes_received()
        for item in items:
            if isinstance(item, tuple):
                sid, payload = item
                self._data_received(sid, payload, len(payload))
            else:
                self._dispatch(item)
        await self._flush_soon()

    def _on_bytes_received(self) -> None:
        """Hook: any bytes from the peer prove it is alive."""

    def _data_received(self, sid: int, data: bytes, flow_controlled_length: int) -> None:
        """Route a DATA frame's payload (from h2 or :class:`InboundFrames`) to its stream."""
        stream = self._streams.get(sid)
        if stream is None or stream._closed:
            self._h2.acknowledge_received_data(flow_controlled_length, sid)
            return
        if flow_controlled_length > len(data):  # padding is not the consumer's to acknowledge
            self._h2.acknowledge_received_data(flow_controlled_length - len(data), sid)
        if not data:
            return
        hook = stream._data_hook
        if hook is not None and stream._receiving and not stream._chunks and hook(data):
            # Consumed in this task, no switch to the receiver; _feed sends any update.
            self._h2.acknowledge_received_data(len(data), sid)
        else:
            stream._chunks.append(data)
            stream._buffered += len(data)
            stream._wake_recv()
            stream._wake_send()  # a sender waiting for the window drops its write limit

    def _dispatch(self, event: h2.events.Event) -> None:
        streams = self._streams
        match event:
            case h2.events.DataReceived(stream_id=int(sid), data=bytes(data)):
                self._data_received(sid, data, event.flow_controlled_length or 0)
            case (
                h2.events.RequestReceived(stream_id=int(sid))
                | h2.events.ResponseReceived(stream_id=int(sid))
            ):
                if not declares_length(event.headers):
                    self._inbound.fast_streams.add(sid)  # its DATA may skip h2
                self._on_event(event)
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
