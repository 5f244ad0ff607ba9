"""What the endpoint receives: the exact audio bytes, in events of the promised size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from flux_sagemaker import (
    ConnectionPool,
    EndOfTurn,
    FluxClient,
    FluxError,
    KeepalivePolicy,
    Reconnected,
    RetryPolicy,
    StartOfTurn,
    Timeouts,
    UsageError,
)
from flux_sagemaker.core.timers import FLUSH_SLACK, SILENCE_STEP
from flux_sagemaker.testing import Fault, FaultKind, MockFluxEndpoint
from flux_sagemaker.transport import H2Stream

from .helpers import (
    SAMPLE,
    TEST_TIMEOUT,
    EndpointFactory,
    client_for,
    collect,
    ms,
    of_type,
    run_session,
)

pytestmark = pytest.mark.anyio

TARGET = ms(80)
"""Bytes in an 80 ms event of the sample's format."""

CHUNK_SIZES = {
    "20ms": ms(20),
    "80ms": ms(80),
    "odd-aligned": 2 * 1237,  # a prime number of samples: never divides the events evenly
    "tiny": 2 * 3,
    "one-huge-chunk": len(SAMPLE.pcm),
}


@pytest.mark.parametrize("chunk", CHUNK_SIZES.values(), ids=CHUNK_SIZES.keys())
async def test_audio_arrives_byte_exact_in_80ms_events(
    endpoint: EndpointFactory, chunk: int
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            events = await run_session(flux, SAMPLE.pcm, chunk)
    (stream,) = ep.streams
    assert bytes(stream.audio) == SAMPLE.pcm
    sizes = stream.audio_event_sizes
    assert sum(sizes) == len(SAMPLE.pcm)
    assert all(size % 2 == 0 for size in sizes)
    # About one event per 80 ms: each one holds 80 to 320 ms, except the last (the flush at
    # close) and any partial event the coalescing timer flushed while the sender was busy.
    full = math.ceil(len(SAMPLE.pcm) / TARGET)
    assert len(sizes) <= full + 2
    assert len(sizes) >= len(SAMPLE.pcm) // (4 * TARGET)
    assert sum(1 for size in sizes[:-1] if size < TARGET) <= 2
    assert all(size <= 4 * TARGET for size in sizes)
    if chunk >= 4 * TARGET:
        # One big push is cut into exact 80 ms events and the remainder, with no timer involved.
        assert sizes == [TARGET] * (len(SAMPLE.pcm) // TARGET) + [len(SAMPLE.pcm) % TARGET]
    assert [e.transcript for e in of_type(events, EndOfTurn)] == list(SAMPLE.turns)
    assert stream.texts == ['{"type":"CloseStream"}']


@pytest.mark.parametrize("chunk", [ms(20), 2 * 1237, ms(500)], ids=["20ms", "odd", "500ms"])
async def test_without_coalescing_each_chunk_is_one_event(
    endpoint: EndpointFactory, chunk: int
) -> None:
    pcm = SAMPLE.pcm[: ms(2500)]
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, coalesce_ms=0) as flux:
            await run_session(flux, pcm, chunk)
    (stream,) = ep.streams
    assert bytes(stream.audio) == pcm
    expected = [len(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)]
    assert stream.audio_event_sizes == expected


async def test_bytearray_and_memoryview_chunks_are_copied(endpoint: EndpointFactory) -> None:
    """The client may keep audio after send_audio returns; reusing the buffer must not matter."""
    pcm = SAMPLE.pcm[: ms(1000)]
    buffer = bytearray(ms(30))
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            for offset in range(0, len(pcm), len(buffer)):
                piece = pcm[offset : offset + len(buffer)]
                buffer[: len(piece)] = piece
                await flux.send_audio(memoryview(buffer)[: len(piece)])
                buffer[:] = b"\xff" * len(buffer)  # scribble over it at once
            await flux.close()
    assert bytes(ep.streams[0].audio) == pcm


async def test_control_messages_are_recorded_as_utf8_texts(endpoint: EndpointFactory) -> None:
    pcm = SAMPLE.pcm[: ms(1200)]  # into the first turn
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            await flux.send_audio(pcm)
            await flux.configure(eot_threshold=0.8, keyterms=["table"])
            await flux.force_end_turn()
            await flux.close()
    (stream,) = ep.streams
    messages = [json.loads(text) for text in stream.texts]
    assert [m["type"] for m in messages] == ["Configure", "ForceEndTurn", "CloseStream"]
    assert messages[0]["thresholds"]["eot_threshold"] == 0.8
    assert messages[0]["keyterms"] == ["table"]
    # Audio sent before a control message is on the wire before it.
    assert stream.inputs[-1] == "END"
    assert stream.inputs[: stream.inputs.index("UTF8")] == ["BINARY"] * (
        stream.inputs.index("UTF8")
    )
    assert bytes(stream.audio) == pcm


async def test_a_large_chunk_keeps_its_order_when_a_control_message_comes_meanwhile(
    endpoint: EndpointFactory,
) -> None:
    """A chunk the coalescer cuts into several events, and a control message from another task
    that runs while the call starts writing them: the audio reaches the stream in order.

    The message is not due before the chunk's events: on asyncio, those are written by a task
    of their own, which starts after the other task's turn, and that task's flush of the
    partial event must not overtake them.
    """
    pcm = SAMPLE.pcm[: 5 * TARGET + ms(20)]  # five events and a partial one

    async def send_with_a_control_message_meanwhile(tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(flux.force_end_turn)  # runs at this task's next yield
        await flux.send_audio(pcm)

    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_with_a_control_message_meanwhile, tg)
            await flux.close()
    (stream,) = ep.streams
    assert bytes(stream.audio) == pcm
    assert stream.inputs.index("UTF8") in (0, 6)  # before the call's audio, or after all of it


async def test_a_partial_event_leaves_one_coalescing_window_later(
    endpoint: EndpointFactory,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            sent_at = anyio.current_time()
            await flux.send_audio(SAMPLE.pcm[: ms(20)])
            while not ep.streams or not ep.streams[0].audio_event_sizes:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            waited = anyio.current_time() - sent_at
            assert ep.streams[0].audio_event_sizes == [ms(20)]  # before close flushed anything
    assert waited >= 0.07  # the 80 ms window, not sooner


async def test_steady_audio_moves_the_flush_alarm_without_waking_the_timers(
    endpoint: EndpointFactory,
) -> None:
    """Every 20 ms frame starts or ends a partial event; none of that is a timer wake-up.

    The alarm moves when a partial event starts (to its flush time), not when one leaves.
    """
    pcm = SAMPLE.pcm[: ms(2000)]
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            await anyio.sleep(0.05)
            rounds = flux._supervisor_rounds
            moves = 0
            set_alarm = flux._set_alarm

            def counting_set_alarm() -> None:
                nonlocal moves
                moves += 1
                set_alarm()

            flux._set_alarm = counting_set_alarm  # type: ignore[method-assign]
            for offset in range(0, len(pcm), ms(20)):
                await flux.send_audio(pcm[offset : offset + ms(20)])
                await anyio.sleep(0.005)  # four frames well within one 80 ms window
            woken = flux._supervisor_rounds - rounds
            await flux.close()
    assert bytes(ep.streams[0].audio) == pcm
    assert ep.streams[0].audio_event_sizes == [ms(80)] * 25
    assert woken <= 3  # the 1 s look at the other timers, not one per window (25)
    assert moves == 25  # one per event (a partial event starting), not two


GAP = 0.2
"""``turn_silence_after`` of the silence-deadline test."""


async def test_an_open_turn_in_steady_audio_does_not_wake_the_timers(
    endpoint: EndpointFactory,
) -> None:
    """The open turn's silence deadline moves with the audio, as the flush alarm does.

    A deadline fixed when the supervisor last looked would wake it every
    ``turn_silence_after`` (here 0.2 s) only to find the audio still flowing.
    """
    frame = ms(20)
    keepalive = KeepalivePolicy(turn_silence_after=GAP, idle_interval=None, stall_timeout=None)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, keepalive=keepalive) as flux:
            offset = 0
            while not flux._tracker.turn_open:  # real time until Flux opens the first turn
                await flux.send_audio(SAMPLE.pcm[offset : offset + frame])
                offset += frame
                await anyio.sleep(0.02)
            rounds = flux._supervisor_rounds
            start = anyio.current_time()
            for n in range(75):  # 1.5 s of the turn, in real time
                await flux.send_audio(SAMPLE.pcm[offset : offset + frame])
                offset += frame
                # On a fixed schedule: a plain sleep(0.02) per frame lets the time each send
                # takes add up, and on a slow machine the 4th frame of an event then comes
                # past the flush slack, which rightly rings the flush alarm.
                await anyio.sleep(max(0.0, start + (n + 1) * 0.02 - anyio.current_time()))
            woken = flux._supervisor_rounds - rounds
            still_open = flux._tracker.turn_open
            while flux._coalescer.pending_bytes:  # end on a whole event: no flush alarm
                await flux.send_audio(SAMPLE.pcm[offset : offset + frame])
                offset += frame
            # If the audio stops here, the alarm rings by the silence deadline, not later.
            silence_due = flux._timers.last_app_audio + GAP + flux._clock_offset
            assert flux._alarm_deadline() <= silence_due + 1e-6
            await flux.close()
    assert still_open
    assert flux.stats.silence_bytes_sent == 0
    assert bytes(ep.streams[0].audio) == SAMPLE.pcm[:offset]
    assert woken <= 3  # the 1 s look at the other timers, not one per 0.2 s (6 or more)


async def test_a_slow_drain_after_an_open_turn_does_not_spin_the_timers(
    endpoint: EndpointFactory,
) -> None:
    """While closing, the supervisor watches the drain, not the turn's silence deadline.

    That deadline passes as soon as the audio stops; kept in the alarm, it would ring again
    at once on every look until the server finished.
    """
    frame = ms(20)
    keepalive = KeepalivePolicy(turn_silence_after=GAP, idle_interval=None, stall_timeout=None)
    late = Fault(kind=FaultKind.LATENCY, after_audio_s=1.2, latency=0.8)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=[late]) as ep, client_for(ep, keepalive=keepalive) as flux:
            offset = 0
            while not flux._tracker.turn_open or offset < ms(1300):
                await flux.send_audio(SAMPLE.pcm[offset : offset + frame])
                offset += frame
                await anyio.sleep(0.02)
            flux._wake_supervisor()
            await anyio.sleep(0.01)
            assert flux._timers.silence_gap == GAP  # the open turn's deadline is armed
            rounds = flux._supervisor_rounds
            await flux.close()  # the server's last events come 0.8 s late, GAP is 0.2 s
            woken = flux._supervisor_rounds - rounds
    assert bytes(ep.streams[0].audio) == SAMPLE.pcm[:offset]
    assert woken <= 5  # thousands if the passed deadline kept ringing


