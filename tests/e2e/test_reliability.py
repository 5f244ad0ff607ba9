"""Fault injection: the client survives every retryable fault without losing audio.

Each test streams the bundled sample in real time (20 ms frames) to a MockFluxEndpoint that
injects one fault mid-turn, and asserts that:

- both scripted turns arrive exactly once, with their full transcripts, on one timeline;
- a ``Reconnected`` event says what happened;
- every byte of audio sent reached the mock: stream 0 received a prefix of it, each later stream
  received the audio from the ``Reconnected`` event's ``resumed_at_s`` on, and together they
  cover all of it.

Without retries, the same faults raise the right typed error instead, within a bounded time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from flux_sagemaker import (
    ConnectionLost,
    ConnectionPool,
    EndOfTurn,
    FluxClient,
    FluxError,
    FluxServerError,
    FluxSettings,
    GoAway,
    InternalStreamFailure,
    KeepalivePolicy,
    ModelStreamError,
    Reconnected,
    RetryPolicy,
    RolloverPolicy,
    StartOfTurn,
    StreamReset,
    StreamRolledOver,
    StreamStalled,
    ThrottlingError,
    Timeouts,
    TransportError,
    TurnInfo,
    UsageError,
    ValidationError,
)
from flux_sagemaker.samples import load_sample
from flux_sagemaker.streams import UNPROCESSED_RETRIES
from flux_sagemaker.testing import Fault, FaultKind, MockFluxEndpoint, RequestFailure
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

from .helpers import client_for, credentials_going_stale, next_of, refreshable_credentials

pytestmark = pytest.mark.anyio

SAMPLE = load_sample()
BYTES_PER_SECOND = SAMPLE.sample_rate * 2
FRAME = BYTES_PER_SECOND // 50  # 20 ms, as Pipecat sends
#: Mid first turn ("Hi, I'd like a table for two." runs from 0.3 s to about 2.3 s).
MID_TURN = 1.2
#: Audio goes out this many times faster than real time: Flux is clocked by audio, not by the
#: wall clock, and the suite stays quick.
SPEED = 8
#: For tests whose faults or policies run on the wall clock (the stall watchdog, the stream's
#: age, expiring credentials): their timeouts are scaled for this pace.
TIMED_SPEED = 4
#: For a stall after MID_TURN: the watchdog (WATCHDOG's 0.8 s, then its 0.25 s confirmation)
#: must fire while the rest of the sample is still being sent, or the session closes cleanly
#: first. At TIMED_SPEED that rest took 1.2 s, a margin a loaded CI machine could eat.
STALL_SPEED = 2
FAST_TIMEOUTS = Timeouts(ping_interval=0.3, ping_timeout=0.5, connected=3.0, close=3.0)
WATCHDOG = KeepalivePolicy(stall_timeout=0.8)
NO_RETRY = RetryPolicy(enabled=False)


async def stream_sample(
    flux: FluxClient,
    pcm: bytes = SAMPLE.pcm,
    speed: float = SPEED,
    *,
    hold_until: anyio.Event | None = None,
    hold_after_s: float = 0.0,
) -> None:
    """Send ``pcm`` in 20 ms frames at ``speed`` times real time, then close.

    With ``hold_until``, the sender stops once it has sent more than ``hold_after_s`` of
    audio, until that event is set.

    Once the session has failed, sending raises ``UsageError``; the iterator raises the
    failure itself, which is what the tests check, so the sender just stops.
    """
    hold_at = round(hold_after_s * BYTES_PER_SECOND)
    start = anyio.current_time()
    try:
        for n, offset in enumerate(range(0, len(pcm), FRAME)):
            await flux.send_audio(pcm[offset : offset + FRAME])
            if hold_until is not None and offset <= hold_at < offset + FRAME:
                await hold_until.wait()
                start = anyio.current_time() - (n + 1) * 0.02 / speed
            await anyio.sleep(max(0.0, start + (n + 1) * 0.02 / speed - anyio.current_time()))
        await flux.close()
    except UsageError:
        assert flux.is_closed


async def run_session(
    endpoint: MockFluxEndpoint,
    pcm: bytes = SAMPLE.pcm,
    speed: float = SPEED,
    *,
    hold_after_s: float | None = None,
    **options: Any,
) -> list[Any]:
    """Stream ``pcm`` at ``speed`` through a FluxClient and collect every event.

    With ``hold_after_s``, the sender stops after that much audio until the session has
    reconnected: what the replay holds then does not depend on how soon the client noticed
    a fault there, at ``speed`` times real time, on a loaded machine.
    """
    events: list[Any] = []
    options.setdefault("timeouts", FAST_TIMEOUTS)
    options.setdefault("keepalive", WATCHDOG)
    reconnected = anyio.Event()
    sender = functools.partial(
        stream_sample,
        hold_until=None if hold_after_s is None else reconnected,
        hold_after_s=hold_after_s or 0.0,
    )
    with anyio.fail_after(30):
        async with FluxClient("flux-ep", **(endpoint.client_kwargs() | options)) as flux:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sender, flux, pcm, speed)
                    async for event in flux:
                        events.append(event)
                        if isinstance(event, Reconnected):
                            reconnected.set()
            except BaseExceptionGroup as group:
                # The iterator's error, unwrapped from the task group for pytest.raises.
                raise group.exceptions[0] from None
    return events


def assert_turns_complete(events: Sequence[Any]) -> None:
    """Both scripted turns arrived once each, in order, with consecutive indexes."""
    finals = [e for e in events if isinstance(e, EndOfTurn)]
    assert [e.transcript for e in finals] == list(SAMPLE.turns)
    assert [e.turn_index for e in finals] == [0, 1]
    starts = [e.turn_index for e in events if isinstance(e, StartOfTurn)]
    assert starts == [0, 1]
    ends = [e.audio_window_end for e in finals]
    assert ends == sorted(ends)


def assert_audio_delivered(
    endpoint: MockFluxEndpoint, events: Sequence[Any], pcm: bytes = SAMPLE.pcm
) -> None:
    """Every byte sent reached a stream; each stream got a contiguous slice of the audio."""
    switches = [e for e in events if isinstance(e, Reconnected | StreamRolledOver)]
    accepted = [s for s in endpoint.streams if s.status == 200]
    assert len(accepted) == len(switches) + 1
    offsets = [0] + [round(e.resumed_at_s * BYTES_PER_SECOND) for e in switches]
    covered = 0
    for stream, offset in zip(accepted, offsets, strict=True):
        audio = bytes(stream.audio)
        assert offset <= covered, "a gap: audio between streams was never sent"
        assert audio == pcm[offset : offset + len(audio)]
        covered = max(covered, offset + len(audio))
    assert covered == len(pcm)


RECOVERABLE = [
    FaultKind.DROP_CONNECTION,
    FaultKind.GOAWAY,
    FaultKind.RESET_STREAM,
    FaultKind.STALL,
    FaultKind.SILENT_CONNECTION,
    FaultKind.MODEL_STREAM_ERROR,
    FaultKind.INTERNAL_STREAM_FAILURE,
    FaultKind.END_STREAM,
    FaultKind.FLUX_ERROR,  # INTERNAL_SERVER_ERROR is retryable
]


@pytest.mark.parametrize("kind", RECOVERABLE, ids=lambda k: k.value)
async def test_recovers_from_fault_without_losing_audio(kind: FaultKind) -> None:
    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=[Fault(kind=kind, after_audio_s=MID_TURN)]
    ) as endpoint:
        # A stall is noticed by the watchdog, on the wall clock.
        speed = STALL_SPEED if kind is FaultKind.STALL else SPEED
        events = await run_session(endpoint, speed=speed)
    assert_turns_complete(events)
    reconnects = [e for e in events if isinstance(e, Reconnected)]
    assert len(reconnects) == 1
    assert reconnects[0].error.retryable
    assert reconnects[0].dropped_audio_s == 0
    # The fault struck inside turn 0, so the replay starts at the beginning of the session.
    assert reconnects[0].resumed_at_s == 0
    assert reconnects[0].replayed_audio_s >= MID_TURN - 0.1
    assert_audio_delivered(endpoint, events)


async def test_recovers_after_a_completed_turn_replaying_only_the_open_one() -> None:
    fault_at = 3.5  # inside turn 1; turn 0 ended near 2.7 s
    async with MockFluxEndpoint(
        script=SAMPLE.turns,
        faults=[Fault(kind=FaultKind.DROP_CONNECTION, after_audio_s=fault_at)],
    ) as endpoint:
        events = await run_session(endpoint)
    assert_turns_complete(events)
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    first_end = next(e for e in events if isinstance(e, EndOfTurn)).audio_window_end
    # The replay starts where the completed turn ended, not at the start of the session.
    assert 0 < reconnect.resumed_at_s == pytest.approx(first_end, abs=0.001)
    # It holds at least the open turn's audio up to the fault. How much more it holds depends
    # on how soon the drop was noticed (wall-clock), so there is no upper bound to assert.
    assert reconnect.replayed_audio_s >= fault_at - first_end - 0.02
    assert_audio_delivered(endpoint, events)


async def test_a_switch_between_turns_replays_only_the_tail_of_a_long_quiet() -> None:
    """No turn open, 20 s of quiet since the last one (the agent was talking): the new stream
    gets the quiet's last seconds, not all of it, and no audio sent around the switch."""
    first_turn = SAMPLE.pcm[: 3100 * BYTES_PER_SECOND // 1000]
    quiet = bytes(20 * BYTES_PER_SECOND)
    rest = SAMPLE.pcm[len(first_turn) :]
    events: list[Any] = []
    with anyio.fail_after(30):
        async with (
            MockFluxEndpoint(script=SAMPLE.turns) as endpoint,
            client_for(endpoint, timeouts=FAST_TIMEOUTS, retry=RetryPolicy()) as flux,
        ):
            await flux.send_audio(first_turn)
            async for event in flux:
                events.append(event)
                if isinstance(event, EndOfTurn):
                    break
            await flux.send_audio(quiet)
            await flux.update_settings(tags=("after-the-quiet",))
            await flux.send_audio(rest)
            await flux.close()
            events.extend([event async for event in flux])
    (rolled,) = [e for e in events if isinstance(e, StreamRolledOver)]
    # The last 3 s of what the old stream heard, then what it was never sent (a partial event).
    heard = len(endpoint.streams[0].audio) / BYTES_PER_SECOND
    assert rolled.resumed_at_s == pytest.approx(heard - 3.0)
    assert rolled.replayed_audio_s == pytest.approx(
        len(first_turn + quiet) / BYTES_PER_SECOND - rolled.resumed_at_s
    )
    assert rolled.replayed_audio_s < 3.1
    assert_audio_delivered(endpoint, events, first_turn + quiet + rest)
    assert_turns_complete(events)


async def test_a_long_quiet_between_turns_is_not_kept_for_replay() -> None:
    """A minute with no turn (an agent talking, a caller on hold): the replay buffer keeps the
    tail a replay would send, not the whole quiet (it filled up to its 8 MiB bound, per
    session), and a failure in the next turn replays that turn, not the minute before it."""
    quiet_s = 60
    quiet = bytes(quiet_s * BYTES_PER_SECOND)
    fault = Fault(kind=FaultKind.DROP_CONNECTION, after_audio_s=quiet_s + MID_TURN)
    events: list[Any] = []
    with anyio.fail_after(30):
        async with (
            MockFluxEndpoint(script=SAMPLE.turns, faults=[fault]) as endpoint,
            client_for(endpoint, timeouts=FAST_TIMEOUTS, retry=RetryPolicy()) as flux,
        ):
            await flux.send_audio(quiet)
            async for event in flux:  # until the server reported hearing all of the quiet
                events.append(event)
                if isinstance(event, TurnInfo) and event.audio_window_end >= quiet_s - 0.25:
                    break
            assert not flux.turn_open
            assert flux._replay.held_bytes < 4 * BYTES_PER_SECOND
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream_sample, flux)
                events.extend([event async for event in flux])
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    assert reconnect.resumed_at_s >= quiet_s - 4
    assert reconnect.dropped_audio_s == 0
    assert_audio_delivered(endpoint, events, quiet + SAMPLE.pcm)
    assert_turns_complete(events)


