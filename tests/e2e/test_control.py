"""Configure, update_settings and ForceEndTurn against each bundle's behaviour."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any

import anyio
import pytest

from flux_sagemaker import (
    BundleCapabilities,
    CapabilityError,
    ConfigureFailure,
    ConfigureRejected,
    ConfigureSuccess,
    EagerEndOfTurn,
    EndOfTurn,
    FluxClient,
    FluxError,
    FluxSettings,
    KeepalivePolicy,
    Model,
    ModelError,
    Reconnected,
    RetryPolicy,
    ServerWarning,
    StartOfTurn,
    StreamRolledOver,
    StreamStalled,
    TimeoutError,
    Timeouts,
    TurnInfo,
    TurnResumed,
    UsageError,
    ValidationError,
)
from flux_sagemaker.core.settings import LANGUAGE_CODES
from flux_sagemaker.testing import (
    FLUX_ENGLISH_20260311,
    FLUX_MULTI_20260417,
    Fault,
    FaultKind,
    RequestFailure,
    ScriptedTurn,
)
from flux_sagemaker.testing.server import RecordedStream
from flux_sagemaker.testing.session import exception_event, payload_part

from .helpers import (
    SAMPLE,
    TEST_TIMEOUT,
    EndpointFactory,
    client_for,
    collect,
    hold_the_second_request,
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


async def test_a_late_configure_answer_is_not_taken_for_the_next_ones(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first Configure's answer comes after configure() stopped waiting: it answers the
    first Configure, not the second, and its change still counts."""
    faults = [Fault(kind=FaultKind.LATENCY, latency=0.4)]
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=faults) as ep, client_for(ep) as flux:
            await flux.send_audio(bytes(ms(20)))  # the fault strikes once audio came
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 0.1)
            assert await flux.configure(eot_threshold=0.8) is None
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 5.0)
            second = await flux.configure(keyterms=["seven"])
            assert isinstance(second, ConfigureSuccess)
            assert second.keyterms == ("seven",)
            assert flux.settings.eot_threshold == 0.8
            assert flux.settings.keyterms == ("seven",)
            await flux.close()
            events = await collect(flux)
    assert [a.keyterms for a in of_type(events, ConfigureSuccess)] == [(), ("seven",)]


async def test_a_configure_checked_after_an_unanswered_one_is_refused_before_sending(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flux applies a Configure after the ones still unanswered: the keyterms of an unanswered
    one plus the hints of the next would not fit a query string (for the next stream), so the
    second is refused with a ValidationError before it goes out, and the session goes on."""
    faults = [Fault(kind=FaultKind.LATENCY, latency=0.4)]
    settings = FluxSettings(model=Model.GENERAL_MULTI)
    terms = [f"term{i:03d}{'x' * 12}" for i in range(66)]  # a 1908-character query string
    hints = sorted(LANGUAGE_CODES)  # 170 characters more: over 2048 together
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=faults) as ep, client_for(ep, settings=settings) as flux:
            await flux.send_audio(bytes(ms(20)))  # the fault strikes once audio came
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 0.1)
            assert await flux.configure(keyterms=terms) is None
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 5.0)
            with pytest.raises(ValidationError, match="2048"):
                await flux.configure(language_hints=hints)
            await flux.close()
            events = await collect(flux)
    assert [a.keyterms for a in of_type(events, ConfigureSuccess)] == [tuple(terms)]
    assert flux.settings.keyterms == tuple(terms)
    assert flux.settings.language_hints == ()
    assert [json.loads(t)["type"] for t in ep.streams[0].texts] == ["Configure", "CloseStream"]


async def test_update_settings_back_to_the_settings_in_force_outruns_an_unanswered_configure(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Configure still unanswered will change eot_threshold: asking for the value in force
    is a change too, which Flux gets after it, so the session ends with what was asked last."""
    faults = [Fault(kind=FaultKind.LATENCY, latency=0.4)]
    settings = FluxSettings(eot_threshold=0.7)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=faults) as ep, client_for(ep, settings=settings) as flux:
            await flux.send_audio(bytes(ms(20)))  # the fault strikes once audio came
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 0.1)
            assert await flux.configure(eot_threshold=0.8) is None
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 5.0)
            await flux.update_settings(eot_threshold=0.7)
            assert flux.settings.eot_threshold == 0.7
            await flux.close()
            events = await collect(flux)
    assert [a.thresholds.eot_threshold for a in of_type(events, ConfigureSuccess)] == [0.8, 0.7]
    assert flux.settings.eot_threshold == 0.7


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


