"""InboundFrames against h2 alone, with bytes: same events, same errors, same windows."""

from __future__ import annotations

import itertools
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame as hf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_sagemaker.h2inbound import InboundFrames, declares_length

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/")]
STREAMS = (1, 3)


class Receiver:
    """One receiving h2 connection, fed either by h2 alone or through InboundFrames."""

    def __init__(self, *, client_side: bool, window: int, fast: bool) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window},
        )
        self.h2.initiate_connection()
        if client_side:
            for sid in STREAMS:
                self.h2.send_headers(sid, REQUEST)
        self.preface = self.h2.data_to_send()
        self.inbound = InboundFrames(self.h2) if fast else None

    def feed(self, chunk: bytes) -> list[Any]:
        """The chunk's events (fast DATA shown as h2 would show it), after acknowledging them."""
        if self.inbound is None:
            items: list[Any] = self.h2.receive_data(chunk)
        else:
            items = self.inbound.receive(chunk)
        shown = []
        for item in items:
            if isinstance(item, tuple):
                sid, data = item
                shown.append(("data", sid, data, len(data)))
                self.h2.acknowledge_received_data(len(data), sid)
            elif isinstance(item, h2.events.DataReceived):
                fcl = item.flow_controlled_length or 0
                shown.append(("data", item.stream_id, item.data, fcl))
                self.h2.acknowledge_received_data(fcl, item.stream_id)
            else:
                shown.append(repr(item))
                # The owner's part (as H2ConnectionBase does): streams without content-length.
                received = (h2.events.RequestReceived, h2.events.ResponseReceived)
                marked = self.inbound is not None and isinstance(item, received)
                if marked and not declares_length(item.headers):
                    self.inbound.fast_streams.add(item.stream_id)
        return shown

    def windows(self) -> list[object]:
        out: list[object] = [self.h2.inbound_flow_control_window]
        for sid in STREAMS:
            try:
                out.append(self.h2.remote_flow_control_window(sid))
            except h2.exceptions.StreamClosedError:
                out.append("closed")
        return out


def sender_for(receiver: Receiver, *, client_side: bool) -> h2.connection.H2Connection:
    """The peer, past the handshake, with streams 1 and 3 open both ways."""
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=not client_side, header_encoding="utf-8")
    )
    peer.initiate_connection()
    if client_side:
        peer.receive_data(receiver.preface)
        for sid in STREAMS:
            peer.send_headers(sid, [(":status", "200")])
    else:
        peer.receive_data(receiver.h2.data_to_send())
        for sid in STREAMS:
            peer.send_headers(sid, REQUEST)
    return peer


def frame_bytes(peer: h2.connection.H2Connection, spec: tuple[Any, ...]) -> bytes:
    """Raw frames for one spec, valid or not: the receivers must agree either way."""
    kind = spec[0]
    if kind == "data":
        _, sid, size, end, pad = spec
        frame = hf.DataFrame(sid, data=bytes(range(256)) * 2, flags=["END_STREAM"] if end else [])
        frame.data = frame.data[:size]
        if pad is not None:
            frame.flags.add("PADDED")
            frame.pad_length = pad
        return bytes(frame.serialize())
    if kind == "window_update":
        return bytes(hf.WindowUpdateFrame(spec[1], window_increment=spec[2]).serialize())
    if kind == "ping":
        return bytes(hf.PingFrame(0, opaque_data=b"12345678").serialize())
    if kind == "rst":
        return bytes(hf.RstStreamFrame(spec[1], error_code=8).serialize())
    if kind == "trailers":
        # A header block cut into HEADERS and `parts` CONTINUATIONs, maybe a DATA inside it.
        _, sid, parts, data_after = spec
        block = peer.encoder.encode([("x-trailer", "yes"), ("x-more", "z" * 20)])
        pieces = [block[: 1 + i * 4] for i in range(parts)] + [block]
        frames = []
        for i, (start, stop) in enumerate(itertools.pairwise([0, *[len(p) for p in pieces]])):
            last = i == parts
            flags = ["END_HEADERS"] if last else []
            if i == 0:
                frame: hf.Frame = hf.HeadersFrame(sid, flags=[*flags, "END_STREAM"])
            else:
                frame = hf.ContinuationFrame(sid, flags=flags)
            frame.data = block[start:stop]
            frames.append(bytes(frame.serialize()))
            if i == data_after and not last:
                frames.append(bytes(hf.DataFrame(sid, data=b"x").serialize()))
        return b"".join(frames)
    if kind == "goaway":
        return bytes(hf.GoAwayFrame(0, last_stream_id=spec[1]).serialize())
    assert kind == "oversize"
    # Its body looks like frames: cut after the header, it must not be read as frames.
    body = bytes(hf.DataFrame(1, data=b"x").serialize()) * 2_000
    return len(body).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + body


FRAMES = st.one_of(
    st.tuples(
        st.just("data"),
        st.sampled_from([1, 3, 5, 2]),
        st.integers(0, 400),
        st.booleans(),
        st.none() | st.integers(0, 20),
    ),
    st.tuples(
        st.just("data"), st.sampled_from(STREAMS), st.integers(1, 400), st.just(False), st.none()
    ),
    st.tuples(st.just("window_update"), st.sampled_from([0, 1]), st.integers(1, 1000)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("rst"), st.sampled_from(STREAMS)),
    st.tuples(st.just("trailers"), st.sampled_from(STREAMS), st.integers(0, 2), st.integers(-1, 1)),
    st.tuples(st.just("goaway"), st.sampled_from([1, 3])),
    st.tuples(st.just("oversize")),
)


