"""StreamProtocol: PARTIAL payload parts (SageMaker wire spec, section 5); when it can send."""

from __future__ import annotations

import itertools

import pytest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.core.audio import MAX_AUDIO_EVENT_BYTES
from flux_sagemaker.core.events import Connected, Update
from flux_sagemaker.core.eventstream import MAX_PAYLOAD_LENGTH, decode_message, encode_message
from flux_sagemaker.core.protocol import StreamFailed, StreamProtocol
from flux_sagemaker.core.signing import EventSigner
from flux_sagemaker.errors import FrameError, LocalProtocolError

CONNECTED = b'{"type":"Connected","request_id":"r1","sequence_id":0}'
UPDATE = '{"type":"TurnInfo","event":"Update","turn_index":0,"transcript":"h\u00e9llo"}'.encode()


def protocol() -> StreamProtocol:
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)
    signer = EventSigner(
        credentials=credentials, region="us-east-1", seed_signature="0" * 64, clock=lambda: 1.0
    )
    return StreamProtocol(signer)


def part(payload: bytes, completion_state: str | None = None) -> bytes:
    headers = {":message-type": "event", ":event-type": "PayloadPart", "DataType": "UTF8"}
    if completion_state is not None:
        headers["CompletionState"] = completion_state
    return encode_message(headers, payload)


@given(st.lists(st.integers(0, len(UPDATE)), max_size=4), st.booleans())
def test_partial_parts_are_joined_until_complete(cuts: list[int], marked: bool) -> None:
    """Flux's JSON may come in PARTIAL parts, cut anywhere (inside a UTF-8 character too); the
    last part is COMPLETE or carries no CompletionState."""
    bounds = [0, *sorted(cuts), len(UPDATE)]
    pieces = [UPDATE[a:b] for a, b in itertools.pairwise(bounds)]
    wire = b"".join(part(p, "PARTIAL") for p in pieces[:-1])
    wire += part(pieces[-1], "COMPLETE" if marked else None)
    proto = protocol()
    events = proto.receive_data(part(CONNECTED) + wire)
    assert events[0] == Connected(request_id="r1", sequence_id=0)
    assert events[1:] == [Update(turn_index=0, transcript="h\u00e9llo")]


def test_a_response_ending_inside_partial_parts_fails() -> None:
    proto = protocol()
    assert proto.receive_data(part(CONNECTED[:10], "PARTIAL")) == []
    (failed,) = proto.receive_eof()
    assert isinstance(failed, StreamFailed)
    assert isinstance(failed.error, FrameError)


def test_the_largest_audio_event_fits_the_event_stream_limit() -> None:
    signed = protocol().send_audio(bytes(MAX_AUDIO_EVENT_BYTES))
    assert len(decode_message(signed).payload) <= MAX_PAYLOAD_LENGTH


def test_can_send_until_the_input_ends_or_the_stream_fails() -> None:
    """The client checks ``can_send`` before signing: a failure parsed here can reach it before
    the reader hands the failure over, and signing then would raise."""
    ended = protocol()
    assert ended.can_send
    ended.end_input()
    assert not ended.can_send
    failed = protocol()
    failed.receive_data(part(CONNECTED[:10], "PARTIAL"))
    failed.receive_eof()
    assert not failed.can_send
    with pytest.raises(LocalProtocolError, match="the stream has failed"):
        failed.send_audio(b"\x00\x00")


def _corrupt(wire: bytes) -> bytes:
    bad = bytearray(wire)
    bad[-1] ^= 1  # the message CRC
    return bytes(bad)


@given(st.lists(st.integers(0, 3 * len(part(UPDATE))), max_size=4))
def test_messages_before_a_corrupt_frame_are_delivered_however_the_bytes_are_split(
    cuts: list[int],
) -> None:
    """A corrupt frame read together with the intact messages before it took them down too:
    an EndOfTurn in the same read as a bad frame was lost, or not, depending on where the
    transport split the bytes. The failure now comes after every message that preceded it."""
    wire = part(CONNECTED) + part(UPDATE) + _corrupt(part(UPDATE)) + part(UPDATE)
    bounds = [0, *sorted(min(c, len(wire)) for c in cuts), len(wire)]
    proto = protocol()
    events = [e for a, b in itertools.pairwise(bounds) for e in proto.receive_data(wire[a:b])]
    assert events[:2] == [
        Connected(request_id="r1", sequence_id=0),
        Update(turn_index=0, transcript="h\u00e9llo"),
    ]
    (failed,) = events[2:]
    assert isinstance(failed, StreamFailed)
    assert isinstance(failed.error, FrameError)
    assert "message CRC mismatch" in failed.error.message
    assert proto.receive_eof() == []