async def test_a_partial_event_waiting_out_a_reconnect_does_not_spin_the_timers(
    endpoint: EndpointFactory,
) -> None:
    """Between streams the pending audio waits for the next one (the replay has it too).

    Its flush deadline passes while the client backs off; kept in the alarm, it would ring
    again at once on every look until the new stream took over.
    """
    frame = ms(20)
    retry = RetryPolicy(initial_backoff=0.6, max_backoff=0.6, jitter="none", budget=10.0)
    reset = Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.0)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=[reset]) as ep, client_for(ep, retry=retry) as flux:
            offset = 0
            while flux._current is not None and not flux._current.retired:
                await flux.send_audio(SAMPLE.pcm[offset : offset + frame])
                offset += frame
                await anyio.sleep(0.02)
            if not flux._coalescer.pending_bytes:
                await flux.send_audio(SAMPLE.pcm[offset : offset + frame])
                offset += frame
            rounds = flux._supervisor_rounds
            await anyio.sleep(0.4)  # the application pauses; the client is backing off
            woken = flux._supervisor_rounds - rounds
            between_streams = flux._current is None or flux._current.retired
            await flux.close()
    assert between_streams
    assert woken <= 5  # thousands if the passed flush deadline kept ringing
    assert len(ep.streams) == 2
    assert bytes(ep.streams[1].audio).endswith(SAMPLE.pcm[offset - frame : offset])