async def test_a_switch_between_turns_replays_all_the_audio_the_old_stream_was_not_sent() -> None:
    """No turn open at a settings change, with seconds of audio still waiting to be coalesced
    (a long coalesce_ms): the old stream never got that audio, so the new stream gets all of
    it, not only its last 3 s (the tail kept of audio the old stream heard)."""
    quiet = bytes(6 * BYTES_PER_SECOND)  # less than the window: it stays pending
    events: list[Any] = []
    with anyio.fail_after(30):
        async with (
            MockFluxEndpoint(script=SAMPLE.turns) as endpoint,
            FluxClient(
                "flux-ep",
                **endpoint.client_kwargs(),
                timeouts=FAST_TIMEOUTS,
                keepalive=KeepalivePolicy.disabled(),
                coalesce_ms=10_000,
            ) as flux,
        ):
            await flux.send_audio(quiet)
            await flux.update_settings(tags=("switched",))
            await flux.close()
            events.extend([event async for event in flux])
    (rolled,) = [e for e in events if isinstance(e, StreamRolledOver)]
    assert rolled.dropped_audio_bytes == 0
    assert rolled.resumed_at_s == 0
    assert_audio_delivered(endpoint, events, quiet)


@pytest.mark.parametrize(
    "kind", [FaultKind.SILENT_CONNECTION, FaultKind.STALL], ids=lambda k: k.value
)
async def test_a_failure_between_turns_replays_the_audio_no_server_event_confirmed(
    kind: FaultKind,
) -> None:
    """No turn open when the stream fails, seconds after the server's last event: the audio
    sent since that event may never have reached Flux (a peer gone silent never read it), so
    the replay starts before it, not 3 s before the end of what the old stream was sent."""
    pcm = bytes(8 * BYTES_PER_SECOND) + SAMPLE.pcm  # the fault strikes in the quiet
    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=[Fault(kind=kind, after_audio_s=0.5)]
    ) as endpoint:
        events = await run_session(endpoint, pcm)
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    before = events[: events.index(reconnect)]
    confirmed = max((e.audio_window_end for e in before if isinstance(e, TurnInfo)), default=0)
    assert confirmed <= 0.5
    assert reconnect.resumed_at_s <= confirmed
    assert reconnect.dropped_audio_s == 0
    assert_audio_delivered(endpoint, events, pcm)
    assert_turns_complete(events)


