"""AWS event-stream codec (``application/vnd.amazon.eventstream``), sans-I/O.

Wire format, all big-endian (see the SageMaker wire spec, section 3)::

    total_length:u32  headers_length:u32  prelude_crc:u32  headers  payload  message_crc:u32

Header values carry one of ten types. Python values map onto them as follows; the integer
widths and the timestamp are ``int`` subclasses so that decoded values compare equal to plain
ints while remembering their wire type:

    ======  ==============  ==========================================
    type    Python          notes
    ======  ==============  ==========================================
    0 / 1   ``bool``        true / false
    2       ``Byte``        int8
    3       ``Short``       int16
    4       ``Integer``     int32 (a plain ``int`` encodes as this)
    5       ``Long``        int64
    6       ``bytes``       at most 32767 bytes
    7       ``str``         UTF-8, at most 32767 bytes encoded
    8       ``Timestamp``   int64 milliseconds since the Unix epoch
    9       ``uuid.UUID``   16 bytes
    ======  ==============  ==========================================
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable, Mapping

import attrs

from flux_sagemaker.errors import FrameError, ValidationError

__all__ = [
    "MAX_HEADERS_LENGTH",
    "MAX_HEADER_VALUE_LENGTH",
    "MAX_PAYLOAD_LENGTH",
    "Byte",
    "EventStreamDecoder",
    "HeaderValue",
    "Integer",
    "Long",
    "Message",
    "Short",
    "Timestamp",
    "decode_message",
    "encode_header",
    "encode_headers",
    "encode_message",
    "encode_message_raw",
]

# Limits enforced by the AWS codecs (aws-c-event-stream, smithy-aws-event-stream and the
# service side). Checking them from the prelude bounds what a decoder ever buffers to one
# maximum-size message (about 16 MiB), however long the peer claims its next message is.
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 16 * 1024 * 1024
# Type 6/7 lengths are uint16 on the wire, but the AWS codecs cap them at INT16_MAX.
MAX_HEADER_VALUE_LENGTH = 32 * 1024 - 1
PRELUDE_LENGTH = 12
# prelude (12) + message CRC (4)
FRAME_OVERHEAD = 16
# Payload bytes shown by Message's repr before it truncates.
_REPR_PAYLOAD_BYTES = 48


class Byte(int):
    """An int8 header value (type 2)."""


class Short(int):
    """An int16 header value (type 3)."""


class Integer(int):
    """An int32 header value (type 4)."""


class Long(int):
    """An int64 header value (type 5)."""


class Timestamp(int):
    """A timestamp header value (type 8), in milliseconds since the Unix epoch."""


HeaderValue = bool | int | bytes | str | uuid.UUID

_PRELUDE = struct.Struct("!II")
_PRELUDE_WITH_CRC = struct.Struct("!III")
_U32 = struct.Struct("!I")
# Type byte and value packed in one call.
_INT_TYPES: dict[type[int], tuple[int, struct.Struct]] = {
    Byte: (2, struct.Struct("!Bb")),
    Short: (3, struct.Struct("!Bh")),
    Integer: (4, struct.Struct("!Bi")),
    Long: (5, struct.Struct("!Bq")),
    Timestamp: (8, struct.Struct("!Bq")),
}
_TYPE_AND_LENGTH = struct.Struct("!BH")
_UUID_TYPE = b"\x09"

# Fixed-size integer types on the decode side: type -> (size, unpack_from, class).
_FIXED_INTS: dict[int, tuple[int, Callable[[bytes, int], tuple[int]], type[int]]] = {
    2: (1, struct.Struct("!b").unpack_from, Byte),
    3: (2, struct.Struct("!h").unpack_from, Short),
    4: (4, struct.Struct("!i").unpack_from, Integer),
    5: (8, struct.Struct("!q").unpack_from, Long),
    8: (8, struct.Struct("!q").unpack_from, Timestamp),
}


def _encode_value(value: HeaderValue) -> bytes:
    if value is True:
        return b"\x00"
    if value is False:
        return b"\x01"
    if isinstance(value, int):
        type_id, packer = _INT_TYPES.get(type(value), _INT_TYPES[Integer])
        try:
            return packer.pack(type_id, value)
        except struct.error:
            raise ValidationError(
                f"header value {int(value)} does not fit a {type(value).__name__}"
            ) from None
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        type_id = 6
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise ValidationError("header string value is not valid UTF-8") from None
        type_id = 7
    elif isinstance(value, uuid.UUID):
        return _UUID_TYPE + value.bytes
    else:
        raise TypeError(f"unsupported header value type {type(value).__name__}")
    if len(raw) > MAX_HEADER_VALUE_LENGTH:
        raise ValidationError(
            f"header value is {len(raw)} bytes; at most {MAX_HEADER_VALUE_LENGTH} are allowed"
        )
    return _TYPE_AND_LENGTH.pack(type_id, len(raw)) + raw


def encode_header(name: str, value: HeaderValue) -> bytes:
    """Encode one header record: name length, name, value type, value.

    Raises:
        ValidationError: The name is not 1 to 255 bytes of UTF-8, an integer does not fit its
            type, a str value is not valid UTF-8, or a bytes/str value is longer than
            :data:`MAX_HEADER_VALUE_LENGTH`.
        TypeError: The value is none of the :data:`HeaderValue` types.
    """
    try:
        raw_name = name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise ValidationError(f"header name {name!r} is not valid UTF-8") from None
    if not 1 <= len(raw_name) <= 255:
        raise ValidationError(f"header name must be 1 to 255 bytes, got {len(raw_name)}")
    return bytes((len(raw_name),)) + raw_name + _encode_value(value)


def encode_headers(headers: Mapping[str, HeaderValue]) -> bytes:
    """Encode a header block in the mapping's order.

    Callers that send many messages with the same headers encode the block once and pass it to
    :func:`encode_message_raw`.
    """
    block = b"".join([encode_header(name, value) for name, value in headers.items()])
    if len(block) > MAX_HEADERS_LENGTH:
        raise ValidationError(
            f"headers are {len(block)} bytes; at most {MAX_HEADERS_LENGTH} allowed"
        )
    return block


def encode_message_raw(header_block: bytes, payload: bytes) -> bytes:
    """Frame an already encoded header block and a payload into one message."""
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValidationError(
            f"payload is {len(payload)} bytes; at most {MAX_PAYLOAD_LENGTH} allowed"
        )
    prelude = _PRELUDE.pack(FRAME_OVERHEAD + len(header_block) + len(payload), len(header_block))
    prelude_crc = zlib.crc32(prelude)
    head = prelude + _U32.pack(prelude_crc) + header_block
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, payload, _U32.pack(crc)))


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes = b"") -> bytes:
    """Encode one event-stream message."""
    return encode_message_raw(encode_headers(headers), payload)


def _payload_repr(payload: bytes) -> str:
    if len(payload) <= _REPR_PAYLOAD_BYTES:
        return repr(payload)
    return f"{payload[:_REPR_PAYLOAD_BYTES]!r}... ({len(payload)} bytes)"


@attrs.frozen
class Message:
    """One decoded event-stream message."""

    headers: dict[str, HeaderValue] = attrs.field(factory=dict)
    """Header values by name, in wire order. Integers keep their wire type (:class:`Byte`...)."""
    payload: bytes = attrs.field(default=b"", repr=_payload_repr)
    """The payload; the repr shows only its start."""

    def header_str(self, name: str) -> str | None:
        """Return the string header ``name``, or ``None`` when it is absent or not a string."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