async def test_the_flush_alarm_waits_a_little_for_the_next_chunk(
    endpoint: EndpointFactory,
) -> None:
    """Steady audio's next chunk is due at the last event's flush time: it moves the alarm on.

    So the alarm rings a little after the flush time (SessionTimers.flush_alarm_at), and a
    loop that wakes late runs the chunk first instead of waking the supervisor for nothing.
    """
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            await anyio.sleep(0.05)
            await flux.send_audio(SAMPLE.pcm[: ms(20)])  # a partial event starts waiting
            assert flux._alarm is not None
            started = flux._timers.pending_since
            assert started is not None
            assert flux._alarm.deadline == pytest.approx(
                started + 0.08 + FLUSH_SLACK + flux._clock_offset, abs=1e-6
            )
            await flux.close()
    assert ep.streams[0].audio_event_sizes == [ms(20)]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio may run the sender on first
async def test_a_burst_of_events_past_the_yield_mark_leaves_in_parts(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``send_audio`` queues its event and goes on, but one that leaves the connection's writer
    a burst (past the yield mark) lets the writer send it before the next call queues more:
    the server gets the audio as it is made, not all at the end of an application's burst."""
    frame = ms(500)  # one 16 kB event per call with coalescing off: 4 reach the mark
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, coalesce_ms=0) as flux:
            await flux.send_audio(SAMPLE.pcm[:frame])
            await anyio.wait_all_tasks_blocked()
            conn = flux._current.h2._conn if flux._current else None
            assert conn is not None
            writes: list[int] = []
            real_send = conn._stream.send

            async def counting_send(data: bytes) -> None:
                writes.append(len(data))
                await real_send(data)

            monkeypatch.setattr(conn._stream, "send", counting_send)
            for i in range(1, 9):
                await flux.send_audio(SAMPLE.pcm[i * frame : (i + 1) * frame])
            await anyio.wait_all_tasks_blocked()
            monkeypatch.undo()
            await flux.close()
    assert len(writes) >= 2  # without the yield, the writer ran once, after the burst
    assert sum(writes) > 8 * frame
    assert bytes(ep.streams[0].audio) == SAMPLE.pcm[: 9 * frame]


