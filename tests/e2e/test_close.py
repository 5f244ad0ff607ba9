"""close(): CloseStream, drain, the final EndOfTurn (real or synthetic), end of input."""

from __future__ import annotations

import contextlib
import functools

import anyio
import attrs
import pytest

from flux_sagemaker import (
    BundleCapabilities,
    EndOfTurn,
    FluxClient,
    FluxEvent,
    Reconnected,
    StreamReset,
    TimeoutError,
    TurnInfo,
    Update,
    UsageError,
)
from flux_sagemaker.testing import FLUX_MULTI_20260417, NEWEST, Fault, FaultKind
from flux_sagemaker.testing.server import RecordedStream

from .helpers import (
    FAST_TIMEOUTS,
    QUICK_RETRY,
    SAMPLE,
    TEST_TIMEOUT,
    EndpointFactory,
    client_for,
    collect,
    hold_the_second_request,
    ms,
    next_of,
    of_type,
    run_session,
    send_audio,
)

pytestmark = pytest.mark.anyio

MID_SECOND_TURN = SAMPLE.pcm[: ms(4000)]
"""The sample cut in the middle of "Tomorrow at seven, please." (spoken 3.2-4.7 s)."""


def _assert_closed_in_order(ep_stream_inputs: list[str], texts: list[str]) -> None:
    assert texts == ['{"type":"CloseStream"}']
    # Audio, then CloseStream, then the final empty signed envelope; nothing after it.
    assert ep_stream_inputs[-2:] == ["UTF8", "END"]
    assert set(ep_stream_inputs[:-2]) == {"BINARY"}


async def test_close_mid_turn_newest_gives_synthetic_end_of_turn(
    endpoint: EndpointFactory,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(bundle=NEWEST) as ep, client_for(ep) as flux:
            events = await run_session(flux, MID_SECOND_TURN)
            assert flux.is_closed
            assert [e async for e in flux] == []  # the iterator stays ended
    (stream,) = ep.streams
    # The server sent no EndOfTurn for the second turn, only a final Update.
    assert stream.event_types.count("EndOfTurn") == 1
    assert stream.event_types[-1] == "Update"
    ends = of_type(events, EndOfTurn)
    assert [e.transcript for e in ends] == list(SAMPLE.turns)
    assert [e.synthetic for e in ends] == [False, True]
    assert [e.turn_index for e in ends] == [0, 1]
    assert events[-1] is ends[-1]
    last_update = [e for e in of_type(events, Update) if e.turn_index == 1][-1]
    assert ends[-1].audio_window_end == last_update.audio_window_end
    assert stream.input_ended
    _assert_closed_in_order(stream.inputs, stream.texts)
    assert bytes(stream.audio) == MID_SECOND_TURN


async def test_close_mid_turn_finalizing_bundle_gives_real_end_of_turn(
    endpoint: EndpointFactory,
) -> None:
    caps = BundleCapabilities.flux_multi_20260417()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_MULTI_20260417) as ep,
            client_for(ep, capabilities=caps) as flux,
        ):
            events = await run_session(flux, MID_SECOND_TURN)
    (stream,) = ep.streams
    assert stream.event_types.count("EndOfTurn") == 2
    ends = of_type(events, EndOfTurn)
    assert [e.transcript for e in ends] == list(SAMPLE.turns)
    assert [e.synthetic for e in ends] == [False, False]
    assert events[-1] is ends[-1]
    _assert_closed_in_order(stream.inputs, stream.texts)


