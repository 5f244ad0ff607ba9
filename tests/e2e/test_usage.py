"""Misuse is refused locally with UsageError/ValidationError; exiting never hangs."""

from __future__ import annotations

import array
import contextlib
import sys
from typing import Any

import anyio
import pytest
from botocore.credentials import Credentials

from flux_sagemaker import (
    EndOfTurn,
    FluxClient,
    FluxSettings,
    Timeouts,
    UsageError,
    ValidationError,
)
from flux_sagemaker.core.audio import MAX_AUDIO_EVENT_BYTES
from flux_sagemaker.testing import Fault, FaultKind

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

FIRST_TURN_DONE = SAMPLE.pcm[: ms(3100)]


async def test_calls_before_entering_are_usage_errors(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            flux = client_for(ep)
            with pytest.raises(UsageError):
                await flux.send_audio(b"\x00\x00")
            with pytest.raises(UsageError):
                await flux.configure(eot_threshold=0.8)
            with pytest.raises(UsageError):
                await flux.force_end_turn()
            with pytest.raises(UsageError, match="enter the client"):
                await anext(aiter(flux))  # it used to wait forever for an event
            # Nothing was sent, and the client can still be used normally.
            async with flux:
                events = await run_session(flux, FIRST_TURN_DONE)
    assert [e.transcript for e in of_type(events, EndOfTurn)] == [SAMPLE.turns[0]]
    assert bytes(ep.streams[0].audio) == FIRST_TURN_DONE


async def test_calls_after_close_are_usage_errors(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            async with client_for(ep) as flux:
                await flux.send_audio(FIRST_TURN_DONE)
                await flux.close()
                with pytest.raises(UsageError):
                    await flux.send_audio(b"\x00\x00")
                with pytest.raises(UsageError):
                    await flux.configure(eot_threshold=0.8)
                with pytest.raises(UsageError):
                    await flux.force_end_turn()
                await flux.close()  # closing again is fine
            with pytest.raises(UsageError):
                await flux.send_audio(b"\x00\x00")
            with pytest.raises(UsageError):
                async with flux:
                    pass  # a client is entered once
    assert bytes(ep.streams[0].audio) == FIRST_TURN_DONE
    assert ep.streams[0].texts == ['{"type":"CloseStream"}']


BAD_AUDIO = {
    "str": "not audio",
    "list": [0, 1, 2, 3],
    "int": 1234,
    "none": None,
    "odd-bytes": b"\x00\x01\x02",
    "odd-bytearray": bytearray(5),
}


async def test_bad_audio_is_refused_and_the_session_continues(
    endpoint: EndpointFactory,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            half = len(FIRST_TURN_DONE) // 2
            await flux.send_audio(FIRST_TURN_DONE[:half])
            for bad in BAD_AUDIO.values():
                with pytest.raises(ValidationError):
                    await flux.send_audio(bad)  # type: ignore[arg-type]
            await flux.send_audio(FIRST_TURN_DONE[half:])
            await flux.close()
            events = await collect(flux)
    assert bytes(ep.streams[0].audio) == FIRST_TURN_DONE
    assert [e.transcript for e in of_type(events, EndOfTurn)] == [SAMPLE.turns[0]]


async def test_an_opus_chunk_larger_than_an_event_is_refused_before_it_counts(
    endpoint: EndpointFactory,
) -> None:
    settings = FluxSettings(model="flux-general-en", encoding="opus", sample_rate=48000)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, settings=settings) as flux:
            with pytest.raises(ValidationError, match="cannot be cut"):
                await flux.send_audio(bytes(MAX_AUDIO_EVENT_BYTES + 1))
            assert flux.stats.audio_bytes_accepted == 0
            await flux.send_audio(b"\x01" * 120)  # the session goes on
            await flux.close()
            await collect(flux)
    assert bytes(ep.streams[0].audio) == b"\x01" * 120
    assert flux.stats.audio_bytes_accepted == flux.stats.audio_bytes_sent == 120


async def test_typed_buffers_are_sent_as_their_bytes(endpoint: EndpointFactory) -> None:
    samples = array.array("h")
    samples.frombytes(FIRST_TURN_DONE)
    if sys.byteorder != "little":  # pragma: no cover - linear16 is little-endian
        samples.byteswap()
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            step = 320  # samples, i.e. 20 ms
            for offset in range(0, len(samples), step):
                await flux.send_audio(memoryview(samples[offset : offset + step]))
            await flux.close()
    assert bytes(ep.streams[0].audio) == FIRST_TURN_DONE


# -- __aexit__ never hangs --------------------------------------------------------------------

CLOSE = 0.5
SHORT = Timeouts(connect=2.0, connected=2.0, close=CLOSE, write=30.0, ping_interval=None)
EXIT_BOUND = 6 * CLOSE + 2.0
"""Generous: a few close timeouts (CloseStream drain, end of input, stream release) plus slack."""


@pytest.mark.parametrize("kind", [FaultKind.STALL, FaultKind.SILENT_CONNECTION])
async def test_exit_returns_while_the_server_is_stalled(
    endpoint: EndpointFactory, kind: FaultKind
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=[Fault(kind=kind, after_audio_s=1.0)]) as ep:
            with anyio.fail_after(EXIT_BOUND):
                async with client_for(ep, timeouts=SHORT) as flux:
                    await flux.send_audio(SAMPLE.pcm[: ms(2000)])
            assert flux.is_closed
    assert ep.streams[0].error == f"fault: {kind.value}"


async def test_exit_returns_while_a_sender_is_blocked_by_flow_control(
    endpoint: EndpointFactory,
) -> None:
    """A sender stuck on a closed flow-control window must not hold up the exit."""
    fault = Fault(kind=FaultKind.SILENT_CONNECTION, after_audio_s=0.5)

    async def sender(flux: FluxClient) -> None:
        with contextlib.suppress(UsageError):
            # Far more than any window: the send blocks once the server stops reading.
            for _ in range(20):
                await flux.send_audio(SAMPLE.pcm)

    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=[fault]) as ep, anyio.create_task_group() as tg:
            with anyio.fail_after(EXIT_BOUND):
                async with client_for(ep, timeouts=SHORT) as flux:
                    tg.start_soon(sender, flux)
                    await anyio.wait_all_tasks_blocked()
            assert flux.is_closed
            tg.cancel_scope.cancel()
    assert ep.streams[0].error == f"fault: {FaultKind.SILENT_CONNECTION.value}"


async def test_an_exit_cancelled_while_it_drains_still_shuts_the_session_down(
    endpoint: EndpointFactory,
) -> None:
    """An outer timeout (or a failing sibling) cancels the block's exit while its graceful
    close waits for the server's last events: the cancellation goes through, and the session
    is shut down all the same (not left with its task group open, which anyio and trio both
    refuse when the outer scope exits)."""
    exiting = anyio.Event()

    async def cancel_once_all_wait(scope: anyio.CancelScope) -> None:
        await exiting.wait()
        await anyio.wait_all_tasks_blocked()  # the exit waits for the drain
        scope.cancel()

    with anyio.fail_after(TEST_TIMEOUT):
        # A slow server: the drain after CloseStream would last the close timeout.
        slow = Fault(kind=FaultKind.LATENCY, after_audio_s=1.0, latency=TEST_TIMEOUT)
        async with endpoint(faults=[slow]) as ep:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:
                    tg.start_soon(cancel_once_all_wait, scope)
                    async with client_for(ep) as flux:
                        await flux.send_audio(SAMPLE.pcm[: ms(2000)])
                        exiting.set()
            assert scope.cancelled_caught
            assert flux.is_closed
            with pytest.raises(UsageError):
                await flux.send_audio(b"\x00\x00")
            assert [e async for e in flux] == []


@pytest.mark.parametrize("value", [0, 2.5, "16", None])
def test_max_buffered_events_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ValidationError, match="max_buffered_events"):
        FluxClient(
            "flux-e2e",
            region="us-east-1",
            endpoint_url="http://127.0.0.1:9",
            credentials=Credentials("AKIDEXAMPLE", "secret"),  # no credential chain to walk
            max_buffered_events=value,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("name", "value", "settings"),
    [
        ("replay_buffer_bytes", -1, None),  # was reported as "max_bytes"
        ("replay_buffer_bytes", 1.5, None),
        ("replay_buffer_bytes", -1, FluxSettings(encoding="opus")),  # was accepted
        ("coalesce_ms", -1, None),  # was reported as "target_ms"
        ("coalesce_ms", "80", None),
    ],
)
def test_bad_numbers_are_refused_under_the_argument_name(
    name: str, value: object, settings: FluxSettings | None
) -> None:
    kwargs: dict[str, Any] = {
        "region": "us-east-1",
        "endpoint_url": "http://127.0.0.1:9",
        "credentials": Credentials("AKIDEXAMPLE", "secret"),
        "settings": settings,
        name: value,
    }
    with pytest.raises(ValidationError, match=f"^{name} must be"):
        FluxClient("flux-e2e", **kwargs)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timeouts", 5.0),
        ("retry", {"max_attempts": 2}),
        ("keepalive", "60s"),
        ("rollover", "30m"),
        ("settings", {"model": "flux-general-en"}),
        ("capabilities", True),
        ("pool", object()),
        ("use_fips", "false"),  # a truthy string would turn FIPS on
        ("use_dualstack", 0),
        ("ssl_context", "/etc/ssl/cert.pem"),
        ("session", object()),  # a boto3 Session, say
        ("credentials", ("AKIDEXAMPLE", "secret")),
    ],
)
def test_arguments_of_the_wrong_type_are_refused_at_once(name: str, value: object) -> None:
    kwargs: dict[str, Any] = {
        "region": "us-east-1",
        "endpoint_url": "http://127.0.0.1:9",
        "credentials": Credentials("AKIDEXAMPLE", "secret"),
        name: value,
    }
    with pytest.raises(ValidationError, match=f"^{name} must be"):
        FluxClient("flux-e2e", **kwargs)