def hold_the_next_event(monkeypatch: pytest.MonkeyPatch) -> anyio.Event:
    """Make the next event written wait, as for a closed flow-control window, until the
    returned event is set; events after it take the slow path too, behind it."""
    gate = anyio.Event()
    calls: list[int] = []
    real_send_nowait, real_send = H2Stream.send_nowait, H2Stream.send

    def refuse_the_first(self: H2Stream, data: bytes) -> bool:
        return bool(calls) and real_send_nowait(self, data)

    async def first_send_waits(self: H2Stream, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 1:
            await gate.wait()
        await real_send(self, data)

    monkeypatch.setattr(H2Stream, "send_nowait", refuse_the_first)
    monkeypatch.setattr(H2Stream, "send", first_send_waits)
    return gate


async def test_an_event_that_must_wait_keeps_its_place_in_the_signature_chain(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signed event that cannot be queued at once holds the send lock until it is written.

    Each event's signature chains to the previous one, so an event signed later must not
    reach the wire first: the endpoint would reject the stream.
    """
    up, first, second = (SAMPLE.pcm[ms(20 * i) : ms(20 * i + 20)] for i in range(3))
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, coalesce_ms=0) as flux:
            await flux.send_audio(up)
            gate = hold_the_next_event(monkeypatch)
            async with anyio.create_task_group() as tg:
                tg.start_soon(flux.send_audio, first)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(flux.send_audio, second)
                await anyio.wait_all_tasks_blocked()
                gate.set()
            monkeypatch.undo()
            await flux.close()
    (stream,) = ep.streams
    assert stream.error is None
    assert bytes(stream.audio) == up + first + second


async def test_cancelled_sends_still_write_their_events_whole_and_in_order(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application's timeout that cancels ``send_audio`` loses nothing and breaks nothing.

    One call is cancelled while its signed event waits for the window, another while it waits
    for the send lock with its event already out of the coalescer. Both events still reach the
    stream, whole and in order: half an event, or a signed event never sent, would corrupt the
    stream and break the signature chain.
    """
    up, first, second, third = (SAMPLE.pcm[ms(20 * i) : ms(20 * i + 20)] for i in range(4))
    returned: list[bytes] = []

    async def send_then_get_cancelled(scope: anyio.CancelScope, chunk: bytes) -> None:
        with scope:
            await flux.send_audio(chunk)
        returned.append(chunk)

    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, coalesce_ms=0) as flux:
            await flux.send_audio(up)
            gate = hold_the_next_event(monkeypatch)
            scopes = anyio.CancelScope(), anyio.CancelScope()
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_then_get_cancelled, scopes[0], first)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(send_then_get_cancelled, scopes[1], second)
                await anyio.wait_all_tasks_blocked()
                for scope in scopes:
                    scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert returned == []  # each still owes its event to the stream
                gate.set()
            monkeypatch.undo()
            await flux.send_audio(third)
            await flux.close()
    assert returned == [first, second]
    (stream,) = ep.streams
    assert stream.error is None
    assert bytes(stream.audio) == up + first + second + third