async def test_a_stream_that_fails_during_its_replay_is_replaced_in_turn() -> None:
    """The new stream fails while its replay is still being written (flow control holds the
    replay back): nothing more goes on the failed stream, and the next one replays it all."""
    faults = [
        Fault(kind=FaultKind.DROP_CONNECTION, after_audio_s=MID_TURN),
        Fault(kind=FaultKind.MODEL_STREAM_ERROR, after_audio_s=0.2, stream_index=1),
    ]
    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=faults, receive_window=4096
    ) as endpoint:
        events = await run_session(endpoint)
    reconnects = [e for e in events if isinstance(e, Reconnected)]
    assert [type(r.error) for r in reconnects] == [ConnectionLost, ModelStreamError]
    assert all(r.resumed_at_s == 0 and r.dropped_audio_s == 0 for r in reconnects)
    assert 0 < len(endpoint.streams[1].audio) < MID_TURN * BYTES_PER_SECOND  # cut short
    assert_audio_delivered(endpoint, events)
    assert_turns_complete(events)


async def test_a_connected_timeout_on_a_silent_pooled_connection_retries_on_a_fresh_one() -> None:
    """A pooled connection whose peer vanished without FIN or RST (a NAT drop) is still in the
    pool: the first attempt times out waiting for Connected, the retry connects afresh."""
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01, jitter="none")
    async with MockFluxEndpoint(script_scope="stream") as endpoint, ConnectionPool() as pool:
        async with FluxClient("flux-ep", pool=pool, **endpoint.client_kwargs()) as flux:
            await flux.close()
        (idle,) = endpoint._server.connections
        idle.pause()  # reads nothing, answers no PING
        with anyio.fail_after(10):
            async with FluxClient(
                "flux-ep",
                pool=pool,
                timeouts=Timeouts(connected=0.5),  # PING at 20 s, as by default
                retry=retry,
                **endpoint.client_kwargs(),
            ) as flux:
                await flux.send_audio(SAMPLE.pcm[:FRAME])
                await flux.close()
    assert endpoint.connections_accepted == 2
    assert flux.stats.streams_opened == 2


