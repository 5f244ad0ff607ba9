"""Whole sessions: the sample's turns come back in order, with all five turn events."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from flux_sagemaker import (
    Connected,
    EagerEndOfTurn,
    EndOfTurn,
    FluxClient,
    FluxSettings,
    LocalProtocolError,
    StartOfTurn,
    TurnInfo,
    TurnResumed,
    Update,
    UsageError,
)
from flux_sagemaker.core.turns import TurnTracker
from flux_sagemaker.testing.session import StreamSession

from .helpers import (
    SAMPLE,
    TEST_TIMEOUT,
    EndpointFactory,
    client_for,
    events_until_error,
    ms,
    of_type,
    run_session,
    send_audio,
)

pytestmark = pytest.mark.anyio


def _words(text: str) -> list[str]:
    return text.split()


async def test_sample_turns_with_eager_end_of_turn(endpoint: EndpointFactory) -> None:
    settings = FluxSettings(eager_eot_threshold=0.3)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, settings=settings) as flux:
            events = await run_session(flux, SAMPLE.pcm)
    assert isinstance(events[0], Connected)
    assert flux.is_closed
    turn_events = of_type(events, TurnInfo)
    kinds = {type(e) for e in turn_events}
    assert {StartOfTurn, Update, EagerEndOfTurn, TurnResumed, EndOfTurn} <= kinds
    # Per turn: StartOfTurn first, EndOfTurn last, eager/resumed alternate in between.
    for index in range(len(SAMPLE.turns)):
        turn = [e for e in turn_events if e.turn_index == index and type(e) is not Update]
        names = [type(e).__name__ for e in turn]
        assert names[0] == "StartOfTurn", names
        assert names[-1] == "EndOfTurn", names
        middle = names[1:-1]
        assert middle == ["EagerEndOfTurn", "TurnResumed"] * (len(middle) // 2) + (
            ["EagerEndOfTurn"] if len(middle) % 2 else []
        ), names
    # turn_index never goes back and covers exactly the script's turns.
    indexes = [e.turn_index for e in turn_events]
    assert indexes == sorted(indexes)
    ends = of_type(events, EndOfTurn)
    assert [e.transcript for e in ends] == [" ".join(_words(t)) for t in SAMPLE.turns]
    assert [e.turn_index for e in ends] == list(range(len(SAMPLE.turns)))
    assert not any(e.synthetic for e in ends)
    # Each EndOfTurn repeats the transcript of the EagerEndOfTurn just before it.
    for end in ends:
        before = turn_events[: turn_events.index(end)]
        eager = [e for e in before if isinstance(e, EagerEndOfTurn)][-1]
        assert eager.turn_index == end.turn_index
        assert end.transcript == eager.transcript
    # "seven, please": the speaker resumed after an eager end of turn in the second turn.
    resumed = of_type(turn_events, TurnResumed)
    assert any(e.turn_index == 1 for e in resumed)


async def test_sample_turns_without_eager(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            events = await run_session(flux, SAMPLE.pcm, realtime_factor=20)
    turn_events = of_type(events, TurnInfo)
    assert not of_type(turn_events, EagerEndOfTurn, TurnResumed)
    ends = of_type(events, EndOfTurn)
    assert [e.transcript for e in ends] == list(SAMPLE.turns)
    assert [e.trigger for e in ends] == ["model", "model"]
    starts = of_type(events, StartOfTurn)
    assert [e.turn_index for e in starts] == [0, 1]
    # Updates carry growing prefixes of the scripted transcript.
    for update in of_type(turn_events, Update):
        if update.transcript:
            script = SAMPLE.turns[update.turn_index]
            assert script.startswith(update.transcript)
    assert ep.streams[0].event_types[0] == "Connected"


async def test_a_consumer_that_falls_behind_gets_every_event_in_order(
    endpoint: EndpointFactory,
) -> None:
    """A full buffer hands the stream back to its reader task, which waits for the consumer."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as reference:
            expected = await run_session(reference, SAMPLE.pcm)
        async with endpoint() as ep, client_for(ep, max_buffered_events=2) as flux:
            most_buffered = 0

            async def sender() -> None:
                await send_audio(flux, SAMPLE.pcm)
                await flux.close()

            events = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                # Consume nothing while the session runs well ahead, then everything.
                for _ in range(50):
                    await anyio.sleep(0.01)
                    most_buffered = max(most_buffered, len(flux._events))
                events = [event async for event in flux]
    # The consumer was behind: the buffer filled, and held no more than the events of the
    # chunk that filled it (the session had 30 ready).
    assert 2 <= most_buffered <= 10
    assert [(type(e), getattr(e, "transcript", None)) for e in events] == [
        (type(e), getattr(e, "transcript", None)) for e in expected
    ]


async def test_a_bug_in_event_handling_ends_the_session_with_a_typed_error(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's reader runs our event handling; a bug there must not pass silently."""

    def broken(self: TurnTracker, event: TurnInfo) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(TurnTracker, "observe", broken)

    async def sender(flux: FluxClient) -> None:
        with contextlib.suppress(UsageError):  # the session may fail before all is sent
            await send_audio(flux, SAMPLE.pcm[: ms(1000)])

    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux, anyio.create_task_group() as tg:
            tg.start_soon(sender, flux)
            error = await events_until_error(flux, [])
    assert isinstance(error, LocalProtocolError)
    assert "internal error" in str(error)
    assert "a bug" in str(error)


@pytest.mark.parametrize("end", [-5.0, 1e300], ids=["negative", "absurd"])
async def test_an_end_of_turn_time_out_of_range_does_not_end_the_session(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch, end: float
) -> None:
    """The client trims its replay buffer at each EndOfTurn's audio_window_end: a time before
    the session or past what was sent is the server's mistake, not a reason to fail."""
    send = StreamSession._send

    async def wild_end_times(self: StreamSession, messages: Sequence[dict[str, Any]]) -> None:
        for message in messages:
            if message.get("event") == "EndOfTurn":
                message["audio_window_end"] = end
        await send(self, messages)

    monkeypatch.setattr(StreamSession, "_send", wild_end_times)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            events = await run_session(flux, SAMPLE.pcm)
    assert [e.transcript for e in of_type(events, EndOfTurn)] == list(SAMPLE.turns)
    assert flux.stats.audio_bytes_sent == len(SAMPLE.pcm)