async def test_close_between_turns_adds_nothing(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            events = await run_session(flux, SAMPLE.pcm)
    ends = of_type(events, EndOfTurn)
    assert [e.synthetic for e in ends] == [False, False]
    # Between turns Flux sends empty Updates for the next index; nothing invents a turn.
    assert not [e for e in of_type(events, TurnInfo) if e.turn_index > 1 and e.transcript]
    assert isinstance(events[-1], Update)
    _assert_closed_in_order(ep.streams[0].inputs, ep.streams[0].texts)


async def test_close_then_iterate_the_buffered_events(endpoint: EndpointFactory) -> None:
    """close() returns after the drain; the events wait in the iterator."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            await flux.send_audio(MID_SECOND_TURN)
            await flux.close()
            await flux.close()  # a second close does nothing
            events = await collect(flux)
    ends = of_type(events, EndOfTurn)
    assert [e.transcript for e in ends] == list(SAMPLE.turns)
    assert ends[-1].synthetic
    assert ep.streams[0].texts == ['{"type":"CloseStream"}']


@pytest.mark.parametrize("then", ["close", "leave the block"])
async def test_a_second_close_waits_for_the_drain_the_first_started(
    endpoint: EndpointFactory, then: str
) -> None:
    """Two tasks close the session (an application's stop handler and its cleanup): a second
    ``close()``, or leaving the block, waits for the drain the first call started instead of
    cutting the last turn short."""
    ep = endpoint(faults=[Fault(kind=FaultKind.LATENCY, after_audio_s=3.5, latency=0.3)])
    events: list[FluxEvent] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, anyio.create_task_group() as tg, client_for(ep) as flux:
            tg.start_soon(collect, flux, events)
            await flux.send_audio(MID_SECOND_TURN)
            tg.start_soon(flux.close)
            await anyio.wait_all_tasks_blocked()  # the first close() waits for the drain
            if then == "close":
                await flux.close()
                assert flux.is_closed
    ends = of_type(events, EndOfTurn)
    assert [e.transcript for e in ends] == list(SAMPLE.turns)
    assert ep.streams[0].texts == ['{"type":"CloseStream"}']


@pytest.mark.parametrize("then", ["close", "leave the block"])
async def test_a_second_close_during_a_stream_switch_waits_for_the_same_drain(
    endpoint: EndpointFactory, then: str
) -> None:
    """The first close() waits for a settings switch to finish when a second close(), or
    leaving the block, comes: it waits for the same drain on the new stream, instead of
    raising UsageError (which made leaving the block cut the drain short)."""
    events: list[FluxEvent] = []
    first_turn_done = SAMPLE.pcm[: ms(3100)]
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, anyio.create_task_group() as tg, client_for(ep) as flux:
            held, release = hold_the_second_request(ep)
            await flux.send_audio(first_turn_done)
            await next_of(flux, EndOfTurn)
            await flux.send_audio(MID_SECOND_TURN[len(first_turn_done) :])
            tg.start_soon(collect, flux, events)
            tg.start_soon(functools.partial(flux.update_settings, tags=("new",)))
            await held.wait()  # the switch opens the next stream
            tg.start_soon(flux.close)
            await anyio.wait_all_tasks_blocked()  # the first close() waits for the switch

            async def release_once_blocked() -> None:
                await anyio.wait_all_tasks_blocked()  # the second one waits too
                release.set()

            tg.start_soon(release_once_blocked)
            if then == "close":
                await flux.close()
                assert flux.is_closed
    ends = of_type(events, EndOfTurn)
    assert [e.transcript for e in ends] == [SAMPLE.turns[1]]
    old, new = ep.streams
    assert old.texts == new.texts == ['{"type":"CloseStream"}']
    assert new.input_ended


async def test_a_close_waiting_for_a_switch_returns_when_the_session_fails_meanwhile(
    endpoint: EndpointFactory,
) -> None:
    """close() waits for a settings switch in flight, and the stream in use fails for good
    meanwhile (no retries): the session is over, and close() returns as it does after any end
    of the session, instead of raising UsageError ("cannot close: the session failed")."""
    ep = endpoint(faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.5)])

    async def update_settings(flux: FluxClient) -> None:
        with contextlib.suppress(UsageError):  # the session failed under the switch
            await flux.update_settings(tags=("new",))

    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep) as flux, anyio.create_task_group() as tg:
            held, release = hold_the_second_request(ep)
            await flux.send_audio(SAMPLE.pcm[: ms(1000)])
            tg.start_soon(update_settings, flux)
            await held.wait()  # the switch opens the next stream
            tg.start_soon(flux.close)
            await anyio.wait_all_tasks_blocked()  # close() waits for the switch
            await flux.send_audio(SAMPLE.pcm[ms(1000) : ms(2000)])  # past the reset
            with pytest.raises(StreamReset):
                await collect(flux)
            release.set()
    assert flux.is_closed


async def test_exiting_the_block_closes_gracefully(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            async with client_for(ep) as flux:
                await flux.send_audio(MID_SECOND_TURN)
            assert flux.is_closed
    (stream,) = ep.streams
    _assert_closed_in_order(stream.inputs, stream.texts)
    assert bytes(stream.audio) == MID_SECOND_TURN


async def test_close_while_a_sender_is_busy_sends_nothing_after_close_stream(
    endpoint: EndpointFactory,
) -> None:
    """Audio racing close() is refused with UsageError, never written after CloseStream."""
    refused: list[UsageError] = []

    async def sender(flux: FluxClient) -> None:
        try:
            while True:
                await send_audio(flux, SAMPLE.pcm, ms(20))
        except UsageError as exc:
            refused.append(exc)

    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux, anyio.create_task_group() as tg:
            tg.start_soon(sender, flux)
            await next_of(flux, EndOfTurn)
            await flux.close()
            events = await collect(flux)
    assert len(refused) == 1
    (stream,) = ep.streams
    _assert_closed_in_order(stream.inputs, stream.texts)
    audio = bytes(stream.audio)
    # Byte-exact: the repeated sample up to where the sender was refused.
    assert (SAMPLE.pcm * (len(audio) // len(SAMPLE.pcm) + 1)).startswith(audio)
    assert all(e.turn_index >= 1 for e in of_type(events, EndOfTurn))


async def test_a_close_that_times_out_still_finalizes_the_open_turn(
    endpoint: EndpointFactory,
) -> None:
    """Flux turns slow mid-turn (each event 4 s late) while the connection stays healthy:
    close() gives up after ``Timeouts.close``, and the open turn still gets its EndOfTurn,
    with what was heard, before the iterator raises the timeout."""
    ep = endpoint(faults=[Fault(kind=FaultKind.LATENCY, after_audio_s=1.9, latency=4.0)])
    # Past the drain's probe (answered: the connection is fine), short of the late events.
    timeouts = attrs.evolve(FAST_TIMEOUTS, close=1.5)
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep, timeouts=timeouts) as flux:
            await flux.send_audio(SAMPLE.pcm[: ms(2000)])
            updates = [await next_of(flux, Update) for _ in range(2)]
            await flux.close()
            events: list[FluxEvent] = []
            with pytest.raises(TimeoutError, match="did not end within"):
                await collect(flux, into=events)
    heard = [u for u in [*updates, *of_type(events, Update)] if u.transcript]
    (end,) = of_type(events, EndOfTurn)
    assert end.synthetic
    assert end.transcript == heard[-1].transcript


async def test_close_during_a_replay_sends_the_pending_audio_then_one_close_stream(
    endpoint: EndpointFactory,
) -> None:
    """close() lands while a reconnect replays (held back by a small flow-control window),
    with a partial audio event pending: that audio goes out before the one CloseStream."""
    ep = endpoint(
        faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=0.5)], receive_window=8192
    )
    head, tail = SAMPLE.pcm[: ms(1200)], SAMPLE.pcm[ms(1200) : ms(1210)]
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep, retry=QUICK_RETRY) as flux:
            await flux.send_audio(head)
            # Delivered as the replay starts; the replay (1.2 s) outgrows the 8 KiB window.
            await next_of(flux, Reconnected)
            await flux.send_audio(tail)  # less than an event: it waits in the coalescer
            await flux.close()
            await collect(flux)
    _, stream = ep.streams
    _assert_closed_in_order(stream.inputs, stream.texts)
    assert bytes(stream.audio) == head + tail


def _reset_by_the_client(streams: list[RecordedStream]) -> bool:
    return bool(streams) and streams[0].error is not None


async def test_a_reconnect_that_outlasts_the_close_does_not_take_over_the_ended_session(
    endpoint: EndpointFactory,
) -> None:
    """close() runs out of ``Timeouts.close`` while a reconnect waits for the endpoint: the
    session is over. The reconnect's stream, once open, is released: it took the session over,
    replaying its audio to a stream nobody reads, with no CloseStream, open until the block
    ended."""
    ep = endpoint(faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=0.5)])
    timeouts = attrs.evolve(FAST_TIMEOUTS, close=0.5)
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep, retry=QUICK_RETRY, timeouts=timeouts) as flux:
            held, release = hold_the_second_request(ep)
            await flux.send_audio(SAMPLE.pcm[: ms(1000)])
            await held.wait()  # the reconnect opens the next stream
            await flux.close()
            with pytest.raises(TimeoutError, match="did not end within"):
                await collect(flux)
            release.set()
            # The reconnect's stream opens: it is either released or takes over.
            while not (flux.stats.reconnects or _reset_by_the_client(ep.streams[1:])):  # noqa: ASYNC110
                await anyio.sleep(0.01)
            assert flux.stats.reconnects == 0
    assert flux.stats.replayed_bytes == 0
    assert len(ep.streams[1].audio) == 0


async def test_a_cancelled_close_still_ends_the_session_within_the_close_timeout(
    endpoint: EndpointFactory,
) -> None:
    """close() is cancelled (the caller's own, shorter timeout) while a slow server holds up
    the drain: the close goes on in the background within ``Timeouts.close``, so the
    iterator still ends, with the open turn finalized and the timeout, instead of waiting for
    the server with nothing to bound it."""
    ep = endpoint(faults=[Fault(kind=FaultKind.LATENCY, after_audio_s=1.9, latency=TEST_TIMEOUT)])
    timeouts = attrs.evolve(FAST_TIMEOUTS, close=1.5)
    events: list[FluxEvent] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep, timeouts=timeouts) as flux:
            await flux.send_audio(SAMPLE.pcm[: ms(2000)])
            async with anyio.create_task_group() as tg:
                tg.start_soon(flux.close)
                await anyio.wait_all_tasks_blocked()  # close() waits for the drain
                tg.cancel_scope.cancel()
            with (
                anyio.fail_after(4 * timeouts.close),
                pytest.raises(TimeoutError, match="did not end within"),
            ):
                await collect(flux, into=events)
    (end,) = of_type(events, EndOfTurn)
    assert end.synthetic
    assert ep.streams[0].texts == []  # the slow server never got to read CloseStream