@pytest.mark.parametrize("fault_at", [3.5, 5.0])
async def test_a_replay_reports_what_the_bound_dropped_of_the_open_turn_only(
    fault_at: float,
) -> None:
    """A replay buffer of 2 s: turn 0 (2.6 s of audio) overflows it, harmlessly, since it ends.
    A drop about 1 s after that turn's end loses nothing; 2.5 s after, the replay misses some."""
    async with MockFluxEndpoint(
        script=SAMPLE.turns,
        faults=[Fault(kind=FaultKind.DROP_CONNECTION, after_audio_s=fault_at)],
    ) as endpoint:
        events = await run_session(
            endpoint, hold_after_s=fault_at, replay_buffer_bytes=2 * BYTES_PER_SECOND
        )
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    first_end = next(e for e in events if isinstance(e, EndOfTurn)).audio_window_end
    missed = reconnect.resumed_at_s - first_end
    assert reconnect.dropped_audio_s == pytest.approx(missed, abs=0.001)
    assert reconnect.dropped_audio_bytes == round(reconnect.dropped_audio_s * BYTES_PER_SECOND)
    if fault_at == 3.5:
        assert reconnect.dropped_audio_s == 0
    else:
        assert reconnect.dropped_audio_s > 0.3


async def test_opus_sent_during_a_reconnect_is_reported_as_dropped() -> None:
    """Opus is not replayed: what the application sends while the stream is replaced never
    reaches a stream, and the Reconnected event and the stats say exactly how much."""
    packets = [bytes([n]) * 120 for n in range(60)]  # stand-ins: the mock does not decode Opus
    settings = FluxSettings(model="flux-general-en", encoding="opus", sample_rate=48000)
    retry = RetryPolicy(initial_backoff=0.05, max_backoff=0.1, jitter="none")
    events: list[Any] = []
    async with MockFluxEndpoint(faults=[Fault(kind=FaultKind.RESET_STREAM)]) as endpoint:
        with anyio.fail_after(30):
            async with FluxClient(
                "flux-ep", **endpoint.client_kwargs(), settings=settings, retry=retry
            ) as flux:
                # Two refusals: the reconnect takes about 0.15 s, while a packet goes every 10 ms.
                endpoint.fail_requests(RequestFailure.throttling(), count=2)
                for packet in packets:
                    await flux.send_audio(packet)
                    await anyio.sleep(0.01)
                await flux.close()
                events.extend([event async for event in flux])
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    assert reconnect.dropped_audio_s == 0  # Opus has no byte rate to count seconds with
    assert reconnect.dropped_audio_bytes > 0
    stats = flux.stats
    assert stats.dropped_bytes == reconnect.dropped_audio_bytes
    assert stats.audio_bytes_accepted == stats.audio_bytes_sent + stats.dropped_bytes
    first, *_, last = endpoint.streams
    assert bytes(first.audio) == packets[0]  # the packet the reset struck
    # The new stream got the packets sent once it was up: the latest ones, in order.
    assert bytes(last.audio) == b"".join(packets[-len(last.audio) // 120 :])


async def test_an_opus_packet_whose_write_failed_is_reported_as_dropped() -> None:
    """An Opus packet the stream failed under (its peer went silent while the packet waited
    for the window) reached no stream and is not replayed: the Reconnected event and the
    stats count it as dropped, not as sent."""
    packet = bytes(range(256)) * 32  # larger than the window: its write must wait
    settings = FluxSettings(model="flux-general-en", encoding="opus", sample_rate=48000)
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter="none")
    async with MockFluxEndpoint(receive_window=4096) as endpoint:
        with anyio.fail_after(30):
            async with FluxClient(
                "flux-ep",
                **endpoint.client_kwargs(),
                settings=settings,
                retry=retry,
                timeouts=FAST_TIMEOUTS,
            ) as flux:
                (connection,) = endpoint._server.connections
                connection.pause()  # reads nothing more, answers no PING
                await flux.send_audio(packet)  # returns once the connection failed under it
                reconnect = await next_of(flux, Reconnected)
                await flux.close()
    first, second = endpoint.streams
    assert bytes(first.audio + second.audio) == b""  # no stream heard the packet
    assert reconnect.dropped_audio_bytes == len(packet)
    stats = flux.stats
    assert stats.audio_bytes_sent == 0
    assert stats.dropped_bytes == stats.audio_bytes_accepted == len(packet)


async def test_throttled_reconnects_back_off_then_recover() -> None:
    async with MockFluxEndpoint(
        script=SAMPLE.turns,
        faults=[Fault(kind=FaultKind.DROP_CONNECTION, after_audio_s=MID_TURN)],
    ) as endpoint:
        endpoint.fail_requests(RequestFailure.throttling(), count=0)
        original = endpoint._handle

        async def throttle_reconnects(stream: Any) -> None:
            if len(endpoint.streams) == 1:  # after the first stream: throttle twice, then 503
                endpoint.fail_requests(RequestFailure.throttling(), count=2)
                endpoint.fail_requests(RequestFailure.service_unavailable(), count=1)
            await original(stream)

        endpoint._server._handler = throttle_reconnects
        events = await run_session(endpoint)
    assert_turns_complete(events)
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    assert reconnect.attempts == 4
    assert [s.status for s in endpoint.streams] == [200, 400, 400, 503, 200]
    assert_audio_delivered(endpoint, events)


@pytest.mark.parametrize(
    "second",
    [
        Fault(kind=FaultKind.MODEL_STREAM_ERROR, after_audio_s=2.0, stream_index=1),
        # Stream 1 breaks on its first replayed event, while the client is still replaying.
        Fault(kind=FaultKind.RESET_STREAM, after_audio_s=0.0, stream_index=1),
    ],
    ids=["later", "during-replay"],
)
async def test_two_faults_in_a_row_recover_twice(second: Fault) -> None:
    first = Fault(kind=FaultKind.RESET_STREAM, after_audio_s=MID_TURN)
    async with MockFluxEndpoint(script=SAMPLE.turns, faults=[first, second]) as endpoint:
        events = await run_session(endpoint)
    assert_turns_complete(events)
    assert len([e for e in events if isinstance(e, Reconnected)]) == 2
    assert_audio_delivered(endpoint, events)


async def test_rollover_switches_at_turn_boundaries_with_no_gap_or_duplicate() -> None:
    async with MockFluxEndpoint(script=SAMPLE.turns) as endpoint:
        events = await run_session(
            endpoint,
            speed=TIMED_SPEED,
            rollover=RolloverPolicy(max_stream_duration=4.0, margin=3.0),
        )
    assert_turns_complete(events)
    rolls = [e for e in events if isinstance(e, StreamRolledOver)]
    assert rolls
    assert all(r.reason == "maximum stream duration" for r in rolls)
    assert not [e for e in events if isinstance(e, Reconnected)]
    # Each switch happened right after an EndOfTurn: almost nothing had to be replayed.
    assert all(r.replayed_audio_s < 0.5 for r in rolls)
    assert_audio_delivered(endpoint, events)


async def test_a_planned_switch_the_endpoint_refuses_is_tried_again_only_after_a_pause() -> None:
    """The endpoint refuses the stream a rollover opens (access denied): the session keeps its
    stream and waits before trying again. It tried at every look of its timers, about once a
    second, until SageMaker ended the stream: up to two minutes of a request a second."""
    rollover = RolloverPolicy(max_stream_duration=1.0, margin=0.0)

    async def settle(flux: FluxClient) -> None:
        """Until the supervisor has looked once more and no switch is under way."""
        rounds = flux._supervisor_rounds
        flux._wake_supervisor()
        while flux._supervisor_rounds == rounds or flux._switching:  # noqa: ASYNC110
            await anyio.sleep(0.01)

    half_a_second = SAMPLE.pcm[: BYTES_PER_SECOND // 2]
    async with MockFluxEndpoint(script=SAMPLE.turns) as endpoint:
        with anyio.fail_after(30):
            async with FluxClient(
                "flux-ep",
                **endpoint.client_kwargs(),
                timeouts=FAST_TIMEOUTS,
                keepalive=KeepalivePolicy.disabled(),
                rollover=rollover,
            ) as flux:
                endpoint.fail_requests(RequestFailure.access_denied(), count=100)
                while len(endpoint.streams) < 2:  # noqa: ASYNC110 - the first switch, refused
                    await anyio.sleep(0.01)
                for _ in range(5):
                    await settle(flux)  # the switch is due at every look
                await flux.send_audio(half_a_second)
                await flux.close()
    assert [stream.status for stream in endpoint.streams] == [200, 403]
    assert flux.stats.rollovers == 0
    assert bytes(endpoint.streams[0].audio) == half_a_second


async def test_sagemaker_stream_time_limit_is_survived() -> None:
    async with MockFluxEndpoint(script=SAMPLE.turns, max_stream_duration=0.8) as endpoint:
        events = await run_session(endpoint, speed=TIMED_SPEED)
    assert_turns_complete(events)
    reconnects = [e for e in events if isinstance(e, Reconnected)]
    assert reconnects
    assert all(isinstance(r.error, ModelStreamError) for r in reconnects)
    assert reconnects[0].error.error_code == "ModelInvocationTimeExceeded"
    assert_audio_delivered(endpoint, events)


def rotating_credentials(keys: list[tuple[str, str]], expires_in: float) -> RefreshableCredentials:
    """Credentials that hand out the next key pair at every refresh."""

    def issue(n: int) -> tuple[str, str, datetime]:
        return *keys[n], datetime.now(UTC) + timedelta(seconds=expires_in)

    return refreshable_credentials(issue)[0]


async def test_credentials_are_refreshed_before_they_expire() -> None:
    keys = [("AKIDFIRST", "secret-one"), ("AKIDSECOND", "secret-two"), ("AKIDTHIRD", "secret-3")]
    accepted = {access: (secret, None) for access, secret in keys}
    # botocore refreshes credentials that expire within 15 minutes (its advisory window), so
    # each stream is signed with a fresh key; the policy switches streams before expiry.
    credentials = rotating_credentials(keys, expires_in=900.5)
    async with MockFluxEndpoint(script=SAMPLE.turns, credentials=accepted) as endpoint:
        kwargs = endpoint.client_kwargs() | {"credentials": credentials}
        events: list[Any] = []
        with anyio.fail_after(30):
            async with (
                FluxClient(
                    "flux-ep",
                    **kwargs,
                    timeouts=FAST_TIMEOUTS,
                    rollover=RolloverPolicy(credential_margin=900.0, margin=0.2),
                ) as flux,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(stream_sample, flux, SAMPLE.pcm, TIMED_SPEED)
                events.extend([event async for event in flux])
    assert_turns_complete(events)
    rolls = [e for e in events if isinstance(e, StreamRolledOver)]
    assert rolls
    assert rolls[0].reason == "credentials expire"
    used = [dict(s.headers)["authorization"].split("Credential=")[1][:9] for s in endpoint.streams]
    assert used[0] != used[1]
    assert_audio_delivered(endpoint, events)


@pytest.mark.parametrize("expires_in", [200.0, 350.0])
async def test_credentials_that_cannot_be_renewed_yet_do_not_switch_streams(
    expires_in: float,
) -> None:
    """A source whose refresh gives back credentials inside the rollover margin (a failed STS
    call in botocore's advisory window keeps the old ones; a cache not yet rotated): a new
    stream would be signed with the same ones, so switching gains nothing, and before the fix
    the session switched streams every few hundred milliseconds until they expired.

    350 s: past the 300 s margin, but the switch they call for (50 s on) is within the
    boundary window (120 s) of the stream's opening. Before the fix the session switched at
    every look between turns, each new stream just as close to that switch, for two minutes.
    """
    expiry = datetime.now(UTC) + timedelta(seconds=expires_in)
    credentials, refreshed = refreshable_credentials(
        lambda _: (DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, expiry)
    )
    async with MockFluxEndpoint(script=SAMPLE.turns) as endpoint:
        kwargs = endpoint.client_kwargs() | {"credentials": credentials}
        events: list[Any] = []
        with anyio.fail_after(30):
            async with (
                FluxClient("flux-ep", **kwargs, timeouts=FAST_TIMEOUTS) as flux,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(stream_sample, flux, SAMPLE.pcm, TIMED_SPEED)
                events.extend([event async for event in flux])
    assert_turns_complete(events)
    assert not [e for e in events if isinstance(e, StreamRolledOver)]
    assert len(endpoint.streams) == 1
    assert len(refreshed) >= 2  # it was asked, and had nothing fresher


async def test_a_reconnect_whose_credentials_refresh_fails_ends_with_a_validation_error() -> None:
    """The refresh for the new stream hands back expired credentials (botocore raises a
    RuntimeError): the session ended as if the client had a bug, with LocalProtocolError
    ("internal error in the Flux client") and a logged traceback."""
    # The first two (the metadata, the first stream's refresh) are valid: within botocore's
    # mandatory window, every stream refreshes.
    credentials, issued = credentials_going_stale(valid=2)
    fault = Fault(kind=FaultKind.RESET_STREAM, after_audio_s=MID_TURN)
    async with MockFluxEndpoint(script=SAMPLE.turns, faults=[fault]) as endpoint:
        with pytest.raises(ValidationError, match="could not get AWS credentials"):
            await run_session(endpoint, credentials=credentials)
    assert len(endpoint.streams) == 1
    assert len(issued) == 3


NOT_RETRIED = [
    (FaultKind.DROP_CONNECTION, ConnectionLost),
    (FaultKind.GOAWAY, GoAway),
    (FaultKind.RESET_STREAM, StreamReset),
    (FaultKind.STALL, StreamStalled),
    (FaultKind.SILENT_CONNECTION, ConnectionLost),
    (FaultKind.MODEL_STREAM_ERROR, ModelStreamError),
    (FaultKind.INTERNAL_STREAM_FAILURE, InternalStreamFailure),
    (FaultKind.END_STREAM, TransportError),
]


@pytest.mark.parametrize(("kind", "error"), NOT_RETRIED, ids=lambda v: getattr(v, "value", ""))
async def test_without_retries_each_fault_raises_its_typed_error(
    kind: FaultKind, error: type[FluxError]
) -> None:
    # A silent peer must be caught by the PING timeout here, not by the stall watchdog.
    keepalive = (
        KeepalivePolicy(stall_timeout=None) if kind is FaultKind.SILENT_CONNECTION else WATCHDOG
    )
    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=[Fault(kind=kind, after_audio_s=MID_TURN)]
    ) as endpoint:
        speed = STALL_SPEED if kind is FaultKind.STALL else SPEED
        with pytest.raises(error) as raised:
            await run_session(endpoint, speed=speed, retry=NO_RETRY, keepalive=keepalive)
    assert raised.value.retryable


async def test_non_retryable_flux_error_is_raised_even_with_retries() -> None:
    fault = Fault(
        kind=FaultKind.FLUX_ERROR, after_audio_s=MID_TURN, error_code="UNPARSABLE_CLIENT_MESSAGE"
    )
    async with MockFluxEndpoint(script=SAMPLE.turns, faults=[fault]) as endpoint:
        with pytest.raises(FluxServerError) as raised:
            await run_session(endpoint)
    assert raised.value.code == "UNPARSABLE_CLIENT_MESSAGE"
    assert len(endpoint.streams) == 1


async def test_retry_budget_exhausted_raises_the_last_error() -> None:
    async with MockFluxEndpoint(
        script=SAMPLE.turns,
        faults=[Fault(kind=FaultKind.DROP_CONNECTION, after_audio_s=MID_TURN)],
    ) as endpoint:
        original = endpoint._handle

        async def throttle_after_first(stream: Any) -> None:
            if len(endpoint.streams) >= 1:
                endpoint.fail_requests(RequestFailure.throttling())
            await original(stream)

        endpoint._server._handler = throttle_after_first
        with pytest.raises(ThrottlingError):
            await run_session(endpoint, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01))
    assert [s.status for s in endpoint.streams] == [200, 400, 400]


async def test_streams_broken_before_flux_answers_count_as_one_run_of_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An endpoint that accepts every stream and breaks it at once (a container failing on
    its first audio): each new stream reached Connected, but that is no recovery. The retry
    policy bounds the run, instead of a reconnect and a warning at the first backoff, for ever."""
    caplog.set_level(logging.INFO, logger="flux_sagemaker")
    broken = [
        Fault(kind=FaultKind.RESET_STREAM, after_audio_s=0.0, stream_index=i) for i in range(1, 30)
    ]
    async with MockFluxEndpoint(
        script=SAMPLE.turns,
        faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=MID_TURN), *broken],
    ) as endpoint:
        with pytest.raises(StreamReset):
            await run_session(
                endpoint, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
            )
    assert len(endpoint.streams) == 4  # the first, then max_attempts
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 4  # one per failure


async def test_log_records_say_which_session_and_stream_they_are_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sessions share a process and its log: a recovery's warning names the endpoint and the
    failed stream's request id, and carries them and the application's ``log_extra`` as
    fields for formatters and structured logging."""
    caplog.set_level(logging.INFO, logger="flux_sagemaker")
    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=MID_TURN)]
    ) as endpoint:
        events = await run_session(endpoint, log_extra={"call_id": "call-42"})
    assert_turns_complete(events)
    (warning,) = [r for r in caplog.records if r.getMessage().endswith("recovering")]
    failed_request = warning.args[0].request_id
    assert failed_request is not None
    assert warning.getMessage().startswith(f"[flux-ep {failed_request}] Flux stream failed (")
    assert warning.flux_endpoint == "flux-ep"
    assert warning.flux_request_id == failed_request
    assert warning.call_id == "call-42"


