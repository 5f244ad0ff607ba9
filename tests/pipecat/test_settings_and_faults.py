"""Eager mode, settings updates, faults and refused connections, in real pipelines."""

from __future__ import annotations

import inspect
import json
from typing import Any

import anyio
import pytest
from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    EndWorkerFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    STTUpdateSettingsFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory

from flux_sagemaker import BundleCapabilities, FluxClient, RetryPolicy, Timeouts, errors
from flux_sagemaker.pipecat import DeepgramFluxSageMakerSTTService
from flux_sagemaker.pipecat import service as service_module
from flux_sagemaker.samples import load_sample
from flux_sagemaker.testing import (
    FLUX_ENGLISH_20260311,
    FLUX_MULTI_20260417,
    Fault,
    FaultKind,
    MockFluxEndpoint,
    RequestFailure,
)

from .helpers import (
    SAMPLE_RATE,
    audio_frames,
    flux_frames,
    run,
    service,
    silence,
    spoken_turns,
    tone,
)
from .helpers import transcripts as texts

pytestmark = pytest.mark.timeout(30)
Settings = DeepgramFluxSageMakerSTTService.Settings


def two_turns_with_update(delta: Settings) -> list[Frame]:
    """Turn one, a pause for it to be transcribed, the update, then turn two."""
    return [
        *audio_frames(spoken_turns(1)),
        SleepFrame(sleep=0.5),
        STTUpdateSettingsFrame(delta=delta),
        SleepFrame(sleep=0.2),
        *audio_frames(spoken_turns(1)),
    ]


def _record(stt: DeepgramFluxSageMakerSTTService, name: str) -> list[tuple[Any, ...]]:
    """The arguments of every call of the event handler ``name``."""
    calls: list[tuple[Any, ...]] = []

    async def handler(_stt: Any, *args: Any) -> None:
        calls.append(args)

    stt.add_event_handler(name, handler)
    return calls


async def _update_after_the_first_turn(
    stt: DeepgramFluxSageMakerSTTService, delta: Settings
) -> list[Frame]:
    """Run two spoken turns through ``stt``; at the end of the first (``"first"``), queue a
    settings update with ``delta`` and end the pipeline. Returns the frames pushed upstream."""

    @stt.event_handler("on_end_of_turn")
    async def update_then_end(_stt: Any, transcript: str) -> None:
        if transcript == "first":
            await stt.queue_frame(STTUpdateSettingsFrame(delta=delta))
            await stt.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

    _, up = await run_test(
        stt,
        frames_to_send=audio_frames(spoken_turns(2)),
        pipeline_params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE),
        send_end_frame=False,  # the handler ends the pipeline, after the update
        start_timeout=10.0,
    )
    return list(up)


def configures(endpoint: MockFluxEndpoint) -> list[dict[str, Any]]:
    """Every Configure message any stream of the endpoint received."""
    messages = [json.loads(t) for s in endpoint.streams for t in s.texts]
    return [m for m in messages if m["type"] == "Configure"]


@pytest.mark.anyio
async def test_eager_end_of_turn_and_turn_resumed() -> None:
    # 360 ms of pause passes the eager threshold (0.5) but not eot (0.7), then speech resumes.
    audio = tone(1200) + silence(360) + tone(600) + silence(1500)
    resumed: list[bool] = []
    async with MockFluxEndpoint(script=["a table for two"]) as endpoint:
        stt = service(endpoint, enable_eager_end_of_turn=True)

        @stt.event_handler("on_turn_resumed")
        async def _resumed(_stt: Any) -> None:
            resumed.append(True)

        down, _ = await run(stt, audio_frames(audio))
        [first] = endpoint.streams
    assert first.settings is not None
    assert first.settings.eager_eot_threshold == 0.5
    kinds = [type(f) for f in flux_frames(down)]
    assert kinds.count(EagerTranscriptionFrame) == 2
    assert kinds.count(EagerEndOfTurnCancelFrame) == 1
    assert kinds.index(EagerEndOfTurnCancelFrame) < len(kinds) - 1 - kinds[::-1].index(
        EagerTranscriptionFrame
    )
    assert texts(down) == ["a table for two"]
    assert resumed == [True]