def _check_prelude(
    view: memoryview, offset: int, max_headers_length: int, max_payload_length: int
) -> tuple[int, int]:
    """Validate the 12-byte prelude at ``offset``; return ``(total_length, headers_length)``."""
    total, headers_length, prelude_crc = _PRELUDE_WITH_CRC.unpack_from(view, offset)
    computed = zlib.crc32(view[offset : offset + 8])
    if computed != prelude_crc:
        raise FrameError(
            f"prelude CRC mismatch: the frame says 0x{prelude_crc:08x}, "
            f"its first 8 bytes give 0x{computed:08x}"
        )
    if total < FRAME_OVERHEAD:
        raise FrameError(f"total length {total} is below the minimum of {FRAME_OVERHEAD}")
    if headers_length > total - FRAME_OVERHEAD:
        raise FrameError(
            f"headers length {headers_length} exceeds total length {total} "
            f"minus {FRAME_OVERHEAD} bytes of framing"
        )
    if headers_length > max_headers_length:
        raise FrameError(
            f"headers length {headers_length} exceeds the limit of {max_headers_length}"
        )
    payload_length = total - FRAME_OVERHEAD - headers_length
    if payload_length > max_payload_length:
        raise FrameError(
            f"payload length {payload_length} exceeds the limit of {max_payload_length}"
        )
    return total, headers_length