@pytest.mark.parametrize(
    ("log_extra", "message"),
    [
        ({"message": "x"}, "'message' is a log record attribute"),
        ({"flux_request_id": "x"}, "'flux_request_id' is a log record attribute"),
        ({1: "x"}, "keys must be str"),
        (["call_id"], "must be a mapping, got list"),
    ],
)
def test_log_extra_that_logging_would_refuse_is_refused_at_construction(
    log_extra: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        FluxClient("flux-ep", region="us-east-1", log_extra=log_extra)


async def test_turn_silence_keepalive_brings_end_of_turn() -> None:
    # Stop sending right after the first turn's speech: Flux needs audio to finish the turn.
    cut = int(2.35 * BYTES_PER_SECOND) // FRAME * FRAME
    async with MockFluxEndpoint(script=SAMPLE.turns) as endpoint:
        events: list[Any] = []
        with anyio.fail_after(20):
            async with FluxClient(
                "flux-ep",
                **endpoint.client_kwargs(),
                keepalive=KeepalivePolicy(turn_silence_after=0.3),
            ) as flux:
                for offset in range(0, cut, FRAME):
                    await flux.send_audio(SAMPLE.pcm[offset : offset + FRAME])
                async for event in flux:
                    events.append(event)
                    if isinstance(event, EndOfTurn):
                        break
                await flux.close()
    (final,) = [e for e in events if isinstance(e, EndOfTurn)]
    assert final.transcript == SAMPLE.turns[0]
    assert not final.synthetic
    assert flux.stats.silence_bytes_sent > 0
    # The silence was real silence, appended after the application's audio.
    audio = bytes(endpoint.streams[0].audio)
    assert audio[:cut] == SAMPLE.pcm[:cut]
    assert audio[cut:] == bytes(len(audio) - cut)


async def test_idle_keepalive_sends_tiny_silent_frames() -> None:
    async with MockFluxEndpoint() as endpoint:
        with anyio.fail_after(10):
            async with FluxClient(
                "flux-ep", **endpoint.client_kwargs(), keepalive=KeepalivePolicy(idle_interval=0.2)
            ) as flux:
                await anyio.sleep(1.0)
                await flux.close()
    stream = endpoint.streams[0]
    assert stream.audio_events >= 3
    assert bytes(stream.audio) == bytes(len(stream.audio))
    assert len(stream.audio) == 2 * stream.audio_events  # one linear16 sample each


async def test_secrets_never_reach_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    caplog.set_level(logging.DEBUG)
    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=MID_TURN)]
    ) as endpoint:
        events = await run_session(endpoint)
        credentials = endpoint.credentials
    assert isinstance(credentials, Credentials)
    text = caplog.text + " ".join(repr(e) for e in events)
    signatures = [
        dict(s.headers)["authorization"].rpartition("Signature=")[2] for s in endpoint.streams
    ]
    assert secret not in text
    for signature in signatures:
        assert signature not in text