async def test_update_settings_refused_by_flux_raises_configure_rejected(
    endpoint: EndpointFactory,
) -> None:
    caps = BundleCapabilities.flux_multi_20260417()
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_MULTI_20260417) as ep,
            client_for(ep, capabilities=caps) as flux,
        ):
            with pytest.raises(ConfigureRejected) as raised:
                await flux.update_settings(eot_threshold=0.95)  # above this bundle's 0.9
            assert raised.value.code == "INVALID_THRESHOLD"
            assert isinstance(raised.value, ValidationError)
            assert flux.settings.eot_threshold is None
            await flux.close()
            await collect(flux)
    assert len(ep.streams) == 1


@pytest.mark.parametrize("cleared", [None, ()], ids=["None", "empty"])
async def test_update_settings_clearing_language_hints_sends_configure(
    endpoint: EndpointFactory, cleared: tuple[str, ...] | None
) -> None:
    """None and () both mean no hints (FluxSettings.language_hints): Configure's [] says that
    in-band, so neither moves the multilingual session to a new stream with the audio replayed."""
    caps = BundleCapabilities.flux_multi_20260417()
    settings = FluxSettings(model=Model.GENERAL_MULTI, language_hints=["es"])
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_MULTI_20260417) as ep,
            client_for(ep, capabilities=caps, settings=settings) as flux,
        ):
            await flux.send_audio(FIRST_TURN)
            await flux.update_settings(language_hints=cleared)
            assert flux.settings.language_hints == ()
            await send_audio(flux, SAMPLE.pcm[len(FIRST_TURN) :])
            await flux.close()
            events = await collect(flux)
    assert not of_type(events, StreamRolledOver)
    assert len(ep.streams) == 1
    [configure, _close] = [json.loads(t) for t in ep.streams[0].texts]
    assert configure == {"type": "Configure", "language_hints": []}
    assert [e.languages_hinted for e in of_type(events, EndOfTurn)][-1] == ()


async def test_configure_with_numerals_the_bundle_refuses_raises_before_sending(
    endpoint: EndpointFactory,
) -> None:
    caps = BundleCapabilities.flux_multi_20260417()  # Configure yes, numerals no
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(bundle=FLUX_MULTI_20260417) as ep,
            client_for(ep, capabilities=caps) as flux,
        ):
            with pytest.raises(CapabilityError, match="numerals"):
                await flux.configure(numerals=True)
            await flux.close()
            await collect(flux)
    assert ep.streams[0].texts == ['{"type":"CloseStream"}']


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


async def test_a_settings_change_that_changes_the_predicted_words_delivers_the_new_prediction(
    endpoint: EndpointFactory,
) -> None:
    """Eager mode: Flux predicted the end of the turn, and the application turns redaction on
    before the turn ends. The new stream, replaying the turn, predicts its end at the same
    place with other words (the script changed here stands in for the redaction). That
    prediction must reach the application: the EndOfTurn carries its words, and Flux promises
    that they match the EagerEndOfTurn just before it (an agent reuses the reply it drafted)."""
    redacted = "Hi, I'd like a table for [NUMBER]."
    settings = FluxSettings(eager_eot_threshold=0.5, eot_threshold=0.9)
    events: list[Any] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep, settings=settings) as flux:
            # EagerEndOfTurn at 2.46 s, EndOfTurn at 2.7 s.
            await send_audio(flux, SAMPLE.pcm[: ms(2560)])
            events.append(await next_of(flux, EagerEndOfTurn))
            ep.script = (ScriptedTurn(redacted), *ep.script[1:])
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, flux, events)
                await flux.update_settings(redact="aggressive_numbers")
                await send_audio(flux, SAMPLE.pcm[ms(2560) :])
                await flux.close()
    assert len(of_type(events, StreamRolledOver)) == 1
    turn = [e for e in of_type(events, TurnInfo) if e.turn_index == 0]
    changes = [e for e in turn if isinstance(e, EagerEndOfTurn | TurnResumed | EndOfTurn)]
    assert [(type(e).__name__, e.transcript) for e in changes][-2:] == [
        ("EagerEndOfTurn", redacted),
        ("EndOfTurn", redacted),
    ]