@pytest.mark.parametrize("kind", [FaultKind.RESET_STREAM, FaultKind.DROP_CONNECTION])
@pytest.mark.anyio
async def test_a_reconnect_after_eager_end_of_turn_does_not_predict_the_turn_twice(
    kind: FaultKind,
) -> None:
    # EagerEndOfTurn after 300 ms of pause (1.5 s), EndOfTurn (0.9) after 540 ms (1.74 s): the
    # fault strikes between them, and the replay makes Flux predict the same end of turn again.
    # A second EagerTranscriptionFrame with the first outstanding would start a second
    # speculative response for the turn (Pipecat allows one prediction at a time).
    audio = tone(1200) + silence(1500)
    fault = Fault(kind=kind, after_audio_s=1.62)
    async with MockFluxEndpoint(script=["a table for two"], faults=[fault]) as endpoint:
        stt = service(endpoint, enable_eager_end_of_turn=True, settings=Settings(eot_threshold=0.9))
        predicted = _record(stt, "on_eager_end_of_turn")
        down, _ = await run(stt, audio_frames(audio))
    first, replay = endpoint.streams
    assert "EagerEndOfTurn" in first.event_types
    assert "EndOfTurn" not in first.event_types
    assert "EagerEndOfTurn" in replay.event_types  # Flux predicted it again
    kinds = [type(f) for f in flux_frames(down)]
    assert kinds.count(EagerTranscriptionFrame) == 1
    assert EagerEndOfTurnCancelFrame not in kinds
    assert texts(down) == ["a table for two"]
    assert predicted == [("a table for two",)]


@pytest.mark.anyio
async def test_settings_update_sends_configure_where_the_bundle_accepts_it() -> None:
    async with MockFluxEndpoint(script=["first", "second"]) as endpoint:
        frames = two_turns_with_update(Settings(eot_threshold=0.9, keyterm=["Acme"]))
        down, _ = await run(service(endpoint), frames)
    assert texts(down) == ["first", "second"]
    assert len(endpoint.streams) == 1
    [configure] = configures(endpoint)
    assert configure["thresholds"] == {"eot_threshold": 0.9}
    assert configure["keyterms"] == ["Acme"]


@pytest.mark.anyio
async def test_settings_update_reconnects_where_configure_would_end_the_stream() -> None:
    async with MockFluxEndpoint(script=["first", "second"], bundle=FLUX_ENGLISH_20260311) as ep:
        stt = service(ep, capabilities=BundleCapabilities.flux_english_20260311())
        down, up = await run(stt, two_turns_with_update(Settings(eot_threshold=0.9)))
    assert texts(down) == ["first", "second"]
    assert configures(ep) == []
    assert len(ep.streams) >= 2
    assert ep.streams[0].settings is not None
    assert ep.streams[0].settings.eot_threshold is None
    assert ep.streams[-1].settings is not None
    assert ep.streams[-1].settings.eot_threshold == 0.9
    assert not [f for f in up if isinstance(f, ErrorFrame)]


@pytest.mark.anyio
async def test_connection_only_setting_opens_a_new_session() -> None:
    async with MockFluxEndpoint(script=["first", "second"]) as endpoint:
        down, _ = await run(service(endpoint), two_turns_with_update(Settings(redact="numbers")))
    assert texts(down) == ["first", "second"]
    assert [s.settings.redact for s in endpoint.streams if s.settings] == [None, "numbers"]
    assert configures(endpoint) == []


@pytest.mark.anyio
async def test_updates_in_a_row_open_one_new_session() -> None:
    # The second update finds the first one's reconnect under way: the session opened next has
    # both, so it must not close that one again for a third (Pipecat reconnects once too).
    frames = [
        *audio_frames(spoken_turns(1)),
        SleepFrame(sleep=0.5),
        STTUpdateSettingsFrame(delta=Settings(redact="numbers")),
        STTUpdateSettingsFrame(delta=Settings(eot_threshold=0.8)),
        SleepFrame(sleep=0.2),
        *audio_frames(spoken_turns(1)),
    ]
    async with MockFluxEndpoint(script=["first", "second"]) as endpoint:
        stt = service(endpoint)
        connects = _record(stt, "on_connected")
        down, _ = await run(stt, frames)
    assert texts(down) == ["first", "second"]
    opened = [(s.settings.redact, s.settings.eot_threshold) for s in endpoint.streams if s.settings]
    assert opened == [(None, None), ("numbers", 0.8)]
    assert len(connects) == 2