async def test_close_while_reconnecting_still_drains_every_turn() -> None:
    # Audio sent as fast as allowed: close() lands while the failed stream is being replaced.
    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=3.5)]
    ) as endpoint:
        events: list[Any] = []
        with anyio.fail_after(20):
            async with FluxClient(
                "flux-ep", **endpoint.client_kwargs(), timeouts=FAST_TIMEOUTS
            ) as flux:
                await flux.send_audio(SAMPLE.pcm)
                await flux.close()
                events.extend([event async for event in flux])
    assert_turns_complete(events)
    assert [e for e in events if isinstance(e, Reconnected)]
    assert endpoint.streams[-1].texts == ['{"type":"CloseStream"}']
    assert_audio_delivered(endpoint, events)


async def test_a_request_the_server_did_not_process_is_sent_again_at_once() -> None:
    """A GOAWAY below the request's stream (a server going away) spends no retry attempt."""
    async with MockFluxEndpoint(script=SAMPLE.turns) as endpoint:
        endpoint.goaway_requests(UNPROCESSED_RETRIES)
        events = await run_session(endpoint, retry=NO_RETRY)
    assert_turns_complete(events)
    assert not [e for e in events if isinstance(e, Reconnected)]
    refused = endpoint.streams[:UNPROCESSED_RETRIES]
    assert [s.error for s in refused] == ["GOAWAY before handling the request"] * len(refused)
    assert [s.status for s in endpoint.streams[UNPROCESSED_RETRIES:]] == [200]
    assert_audio_delivered(endpoint, events)