async def test_sends_cut_short_by_a_timeout_under_back_pressure_lose_no_audio(
    endpoint: EndpointFactory,
) -> None:
    """The same with real flow control: a small server window, a server slow for a moment,
    and every 20 ms frame sent under a 30 ms timeout, as an agent guarding its audio loop."""
    ep = endpoint(
        faults=[Fault(kind=FaultKind.LATENCY, after_audio_s=0.5, latency=0.15)],
        receive_window=8192,
    )
    cut_short = 0
    pcm = SAMPLE.pcm[: ms(4000)]
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep) as flux:
            for offset in range(0, len(pcm), ms(20)):
                with anyio.move_on_after(0.03) as scope:
                    await flux.send_audio(pcm[offset : offset + ms(20)])
                cut_short += scope.cancel_called
            await flux.close()
            events = [event async for event in flux]
    assert cut_short > 0  # the scenario did hold senders back
    (stream,) = ep.streams
    assert stream.error == "fault: latency"  # the injected slowness, and nothing went wrong
    assert bytes(stream.audio) == pcm
    assert of_type(events, EndOfTurn)[0].transcript == SAMPLE.turns[0]


@contextlib.asynccontextmanager
async def held_back_session(
    endpoint: EndpointFactory, **client_options: Any
) -> AsyncIterator[tuple[MockFluxEndpoint, FluxClient]]:
    """A session that our own consumer can hold back: with a 512-byte receive window and one
    buffered event, the server's events wait for the consumer, and the server (window 4096)
    stops reading our audio behind them."""
    async with (
        endpoint(receive_window=4096) as ep,
        ConnectionPool(receive_window=512) as pool,
        client_for(ep, pool=pool, max_buffered_events=1, **client_options) as flux,
    ):
        yield ep, flux


async def test_no_keepalive_silence_goes_into_audio_a_slow_consumer_holds_back(
    endpoint: EndpointFactory,
) -> None:
    """The consumer stops iterating in the middle of a turn (an LLM call): the client stops
    reading the stream, the server (which, like the mock, answers and reads in one task) stops
    taking audio, and ``send_audio`` waits for the window. The application is not quiet, so
    no keepalive silence is due: sent once the window opened, it went in between two of the
    application's chunks, in the middle of the user's speech."""
    keepalive = KeepalivePolicy(turn_silence_after=0.1, idle_interval=None, stall_timeout=None)
    resume = anyio.Event()
    in_call_since: float | None = None  # the sender's call under way, by the timers' clock
    events: list[object] = []

    async def consume() -> None:
        async for event in flux:
            events.append(event)
            if isinstance(event, StartOfTurn):
                await resume.wait()  # stops iterating, the turn open

    async def send() -> None:
        nonlocal in_call_since
        for offset in range(0, len(SAMPLE.pcm), ms(20)):
            in_call_since = time.monotonic()
            await flux.send_audio(SAMPLE.pcm[offset : offset + ms(20)])
            in_call_since = None
        await flux.close()

    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            held_back_session(endpoint, keepalive=keepalive) as (ep, flux),
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(consume)
            tg.start_soon(send)
            # Until a call is held back and the timers, finding no audio from the application
            # for a while, made keepalive silence due (they moved its last audio on by a step).
            while not (  # noqa: ASYNC110 - polling the timers' state
                in_call_since is not None
                and flux._timers.last_app_audio >= in_call_since + SILENCE_STEP
            ):
                await anyio.sleep(0.01)
            held_back_in_turn = flux.turn_open
            resume.set()
    assert held_back_in_turn
    (stream,) = ep.streams
    assert bytes(stream.audio) == SAMPLE.pcm
    assert flux.stats.silence_bytes_sent == 0
    assert [e.transcript for e in of_type(events, EndOfTurn)] == list(SAMPLE.turns)


