"""Configure, update_settings and ForceEndTurn against each bundle's behaviour."""

from __future__ import annotations

import json

import anyio
import pytest

from flux_sagemaker import (
    BundleCapabilities,
    CapabilityError,
    ConfigureFailure,
    ConfigureSuccess,
    EndOfTurn,
    ServerWarning,
    StartOfTurn,
    StreamRolledOver,
)
from flux_sagemaker.testing import FLUX_ENGLISH_20260311, FLUX_MULTI_20260417

from .helpers import (
    SAMPLE,
    TEST_TIMEOUT,
    EndpointFactory,
    client_for,
    collect,
    ms,
    next_of,
    of_type,
    send_audio,
)

pytestmark = pytest.mark.anyio

FIRST_TURN = SAMPLE.pcm[: ms(1200)]
"""Audio well into the first turn (0.3 s of silence, then speech)."""


async def test_configure_success_updates_settings(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            await flux.send_audio(FIRST_TURN)
            await flux.configure(eot_threshold=0.8, keyterms=["table", "seven"])
            success = await next_of(flux, ConfigureSuccess)
            assert success.thresholds.eot_threshold == 0.8
            assert success.keyterms == ("table", "seven")
            assert flux.settings.eot_threshold == 0.8
            assert flux.settings.keyterms == ("table", "seven")
            await send_audio(flux, SAMPLE.pcm[len(FIRST_TURN) :])
            await flux.close()
            rest = await collect(flux)
    assert [e.transcript for e in of_type(rest, EndOfTurn)] == list(SAMPLE.turns)
    assert json.loads(ep.streams[0].texts[0])["type"] == "Configure"


async def test_configure_failure_keeps_the_session(endpoint: EndpointFactory) -> None:
    caps = BundleCapabilities.flux_multi_20260417()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_MULTI_20260417) as ep,
            client_for(ep, capabilities=caps) as flux,
        ):
            await flux.send_audio(FIRST_TURN)
            # Valid for the client (0.5-1.0), above this bundle's maximum of 0.9.
            await flux.configure(eot_threshold=0.95)
            failure = await next_of(flux, ConfigureFailure)
            assert failure.code == "INVALID_THRESHOLD"
            assert flux.settings.eot_threshold is None  # unchanged
            await send_audio(flux, SAMPLE.pcm[len(FIRST_TURN) :])
            await flux.close()
            rest = await collect(flux)
    assert [e.transcript for e in of_type(rest, EndOfTurn)] == list(SAMPLE.turns)
    assert len(ep.streams) == 1
    assert ep.streams[0].error is None


async def test_configure_unsupported_raises_before_sending(endpoint: EndpointFactory) -> None:
    caps = BundleCapabilities.flux_english_20260311()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_ENGLISH_20260311) as ep,
            client_for(ep, capabilities=caps) as flux,
        ):
            await flux.send_audio(FIRST_TURN)
            with pytest.raises(CapabilityError):
                await flux.configure(eot_threshold=0.8)
            with pytest.raises(CapabilityError):
                await flux.force_end_turn()
            await send_audio(flux, SAMPLE.pcm[len(FIRST_TURN) :])
            await flux.close()
            events = await collect(flux)
    assert [e.transcript for e in of_type(events, EndOfTurn)] == list(SAMPLE.turns)
    (stream,) = ep.streams
    assert stream.texts == ['{"type":"CloseStream"}']  # nothing fatal reached the bundle
    assert stream.error is None


async def test_update_settings_reconnects_where_configure_is_unsupported(
    endpoint: EndpointFactory,
) -> None:
    caps = BundleCapabilities.flux_english_20260311()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_ENGLISH_20260311) as ep,
            client_for(ep, capabilities=caps) as flux,
        ):
            first_turn_done = SAMPLE.pcm[: ms(3100)]
            await flux.send_audio(first_turn_done)
            end = await next_of(flux, EndOfTurn)
            assert end.transcript == SAMPLE.turns[0]
            await flux.update_settings(eot_threshold=0.85)
            rolled = await next_of(flux, StreamRolledOver)
            assert "settings" in rolled.reason
            assert flux.settings.eot_threshold == 0.85
            await send_audio(flux, SAMPLE.pcm[len(first_turn_done) :])
            await flux.close()
            rest = await collect(flux)
    assert len(ep.streams) == 2
    new = ep.streams[1]
    query = dict(new.headers)["x-amzn-sagemaker-model-query-string"]
    assert "eot_threshold=0.85" in query.split("&")
    assert new.settings is not None
    assert new.settings.eot_threshold == 0.85
    assert ep.streams[0].settings is not None
    assert ep.streams[0].settings.eot_threshold is None
    ends = of_type(rest, EndOfTurn)
    assert [e.transcript for e in ends] == [SAMPLE.turns[1]]
    assert [e.turn_index for e in ends] == [1]
    # The old stream was closed properly; no audio was lost on the new one.
    assert ep.streams[0].input_ended
    assert bytes(new.audio).endswith(SAMPLE.pcm[len(first_turn_done) :])


async def test_force_end_turn_mid_turn(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            await flux.send_audio(FIRST_TURN)
            await next_of(flux, StartOfTurn)
            await flux.force_end_turn()
            end = await next_of(flux, EndOfTurn)
            await flux.close()
            await collect(flux)
    assert end.trigger == "manual"
    assert end.turn_index == 0
    assert end.transcript == SAMPLE.turns[0]
    assert not end.synthetic
    assert ep.streams[0].texts == ['{"type":"ForceEndTurn"}', '{"type":"CloseStream"}']


async def test_force_end_turn_without_a_turn_warns(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            await flux.send_audio(SAMPLE.pcm[: ms(160)])  # leading silence only
            await flux.force_end_turn()
            warning = await next_of(flux, ServerWarning)
            assert warning.code == "FORCE_END_TURN_NO_ACTIVE_TURN"
            # Still alive: the turns come through afterwards.
            await send_audio(flux, SAMPLE.pcm[ms(160) :])
            await flux.close()
            rest = await collect(flux)
    assert [e.transcript for e in of_type(rest, EndOfTurn)] == list(SAMPLE.turns)
    assert ep.streams[0].error is None


async def test_force_end_turn_unsupported(endpoint: EndpointFactory) -> None:
    caps = BundleCapabilities.flux_multi_20260417()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_MULTI_20260417) as ep,
            client_for(ep, capabilities=caps) as flux,
        ):
            await flux.send_audio(FIRST_TURN)
            with pytest.raises(CapabilityError):
                await flux.force_end_turn()
            await flux.close()
            await collect(flux)
    assert ep.streams[0].texts == ['{"type":"CloseStream"}']