async def test_unprocessed_past_the_limit_is_a_goaway_error() -> None:
    async with MockFluxEndpoint(script=SAMPLE.turns) as endpoint:
        endpoint.goaway_requests(UNPROCESSED_RETRIES + 1)
        with pytest.raises(GoAway) as caught:
            await run_session(endpoint, retry=NO_RETRY)
    assert caught.value.unprocessed
    assert caught.value.retryable
    assert len(endpoint.streams) == UNPROCESSED_RETRIES + 1


async def test_a_connection_that_goes_silent_during_close_is_probed_and_recovered() -> None:
    """The drain after CloseStream is watched: the open turn still ends within close()."""
    cut = int(4.5 * BYTES_PER_SECOND) // FRAME * FRAME  # inside the second turn
    async with MockFluxEndpoint(
        script=SAMPLE.turns,
        faults=[Fault(kind=FaultKind.SILENT_CONNECTION, after_audio_s=4.4)],
    ) as endpoint:
        # The default PING timing (20 s, then 10 s) alone would notice only after close()'s
        # 10 s budget; the default stall watchdog (10 s) watches flowing audio only.
        events = await run_session(
            endpoint, SAMPLE.pcm[:cut], timeouts=Timeouts(), keepalive=KeepalivePolicy()
        )
    finals = [e for e in events if isinstance(e, EndOfTurn)]
    assert [e.turn_index for e in finals] == [0, 1]
    assert finals[1].transcript.startswith("Tomorrow")
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    assert isinstance(reconnect.error, ConnectionLost)
    assert "PING" in str(reconnect.error)
    assert_audio_delivered(endpoint, events, SAMPLE.pcm[:cut])