async def test_update_settings_whose_stream_is_refused_raises_and_changes_nothing(
    endpoint: EndpointFactory,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            first_turn_done = SAMPLE.pcm[: ms(3100)]
            await flux.send_audio(first_turn_done)
            await next_of(flux, EndOfTurn)
            ep.fail_requests(RequestFailure.model_error("the container said no"))
            with pytest.raises(ModelError, match="the container said no"):
                await flux.update_settings(tags=("new-tag",))
            assert flux.settings.tags == ()  # still the settings of the stream in use
            await send_audio(flux, SAMPLE.pcm[len(first_turn_done) :])
            await flux.close()
            rest = await collect(flux)
    assert [e.transcript for e in of_type(rest, EndOfTurn)] == [SAMPLE.turns[1]]
    assert [s.status for s in ep.streams] == [200, 424]
    assert bytes(ep.streams[0].audio) == SAMPLE.pcm


async def test_update_settings_raises_when_the_session_fails_while_it_waits(
    endpoint: EndpointFactory,
) -> None:
    """The stream fails and its reconnect is under way when the update comes: the switch waits
    for the reconnect, which fails the session. The update did not happen, and says so."""
    faults = [
        Fault(kind=FaultKind.RESET_STREAM, after_audio_s=0.5),
        Fault(kind=FaultKind.NO_CONNECTED, stream_index=1),
    ]
    one_try = RetryPolicy(max_attempts=1, initial_backoff=0.01)
    slow_connected = Timeouts(connect=3.0, connected=0.5, close=3.0, ping_interval=None)
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(faults=faults) as ep,
            client_for(ep, retry=one_try, timeouts=slow_connected) as flux,
        ):
            await flux.send_audio(FIRST_TURN)
            while len(ep.streams) < 2:  # noqa: ASYNC110 - the reconnect's request is the sign
                await anyio.sleep(0.01)
            with pytest.raises(UsageError, match="the session failed"):
                await flux.update_settings(tags=("new",))
            with pytest.raises(FluxError):
                await collect(flux)
    assert flux.settings.tags == ()


async def test_update_settings_raises_when_the_session_fails_while_the_new_stream_opens(
    endpoint: EndpointFactory,
) -> None:
    """The stream in use fails for good (no retries) while the switch's new stream is being
    opened: the update did not happen, and says so. It returned as if it had, and the switch
    replayed the audio to a stream of a session that was over."""
    ep = endpoint(faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.5)])
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep) as flux, anyio.create_task_group() as tg:
            held, release = hold_the_second_request(ep)
            await flux.send_audio(SAMPLE.pcm[: ms(1000)])

            async def update_settings() -> None:
                with pytest.raises(UsageError, match="the session failed"):
                    await flux.update_settings(tags=("new",))

            tg.start_soon(update_settings)
            await held.wait()  # the switch opens the next stream
            await flux.send_audio(SAMPLE.pcm[ms(1000) : ms(2000)])  # past the reset
            with pytest.raises(FluxError):
                await collect(flux)
            release.set()
    assert flux.stats.rollovers == 0
    assert flux.stats.replayed_bytes == 0
    assert flux.settings.tags == ()
    assert len(ep.streams[1].audio) == 0


