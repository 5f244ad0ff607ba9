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
from collections.abc import Mapping

__all__ = [
    "MAX_HEADERS_LENGTH",
    "MAX_HEADER_VALUE_LENGTH",
    "MAX_PAYLOAD_LENGTH",
    "Byte",
    "HeaderValue",
    "Integer",
    "Long",
    "Short",
    "Timestamp",
    "encode_header",
    "encode_headers",
    "encode_message",
    "encode_message_raw",
]

# Limits enforced by the AWS codecs (smithy-aws-event-stream and the service side).
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 16 * 1024 * 1024
MAX_HEADER_VALUE_LENGTH = 32 * 1024 - 1
PRELUDE_LENGTH = 12
# prelude (12) + message CRC (4)
FRAME_OVERHEAD = 16


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
_U32 = struct.Struct("!I")
_INT_TYPES: dict[type[int], tuple[int, struct.Struct]] = {
    Byte: (2, struct.Struct("!b")),
    Short: (3, struct.Struct("!h")),
    Integer: (4, struct.Struct("!i")),
    Long: (5, struct.Struct("!q")),
    Timestamp: (8, struct.Struct("!q")),
}
_U16 = struct.Struct("!H")


def _encode_value(value: HeaderValue) -> bytes:
    if value is True:
        return b"\x00"
    if value is False:
        return b"\x01"
    if isinstance(value, int):
        type_id, packer = _INT_TYPES.get(type(value), _INT_TYPES[Integer])
        try:
            return bytes((type_id,)) + packer.pack(value)
        except struct.error:
            raise OverflowError(
                f"header value {int(value)} does not fit a {type(value).__name__}"
            ) from None
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        type_id = 6
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        type_id = 7
    elif isinstance(value, uuid.UUID):
        return b"\x09" + value.bytes
    else:
        raise TypeError(f"unsupported header value type {type(value).__name__}")
    if len(raw) > MAX_HEADER_VALUE_LENGTH:
        raise ValueError(
            f"header value is {len(raw)} bytes; at most {MAX_HEADER_VALUE_LENGTH} are allowed"
        )
    return bytes((type_id,)) + _U16.pack(len(raw)) + raw


def encode_header(name: str, value: HeaderValue) -> bytes:
    """Encode one header record: name length, name, value type, value."""
    raw_name = name.encode("utf-8")
    if not 1 <= len(raw_name) <= 255:
        raise ValueError(f"header name must be 1 to 255 bytes, got {len(raw_name)}")
    return bytes((len(raw_name),)) + raw_name + _encode_value(value)


def encode_headers(headers: Mapping[str, HeaderValue]) -> bytes:
    """Encode a header block in the mapping's order.

    Callers that send many messages with the same headers encode the block once and pass it to
    :func:`encode_message_raw`.
    """
    block = b"".join(encode_header(name, value) for name, value in headers.items())
    if len(block) > MAX_HEADERS_LENGTH:
        raise ValueError(f"headers are {len(block)} bytes; at most {MAX_HEADERS_LENGTH} allowed")
    return block


def encode_message_raw(header_block: bytes, payload: bytes) -> bytes:
    """Frame an already encoded header block and a payload into one message."""
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"payload is {len(payload)} bytes; at most {MAX_PAYLOAD_LENGTH} allowed")
    prelude = _PRELUDE.pack(FRAME_OVERHEAD + len(header_block) + len(payload), len(header_block))
    prelude_crc = zlib.crc32(prelude)
    head = prelude + _U32.pack(prelude_crc) + header_block
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, payload, _U32.pack(crc)))


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes = b"") -> bytes:
    """Encode one event-stream message."""
    return encode_message_raw(encode_headers(headers), payload)