async def test_a_connection_that_goes_silent_while_the_window_is_shut_is_probed() -> None:
    """A peer gone mid-stream without FIN or RST: the window shuts and the sender waits. The
    wait probes the connection, so it fails by PING within seconds, not by the stall
    watchdog (10 s) or the write limit (10 s) with every sender on the connection held."""
    async with MockFluxEndpoint(
        script=SAMPLE.turns,
        faults=[Fault(kind=FaultKind.SILENT_CONNECTION, after_audio_s=MID_TURN)],
        receive_window=4096,
    ) as endpoint:
        events = await run_session(endpoint, timeouts=Timeouts(), keepalive=KeepalivePolicy())
    (reconnect,) = [e for e in events if isinstance(e, Reconnected)]
    assert isinstance(reconnect.error, ConnectionLost)
    assert "PING within 2 s" in str(reconnect.error)
    assert_audio_delivered(endpoint, events)
    assert_turns_complete(events)


async def test_a_hung_flux_that_closed_our_window_is_replaced_without_waiting_for_it() -> None:
    """Flux hangs mid-turn: it neither answers nor reads any more, so our flow-control window
    closes and the sender waits. The stall watchdog calls the stream dead; it is reset and the
    next one opened at once, not after waiting up to ``Timeouts.close`` to end its input
    through a window that will never open again."""
    hang = Fault(kind=FaultKind.LATENCY, after_audio_s=0.5, latency=3600)
    # The window holds 1 s of audio: it closes well before the watchdog's 2 s are up, and
    # the audio flowed until then (real-time pace), so the watchdog does fire.
    keepalive = KeepalivePolicy(turn_silence_after=None, idle_interval=None, stall_timeout=2.0)
    # Waiting for the window would take this long; the hang bound below is far shorter.
    timeouts = Timeouts(connected=3.0, write=None, close=30.0, ping_interval=None)

    async def send_in_real_time(flux: FluxClient) -> None:
        start = anyio.current_time()
        for n, offset in enumerate(range(0, len(SAMPLE.pcm), FRAME)):
            await flux.send_audio(SAMPLE.pcm[offset : offset + FRAME])
            await anyio.sleep(max(0.0, start + (n + 1) * 0.02 - anyio.current_time()))

    async with MockFluxEndpoint(
        script=SAMPLE.turns, faults=[hang], receive_window=BYTES_PER_SECOND
    ) as endpoint:
        with anyio.fail_after(10):
            async with FluxClient(
                "flux-ep",
                **endpoint.client_kwargs(),
                timeouts=timeouts,
                keepalive=keepalive,
                retry=RetryPolicy(initial_backoff=0.01, jitter="none"),
            ) as flux:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(send_in_real_time, flux)
                    reconnected = await next_of(flux, Reconnected)
                    tg.cancel_scope.cancel()
                await flux.close()
    assert isinstance(reconnected.error, StreamStalled)
    first, second = endpoint.streams
    assert first.fault == hang
    assert second.status == 200