async def test_a_consumer_behind_for_longer_than_the_write_limit_does_not_fail_the_stream(
    endpoint: EndpointFactory,
) -> None:
    """The consumer stops iterating in the middle of a turn for longer than ``Timeouts.write``.
    The client stops reading, the server (which, like the mock, answers and reads in one task)
    stops taking audio, and ``send_audio`` waits for a window only our own consumer can open.
    The write limit counted that wait as the server's fault: the stream failed with
    TimeoutError ("the server kept stream 1's flow-control window closed"), which ends a
    session without retries and costs one a reconnect."""
    timeouts = Timeouts(connect=3.0, connected=3.0, close=3.0, write=0.5, ping_interval=None)
    resume = anyio.Event()
    events: list[object] = []
    failures: list[FluxError] = []

    async def consume() -> None:
        try:
            async for event in flux:
                events.append(event)
                if isinstance(event, StartOfTurn):
                    await resume.wait()  # stops iterating, the turn open
        except FluxError as exc:
            failures.append(exc)

    async def send() -> None:
        try:
            for offset in range(0, len(SAMPLE.pcm), ms(20)):
                await flux.send_audio(SAMPLE.pcm[offset : offset + ms(20)])
            await flux.close()
        except FluxError:
            assert flux.is_closed  # the iterator raises why

    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            held_back_session(endpoint, timeouts=timeouts) as (ep, flux),
            anyio.create_task_group() as tg,
        ):
            assert flux._current is not None
            connection = flux._current.h2.connection
            tg.start_soon(consume)
            tg.start_soon(send)
            # Until the sender has waited twice the write limit: the PING that probes the
            # connection after WINDOW_PROBE_AFTER (1 s) of waiting (the only PING here), or
            # the session's failure.
            while not (connection._ping_count or flux.is_closed):  # noqa: ASYNC110 - polling
                await anyio.sleep(0.01)
            resume.set()
    assert failures == []
    (stream,) = ep.streams
    assert bytes(stream.audio) == SAMPLE.pcm
    assert [e.transcript for e in of_type(events, EndOfTurn)] == list(SAMPLE.turns)


async def _set_once_held_back_by_our_consumer(flux: FluxClient, held_back: anyio.Event) -> None:
    """Set ``held_back`` once a ``send_audio`` waits to write while the stream's data waits
    unread (nobody iterates)."""
    while not (flux._sends_waiting and flux._current and flux._current.h2.buffered):  # noqa: ASYNC110
        await anyio.sleep(0.01)
    await anyio.wait_all_tasks_blocked()
    held_back.set()


async def test_a_sender_cancelled_while_its_own_consumer_holds_it_back_still_ends(
    endpoint: EndpointFactory,
) -> None:
    """The consumer stops reading events for good (it left its loop, or is cancelled with the
    sender) while ``send_audio`` waits for a window only that consumer could open; then the
    sender is cancelled, as a task group ending the call cancels it. The call must end within
    ``Timeouts.write``, as ``send_audio`` says: it waited for ever, holding up the task group
    (and the ``async with`` block around it) that cancelled it."""
    timeouts = Timeouts(connect=3.0, connected=3.0, close=3.0, write=0.5, ping_interval=None)
    quick = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter="none")
    held_back = anyio.Event()

    async def send(flux: FluxClient) -> None:
        for offset in range(0, len(SAMPLE.pcm), ms(20)):
            await flux.send_audio(SAMPLE.pcm[offset : offset + ms(20)])
        raise AssertionError("the sender was never held back")

    with anyio.fail_after(TEST_TIMEOUT):
        async with held_back_session(endpoint, timeouts=timeouts, retry=quick) as (_, flux):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, flux)
                tg.start_soon(_set_once_held_back_by_our_consumer, flux, held_back)
                await held_back.wait()
                tg.cancel_scope.cancel()
            assert flux.stats.audio_bytes_sent < len(SAMPLE.pcm)


async def test_a_sender_its_own_consumer_holds_back_ends_once_the_session_closed(
    endpoint: EndpointFactory,
) -> None:
    """The consumer stops reading events for good while ``send_audio`` waits for a window
    only that consumer could open, and the application closes the session: ``close()`` gives
    up after ``Timeouts.close`` and the session is over, so the waiting call must end too. It
    waited for ever (until the ``async with`` block ended, which waited for the sender)."""
    timeouts = Timeouts(connect=3.0, connected=3.0, close=1.0, write=0.5, ping_interval=None)
    held_back = anyio.Event()
    ended: list[BaseException | None] = []

    async def send(flux: FluxClient) -> None:
        try:
            for offset in range(0, len(SAMPLE.pcm), ms(20)):
                await flux.send_audio(SAMPLE.pcm[offset : offset + ms(20)])
        except FluxError as exc:
            ended.append(exc)
        else:
            ended.append(None)

    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            held_back_session(endpoint, timeouts=timeouts) as (_, flux),
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(send, flux)
            tg.start_soon(_set_once_held_back_by_our_consumer, flux, held_back)
            await held_back.wait()
            await flux.close()
            assert flux.is_closed
    (error,) = ended  # the sender's call ended: the session is over
    assert isinstance(error, UsageError)