@pytest.mark.anyio
async def test_language_hints_set_to_none_are_cleared_with_configure() -> None:
    # Pipecat's service treats language_hints=None as "clear" and sends Configure with [];
    # the hints are Configure's to change, so this is no reason for a new session.
    multi = Settings(model="flux-general-multi", language_hints=[Language.ES])
    async with MockFluxEndpoint(script=["first", "second"], bundle=FLUX_MULTI_20260417) as ep:
        stt = service(ep, settings=multi, capabilities=BundleCapabilities.flux_multi_20260417())
        connects = _record(stt, "on_connected")
        up = await _update_after_the_first_turn(stt, Settings(language_hints=None))
    assert configures(ep) == [{"type": "Configure", "language_hints": []}]
    assert "ConfigureSuccess" in ep.streams[0].event_types
    assert len(ep.streams) == 1
    assert len(connects) == 1
    assert not [f for f in up if isinstance(f, ErrorFrame)]


@pytest.mark.anyio
async def test_profanity_filter_update_stays_in_the_session() -> None:
    # Pipecat sends profanity_filter in Configure; Flux's Configure has no such field, so the
    # client opens a new stream of the same session with it (no on_disconnected, no new session).
    async with MockFluxEndpoint(script=["first", "second"]) as endpoint:
        stt = service(endpoint)
        connects = _record(stt, "on_connected")
        frames = two_turns_with_update(Settings(profanity_filter=True))
        down, up = await run(stt, frames)
    assert texts(down) == ["first", "second"]
    assert [s.settings.profanity_filter for s in endpoint.streams if s.settings] == [None, True]
    assert configures(endpoint) == []
    assert len(connects) == 1
    assert not [f for f in up if isinstance(f, ErrorFrame)]


@pytest.mark.anyio
async def test_a_setting_the_bundle_refuses_is_refused_and_the_session_goes_on() -> None:
    # flux-multi-20260417 refuses profanity_filter: the update is refused before the working
    # session is touched, as FluxClient.update_settings refuses it ("nothing was changed").
    async with MockFluxEndpoint(script=["first", "second"], bundle=FLUX_MULTI_20260417) as ep:
        stt = service(ep, capabilities=BundleCapabilities.flux_multi_20260417())
        down, up = await run(stt, two_turns_with_update(Settings(profanity_filter=True)))
    assert texts(down) == ["first", "second"]
    assert len(ep.streams) == 1
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert isinstance(error.exception, errors.CapabilityError)
    assert "nothing was changed" in error.error
    assert not error.category.is_permanent
    assert stt.is_usable


@pytest.mark.anyio
async def test_an_update_whose_new_stream_is_refused_leaves_the_session_as_it_was() -> None:
    # profanity_filter moves the session to a new stream; the endpoint refuses that stream
    # (424): the session stays on its stream and settings, and says so without ending.
    async with MockFluxEndpoint(script=["first", "second"]) as endpoint:
        stt = service(endpoint)

        async def refuse_the_next_stream(_stt: Any) -> None:
            endpoint.fail_requests(RequestFailure.model_error("no such option here"))

        stt.add_event_handler("on_connected", refuse_the_next_stream)
        down, up = await run(stt, two_turns_with_update(Settings(profanity_filter=True)))
    assert texts(down) == ["first", "second"]
    assert [s.status for s in endpoint.streams] == [200, 424]
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert isinstance(error.exception, errors.ModelError)
    assert not error.category.is_permanent
    assert stt.is_usable
    assert stt._settings.profanity_filter is None