def _decode_frame(view: memoryview, offset: int, total: int, headers_length: int) -> Message:
    """Decode the complete message at ``offset`` whose prelude has been checked."""
    crc_at = offset + total - 4
    (expected,) = _U32.unpack_from(view, crc_at)
    computed = zlib.crc32(view[offset:crc_at])
    if computed != expected:
        raise FrameError(
            f"message CRC mismatch: the frame says 0x{expected:08x}, "
            f"its contents give 0x{computed:08x}"
        )
    headers_end = offset + PRELUDE_LENGTH + headers_length
    # One copy of the (bounded) header block: slicing and decoding bytes is about a third
    # faster than going through memoryview slices for these short fields.
    block = bytes(view[offset + PRELUDE_LENGTH : headers_end])
    parsed = _PARSED_HEADERS.get(block)
    if parsed is None:
        parsed = _parse_headers(block)
        if len(block) <= _CACHED_BLOCK_MAX:
            if len(_PARSED_HEADERS) >= _CACHED_BLOCKS:
                _PARSED_HEADERS.clear()
            _PARSED_HEADERS[block] = parsed
    return Message(dict(parsed), bytes(view[headers_end:crc_at]))


# Parsed header blocks by their bytes. A stream's messages mostly repeat one block (a response's
# ":event-type: PayloadPart", a request's inner "AudioEvent"), so most parses are a lookup; the
# caller gets a copy. Bounded: cleared when full, and only short blocks are kept.
_PARSED_HEADERS: dict[bytes, dict[str, HeaderValue]] = {}
_CACHED_BLOCKS = 256
_CACHED_BLOCK_MAX = 512


def _past_end(name: str, type_id: int, needed: int, left: int) -> FrameError:
    return FrameError(
        f"header {name!r} of type {type_id} needs {needed} more bytes, "
        f"but only {left} are left in the header block"
    )