async def test_concurrent_stream_switches_run_one_after_the_other(
    endpoint: EndpointFactory,
) -> None:
    """Two updates at once: each switch starts from the stream the other left, so no stream is
    left open beside the session's, and the second starts from the first's settings."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            first_turn_done = SAMPLE.pcm[: ms(3100)]
            await flux.send_audio(first_turn_done)
            await next_of(flux, EndOfTurn)
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(flux.update_settings, tags=("a",)))
                tg.start_soon(functools.partial(flux.update_settings, redact="numbers"))
            assert (flux.settings.tags, flux.settings.redact) == (("a",), "numbers")
            await send_audio(flux, SAMPLE.pcm[len(first_turn_done) :])
            await flux.close()
            rest = await collect(flux)
    assert len(of_type(rest, StreamRolledOver)) == 2
    assert [e.transcript for e in of_type(rest, EndOfTurn)] == [SAMPLE.turns[1]]
    first, second, third = ep.streams
    # Every stream but the last was closed when the next took over, with one CloseStream.
    assert first.texts == second.texts == third.texts == ['{"type":"CloseStream"}']
    assert first.input_ended
    assert second.input_ended
    assert third.input_ended
    assert third.settings is not None
    assert (third.settings.tags, third.settings.redact) == (("a",), "numbers")


async def test_update_settings_cancelled_mid_switch_still_completes_the_switch(
    endpoint: EndpointFactory,
) -> None:
    """The caller's timeout expires while the new stream is being opened (the endpoint is slow
    to answer): the switch goes on in the background, and the session keeps working on the
    new stream."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux:
            handle = ep._server._handler

            async def answer_the_second_request_late(stream: Any) -> None:
                if len(ep.streams) == 1:
                    await anyio.sleep(0.6)
                await handle(stream)

            ep._server._handler = answer_the_second_request_late
            first_turn_done = SAMPLE.pcm[: ms(3100)]
            await flux.send_audio(first_turn_done)
            await next_of(flux, EndOfTurn)
            with anyio.move_on_after(0.3) as scope:
                await flux.update_settings(tags=("new",))
            assert scope.cancelled_caught
            assert flux.settings.tags == ()  # not yet: the switch is still under way
            await next_of(flux, StreamRolledOver)  # the switch finished in the background
            async with anyio.create_task_group() as tg:
                events: list[object] = []

                async def consume() -> None:
                    events.extend(await collect(flux))

                tg.start_soon(consume)
                await send_audio(flux, SAMPLE.pcm[len(first_turn_done) :])
                await flux.close()
    assert flux.settings.tags == ("new",)
    assert of_type(events, EndOfTurn)[-1].transcript == SAMPLE.turns[1]
    old, new = ep.streams
    assert old.input_ended
    assert new.input_ended
    assert new.settings is not None
    assert new.settings.tags == ("new",)
    assert bytes(new.audio).endswith(SAMPLE.pcm[len(first_turn_done) :])


def configure_in_force(stream: RecordedStream, eot_threshold: float) -> bool:
    """Whether ``stream`` was opened with ``eot_threshold`` or had it configured."""
    assert stream.settings is not None
    return stream.settings.eot_threshold == eot_threshold or any(
        m["type"] == "ConfigureSuccess" and m["thresholds"]["eot_threshold"] == eot_threshold
        for m in stream.sent
    )


async def test_a_configure_made_while_a_new_stream_opens_is_in_force_on_it(
    endpoint: EndpointFactory,
) -> None:
    """configure() while update_settings() opens the next stream: its answer must not come from
    the old stream, whose change the new one (opened with the settings from before) lacks, and
    which the switch's settings would then overwrite."""
    answers: list[object] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep, client_for(ep) as flux, anyio.create_task_group() as tg:
            held, release = hold_the_second_request(ep)
            switched = anyio.Event()

            async def update() -> None:
                await flux.update_settings(tags=("new",))
                switched.set()

            async def configure() -> None:
                answers.append(await flux.configure(eot_threshold=0.8))

            tg.start_soon(update)
            await held.wait()
            tg.start_soon(configure)
            await anyio.wait_all_tasks_blocked()
            release.set()
            await switched.wait()
        assert flux.settings.tags == ("new",)
        assert flux.settings.eot_threshold == 0.8
    assert [type(a) for a in answers] == [ConfigureSuccess]
    assert configure_in_force(ep.streams[1], 0.8)


async def test_a_configure_answered_while_a_new_stream_opens_is_in_force_on_it(
    endpoint: EndpointFactory,
) -> None:
    """A Configure is under way when update_settings() starts a switch, and its answer is read
    while the next stream opens: the new stream must be opened with it, and keep it."""
    answers: list[object] = []
    with anyio.fail_after(TEST_TIMEOUT):
        # One event fills the queue: the consumer's pace decides when the answer is read.
        async with (
            endpoint() as ep,
            client_for(ep, max_buffered_events=1) as flux,
            anyio.create_task_group() as tg,
        ):
            _held, release = hold_the_second_request(ep)
            configured, switched = anyio.Event(), anyio.Event()

            async def configure() -> None:
                answers.append(await flux.configure(eot_threshold=0.8))
                configured.set()

            async def update() -> None:
                await flux.update_settings(tags=("new",))
                switched.set()

            await flux.send_audio(SAMPLE.pcm[: ms(1000)])  # events the consumer has not read
            tg.start_soon(configure)
            await anyio.wait_all_tasks_blocked()  # the Configure is out, its answer unread
            tg.start_soon(update)
            await anyio.wait_all_tasks_blocked()  # the switch is under way
            tg.start_soon(collect, flux)  # the consumer reads, the answer with the rest
            await configured.wait()
            release.set()
            await switched.wait()
            assert flux.settings.tags == ("new",)
            assert flux.settings.eot_threshold == 0.8
            await flux.close()
    assert [type(a) for a in answers] == [ConfigureSuccess]
    assert ep.streams[1].settings is not None
    assert ep.streams[1].settings.eot_threshold == 0.8