@pytest.mark.anyio
async def test_an_update_flux_never_answers_is_kept_for_a_new_session() -> None:
    # Flux goes silent right after the first turn (1.62 s): the Configure made at its end gets
    # no answer. Nothing refused the settings, so they are kept and a new session opens with
    # them (as Pipecat's reconnect applies the settings in force); they are not reported as
    # refused and dropped.
    fault = Fault(kind=FaultKind.STALL, after_audio_s=1.69)
    async with MockFluxEndpoint(script=["first", "second"], faults=[fault]) as endpoint:
        stt = service(endpoint)
        up = await _update_after_the_first_turn(stt, Settings(eot_threshold=0.9))
    [configure] = configures(endpoint)
    assert configure["thresholds"] == {"eot_threshold": 0.9}
    assert not endpoint.streams[0].event_types.count("ConfigureSuccess")
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert stt._settings.eot_threshold == 0.9
    last = endpoint.streams[-1].settings
    assert last is not None
    assert last.eot_threshold == 0.9


@pytest.mark.parametrize(
    "refused",
    [
        Settings(numerals=True),  # the bundle refuses the parameter: refused before sending
        Settings(eot_threshold=0.95),  # Flux answers ConfigureFailure (this bundle's max: 0.9)
        # Each keyterm is valid, but a reconnect's query string would pass SageMaker's limit.
        Settings(keyterm=[f"{i:02d}" + "k" * 90 for i in range(30)]),
    ],
    ids=["by-capabilities", "by-flux", "query-string-too-long"],
)
@pytest.mark.anyio
async def test_a_refused_update_leaves_the_settings_in_force_for_later_sessions(
    refused: Settings,
) -> None:
    frames = [
        *audio_frames(spoken_turns(1)),
        SleepFrame(sleep=0.5),
        STTUpdateSettingsFrame(delta=refused),
        STTUpdateSettingsFrame(delta=Settings(redact="numbers")),  # opens a new session
        SleepFrame(sleep=0.2),
        *audio_frames(spoken_turns(1)),
    ]
    async with MockFluxEndpoint(script=["first", "second"], bundle=FLUX_MULTI_20260417) as ep:
        stt = service(ep, capabilities=BundleCapabilities.flux_multi_20260417())
        down, up = await run(stt, frames)
    assert texts(down) == ["first", "second"]
    last = ep.streams[-1].settings
    assert last is not None
    assert (last.redact, last.numerals, last.eot_threshold) == ("numbers", None, None)
    (error,) = [f for f in up if isinstance(f, ErrorFrame)]  # one refusal, one report
    assert not error.category.is_permanent
    assert stt.is_usable


@pytest.mark.anyio
async def test_audio_while_no_session_runs_is_not_sent_to_a_later_one() -> None:
    # The session dies; a min_confidence update makes the service usable again (Pipecat's
    # rule) but opens no session, so the audio after it has nowhere to go: it is dropped,
    # not queued for the session that the redact update opens later.
    fault = Fault(kind=FaultKind.FLUX_ERROR, after_audio_s=1.0, error_code="INTERNAL_SERVER_ERROR")
    later = spoken_turns(1)
    frames = [
        *audio_frames(spoken_turns(1)),
        SleepFrame(sleep=0.5),
        STTUpdateSettingsFrame(delta=Settings(min_confidence=0.1)),
        SleepFrame(sleep=0.2),  # audio frames are system frames: they overtake the update
        *audio_frames(tone(1000)),
        STTUpdateSettingsFrame(delta=Settings(redact="numbers")),
        SleepFrame(sleep=0.2),
        *audio_frames(later),
    ]
    async with MockFluxEndpoint(script=["later"], faults=[fault]) as endpoint:
        stt = service(endpoint, retry=RetryPolicy(enabled=False))
        down, _ = await run(stt, frames)
        received = endpoint.received_audio()
    assert len(received) == 2
    assert received[-1] == later
    assert texts(down)[-1] == "later"


