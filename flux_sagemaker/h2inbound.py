"""Received HTTP/2 bytes: whole frames to h2, and the common DATA frames past it.

Internal, the receive-side twin of the DATA fast path in :mod:`flux_sagemaker.h2stream`. h2
builds a frame object, its ``repr``, a ``DataReceived`` event and two state-machine steps for
every DATA frame: about 12 µs each, nearly as much as decoding and parsing the Flux message it
carries. In the states where receiving DATA changes no state, :class:`InboundFrames` does what
h2 does instead (charge both receive windows) and hands the payload straight to the
connection. Everything else, and every DATA frame it is not sure about, goes to h2 unchanged
and in wire order.

To tell frames apart it must see where each one starts, so it gives h2 whole frames only and
keeps an incomplete one until the rest arrives. A frame longer than h2 accepts is passed on at
once, with everything after it: h2 buffers it and rejects it when complete.
"""

from __future__ import annotations

import struct
from typing import Final, TypeAlias

import h2.connection
import h2.events
import h2.stream

__all__ = [
    "FRAME_HEADER_SIZE",
    "OPEN_CONNECTION_STATES",
    "FastData",
    "InboundFrames",
    "declares_length",
]

#: A DATA frame taken past h2: ``(stream_id, payload)``; its flow-controlled length is the
#: payload's (no padding).
FastData: TypeAlias = tuple[int, bytes]

# A frame header: 24-bit length (as 16 + 8 bits), type, flags, R bit and stream id.
_FRAME_HEADER: Final = struct.Struct(">HBBBL")
#: Bytes in every frame's header (RFC 9113 section 4.1).
FRAME_HEADER_SIZE: Final = _FRAME_HEADER.size
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_PUSH_PROMISE: Final = 0x5
_CONTINUATION: Final = 0x9
_END_HEADERS: Final = 0x4
# The client preface (RFC 9113 section 3.4): a server's first bytes are not frames.
_PREFACE_SIZE: Final = 24
#: h2's connection states in which DATA, sent or received, changes no connection state.
OPEN_CONNECTION_STATES: Final = frozenset(
    {h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionState.SERVER_OPEN}
)
# Stream states in which a DATA frame without flags changes no stream state.
_RECEIVING_STREAM: Final = frozenset(
    {h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL}
)


def declares_length(headers: object) -> bool:
    """Whether a header list has ``content-length``, which h2 then checks DATA against."""
    if not isinstance(headers, list):
        return False
    return any(
        isinstance(name, str | bytes) and name.lower() in ("content-length", b"content-length")
        for name, _ in headers
    )


class InboundFrames:
    """Split received bytes into frames; DATA frames on fast streams skip h2.

    ``fast_streams`` holds the streams whose DATA may skip h2: the owner adds a stream once its
    request or response headers arrived without ``content-length``, and discards it when it
    forgets the stream. A DATA frame skips h2 only when it has no flags (no ``END_STREAM``, no
    padding), a non-empty payload, both windows have room for it, no header block is open, and
    h2's connection and stream are in states where DATA changes nothing. h2 raises for the
    frames it gets as it would have for the whole read.

    Uses two h2 internals, the connection's and the stream's inbound window managers (h2 4.x);
    ``tests/test_h2_inbound.py`` checks every window against h2's own path.
    """

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self._h2 = conn
        self.fast_streams: set[int] = set()
        self._pending = bytearray()  # the start of an incomplete frame
        self._pending_needs = 0  # its full size, once its header is in
        self._preface = 0 if conn.config.client_side else _PREFACE_SIZE
        self._header_block_open = False
        self._to_h2_only = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame kept until the rest arrives."""
        return len(self._pending)

    def receive(self, data: bytes) -> list[h2.events.Event | FastData]:
        """Process received bytes; return h2's events and the fast DATA, in wire order.

        Raises:
            h2.exceptions.ProtocolError: From h2, for the frames it processed.
        """
        if self._to_h2_only:
            return list(self._h2.receive_data(data))
        pending = self._pending
        if pending:
            pending += data
            if len(pending) < self._pending_needs:
                return []  # still incomplete: no copy until it is whole
            data = bytes(pending)
            pending.clear()
        h2c = self._h2
        items: list[h2.events.Event | FastData] = []
        size = len(data)
        pos = 0
        if self._preface:
            pos = min(self._preface, size)
            self._preface -= pos
            items += h2c.receive_data(data[:pos])  # h2 checks it
        run = pos  # start of the frames not yet given to h2
        while size - pos >= FRAME_HEADER_SIZE:
            length_high, length_low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(data, pos)
            length = length_high << 8 | length_low
            if length > h2c.max_inbound_frame_size:
                # h2 rejects it once it is complete (FrameTooLargeError); until then it buffers
                # it, so from here on every byte is h2's.
                self._to_h2_only = True
                pos = size
                break
            end = pos + FRAME_HEADER_SIZE + length
            if end > size:
                break
            if kind == _DATA and not flags and length and not self._header_block_open:
                if run < pos:  # h2's state must be current before judging this frame
                    items += h2c.receive_data(data[run:pos])
                    run = pos
                stream_id &= 0x7FFFFFFF
                if self._take(stream_id, length):
                    items.append((stream_id, data[pos + FRAME_HEADER_SIZE : end]))
                    run = end
            elif kind in (_HEADERS, _PUSH_PROMISE):
                self._header_block_open = not flags & _END_HEADERS
            elif kind == _CONTINUATION and flags & _END_HEADERS:
                self._header_block_open = False
            pos = end
        if run < pos:
            items += h2c.receive_data(data[run:pos])
        if pos < size:
            pending += data[pos:] if pos else data
            self._pending_needs = FRAME_HEADER_SIZE + (
                int.from_bytes(pending[:3], "big") if len(pending) >= 3 else 0
            )
        return items

    def _take(self, stream_id: int, length: int) -> bool:
        """Charge both windows for a DATA frame if h2 would take it without a state change."""
        h2c = self._h2
        if (
            stream_id not in self.fast_streams
            or h2c.state_machine.state not in OPEN_CONNECTION_STATES
        ):
            return False
        stream = h2c.streams.get(stream_id)
        if stream is None or stream.state_machine.state not in _RECEIVING_STREAM:
            return False
        connection_window = h2c._inbound_flow_control_window_manager
        stream_window = stream._inbound_window_manager
        if (
            length > connection_window.current_window_size
            or length > stream_window.current_window_size
        ):
            return False  # h2 raises FlowControlError
        connection_window.window_consumed(length)
        stream_window.window_consumed(length)
        return True