async def _cancel_a_sender_held_back(
    endpoint: EndpointFactory, *, natively: str | None = None
) -> None:
    """Cancel a task sending audio as fast as it may while a slow server holds it back, then
    send the rest and check that the server got all of it, whole and in order.

    ``natively="asyncio"`` cancels with ``Task.cancel()`` instead of an anyio cancel scope
    (on trio an anyio scope is trio's own).
    """
    ep = endpoint(
        faults=[Fault(kind=FaultKind.LATENCY, after_audio_s=0.5, latency=0.15)],
        receive_window=8192,
    )
    pcm = SAMPLE.pcm[: ms(4000)]
    chunk = ms(100)  # one or two 80 ms events per call: both of send_audio's paths
    accepted = 0

    async def send_until_cancelled() -> None:
        nonlocal accepted
        for offset in range(0, len(pcm), chunk):
            accepted = offset + chunk  # send_audio accepts the audio before it waits
            await flux.send_audio(pcm[offset : offset + chunk])
        raise AssertionError("the sender was never held back, or went on once cancelled")

    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep) as flux:
            if natively == "asyncio":
                task = asyncio.ensure_future(send_until_cancelled())
                await anyio.wait_all_tasks_blocked()  # the sender waits for the window
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(send_until_cancelled)
                    await anyio.wait_all_tasks_blocked()
                    tg.cancel_scope.cancel()
            assert accepted < len(pcm)
            await flux.send_audio(pcm[accepted:])
            await flux.close()
            events = [event async for event in flux]
    (stream,) = ep.streams
    assert stream.error == "fault: latency"  # the injected slowness, and nothing went wrong
    assert bytes(stream.audio) == pcm
    assert of_type(events, EndOfTurn)[0].transcript == SAMPLE.turns[0]


async def test_a_sender_cancelled_while_held_back_stops_once_its_audio_is_written(
    endpoint: EndpointFactory,
) -> None:
    """A task streaming audio is cancelled (a sibling failed, an outer timeout) while its
    call waits for the window: the call writes its audio, whole, then raises the
    cancellation; the task does not go on sending as if nothing happened."""
    await _cancel_a_sender_held_back(endpoint)


async def test_a_sender_cancelled_by_asyncios_own_cancellation_loses_nothing(
    endpoint: EndpointFactory, anyio_backend: str
) -> None:
    """The same with ``Task.cancel()``, as ``asyncio.timeout``, ``wait_for`` and asyncio's
    TaskGroup cancel: anyio's shields do not hold it off, yet the audio of the cancelled call
    still goes out whole and in its place."""
    await _cancel_a_sender_held_back(endpoint, natively=anyio_backend)


async def test_a_sender_cancelled_with_its_session_raises_the_cancellation(
    endpoint: EndpointFactory,
) -> None:
    """A call's time limit cancels the task group holding both a task streaming audio (chunks
    of many events) and the session's block, while a slow server holds the sender back in the
    middle of a call. The session shuts down under that call, which must still raise the
    cancellation: it raised ``UsageError`` ("the session is closed"), which escaped the time
    limit's scope in an ExceptionGroup instead of the limit just ending the call."""
    ep = endpoint(
        faults=[Fault(kind=FaultKind.LATENCY, after_audio_s=0.5, latency=TEST_TIMEOUT)],
        receive_window=8192,
    )
    chunk = SAMPLE.pcm[: ms(2000)]  # 25 events: the window shuts in the middle of the call

    async def send_forever(flux: FluxClient) -> None:
        while True:
            await flux.send_audio(chunk)

    with anyio.fail_after(TEST_TIMEOUT):
        async with ep:
            with anyio.CancelScope() as limit:
                async with anyio.create_task_group() as tg, client_for(ep) as flux:
                    tg.start_soon(send_forever, flux)
                    await anyio.wait_all_tasks_blocked()  # the sender waits for the window
                    limit.cancel()
            assert limit.cancelled_caught
    assert flux.stats.audio_bytes_sent < flux.stats.audio_bytes_accepted == len(chunk)


