"""Our DATA-frame fast path against h2's own framing, with bytes: same wire bytes, same windows."""

from __future__ import annotations

from typing import Any, cast

import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.h2core import H2ConnectionBase

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/")]


def opened(*, client_side: bool = True) -> H2ConnectionBase:
    """A connection past its preface with stream 1 open and some frames still queued in h2."""
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side))
    h2c.initiate_connection()
    h2c.send_headers(1, REQUEST)
    return H2ConnectionBase(cast(anyio.abc.ByteStream, None), h2c, None)


def peer_of(conn: H2ConnectionBase) -> h2.connection.H2Connection:
    """A server h2 connection that has read what ``conn`` queued (its preface, stream 1)."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(conn._h2.data_to_send())
    return server


def widen_connection_window(conn: H2ConnectionBase) -> None:
    """The peer opens the connection window past the stream's (a WINDOW_UPDATE on stream 0)."""
    server = peer_of(conn)
    server.increment_flow_control_window(100_000)
    conn._h2.receive_data(server.data_to_send())


def windows(conn: H2ConnectionBase) -> tuple[int, int]:
    h2c = conn._h2
    return h2c.outbound_flow_control_window, h2c.local_flow_control_window(1)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=20_000), min_size=1, max_size=8),
    wide=st.booleans(),
)
def test_fast_data_frames_are_the_bytes_h2_writes(sizes: list[int], wide: bool) -> None:
    """Whatever fits one frame and both windows is framed as h2 would; the rest is left alone."""
    ours, reference = opened(), opened()
    if wide:  # then the stream's window is the smaller one
        widen_connection_window(ours)
        widen_connection_window(reference)
    for i, size in enumerate(sizes):
        data = bytes([i % 256]) * size
        fits = 0 < size <= min(16_384, reference._h2.local_flow_control_window(1))
        before = windows(ours), bytes(ours._outbox)
        assert ours._frame_data_fast(1, data) is fits
        if fits:
            reference._h2.send_data(1, data)
        else:  # empty, past the window or the frame size: h2 splits or waits
            assert (windows(ours), bytes(ours._outbox)) == before
    wire = bytes(ours._outbox) + ours._h2.data_to_send()
    assert wire == reference._h2.data_to_send()  # the preface and HEADERS first, in order
    assert windows(ours) == windows(reference)


def test_frames_h2_queues_later_follow_ours() -> None:
    ours, reference = opened(), opened()
    assert ours._frame_data_fast(1, b"audio")
    reference._h2.send_data(1, b"audio")
    for conn in (ours, reference):
        conn._h2.ping(b"12345678")
    assert bytes(ours._outbox) + ours._h2.data_to_send() == reference._h2.data_to_send()


def _half_closed_local(conn: H2ConnectionBase) -> None:
    conn._h2.end_stream(1)


def _reset(conn: H2ConnectionBase) -> None:
    conn._h2.reset_stream(1)


def _connection_closed(conn: H2ConnectionBase) -> None:
    conn._h2.close_connection()


def _unknown_stream(conn: H2ConnectionBase) -> None:
    conn._h2.streams.pop(1)


@pytest.mark.parametrize(
    "break_it", [_half_closed_local, _reset, _connection_closed, _unknown_stream]
)
def test_states_where_h2_would_refuse_or_change_state_are_left_to_h2(break_it: Any) -> None:
    conn = opened()
    break_it(conn)
    before = windows(conn) if 1 in conn._h2.streams else None
    queued = conn._h2.data_to_send()
    assert not conn._frame_data_fast(1, b"audio")
    assert conn._outbox == b""
    assert conn._h2.data_to_send() == b""  # nothing queued, nothing taken
    assert queued  # (the state change itself was queued before)
    if before is not None:
        assert windows(conn) == before


def test_half_closed_remote_still_takes_data() -> None:
    # The server ended its response early; the request body may still go (h2 allows it too).
    conn = opened()
    server = peer_of(conn)
    server.send_headers(1, [(":status", "200")], end_stream=True)
    events = conn._h2.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert conn._frame_data_fast(1, b"audio")
    received = server.receive_data(bytes(conn._outbox) + conn._h2.data_to_send())
    assert [e.data for e in received if isinstance(e, h2.events.DataReceived)] == [b"audio"]


def test_a_peer_that_raised_its_frame_size_gets_larger_frames() -> None:
    conn = opened()
    server = peer_of(conn)
    server.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 32_768})
    conn._h2.receive_data(server.data_to_send())  # the SETTINGS
    server.receive_data(conn._h2.data_to_send())  # our ACK: now the server takes larger frames
    assert conn._h2.max_outbound_frame_size == 32_768
    assert conn._frame_data_fast(1, b"x" * 20_000)
    assert not conn._frame_data_fast(1, b"x" * 40_000)  # still past the window
    received = server.receive_data(bytes(conn._outbox))
    assert [len(e.data) for e in received if isinstance(e, h2.events.DataReceived)] == [20_000]


def test_the_stream_window_bounds_the_fast_path() -> None:
    conn = opened()
    widen_connection_window(conn)  # 165,535 bytes on the connection, 65,535 on the stream
    for _ in range(3):
        assert conn._frame_data_fast(1, b"x" * 16_384)
    assert conn._h2.local_flow_control_window(1) == 16_383
    assert not conn._frame_data_fast(1, b"x" * 16_384)
    assert conn._frame_data_fast(1, b"x" * 16_383)


def test_the_connection_window_bounds_the_fast_path() -> None:
    conn = opened()
    conn._h2.send_headers(3, REQUEST)
    for _ in range(3):  # stream 3 takes 49,152 of the connection's 65,535
        assert conn._frame_data_fast(3, b"x" * 16_384)
    assert conn._h2.streams[1].outbound_flow_control_window == 65_535
    assert not conn._frame_data_fast(1, b"x" * 16_384)
    assert conn._frame_data_fast(1, b"x" * 16_383)