def _parse_headers(block: bytes) -> dict[str, HeaderValue]:
    """Parse a header block; every malformation becomes a :class:`FrameError`."""
    headers: dict[str, HeaderValue] = {}
    end = len(block)
    pos = 0
    while pos < end:
        name_length = block[pos]
        if name_length == 0:
            raise FrameError(f"zero-length header name at offset {pos}; names are 1 to 255 bytes")
        name_start = pos + 1
        pos = name_start + name_length  # the value type byte
        if pos >= end:
            raise FrameError(
                f"header name of {name_length} bytes at offset {name_start} and its value "
                f"type run past the end of the {end}-byte header block"
            )
        raw_name = block[name_start:pos]
        try:
            name = raw_name.decode()
        except UnicodeDecodeError:
            raise FrameError(f"header name {raw_name!r} is not valid UTF-8") from None
        if name in headers:
            raise FrameError(f"duplicate header {name!r}; each name may appear once")
        type_id = block[pos]
        pos += 1
        value: HeaderValue
        if type_id == 6 or type_id == 7:
            if pos + 2 > end:
                raise _past_end(name, type_id, 2, end - pos)
            length = block[pos] << 8 | block[pos + 1]
            pos += 2
            if length > MAX_HEADER_VALUE_LENGTH:
                raise FrameError(
                    f"header {name!r} value is {length} bytes; "
                    f"at most {MAX_HEADER_VALUE_LENGTH} are allowed"
                )
            if pos + length > end:
                raise _past_end(name, type_id, length, end - pos)
            raw = block[pos : pos + length]
            pos += length
            if type_id == 6:
                value = raw
            else:
                try:
                    value = raw.decode()
                except UnicodeDecodeError:
                    raise FrameError(f"header {name!r} string value is not valid UTF-8") from None
        elif type_id in _FIXED_INTS:
            size, unpack_from, cls = _FIXED_INTS[type_id]
            if pos + size > end:
                raise _past_end(name, type_id, size, end - pos)
            value = cls(unpack_from(block, pos)[0])
            pos += size
        elif type_id <= 1:
            value = type_id == 0
        elif type_id == 9:
            if pos + 16 > end:
                raise _past_end(name, type_id, 16, end - pos)
            value = uuid.UUID(bytes=block[pos : pos + 16])
            pos += 16
        else:
            raise FrameError(f"header {name!r} has unknown value type {type_id}; expected 0 to 9")
        headers[name] = value
    return headers


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode exactly one complete message (for example the payload of a signed envelope).

    Raises:
        FrameError: ``data`` is not one valid message: corrupt, truncated, over the default
            limits, or followed by trailing bytes.
    """
    with memoryview(data) as view:
        size = len(view)
        if size < PRELUDE_LENGTH:
            raise FrameError(f"message is {size} bytes; a prelude alone is {PRELUDE_LENGTH}")
        total, headers_length = _check_prelude(view, 0, MAX_HEADERS_LENGTH, MAX_PAYLOAD_LENGTH)
        if size != total:
            what = "is truncated" if size < total else f"has {size - total} trailing bytes"
            raise FrameError(f"message {what}: got {size} bytes, its prelude says {total}")
        return _decode_frame(view, 0, total, headers_length)


@attrs.define(eq=False)
class EventStreamDecoder:
    """Incremental decoder: feed bytes as they arrive, get complete messages back.

    At most one incomplete message is buffered, and a message whose prelude announces more than
    the limits is rejected before its body arrives. After a :class:`FrameError` the decoder is
    broken and every later call raises too. The messages that preceded a corrupt one are never
    lost with it: :meth:`receive_data` returns them and the error is raised by the next call
    (:attr:`error` has it at once).
    """

    max_payload_length: int = attrs.field(default=MAX_PAYLOAD_LENGTH, kw_only=True)
    """Largest payload accepted, in bytes."""
    max_headers_length: int = attrs.field(default=MAX_HEADERS_LENGTH, kw_only=True)
    """Largest header block accepted, in bytes."""
    # The bytes of the incomplete message, always starting at its first byte.
    _buffer: bytearray = attrs.field(init=False, factory=bytearray, repr=False)
    # (total_length, headers_length) of that message once its prelude has been checked.
    _frame: tuple[int, int] | None = attrs.field(init=False, default=None, repr=False)
    _error: FrameError | None = attrs.field(init=False, default=None, repr=False)
    # Whether _error was raised yet; it is not when it came after messages that were returned.
    _error_raised: bool = attrs.field(init=False, default=False, repr=False)

    @property
    def error(self) -> FrameError | None:
        """The error that broke the stream, or ``None``; set as soon as it is found."""
        return self._error

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add ``data`` and return the messages it completed, in order (often none).

        Raises:
            FrameError: The stream is corrupt or over the limits. When messages completed in the
                same ``data`` before the corrupt one, they are returned instead and the next
                call raises; :attr:`error` is set either way.
        """
        self._check_not_broken()
        buffer = self._buffer
        # Parse straight from the caller's bytes when nothing is pending, which is the common
        # case of whole messages per read; only an incomplete tail is copied.
        source: bytes | bytearray | memoryview
        if buffer:
            buffer += data
            source = buffer
        else:
            source = data
        messages: list[Message] = []
        offset = 0
        try:
            with memoryview(source) as view:
                size = len(view)
                while True:
                    frame = self._frame
                    if frame is None:
                        if size - offset < PRELUDE_LENGTH:
                            break
                        frame = self._frame = _check_prelude(
                            view, offset, self.max_headers_length, self.max_payload_length
                        )
                    total, headers_length = frame
                    if size - offset < total:
                        break
                    messages.append(_decode_frame(view, offset, total, headers_length))
                    offset += total
                    self._frame = None
                if source is not buffer and offset < size:
                    self._buffer = bytearray(view[offset:])
        except FrameError as exc:
            self._error = exc
            self._buffer = bytearray()
            if messages:
                # The same read may carry a final transcript before the bad frame; how the
                # transport split the bytes must not decide whether it is delivered.
                return messages
            self._error_raised = True
            raise
        if source is buffer and offset:
            # Amortised: what remains is a tail that arrived in this call.
            del buffer[:offset]
        return messages

    def eof(self) -> None:
        """Signal the end of the stream.

        Raises:
            FrameError: A partial message is buffered, or the stream was already corrupt.
        """
        self._check_not_broken()
        if self._buffer:
            expected = (
                f"a {self._frame[0]}-byte message"
                if self._frame
                else f"a {PRELUDE_LENGTH}-byte prelude"
            )
            raise FrameError(
                f"the stream ended inside a message: {len(self._buffer)} bytes of {expected}"
            )

    def _check_not_broken(self) -> None:
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error
        if self._error is not None:
            raise FrameError(
                f"the event stream is already broken: {self._error.message}"
            ) from self._error