async def test_a_late_configure_answer_read_while_a_new_stream_opens_is_in_force_on_it(
    endpoint: EndpointFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure() stopped waiting, and its ConfigureSuccess arrives while update_settings()
    opens the next stream with the settings from before it. A late ConfigureSuccess still
    applies (configure()'s promise): the session must go on with the hints on the new stream,
    and its settings must say so, not lose them (or claim them) silently."""
    faults = [Fault(kind=FaultKind.LATENCY, latency=0.4)]
    settings = FluxSettings(model=Model.GENERAL_MULTI)
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(faults=faults) as ep,
            client_for(ep, settings=settings) as flux,
            anyio.create_task_group() as tg,
        ):
            await flux.send_audio(bytes(ms(20)))  # the fault strikes once audio came
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 0.1)
            assert await flux.configure(language_hints=["es"]) is None
            monkeypatch.setattr("flux_sagemaker.client._CONFIGURE_ACK_TIMEOUT", 5.0)
            held, release = hold_the_second_request(ep)
            switched = anyio.Event()

            async def update() -> None:
                await flux.update_settings(tags=("new",))
                switched.set()

            tg.start_soon(update)
            await held.wait()  # the next stream is being opened, without the hints
            late = await next_of(flux, ConfigureSuccess)
            assert late.language_hints == ("es",)
            release.set()
            await switched.wait()
            await flux.send_audio(bytes(ms(20)))
            await flux.close()
            await collect(flux)
    assert flux.settings.tags == ("new",)
    assert flux.settings.language_hints == ("es",)
    new = ep.streams[-1]
    assert new.settings is not None
    assert new.settings.tags == ("new",)
    assert new.settings.language_hints == ("es",)


async def test_update_settings_whose_configure_a_reconnect_cut_off_raises(
    endpoint: EndpointFactory,
) -> None:
    """Flux goes silent before answering the Configure; the stall watchdog replaces the stream,
    which is opened with the settings in force. The update did not happen, and says so."""
    watchdog = KeepalivePolicy(turn_silence_after=None, idle_interval=None, stall_timeout=0.2)
    quick = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter="none")

    async def keep_sending(flux: FluxClient) -> None:
        # Audio flows, so the silence is a stall.
        await send_audio(flux, SAMPLE.pcm[ms(200) :], ms(20), realtime_factor=2)

    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(faults=[Fault(kind=FaultKind.STALL, after_audio_s=0.1)]) as ep,
            client_for(ep, retry=quick, keepalive=watchdog) as flux,
            anyio.create_task_group() as tg,
        ):
            await flux.send_audio(SAMPLE.pcm[: ms(200)])  # the Configure comes after the stall
            tg.start_soon(keep_sending, flux)
            with pytest.raises(TimeoutError, match="Configure"):
                await flux.update_settings(eot_threshold=0.8)
            tg.cancel_scope.cancel()
    assert flux.settings.eot_threshold is None
    first, second = ep.streams
    assert first.texts == ['{"type":"Configure","thresholds":{"eot_threshold":0.8}}']
    assert second.settings is not None
    assert second.settings.eot_threshold is None


async def test_a_configure_waiting_for_its_answer_returns_when_the_session_fails(
    endpoint: EndpointFactory,
) -> None:
    """Flux goes silent, the stall watchdog fails the session (no retries): configure() stops
    waiting then, not at its 5 s ack timeout."""
    watchdog = KeepalivePolicy(turn_silence_after=None, idle_interval=None, stall_timeout=0.2)

    async def keep_sending(flux: FluxClient) -> None:
        with contextlib.suppress(UsageError):  # the session fails meanwhile
            await send_audio(flux, SAMPLE.pcm[ms(200) :], ms(20), realtime_factor=2)

    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(faults=[Fault(kind=FaultKind.STALL, after_audio_s=0.1)]) as ep,
            client_for(ep, keepalive=watchdog) as flux,
            anyio.create_task_group() as tg,
        ):
            await flux.send_audio(SAMPLE.pcm[: ms(200)])
            tg.start_soon(keep_sending, flux)
            with anyio.fail_after(3):  # short of the ack timeout
                assert await flux.configure(eot_threshold=0.8) is None
            with pytest.raises(StreamStalled):
                await collect(flux)
    assert ep.streams[0].texts == ['{"type":"Configure","thresholds":{"eot_threshold":0.8}}']


@pytest.mark.parametrize("control", ["force_end_turn", "configure"])
async def test_a_control_message_made_during_a_reconnect_goes_out_on_the_new_stream(
    endpoint: EndpointFactory, control: str
) -> None:
    """Between a stream's failure and ``Reconnected`` there is no stream to send on: the
    message waits for the new one and goes out after its replay, instead of failing."""
    ep = endpoint(faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.0)])
    reconnecting, go_on = anyio.Event(), anyio.Event()
    original = ep._handle

    async def hold_the_reconnect(stream: Any) -> None:
        if len(ep.streams) == 1:  # the second request: the client is reconnecting
            reconnecting.set()
            await go_on.wait()
        await original(stream)

    answers: list[Any] = []

    async def call(flux: FluxClient) -> None:
        if control == "configure":
            answers.append(await flux.configure(eot_threshold=0.8))
        else:
            await flux.force_end_turn()

    retry = RetryPolicy(initial_backoff=0.01, jitter="none")
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep, retry=retry) as flux:
            ep._server._handler = hold_the_reconnect
            await flux.send_audio(FIRST_TURN)
            await reconnecting.wait()
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, flux)
                await anyio.wait_all_tasks_blocked()  # waiting for the new stream
                go_on.set()
            await flux.close()
            events = await collect(flux)
    old, new = ep.streams
    assert old.texts == []
    sent = json.loads(new.texts[0])
    if control == "configure":
        assert sent["type"] == "Configure"
        (answer,) = answers
        assert isinstance(answer, ConfigureSuccess)
        assert flux.settings.eot_threshold == 0.8
    else:
        assert sent == {"type": "ForceEndTurn"}
        (end,) = of_type(events, EndOfTurn)[:1]
        assert end.trigger == "manual"
        assert end.transcript == SAMPLE.turns[0]
    assert new.texts[-1] == '{"type":"CloseStream"}'


def audio_before_each_text(stream: RecordedStream) -> list[int]:
    """How many audio bytes the stream had received when each of its text messages came."""
    sizes = iter(stream.audio_event_sizes)
    received, before = 0, []
    for kind in stream.inputs:
        if kind == "BINARY":
            received += next(sizes)
        elif kind != "END":
            before.append(received)
    return before


@pytest.mark.parametrize("replaced_by", ["failure", "rollover"])
async def test_a_force_end_turn_its_stream_never_answered_goes_out_again_in_the_replay(
    endpoint: EndpointFactory, replaced_by: str
) -> None:
    """ForceEndTurn was written, then its stream was replaced before the EndOfTurn came back:
    it failed (Flux stalled), or a settings change rolled it over (Flux answers late, and a
    replaced stream's events do not count). The replay brings the open turn back on the new
    stream: without the ForceEndTurn again, at its place in that audio, the turn would end
    only when Flux ends it on its own (in manual mode, after ``eot_timeout_ms``)."""
    watchdog = KeepalivePolicy(turn_silence_after=None, idle_interval=None, stall_timeout=0.2)
    retry = RetryPolicy(initial_backoff=0.01, jitter="none")
    # From 0.6 s of audio on, after StartOfTurn (0.42 s): no answer, or each one 2 s late.
    fault = (
        Fault(kind=FaultKind.STALL, after_audio_s=0.6)
        if replaced_by == "failure"
        else Fault(kind=FaultKind.LATENCY, after_audio_s=0.6, latency=2.0)
    )
    events: list[Any] = []
    replaced = anyio.Event()

    async def consume(flux: FluxClient) -> None:
        async for event in flux:
            events.append(event)
            if isinstance(event, Reconnected | StreamRolledOver):
                replaced.set()

    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(faults=[fault]) as ep,
            client_for(ep, keepalive=watchdog, retry=retry) as flux,
        ):
            await flux.send_audio(FIRST_TURN)
            events.append(await next_of(flux, StartOfTurn))
            await flux.force_end_turn()  # at 1.2 s, the end of the audio so far
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume, flux)
                if replaced_by == "rollover":
                    await flux.update_settings(profanity_filter=True)
                offset = len(FIRST_TURN)
                while not replaced.is_set():
                    # Audio goes on, so that the stall watchdog fails the stream.
                    await flux.send_audio(SAMPLE.pcm[offset : offset + ms(20)])
                    offset += ms(20)
                    await anyio.sleep(0.02)
                await flux.close()
    old, new = ep.streams
    if replaced_by == "failure":  # the slow one has not read it yet
        assert old.texts == ['{"type":"ForceEndTurn"}']
    assert new.texts.count('{"type":"ForceEndTurn"}') == 1
    assert audio_before_each_text(new)[0] == len(FIRST_TURN)
    ends = of_type(events, EndOfTurn)
    assert [(end.turn_index, end.trigger) for end in ends][:1] == [(0, "manual")]
    assert ends[0].audio_window_end == pytest.approx(1.2, abs=0.05)


async def test_a_force_end_turn_flux_answered_with_a_warning_is_not_sent_again(
    endpoint: EndpointFactory,
) -> None:
    """With no turn open, Flux answers ForceEndTurn with a warning: answered, it stays out of
    the replay of a stream that fails afterwards (it would only bring a second warning)."""
    retry = RetryPolicy(initial_backoff=0.01, jitter="none")
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.0)]) as ep,
            client_for(ep, retry=retry) as flux,
        ):
            await flux.send_audio(bytes(ms(500)))  # silence: no turn
            await flux.force_end_turn()
            warning = await next_of(flux, ServerWarning)
            await flux.send_audio(bytes(ms(1000)))  # the stream fails at 1 s, and is replaced
            await next_of(flux, Reconnected)
            await flux.close()
    assert warning.code == "FORCE_END_TURN_NO_ACTIVE_TURN"
    old, new = ep.streams
    assert old.texts == ['{"type":"ForceEndTurn"}']
    assert new.texts == ['{"type":"CloseStream"}']


async def test_a_control_message_from_the_consumer_ends_when_the_reconnect_fails_for_good(
    endpoint: EndpointFactory,
) -> None:
    """The task iterating the events calls force_end_turn() while a failed stream is being
    replaced, with its unread events filling the queue, and the reconnect is refused for
    good: the session's end (the open turn's synthetic EndOfTurn, then the error) must not
    wait for that task to make room, or neither ever ends."""
    ep = endpoint(faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.0)])
    retry = RetryPolicy(initial_backoff=0.01, jitter="none")
    events: list[Any] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep, retry=retry, max_buffered_events=1) as flux:
            held, release = hold_the_second_request(ep)
            await flux.send_audio(FIRST_TURN)
            await next_of(flux, StartOfTurn)  # then the events wait unread
            while not held.is_set():  # a write finds the stream reset, the reconnect starts
                await flux.send_audio(bytes(ms(20)))
                await anyio.sleep(0.01)
            ep.fail_requests(RequestFailure.model_error())

            async def refuse_once_blocked() -> None:
                await anyio.wait_all_tasks_blocked()  # force_end_turn() waits for a stream
                release.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(refuse_once_blocked)
                with pytest.raises(UsageError, match="the session failed"):
                    await flux.force_end_turn()
            with pytest.raises(ModelError):
                await collect(flux, events)
    ends = of_type(events, EndOfTurn)
    assert [e.synthetic for e in ends] == [True]
    assert ep.streams[0].texts == []


async def test_a_configure_waiting_for_a_reconnect_does_not_block_a_switch_and_the_reconnect(
    endpoint: EndpointFactory,
) -> None:
    """A Configure is under way, a second waits for its turn, update_settings() starts a switch
    behind them, and the stream fails. The second Configure, its turn come, waits for the new
    stream: the reconnect must not wait for the switch, which waits for that Configure."""
    ep = endpoint(faults=[Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.0)])
    retry = RetryPolicy(initial_backoff=0.01, jitter="none")
    answers: list[object] = []
    first_configure = anyio.CancelScope()
    switched = anyio.Event()

    async def unanswered_configure(flux: FluxClient) -> None:
        with first_configure:
            await flux.configure(eot_threshold=0.8)

    async def second_configure(flux: FluxClient) -> None:
        answers.append(await flux.configure(keyterms=["seven"]))

    async def update(flux: FluxClient) -> None:
        await flux.update_settings(tags=("new",))
        switched.set()

    with anyio.fail_after(TEST_TIMEOUT):
        # One event fills the queue: unread, the events hold the first Configure's answer back.
        async with (
            ep,
            client_for(ep, retry=retry, max_buffered_events=1) as flux,
            anyio.create_task_group() as tg,
        ):
            await flux.send_audio(SAMPLE.pcm[: ms(600)])
            first = flux._current
            assert first is not None
            tg.start_soon(unanswered_configure, flux)
            await anyio.wait_all_tasks_blocked()  # the first Configure waits for its answer
            tg.start_soon(second_configure, flux)
            await anyio.wait_all_tasks_blocked()  # the second waits for its turn
            tg.start_soon(update, flux)
            await anyio.wait_all_tasks_blocked()  # the switch waits for the Configures
            await flux.send_audio(SAMPLE.pcm[ms(600) : ms(1200)])  # the stream is reset
            while not first.retired:  # a write finds the stream reset
                await flux.send_audio(bytes(ms(20)))
                await anyio.sleep(0.01)
            first_configure.cancel()  # the second Configure's turn, with no stream to go on
            tg.start_soon(collect, flux)
            await switched.wait()
            await flux.close()
    assert [type(a) for a in answers] == [ConfigureSuccess]
    assert (flux.settings.tags, flux.settings.keyterms) == (("new",), ("seven",))
    _, reconnected, switched_to = ep.streams
    assert json.loads(reconnected.texts[0]) == {"type": "Configure", "keyterms": ["seven"]}
    assert switched_to.settings is not None
    assert (switched_to.settings.tags, switched_to.settings.keyterms) == (("new",), ("seven",))


async def test_a_control_message_from_the_consumer_after_a_packed_failure_waits_for_the_new_stream(
    endpoint: EndpointFactory,
) -> None:
    """The server sends two events and its exception event in one DATA frame while the queue
    is full: the protocol knows of the failure before the reader delivered the events. The
    consumer's force_end_turn() then must see the stream failed and wait for the new one; it
    looped on the failed stream (on trio without a checkpoint: the event loop froze)."""
    ep = endpoint()
    handle = ep._server._handler
    requests = 0
    go = anyio.Event()

    async def packed_failure(stream: Any) -> None:
        nonlocal requests
        requests += 1
        if requests > 1:
            await handle(stream)  # the reconnect: the mock's own Flux
            return
        await stream.send_headers(
            200,
            [("content-type", "application/vnd.amazon.eventstream"), ("x-amzn-requestid", "r1")],
        )
        await stream.send_data(payload_part({"type": "Connected", "request_id": "f1"}))
        await go.wait()
        warnings = [
            payload_part({"type": "Warning", "code": "W", "description": str(i)}) for i in (1, 2)
        ]
        broke = exception_event("ModelStreamError", "The model stream broke", "StreamBroken")
        await stream.send_data(b"".join([*warnings, broke]))
        await stream.end()

    ep._server._handler = packed_failure
    retry = RetryPolicy(initial_backoff=0.01, jitter="none")
    events: list[Any] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, client_for(ep, retry=retry, max_buffered_events=1) as flux:
            go.set()  # Connected, unread, fills the queue
            await anyio.wait_all_tasks_blocked()  # the reader waits to deliver the first one
            await flux.send_audio(FIRST_TURN)
            await flux.force_end_turn()
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, flux, events)
                await flux.close()
    assert [e.description for e in of_type(events, ServerWarning)] == ["1", "2"]
    assert len(of_type(events, Reconnected)) == 1
    (new,) = ep.streams  # the first request was answered by packed_failure, unrecorded
    assert new.texts == ['{"type":"ForceEndTurn"}', '{"type":"CloseStream"}']
    assert bytes(new.audio) == FIRST_TURN
