"""The event-stream codec against the AWS vectors, botocore, and every corruption we can make."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from typing import Any

import attrs
import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.core import eventstream
from flux_sagemaker.core.eventstream import (
    MAX_HEADER_VALUE_LENGTH,
    MAX_HEADERS_LENGTH,
    MAX_PAYLOAD_LENGTH,
    Byte,
    EventStreamDecoder,
    HeaderValue,
    Integer,
    Long,
    Message,
    Short,
    Timestamp,
    decode_message,
    encode_header,
    encode_headers,
    encode_message,
    encode_message_raw,
)
from flux_sagemaker.errors import FrameError, ValidationError
from tests.conftest import VECTORS

CAPTURE = VECTORS / "aws-sdk-capture"
JSON_VECTORS: dict[str, dict[str, Any]] = json.loads(
    (VECTORS / "eventstream-vectors.json").read_text()
)
REQUEST_BODY = (CAPTURE / "request-body.bin").read_bytes()
HEX_FRAMES = {
    name: bytes.fromhex((CAPTURE / f"{name}.hex").read_text().strip())
    for name in ("close-stream-frame", "final-empty-frame")
}
ALL_FRAMES = {
    **{name: bytes.fromhex(vector["hex"]) for name, vector in JSON_VECTORS.items()},
    **HEX_FRAMES,
}

# The all-header-types vector, as its headers_description spells it out, with wire types.
ALL_HEADER_TYPES: dict[str, HeaderValue] = {
    "true": True,
    "false": False,
    "byte": Byte(-7),
    "short": Short(-300),
    "integer": Integer(70000),
    "long": Long(1099511627781),
    "bytes": bytes.fromhex("00ff616263"),
    "string": "héllo",
    "timestamp": Timestamp(1795521600123),
    "uuid": uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"),
}

# sagemaker.md section 4: inner PayloadPart headers in the AWS SDK's order (the last two optional).
INNER_HEADER_ORDER = [
    ":message-type",
    ":event-type",
    "DataType",
    ":content-type",
    "CompletionState",
    "P",
]


def expected_headers(name: str) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = JSON_VECTORS[name].get("headers", ALL_HEADER_TYPES)
    return headers


def feed(decoder: EventStreamDecoder, data: bytes, cuts: list[int]) -> list[Message]:
    """Feed ``data`` split at the sorted positions ``cuts``; return every message."""
    messages: list[Message] = []
    start = 0
    for cut in [*cuts, len(data)]:
        messages += decoder.receive_data(data[start:cut])
        start = cut
    return messages


def one_byte_at_a_time(data: bytes) -> list[Message]:
    decoder = EventStreamDecoder()
    messages: list[Message] = []
    for i in range(len(data)):
        messages += decoder.receive_data(data[i : i + 1])
    decoder.eof()
    return messages


def frame(
    header_block: bytes,
    payload: bytes = b"",
    *,
    total: int | None = None,
    headers_length: int | None = None,
) -> bytes:
    """A frame with correct CRCs around arbitrary (possibly lying) lengths and header bytes."""
    if total is None:
        total = 16 + len(header_block) + len(payload)
    if headers_length is None:
        headers_length = len(header_block)
    prelude = struct.pack("!II", total, headers_length)
    head = prelude + struct.pack("!I", zlib.crc32(prelude)) + header_block + payload
    return head + struct.pack("!I", zlib.crc32(head))


def wire_type(value: HeaderValue) -> type:
    """The class a value comes back as after a round trip."""
    if type(value) is int:
        return Integer
    return type(value)


def assert_rejected(data: bytes) -> None:
    """Fed whole, ``data`` fails in receive_data, or leaves a partial message that eof rejects."""
    decoder = EventStreamDecoder()
    try:
        messages = decoder.receive_data(data)
    except FrameError:
        return
    assert messages == []
    with pytest.raises(FrameError, match="ended inside a message"):
        decoder.eof()


# -- the vectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", JSON_VECTORS)
def test_json_vector_decodes_to_its_description(name: str) -> None:
    raw = bytes.fromhex(JSON_VECTORS[name]["hex"])
    message = decode_message(raw)
    headers = expected_headers(name)
    assert message.headers == headers
    assert list(message.headers) == list(headers)
    assert message.payload == JSON_VECTORS[name]["payload_utf8"].encode()
    assert encode_message(message.headers, message.payload) == raw


def test_all_header_types_keep_their_wire_types() -> None:
    message = decode_message(bytes.fromhex(JSON_VECTORS["all-header-types"]["hex"]))
    assert {k: type(v) for k, v in message.headers.items()} == {
        k: type(v) for k, v in ALL_HEADER_TYPES.items()
    }


@pytest.mark.parametrize("name", ALL_FRAMES)
def test_frame_whole_bytewise_and_followed_by_more(name: str) -> None:
    raw = ALL_FRAMES[name]
    whole = decode_message(raw)
    assert encode_message(whole.headers, whole.payload) == raw

    assert one_byte_at_a_time(raw) == [whole]
    assert one_byte_at_a_time(raw + raw) == [whole, whole]

    decoder = EventStreamDecoder()
    assert decoder.receive_data(bytearray(raw + raw[:5])) == [whole]
    assert decoder.buffered_bytes == 5
    assert decoder.receive_data(memoryview(raw[5:20])) == []
    assert decoder.buffered_bytes == 20
    assert decoder.receive_data(raw[20:] + raw[:13]) == [whole]
    assert decoder.buffered_bytes == 13
    with pytest.raises(FrameError, match="ended inside a message"):
        decoder.eof()


def test_hex_frames_are_the_last_two_envelopes_of_the_body() -> None:
    assert REQUEST_BODY.endswith(HEX_FRAMES["close-stream-frame"] + HEX_FRAMES["final-empty-frame"])


# -- the AWS SDK capture ------------------------------------------------------------------------


def test_request_body_envelopes_and_inner_messages() -> None:
    decoder = EventStreamDecoder()
    envelopes = decoder.receive_data(REQUEST_BODY)
    decoder.eof()
    assert len(envelopes) == 27
    assert decoder.buffered_bytes == 0

    data_types = []
    rebuilt = []
    for envelope in envelopes:
        assert list(envelope.headers) == [":date", ":chunk-signature"]
        assert type(envelope.headers[":date"]) is Timestamp
        signature = envelope.headers[":chunk-signature"]
        assert isinstance(signature, bytes)
        assert len(signature) == 32
        inner_bytes = b""
        if envelope.payload:
            inner = decode_message(envelope.payload)
            names = list(inner.headers)
            assert names[:4] == INNER_HEADER_ORDER[:4]
            assert names == [n for n in INNER_HEADER_ORDER if n in inner.headers]
            assert inner.header_str(":message-type") == "event"
            assert inner.header_str(":event-type") == "PayloadPart"
            assert inner.header_str(":content-type") == "application/octet-stream"
            data_types.append(inner.header_str("DataType"))
            inner_bytes = encode_message(inner.headers, inner.payload)
            assert inner_bytes == envelope.payload
            if inner.header_str("DataType") == "UTF8":
                assert inner.payload == b'{"type":"CloseStream"}'
        rebuilt.append(encode_message(envelope.headers, inner_bytes))
    assert data_types == ["BINARY"] * 25 + ["UTF8"]
    assert envelopes[-1].payload == b""
    assert b"".join(rebuilt) == REQUEST_BODY


@pytest.mark.parametrize("size", [1, 3, 11, 12, 13, 100, 2699, 4096, 65536])
def test_request_body_in_fixed_chunks(size: int) -> None:
    expected = EventStreamDecoder().receive_data(REQUEST_BODY)
    decoder = EventStreamDecoder()
    got = feed(decoder, REQUEST_BODY, list(range(size, len(REQUEST_BODY), size)))
    decoder.eof()
    assert got == expected


# -- round trips --------------------------------------------------------------------------------

header_values = st.one_of(
    st.booleans(),
    st.integers(-(2**7), 2**7 - 1).map(Byte),
    st.integers(-(2**15), 2**15 - 1).map(Short),
    st.integers(-(2**31), 2**31 - 1).map(Integer),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Long),
    st.integers(-(2**63), 2**63 - 1).map(Timestamp),
    st.binary(max_size=300),
    st.text(max_size=100),
    st.uuids(),
)
header_maps = st.dictionaries(st.text(min_size=1, max_size=63), header_values, max_size=12)
payloads = st.binary(max_size=2000)
messages = st.tuples(header_maps, payloads)


@given(messages, st.data())
def test_round_trip_any_chunking(message: tuple[dict[str, HeaderValue], bytes], data: Any) -> None:
    headers, payload = message
    raw = encode_message(headers, payload)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    decoder = EventStreamDecoder()
    (decoded,) = feed(decoder, raw, cuts)
    decoder.eof()
    assert decoded == Message(headers, payload)
    assert list(decoded.headers) == list(headers)
    assert {k: type(v) for k, v in decoded.headers.items()} == {
        k: wire_type(v) for k, v in headers.items()
    }
    assert decode_message(raw) == decoded
    assert encode_message(decoded.headers, decoded.payload) == raw


@given(st.lists(messages, max_size=8), st.data())
def test_many_messages_any_chunking(
    batch: list[tuple[dict[str, HeaderValue], bytes]], data: Any
) -> None:
    stream = b"".join(encode_message(h, p) for h, p in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = EventStreamDecoder()
    assert feed(decoder, stream, cuts) == [Message(h, p) for h, p in batch]
    assert decoder.buffered_bytes == 0
    decoder.eof()


def _botocore_view(value: HeaderValue) -> object:
    # botocore returns a uuid as its 16 raw bytes and a timestamp as a plain int.
    return value.bytes if isinstance(value, uuid.UUID) else value


@given(st.lists(messages, min_size=1, max_size=4))
def test_botocore_agrees_on_valid_messages(
    batch: list[tuple[dict[str, HeaderValue], bytes]],
) -> None:
    stream = b"".join(encode_message(h, p) for h, p in batch)
    oracle = EventStreamBuffer()
    oracle.add_data(stream)
    theirs = [(dict(m.headers), m.payload) for m in oracle]
    ours = [
        ({k: _botocore_view(v) for k, v in m.headers.items()}, m.payload)
        for m in EventStreamDecoder().receive_data(stream)
    ]
    assert ours == theirs
    assert len(ours) == len(batch)


# -- corruption ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FRAMES)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_corruption_is_detected(name: str, mask: int) -> None:
    raw = ALL_FRAMES[name]
    for i in range(len(raw)):
        corrupt = bytearray(raw)
        corrupt[i] ^= mask
        with pytest.raises(FrameError):
            decode_message(corrupt)
        assert_rejected(bytes(corrupt))


def test_every_byte_of_a_signed_envelope_is_protected() -> None:
    first = REQUEST_BODY[: struct.unpack_from("!I", REQUEST_BODY)[0]]
    for i in range(len(first)):
        corrupt = bytearray(first)
        corrupt[i] ^= 0x20
        assert_rejected(bytes(corrupt) + HEX_FRAMES["final-empty-frame"])


def test_corruption_detected_when_fed_one_byte_at_a_time() -> None:
    raw = ALL_FRAMES["all-header-types"]
    for i in range(len(raw)):
        corrupt = bytearray(raw)
        corrupt[i] ^= 0x04
        with pytest.raises(FrameError):
            one_byte_at_a_time(bytes(corrupt))


@given(messages, st.data())
def test_generated_corruption_is_detected(
    message: tuple[dict[str, HeaderValue], bytes], data: Any
) -> None:
    raw = bytearray(encode_message(*message))
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    assert_rejected(bytes(raw))


@given(st.binary(max_size=200), st.binary(max_size=20))
def test_any_header_block_is_rejected_cleanly_or_round_trips(block: bytes, payload: bytes) -> None:
    raw = frame(block, payload)
    try:
        message = decode_message(raw)
    except FrameError:
        assert_rejected(raw)
    else:
        assert encode_message(message.headers, message.payload) == raw


@given(header_maps, st.data())
def test_corrupt_header_block_with_valid_crcs_is_rejected_or_round_trips(
    headers: dict[str, HeaderValue], data: Any
) -> None:
    # Valid CRCs around a damaged header block reach the header parser itself.
    block = bytearray(encode_headers(headers))
    for _ in range(data.draw(st.integers(1, 3))):
        if block:
            block[data.draw(st.integers(0, len(block) - 1))] = data.draw(st.integers(0, 255))
    raw = frame(bytes(block), b"payload")
    try:
        message = decode_message(raw)
    except FrameError:
        assert_rejected(raw)
    else:
        assert encode_message(message.headers, message.payload) == raw


@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_frame_error(data: bytes) -> None:
    decoder = EventStreamDecoder()
    try:
        decoder.receive_data(data)
        decoder.eof()
    except FrameError:
        pass


# -- malformed frames with valid CRCs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        # botocore decodes this 12-byte frame as an empty message.
        (frame(b"", total=12)[:12], "total length 12 is below the minimum of 16"),
        (frame(b"", total=0)[:12], "total length 0 is below the minimum"),
        (frame(b"", total=16, headers_length=1), "headers length 1 exceeds total length 16"),
        (frame(b"\x01a\x00", total=16), "headers length 3 exceeds total length 16"),
        (frame(b"\x00"), "zero-length header name"),
        (frame(b"\x0aabc"), "header name of 10 bytes .* run past the end"),
        (frame(b"\x03abc"), "header name of 3 bytes .* run past the end"),
        (frame(b"\x01a\x0a"), "unknown value type 10; expected 0 to 9"),
        (frame(b"\x01a\xff"), "unknown value type 255"),
        (frame(b"\x02\xff\xfe\x00"), "header name b'\\\\xff\\\\xfe' is not valid UTF-8"),
        (frame(b"\x01a\x07\x00\x02\xc3\x28"), "'a' string value is not valid UTF-8"),
        (frame(b"\x01a\x00\x01a\x01"), "duplicate header 'a'"),
        (frame(b"\x01a\x06\x00"), "'a' of type 6 needs 2 more bytes, but only 1 are left"),
        (frame(b"\x01a\x07\x00\x05abc"), "'a' of type 7 needs 5 more bytes, but only 3 are left"),
        (frame(b"\x01a\x02"), "'a' of type 2 needs 1 more bytes, but only 0"),
        (frame(b"\x01a\x03\x00"), "'a' of type 3 needs 2 more bytes, but only 1"),
        (frame(b"\x01a\x04\x00\x00\x00"), "'a' of type 4 needs 4 more bytes, but only 3"),
        (frame(b"\x01a\x05" + bytes(7)), "'a' of type 5 needs 8 more bytes, but only 7"),
        (frame(b"\x01a\x08" + bytes(7)), "'a' of type 8 needs 8 more bytes, but only 7"),
        (frame(b"\x01a\x09" + bytes(15)), "'a' of type 9 needs 16 more bytes, but only 15"),
        # A valid header whose value would run into the payload is still cut at the block end.
        (frame(b"\x01a\x04\x00", b"\x00\x00"), "'a' of type 4 needs 4 more bytes, but only 1"),
        (
            frame(b"\x01a\x06\x80\x00" + bytes(0x8000)),
            "'a' value is 32768 bytes; at most 32767",
        ),
    ],
)
def test_malformed_frame_is_rejected(raw: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        decode_message(raw)
    decoder = EventStreamDecoder()
    with pytest.raises(FrameError, match=match):
        decoder.receive_data(raw)


def test_crc_errors_show_both_values() -> None:
    raw = bytearray(ALL_FRAMES["response-internal-stream-failure"])
    good_prelude_crc = raw[8:12].hex()
    raw[8] ^= 1
    with pytest.raises(FrameError, match=f"says 0x{raw[8:12].hex()}.* give 0x{good_prelude_crc}"):
        decode_message(raw)
    raw[8] ^= 1
    good_crc = raw[-4:].hex()
    raw[-1] ^= 1
    with pytest.raises(FrameError, match=f"message CRC mismatch: .*0x{raw[-4:].hex()}.*{good_crc}"):
        decode_message(raw)


def test_prelude_crc_is_checked_before_the_lengths() -> None:
    # A corrupt prelude claiming 4 GiB must fail on its CRC, not be waited for or reported as big.
    raw = bytearray(frame(b"")[:12])
    raw[0] = 0xFF
    with pytest.raises(FrameError, match="prelude CRC mismatch"):
        EventStreamDecoder().receive_data(raw)


def test_value_of_maximum_length_is_accepted() -> None:
    headers: dict[str, HeaderValue] = {"b": bytes(MAX_HEADER_VALUE_LENGTH), "s": "x" * 32767}
    raw = encode_message(headers)
    assert decode_message(raw).headers == headers


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "message is 0 bytes; a prelude alone is 12"),
        (ALL_FRAMES["final-empty-frame"][:11], "message is 11 bytes"),
        (ALL_FRAMES["final-empty-frame"][:12], "message is truncated: got 12 bytes, .* says 83"),
        (ALL_FRAMES["final-empty-frame"][:-1], "truncated: got 82 bytes"),
        (ALL_FRAMES["final-empty-frame"] + b"\x00", "has 1 trailing bytes: got 84 bytes"),
        (REQUEST_BODY, "trailing bytes"),
    ],
)
def test_decode_message_wants_exactly_one_message(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        decode_message(data)


# -- limits -------------------------------------------------------------------------------------


def test_oversized_payload_rejected_from_the_prelude() -> None:
    ok = encode_message({"a": 1}, bytes(100))
    assert EventStreamDecoder(max_payload_length=100).receive_data(ok) == [decode_message(ok)]
    too_big = encode_message({"a": 1}, bytes(101))
    decoder = EventStreamDecoder(max_payload_length=100)
    with pytest.raises(FrameError, match="payload length 101 exceeds the limit of 100"):
        decoder.receive_data(too_big[:12])
    assert decoder.buffered_bytes == 0


def test_oversized_headers_rejected_from_the_prelude() -> None:
    ok = encode_message({"a": "x" * 96})  # 1 + 1 + 1 + 2 + 96 = 101 bytes
    assert EventStreamDecoder(max_headers_length=101).receive_data(ok) == [decode_message(ok)]
    decoder = EventStreamDecoder(max_headers_length=100)
    assert decoder.receive_data(ok[:11]) == []
    with pytest.raises(FrameError, match="headers length 101 exceeds the limit of 100"):
        decoder.receive_data(ok[11:13])


@pytest.mark.parametrize(
    ("headers_length", "payload_length", "match"),
    [
        (MAX_HEADERS_LENGTH + 1, 0, f"headers length {MAX_HEADERS_LENGTH + 1} exceeds the limit"),
        (0, MAX_PAYLOAD_LENGTH + 1, f"payload length {MAX_PAYLOAD_LENGTH + 1} exceeds the limit"),
    ],
)
def test_default_limits(headers_length: int, payload_length: int, match: str) -> None:
    prelude = frame(b"", total=16 + headers_length + payload_length, headers_length=headers_length)
    with pytest.raises(FrameError, match=match):
        EventStreamDecoder().receive_data(prelude[:12])
    with pytest.raises(FrameError, match=match):
        decode_message(prelude[:12])


# -- decoder state ------------------------------------------------------------------------------


def test_decoder_is_poisoned_after_an_error() -> None:
    decoder = EventStreamDecoder()
    with pytest.raises(FrameError) as first:
        decoder.receive_data(frame(b"\x00"))
    with pytest.raises(FrameError, match="already broken: zero-length header name") as again:
        decoder.receive_data(ALL_FRAMES["final-empty-frame"])
    assert again.value.__cause__ is first.value
    with pytest.raises(FrameError, match="already broken"):
        decoder.eof()


def test_error_in_buffered_data_poisons_too() -> None:
    raw = bytearray(ALL_FRAMES["close-stream-frame"])
    raw[-1] ^= 1
    decoder = EventStreamDecoder()
    assert decoder.receive_data(raw[:50]) == []
    with pytest.raises(FrameError, match="message CRC mismatch"):
        decoder.receive_data(raw[50:])
    assert decoder.buffered_bytes == 0
    with pytest.raises(FrameError, match="already broken"):
        decoder.receive_data(b"")


def test_messages_before_a_corrupt_one_are_returned_and_the_next_call_raises() -> None:
    good = ALL_FRAMES["close-stream-frame"]
    bad = bytearray(good)
    bad[-1] ^= 1
    decoder = EventStreamDecoder()
    assert decoder.receive_data(good + bad + good) == [decode_message(good)]
    assert decoder.error is not None
    assert "message CRC mismatch" in decoder.error.message
    assert decoder.buffered_bytes == 0
    with pytest.raises(FrameError, match=r"^message CRC mismatch") as first:
        decoder.eof()
    assert first.value is decoder.error
    with pytest.raises(FrameError, match="already broken: message CRC mismatch"):
        decoder.receive_data(good)


def test_eof() -> None:
    decoder = EventStreamDecoder()
    decoder.eof()
    raw = ALL_FRAMES["final-empty-frame"]
    decoder.receive_data(raw[:5])
    with pytest.raises(FrameError, match="5 bytes of a 12-byte prelude"):
        decoder.eof()
    decoder.receive_data(raw[5:40])
    with pytest.raises(FrameError, match="40 bytes of a 83-byte message"):
        decoder.eof()
    assert decoder.receive_data(raw[40:]) == [decode_message(raw)]
    decoder.eof()


def test_only_the_incomplete_tail_is_buffered() -> None:
    raw = ALL_FRAMES["response-payload-part-connected"]
    decoder = EventStreamDecoder()
    assert decoder.receive_data(raw * 50 + raw[:30]) == [decode_message(raw)] * 50
    assert decoder.buffered_bytes == 30
    assert decoder.receive_data(raw[30:] + raw * 3 + raw[:7]) == [decode_message(raw)] * 4
    assert decoder.buffered_bytes == 7
    assert decoder.receive_data(b"") == []
    assert decoder.buffered_bytes == 7


def test_decoder_copies_what_it_keeps() -> None:
    raw = ALL_FRAMES["all-header-types"]
    chunk = bytearray(raw[:60])
    decoder = EventStreamDecoder()
    assert decoder.receive_data(chunk) == []
    chunk[:] = bytes(60)  # the caller reuses its buffer
    assert decoder.receive_data(raw[60:]) == [decode_message(raw)]


# -- Message ------------------------------------------------------------------------------------


def test_message_repr_truncates_long_payloads() -> None:
    long = Message({"a": "b"}, b"x" * 10_000)
    text = repr(long)
    assert "(10000 bytes)" in text
    assert len(text) < 200
    assert "{'a': 'b'}" in text
    assert repr(Message({}, b"short")) == "Message(headers={}, payload=b'short')"


def test_message_is_a_frozen_value() -> None:
    message = Message({"a": 1}, b"p")
    assert message == Message({"a": Integer(1)}, b"p")
    assert message != Message({"a": 1}, b"q")
    assert Message() == Message({}, b"")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.payload = b"x"  # type: ignore[misc]


def test_a_repeated_header_block_is_parsed_once_and_each_message_gets_its_own_dict() -> None:
    """The parse of a block is kept by its bytes; every message still gets a fresh dict."""
    frame = encode_message({":event-type": "PayloadPart", "n": Integer(1)}, b"x")
    first = decode_message(frame)
    first.headers["n"] = Integer(2)  # the caller's to change
    second = decode_message(frame)
    assert second.headers == {":event-type": "PayloadPart", "n": Integer(1)}
    assert second.headers is not first.headers
    block = frame[12 : 12 + struct.unpack_from(">I", frame, 4)[0]]
    assert eventstream._PARSED_HEADERS[block] == second.headers


def test_the_parsed_header_cache_is_bounded() -> None:
    for i in range(3 * eventstream._CACHED_BLOCKS):
        decode_message(encode_message({"n": Long(i)}, b""))
    assert 0 < len(eventstream._PARSED_HEADERS) <= eventstream._CACHED_BLOCKS
    long_block = {"v": "x" * eventstream._CACHED_BLOCK_MAX}
    assert decode_message(encode_message(long_block, b"")).headers == long_block
    assert all(len(block) <= eventstream._CACHED_BLOCK_MAX for block in eventstream._PARSED_HEADERS)


def test_header_str() -> None:
    message = Message({"s": "v", "i": 3, "b": b"v"})
    assert message.header_str("s") == "v"
    assert message.header_str("i") is None
    assert message.header_str("b") is None
    assert message.header_str("missing") is None


# -- encoder ------------------------------------------------------------------------------------


def test_encode_header_examples() -> None:
    assert encode_header("a", True) == b"\x01a\x00"
    assert encode_header("a", False) == b"\x01a\x01"
    assert encode_header("a", 1) == b"\x01a\x04\x00\x00\x00\x01"
    assert encode_header("a", Byte(-1)) == b"\x01a\x02\xff"
    # Other bytes-like values are accepted at runtime, though HeaderValue names only bytes.
    assert encode_header("a", bytearray(b"xy")) == b"\x01a\x06\x00\x02xy"  # type: ignore[arg-type]
    assert encode_header("a", memoryview(b"xy")) == b"\x01a\x06\x00\x02xy"  # type: ignore[arg-type]
    assert encode_header("é", "") == b"\x02\xc3\xa9\x07\x00\x00"
    assert encode_header("n" * 255, 0)[:2] == b"\xffn"


def test_encode_message_raw_reuses_a_header_block() -> None:
    headers: dict[str, HeaderValue] = {":message-type": "event", "n": Long(5)}
    block = encode_headers(headers)
    assert encode_message_raw(block, b"abc") == encode_message(headers, b"abc")
    # The "empty_message" vector of the aws-c-event-stream test suite.
    assert encode_message({}) == bytes.fromhex("000000100000000005c248eb7d98c8ff") == frame(b"")


@pytest.mark.parametrize("name", ["", "n" * 256, "é" * 128])
def test_encoder_rejects_bad_header_names(name: str) -> None:
    with pytest.raises(ValidationError, match="header name must be 1 to 255 bytes"):
        encode_header(name, True)


def test_encoder_rejects_names_and_values_that_are_not_utf8() -> None:
    with pytest.raises(ValidationError, match=r"header name .* is not valid UTF-8"):
        encode_header("\udc80", True)
    with pytest.raises(ValidationError, match="header string value is not valid UTF-8"):
        encode_header("v", "a\ud800")


@pytest.mark.parametrize(
    "value",
    [
        Byte(128),
        Byte(-129),
        Short(2**15),
        Integer(-(2**31) - 1),
        2**31,
        Long(2**63),
        Timestamp(-(2**63) - 1),
    ],
)
def test_encoder_rejects_int_overflow(value: int) -> None:
    with pytest.raises(ValidationError, match=f"{int(value)} does not fit a"):
        encode_header("n", value)


@pytest.mark.parametrize("value", [bytes(MAX_HEADER_VALUE_LENGTH + 1), "é" * 16384])
def test_encoder_rejects_long_values(value: HeaderValue) -> None:
    with pytest.raises(ValidationError, match="header value is 32768 bytes; at most 32767"):
        encode_header("v", value)


@pytest.mark.parametrize("value", [1.5, None, [1], {"a": 1}])
def test_encoder_rejects_unsupported_types(value: Any) -> None:
    with pytest.raises(TypeError, match="unsupported header value type"):
        encode_header("v", value)


def test_encoder_rejects_oversized_headers_and_payload() -> None:
    headers: dict[str, HeaderValue] = {f"h{i}": bytes(30000) for i in range(5)}
    with pytest.raises(ValidationError, match="headers are 150030 bytes; at most 131072"):
        encode_headers(headers)
    with pytest.raises(ValidationError, match=f"payload is {MAX_PAYLOAD_LENGTH + 1} bytes"):
        encode_message({}, bytes(MAX_PAYLOAD_LENGTH + 1))
    assert isinstance(ValidationError("x"), ValueError)
