"""Our DATA-frame fast path against h2's own framing, with bytes: same wire bytes, same windows."""

from __future__ import annotations

from typing import Any, cast

import anyio.abc
import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flux_sagemaker.h2core import H2ConnectionBase
from flux_sagemaker.h2stream import _frame_data_fast

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/")]


def opened(*, client_side: bool = True) -> H2ConnectionBase:
    """A connection past its preface with stream 1 open and some frames still queued in h2."""
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side))
    h2c.initiate_connection()
    h2c.send_headers(1, REQUEST)
    return H2ConnectionBase(cast(anyio.abc.ByteStream, None), h2c, None)


def windows(conn: H2ConnectionBase) -> tuple[int, int]:
    h2c = conn._h2
    return h2c.outbound_flow_control_window, h2c.local_flow_control_window(1)


@given(sizes=st.lists(st.integers(min_value=1, max_value=16_384), min_size=1, max_size=6))
def test_fast_data_frames_are_the_bytes_h2_writes(sizes: list[int]) -> None:
    assume(sum(sizes) <= 65_535)  # the caller keeps within the window, as h2 requires
    ours, reference = opened(), opened()
    for i, size in enumerate(sizes):
        data = bytes([i % 256]) * size
        assert _frame_data_fast(ours, 1, data)
        reference._h2.send_data(1, data)
    wire = bytes(ours._outbox) + ours._h2.data_to_send()
    assert wire == reference._h2.data_to_send()  # the preface and HEADERS first, in order
    assert windows(ours) == windows(reference)


def test_frames_h2_queues_later_follow_ours() -> None:
    ours, reference = opened(), opened()
    assert _frame_data_fast(ours, 1, b"audio")
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
    assert not _frame_data_fast(conn, 1, b"audio")
    assert conn._outbox == b""
    assert conn._h2.data_to_send() == b""  # nothing queued, nothing taken
    assert queued  # (the state change itself was queued before)
    if before is not None:
        assert windows(conn) == before


def test_half_closed_remote_still_takes_data() -> None:
    # The server ended its response early; the request body may still go (h2 allows it too).
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    conn = opened()
    server.receive_data(conn._h2.data_to_send())
    server.send_headers(1, [(":status", "200")], end_stream=True)
    events = conn._h2.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert _frame_data_fast(conn, 1, b"audio")
    received = server.receive_data(bytes(conn._outbox) + conn._h2.data_to_send())
    assert [e.data for e in received if isinstance(e, h2.events.DataReceived)] == [b"audio"]