@pytest.mark.anyio
async def test_stream_reset_mid_turn_is_recovered_by_the_client() -> None:
    sample = load_sample()
    # The first turn is spoken from 0.3 s to about 2 s: the reset strikes inside it.
    fault = Fault(kind=FaultKind.RESET_STREAM, after_audio_s=1.0)
    async with MockFluxEndpoint(script=list(sample.turns), faults=[fault]) as endpoint:
        down, up = await run(service(endpoint), audio_frames(sample.pcm))
    assert texts(down) == list(sample.turns)
    assert len(endpoint.streams) == 2
    assert not [f for f in up if isinstance(f, ErrorFrame)]


@pytest.mark.anyio
async def test_a_refused_audio_frame_is_reported_and_the_audio_after_it_is_sent() -> None:
    # 641 bytes are not a whole number of linear16 samples: FluxClient.send_audio refuses them.
    odd = InputAudioRawFrame(b"\x00" * 641, SAMPLE_RATE, 1)
    audio = spoken_turns(1)
    async with MockFluxEndpoint(script=["only turn"]) as endpoint:
        stt = service(endpoint)
        down, up = await run(stt, [odd, *audio_frames(audio)])
        received = endpoint.received_audio()
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert isinstance(error.exception, errors.ValidationError)
    assert not error.category.is_permanent
    assert stt.is_usable
    assert received == [audio]
    assert texts(down) == ["only turn"]


@pytest.mark.anyio
async def test_fatal_flux_error_is_reported_with_its_code() -> None:
    fault = Fault(kind=FaultKind.FLUX_ERROR, after_audio_s=1.0, error_code="INTERNAL_SERVER_ERROR")
    async with MockFluxEndpoint(script=["one"], faults=[fault]) as endpoint:
        stt = service(endpoint, retry=RetryPolicy(enabled=False))
        _, up = await run(stt, audio_frames(spoken_turns(1)))
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert isinstance(error.exception, errors.FluxServerError)
    assert error.exception.code == "INTERNAL_SERVER_ERROR"
    assert "INTERNAL_SERVER_ERROR" in error.error
    assert not stt.is_usable


@pytest.mark.anyio
async def test_refused_connection_reports_connection_error() -> None:
    failures: list[str] = []
    async with MockFluxEndpoint(script=["one"]) as endpoint:
        denied = RequestFailure(status=403, error_type="AccessDeniedException", message="denied")
        endpoint.fail_requests(denied, count=5)
        stt = service(endpoint)

        @stt.event_handler("on_connection_error")
        async def _failed(_stt: Any, error: str) -> None:
            failures.append(error)

        _, up = await run(stt, audio_frames(spoken_turns(1)))
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert isinstance(error.exception, errors.AccessDeniedError)
    assert error.category is ErrorCategory.AUTHORIZATION
    assert len(failures) == 1
    assert "denied" in failures[0]


@pytest.mark.anyio
async def test_settings_the_bundle_refuses_at_session_open_are_an_invalid_request() -> None:
    # flux-multi-20260417 refuses profanity_filter: the session is refused before any request,
    # like settings out of range, and the error says it is the request, not an unknown cause.
    async with MockFluxEndpoint(script=["one"], bundle=FLUX_MULTI_20260417) as ep:
        stt = service(
            ep,
            capabilities=BundleCapabilities.flux_multi_20260417(),
            settings=Settings(profanity_filter=True),
        )
        _, up = await run(stt, [])
    assert ep.streams == []
    [error] = [f for f in up if isinstance(f, ErrorFrame)]
    assert isinstance(error.exception, errors.CapabilityError)
    assert error.category is ErrorCategory.INVALID_REQUEST


@pytest.mark.parametrize(("close", "waited"), [(None, 15.0), (3.0, 15.0), (30.0, 35.0)])
def test_stop_waits_out_a_longer_close_timeout(close: float | None, waited: float) -> None:
    """stop() gives the session its whole Timeouts.close (and a margin) to deliver the last
    turn when that is longer than the adapter's own 15 s."""
    timeouts = Timeouts() if close is None else Timeouts(close=close)
    stt = DeepgramFluxSageMakerSTTService(
        endpoint_name="unused", region="us-east-1", timeouts=timeouts
    )
    assert stt._stop_timeout() == waited