def receivers(
    *, client_side: bool, window: int
) -> tuple[Receiver, Receiver, h2.connection.H2Connection, bytes]:
    """h2 alone, InboundFrames, their peer, and the peer's opening bytes for both of them."""
    reference = Receiver(client_side=client_side, window=window, fast=False)
    ours = Receiver(client_side=client_side, window=window, fast=True)
    peer = sender_for(reference, client_side=client_side)
    opening = peer.data_to_send()
    if not client_side:  # a server's first bytes are the client's preface
        opening = reference.preface + opening
    return reference, ours, peer, opening


@settings(max_examples=500)  # about a second: cheap, and the rare interleavings need it
@given(
    specs=st.lists(FRAMES, max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
    window=st.sampled_from([300, 65_535]),
    client_side=st.booleans(),
)
def test_inbound_frames_match_h2_alone(
    specs: list[tuple[Any, ...]], cuts: list[int], window: int, client_side: bool
) -> None:
    """Any frames, cut anywhere: the same events and errors per chunk, and the same windows."""
    reference, ours, peer, opening = receivers(client_side=client_side, window=window)
    wire = opening + b"".join(frame_bytes(peer, spec) for spec in specs)
    bounds = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    for start, end in itertools.pairwise(bounds):
        chunk = wire[start:end]
        outcomes = []
        for receiver in (reference, ours):
            try:
                outcomes.append(receiver.feed(chunk))
            except h2.exceptions.ProtocolError as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[1] == outcomes[0]
        assert ours.h2.data_to_send() == reference.h2.data_to_send()
        if isinstance(outcomes[0], str):
            return
        assert ours.windows() == reference.windows()


def opened_pair() -> tuple[Receiver, h2.connection.H2Connection]:
    ours = Receiver(client_side=True, window=65_535, fast=True)
    peer = sender_for(ours, client_side=True)
    ours.feed(peer.data_to_send())
    return ours, peer


def test_data_on_a_fast_stream_skips_h2() -> None:
    """The common frame comes back as (stream, payload), not as h2's DataReceived."""
    ours, peer = opened_pair()
    assert ours.inbound is not None
    assert ours.inbound.fast_streams == {1, 3}
    peer.send_data(1, b"hello")
    peer.send_data(3, b"world")
    assert ours.inbound.receive(peer.data_to_send()) == [(1, b"hello"), (3, b"world")]
    assert ours.h2.inbound_flow_control_window == 65_535 - 10  # both charged to the connection


def test_data_on_other_streams_goes_through_h2() -> None:
    """A stream the owner did not mark (content-length, say) keeps h2's checks."""
    ours, peer = opened_pair()
    assert ours.inbound is not None
    ours.inbound.fast_streams.discard(3)
    peer.send_data(3, b"world")
    (event,) = ours.inbound.receive(peer.data_to_send())
    assert isinstance(event, h2.events.DataReceived)
    assert event.data == b"world"


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    ours, peer = opened_pair()
    assert ours.inbound is not None
    peer.send_data(1, b"abcdef")
    wire = peer.data_to_send()
    for i, byte in enumerate(wire[:-1]):
        assert ours.inbound.receive(bytes([byte])) == []
        assert ours.inbound.buffered_bytes == i + 1
    assert ours.inbound.receive(wire[-1:]) == [(1, b"abcdef")]
    assert ours.inbound.buffered_bytes == 0


def test_an_overlong_frame_and_what_follows_go_to_h2() -> None:
    """h2 buffers an overlong frame and rejects it when complete; its body is not frames."""
    ours, _ = opened_pair()
    assert ours.inbound is not None
    body = bytes(hf.DataFrame(1, data=b"x").serialize()) * 2_000
    header = len(body).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    assert ours.inbound.receive(header + body[:5]) == []
    assert ours.inbound.receive(body[5:-1]) == []
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        ours.inbound.receive(body[-1:])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(":status", "200")], False),
        ([(":status", "200"), ("content-length", "5")], True),
        ([(b":status", b"200"), (b"Content-Length", b"5")], True),
        (None, False),
    ],
)
def test_declares_length(headers: object, expected: bool) -> None:
    assert declares_length(headers) is expected


@pytest.mark.parametrize(
    "specs",
    [
        pytest.param([("trailers", 1, 2, 1)], id="DATA-after-a-CONTINUATION-without-END_HEADERS"),
        pytest.param([("goaway", 3), ("data", 1, 5, False, None)], id="DATA-after-GOAWAY"),
    ],
)
def test_data_that_h2_refuses_is_refused(specs: list[tuple[Any, ...]]) -> None:
    """DATA inside a header block, or after GOAWAY (h2 alone is CLOSED), is h2's to refuse."""
    reference, ours, peer, opening = receivers(client_side=True, window=65_535)
    reference.feed(opening)
    ours.feed(opening)
    wire = b"".join(frame_bytes(peer, spec) for spec in specs)
    for receiver in (reference, ours):
        with pytest.raises(h2.exceptions.ProtocolError):
            receiver.feed(wire)
