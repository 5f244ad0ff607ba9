"""Many sessions at once: one shared ConnectionPool multiplexes them on one connection."""

from __future__ import annotations

import anyio
import pytest

from flux_sagemaker import ConnectionPool, EndOfTurn, FluxEvent, Timeouts

from .helpers import SAMPLE, TEST_TIMEOUT, EndpointFactory, client_for, ms, of_type, run_session

pytestmark = pytest.mark.anyio

FIRST_TURN_DONE = SAMPLE.pcm[: ms(3100)]
"""The first turn and the silence that ends it (EndOfTurn at about 2.6 s)."""
#: 100 sessions hand over their audio at once and close: the in-process mock then works
#: through 310 s of audio, which under coverage on two cores takes longer than the suite's
#: usual 3 s close budget. The shared connect waits, on the same loop, for all 100 sessions
#: to build their credentials and sign: on a slower core that took over 3 s under coverage.
#: Neither is what these tests are about.
MANY_SESSIONS = Timeouts(connect=10.0, connected=10.0, close=30.0, write=10.0, ping_interval=None)


async def _sessions(
    endpoint: EndpointFactory, count: int, *, pools: str
) -> tuple[int, dict[int, list[FluxEvent]]]:
    """Run ``count`` sessions at once; ``pools`` is "shared", "own" or "default"."""
    results: dict[int, list[FluxEvent]] = {}
    async with endpoint(script_scope="stream") as ep:

        async def one(i: int, pool: ConnectionPool | None) -> None:
            async with client_for(ep, pool=pool, timeouts=MANY_SESSIONS) as flux:
                # Each session sends its own slice of audio: sessions must not mix streams.
                results[i] = await run_session(flux, FIRST_TURN_DONE, ms(80) + 2 * i)

        async def with_own_pool(i: int) -> None:
            async with ConnectionPool() as pool:
                await one(i, pool)

        async with ConnectionPool() as shared, anyio.create_task_group() as tg:
            for i in range(count):
                if pools == "own":
                    tg.start_soon(with_own_pool, i)
                else:
                    tg.start_soon(one, i, shared if pools == "shared" else None)
        assert len(ep.streams) == count
        for stream in ep.streams:
            assert bytes(stream.audio) == FIRST_TURN_DONE
            assert stream.input_ended
        return ep.connections_accepted, results


async def test_100_clients_share_one_connection(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT * 2):
        connections, results = await _sessions(endpoint, 100, pools="shared")
    assert connections == 1
    assert len(results) == 100
    for events in results.values():
        ends = of_type(events, EndOfTurn)
        assert [(e.turn_index, e.transcript) for e in ends] == [(0, SAMPLE.turns[0])]


async def test_clients_with_their_own_pools_use_their_own_connections(
    endpoint: EndpointFactory,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        connections, results = await _sessions(endpoint, 5, pools="own")
    assert connections == 5
    for events in results.values():
        assert [e.transcript for e in of_type(events, EndOfTurn)] == [SAMPLE.turns[0]]


async def test_clients_without_a_pool_share_the_event_loops_pool(
    endpoint: EndpointFactory,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        connections, results = await _sessions(endpoint, 10, pools="default")
    assert connections == 1
    for events in results.values():
        assert [e.transcript for e in of_type(events, EndOfTurn)] == [SAMPLE.turns[0]]