@pytest.mark.anyio
async def test_an_update_during_a_slow_reconnect_does_not_hold_the_frames_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The update comes while the client replaces a reset stream, and the new stream takes
    # longer than the update may hold the frames behind it (shortened here from 10 s): it gives
    # up waiting, and a new session takes the settings at the end of the turn. Without the bound
    # it waited for the reconnect, then went out as a Configure.
    monkeypatch.setattr(service_module, "_UPDATE_WAIT", 0.3)
    fault = Fault(kind=FaultKind.RESET_STREAM, after_audio_s=0.5)
    async with MockFluxEndpoint(script=["first", "second"], faults=[fault]) as endpoint:
        stt = service(
            endpoint,
            retry=RetryPolicy(initial_backoff=0.01, jitter="none"),
            timeouts=Timeouts(connected=1.5),
        )
        handle = endpoint._server._handler
        held: list[Any] = []

        async def hold_the_reconnect(stream: Any) -> None:
            if len(endpoint.streams) == 1 and not held:  # the first reconnect attempt
                held.append(stream)
                await stt.queue_frame(STTUpdateSettingsFrame(delta=Settings(eot_threshold=0.9)))
                await anyio.sleep_forever()  # the client gives up on it (Timeouts.connected)
            await handle(stream)

        endpoint._server._handler = hold_the_reconnect

        @stt.event_handler("on_end_of_turn")
        async def end_after_the_second_turn(_stt: Any, transcript: str) -> None:
            if transcript == "second":
                await stt.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

        _, up = await run_test(
            stt,
            frames_to_send=audio_frames(spoken_turns(2)),
            pipeline_params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE),
            send_end_frame=False,  # the handler ends the pipeline
            start_timeout=10.0,
        )
    assert held
    assert configures(endpoint) == []
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert stt._settings.eot_threshold == 0.9
    last = endpoint.streams[-1].settings
    assert last is not None
    assert last.eot_threshold == 0.9


@pytest.mark.parametrize("kind", [FaultKind.RESET_STREAM, FaultKind.DROP_CONNECTION])
@pytest.mark.anyio
async def test_a_reconnect_does_not_withdraw_a_prediction_made_again_after_a_resume(
    kind: FaultKind,
) -> None:
    # EagerEndOfTurn after 300 ms of pause (1.5 s), speech again (TurnResumed, 1.58 s), a second
    # EagerEndOfTurn with the same words (2.46 s), and EndOfTurn (0.9) after 540 ms (2.7 s): the
    # fault strikes between the last two. The replay makes Flux say it all again; its first
    # TurnResumed withdraws the first prediction, which the application saw withdrawn already,
    # not the second one it holds: an EagerEndOfTurnCancelFrame for it would discard a good
    # speculative response, and the turn's end would need a second inference.
    audio = tone(1200) + silence(360) + tone(600) + silence(1500)
    fault = Fault(kind=kind, after_audio_s=2.58)
    async with MockFluxEndpoint(script=["a table for two"], faults=[fault]) as endpoint:
        stt = service(endpoint, enable_eager_end_of_turn=True, settings=Settings(eot_threshold=0.9))
        resumed = _record(stt, "on_turn_resumed")
        down, _ = await run(stt, audio_frames(audio))
    first, replay = endpoint.streams
    assert first.event_types.count("EagerEndOfTurn") == 2
    assert "EndOfTurn" not in first.event_types
    assert "TurnResumed" in replay.event_types  # Flux withdrew the first prediction again
    kinds = [
        type(f)
        for f in flux_frames(down)
        if isinstance(f, EagerTranscriptionFrame | EagerEndOfTurnCancelFrame)
    ]
    assert kinds == [EagerTranscriptionFrame, EagerEndOfTurnCancelFrame, EagerTranscriptionFrame]
    assert texts(down) == ["a table for two"]
    assert resumed == [()]


def test_every_flux_client_option_is_taken_as_a_service_option() -> None:
    """What FluxClient takes, the service passes on (proxy came to FluxClient later and went
    to Pipecat's STTService instead); the service sets the endpoint, region and settings."""
    taken = set(inspect.signature(FluxClient).parameters) - {"endpoint_name", "region", "settings"}
    assert taken == service_module._CLIENT_OPTIONS
