"""The mock endpoint on the wire, below FluxClient: what it accepts, refuses, and how it fails."""

from __future__ import annotations

import anyio
import h2.config
import h2.connection
import h2.events
import pytest

from flux_sagemaker.testing import MockFluxEndpoint

from .helpers import TEST_TIMEOUT

pytestmark = pytest.mark.anyio


async def test_a_header_that_is_not_utf8_fails_only_its_request() -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint() as ep:
            h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            h2conn.initiate_connection()
            request = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x")]
            h2conn.send_headers(1, [*request, (b":path", b"/"), (b"x-junk", b"\xff\xfe")])
            status = None
            async with await anyio.connect_tcp("127.0.0.1", ep.port) as sock:
                await sock.send(h2conn.data_to_send())
                while status is None:
                    for event in h2conn.receive_data(await sock.receive()):
                        if isinstance(event, h2.events.ResponseReceived):
                            status = dict(event.headers or ())[b":status"]
    assert status == b"403"
    assert ep.streams[0].status == 403
