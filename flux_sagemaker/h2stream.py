"""The per-stream half of the shared HTTP/2 core: a receive queue and flow-controlled sends.

Internal, like :mod:`flux_sagemaker.h2core`. :class:`H2StreamBase` is the base of the client's
:class:`~flux_sagemaker.transport.H2Stream` and the test server's
:class:`~flux_sagemaker.testing.h2server.ServerStream`. Its connection
(:class:`~flux_sagemaker.h2core.H2ConnectionBase`) fills the receive queue from the reader task;
the stream acknowledges bytes as its consumer reads them, and never sends past the peer's window.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable

import anyio
import attrs
import h2.exceptions
import h2.stream

from flux_sagemaker import errors
from flux_sagemaker.h2core import CLOSE_TIMEOUT, H2ConnectionBase, fresh_error, wait_event

__all__ = ["H2StreamBase"]


@attrs.define(eq=False)
class H2StreamBase:
    """Per-stream state shared by client and server streams: a receive queue and flow control."""

    _conn: H2ConnectionBase = attrs.field(repr=False)
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
    # True while a receive() without a time limit waits with nothing buffered: then data may
    # go to the data hook.
    _receiving: bool = attrs.field(init=False, default=False, repr=False)
    _data_hook: Callable[[bytes], bool] | None = attrs.field(init=False, default=None, repr=False)
    _send_event: anyio.Event | None = attrs.field(init=False, default=None, repr=False)
    # Whether a send keeps to the write limit even while our data waits unread (see _send).
    _held_to_limit: bool = attrs.field(init=False, default=False, repr=False)

    def set_data_hook(self, hook: Callable[[bytes], bool] | None) -> None:
        """Have the connection's reader offer data to ``hook`` while a receive() waits idle.

        The hook runs in the reader task and must not raise. It returns True when it consumed
        the chunk (the stream then acknowledges it at once) and False to leave it to
        receive(). Data is offered only when receive() is parked with nothing buffered, so
        hooked and received chunks never overtake each other. Only a receive() without a time
        limit counts: data the hook consumed would not reset the limit.
        """
        self._data_hook = hook

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read; never more than the stream's receive window."""
        return self._buffered

    def hold_writes_to_limit(self, hold: bool) -> None:
        """Have a send waiting for the peer's window keep to the write limit even while this
        stream's data waits unread (``hold``), or wait for our reader again.

        Without it, that wait has no limit: the peer may wait for us to read. A writer whose
        caller gave up must end in time all the same; the reader may never read again.
        """
        self._held_to_limit = hold
        self._wake_send()  # a send waiting with no limit starts one now

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
                raise fresh_error(self._error)
            if self._recv_event is None:
                self._recv_event = anyio.Event()
            if limit is None:
                self._receiving = True
                try:
                    await self._recv_event.wait()
                finally:
                    self._receiving = False
                continue
            # With a read limit, no hook: data it consumed would not reset the limit.
            msg = f"no data on stream {self.stream_id} for {limit} s"
            await wait_event(self._recv_event, limit, msg)
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if not self._buffered:
            self._wake_send()  # a sender waiting with no write limit (see _send) starts one
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
            raise fresh_error(self._error)

    def send_nowait(self, data: bytes) -> bool:
        """Queue ``data`` if that needs no waiting; on ``False`` nothing was queued: ``send`` it."""
        return (
            self._error is None
            and not (self._closed or self._local_ended)
            and self._conn._frame_nowait(self.stream_id, data)
        )

    @property
    def backlogged(self) -> bool:
        """Whether the connection's writer has a burst to write: a sender that just queued
        with :meth:`send_nowait` should let it run (one checkpoint) before queueing more."""
        return self._conn._backlogged()

    async def _send(self, data: bytes, end_stream: bool) -> None:
        conn, h2c, sid = self._conn, self._conn._h2, self.stream_id
        if (
            not end_stream
            and self._error is None
            and not (self._closed or self._local_ended)
            and conn._frame_data_fast(sid, data)
        ):
            # The common case (an event that fits the window) in one step; nothing to wait for.
            await conn._after_queue()
            return
        view = memoryview(data)
        # When the wait for the window began: wakes that leave it shut (a WINDOW_UPDATE for
        # the connection only, a SETTINGS frame) must not start the write limit over.
        shut_since: float | None = None
        while True:
            event = None
            done = False
            # Framing is synchronous; only the socket write needs the lock. While one task
            # writes, others just queue frames in h2, and the writer sends them all in its
            # next write (it loops until h2 has nothing left): a group commit across streams.
            try:
                if end_stream and not view and self._finished_then_reset():
                    return
                self._check_sendable()
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if view and window <= 0:
                    event = self._send_event = self._send_event or anyio.Event()
                else:
                    shut_since = None
                    n = min(len(view), window)
                    last = end_stream and n == len(view)
                    if n and not last and n == len(data) and conn._frame_data_fast(sid, data):
                        pass  # the whole of it, framed by us once the window opened
                    elif n:
                        h2c.send_data(sid, bytes(view[:n]), end_stream=last)
                    elif last:
                        h2c.end_stream(sid)
                    view = view[n:]
                    if last:
                        self._local_ended = True
                        conn._on_local_end(self)
                    done = not view
            except h2.exceptions.H2Error as exc:
                if self._error is not None:
                    raise fresh_error(self._error) from exc
                raise errors.LocalProtocolError(f"cannot send on stream {sid}: {exc}") from exc
            finally:
                await conn._after_queue(urgent=end_stream)
            if done:
                return
            if event is not None:
                if self._buffered and not self._held_to_limit:
                    # The peer's data waits here unread: a peer that answers and reads in one
                    # task (as the mock does) stops reading until we read it, so this shut
                    # window is our reader's doing (a consumer behind), not the peer's fault.
                    # No write limit until we have read it all (unless held to it); a silent
                    # peer still fails by PING.
                    shut_since = None
                elif shut_since is None:
                    shut_since = anyio.current_time()
                await conn._wait_window(event, sid, shut_since)

    async def _reset(self, error_code: int) -> None:
        """Reset the stream unless it is already closed both ways; never raises, never hangs.

        The RST_STREAM is framed at once, without waiting for the write lock (framing never
        awaits): h2 stops counting the stream against the peer's concurrent-stream limit
        whatever the socket does. Were it framed under the lock, a write stuck past the close
        limit would leave it counted, and the next open_stream there would fail with h2's
        TooManyStreamsError.
        """
        conn = self._conn
        if (
            not (self._local_ended and self._remote_ended)
            and self._error is None
            and conn._error is None
        ):
            with contextlib.suppress(h2.exceptions.H2Error):  # h2 considers it closed already
                conn._h2.reset_stream(self.stream_id, error_code)
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(CLOSE_TIMEOUT),
                # The peer is gone: the error is stored on the connection.
                contextlib.suppress(errors.FluxError),
            ):
                await conn._flush_soon()  # a write in progress sends it next
        self._local_ended = self._remote_ended = True
        if self._buffered:  # hand unread bytes back to the connection window
            await conn._acknowledge(self.stream_id, self._buffered)
        self._chunks.clear()
        self._buffered = 0
        conn._forget(self)