async def test_an_interrupt_in_a_held_back_write_is_raised_by_the_call(
    endpoint: EndpointFactory,
) -> None:
    """``SystemExit`` (or ``KeyboardInterrupt``) strikes while a held-back ``send_audio``
    writes: here a logging handler raises it on the stream failure the write limit causes, in
    the write. The call must raise it, as a write in the caller's own task would. The write
    runs in a task of the session, which kept only an ``Exception``: on trio the call raised
    IndexError ("list index out of range"), and on asyncio the event loop itself stopped."""
    ep = endpoint(
        faults=[Fault(kind=FaultKind.LATENCY, after_audio_s=0.5, latency=TEST_TIMEOUT)],
        receive_window=8192,
    )
    timeouts = Timeouts(connect=3.0, connected=3.0, close=0.5, write=0.5, ping_interval=None)
    quick = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter="none")

    class ExitOnRecovery(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().endswith("recovering"):
                raise SystemExit(3)

    async def send_all(flux: FluxClient) -> None:
        for offset in range(0, len(SAMPLE.pcm), ms(100)):
            await flux.send_audio(SAMPLE.pcm[offset : offset + ms(100)])

    handler = ExitOnRecovery()
    logging.getLogger("flux_sagemaker").addHandler(handler)
    try:
        with anyio.fail_after(TEST_TIMEOUT):
            async with ep, client_for(ep, timeouts=timeouts, retry=quick) as flux:
                with pytest.raises(SystemExit):
                    await send_all(flux)
    finally:
        logging.getLogger("flux_sagemaker").removeHandler(handler)


async def test_a_reconnect_with_nobody_reading_events_does_not_hold_up_the_sender(
    endpoint: EndpointFactory,
) -> None:
    """One task sends all the audio, then reads the events (a full event queue meanwhile): a
    reconnect announces itself without waiting for room, and no audio is lost."""
    quick = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter="none")
    fault = Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.0)
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(faults=[fault]) as ep,
            client_for(ep, retry=quick, max_buffered_events=2) as flux,
        ):
            for offset in range(0, len(SAMPLE.pcm), ms(20)):
                await flux.send_audio(SAMPLE.pcm[offset : offset + ms(20)])
                await anyio.sleep(0.002)  # give the reset and the reconnect time to happen
            assert len(ep.streams) == 2
            events: list[object] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, flux, events)
                await flux.close()
    (reconnect,) = of_type(events, Reconnected)
    assert reconnect.dropped_audio_bytes == 0
    assert [e.transcript for e in of_type(events, EndOfTurn)] == list(SAMPLE.turns)
    _, second = ep.streams
    assert bytes(second.audio) == SAMPLE.pcm  # the fault was in turn 0: everything replayed


async def test_a_reconnect_while_the_consumer_is_behind_replays_the_turns_it_did_not_see(
    endpoint: EndpointFactory,
) -> None:
    """Nobody reads events for a while (the client stops reading the stream), and the stream
    fails after both turns were spoken: the client never saw them, so the new stream must
    hear them again, not just the tail replayed when no turn is open."""
    quick = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter="none")
    fault = Fault(kind=FaultKind.RESET_STREAM, after_audio_s=5.0)
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            # Each stream plays the script from its start: the new one hears both turns again.
            endpoint(faults=[fault], script_scope="stream") as ep,
            client_for(ep, retry=quick, max_buffered_events=1) as flux,
        ):
            await flux.send_audio(SAMPLE.pcm[: ms(5000)])
            # The reset struck at 5 s; the next writes notice it and the session reconnects.
            rest = SAMPLE.pcm[ms(5000) :]
            offset = 0
            while not flux.stats.reconnects:
                await flux.send_audio(rest[offset : offset + ms(20)])
                offset += ms(20)
                await anyio.sleep(0.005)
            await flux.send_audio(rest[offset:])
            events: list[object] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, flux, events)
                await flux.close()
    (reconnect,) = of_type(events, Reconnected)
    assert reconnect.resumed_at_s == 0  # no EndOfTurn was seen: nothing is final yet
    _, second = ep.streams
    assert bytes(second.audio) == SAMPLE.pcm
    assert [e.transcript for e in of_type(events, EndOfTurn)] == list(SAMPLE.turns)
