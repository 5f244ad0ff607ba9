"""Every way a session can fail to open or break, each surfacing as its typed FluxError."""

from __future__ import annotations

import traceback
import uuid

import anyio
import pytest
from anyio.abc import SocketAttribute
from botocore.credentials import Credentials

from flux_sagemaker import (
    AccessDeniedError,
    ConnectError,
    EndOfTurn,
    ExpiredTokenError,
    FluxError,
    FluxEvent,
    FluxServerError,
    FluxSettings,
    GoAway,
    InputValidationError,
    InternalServerError,
    InternalStreamFailure,
    ModelError,
    ModelStreamError,
    OperationError,
    ServiceUnavailableError,
    StreamReset,
    ThrottlingError,
    TimeoutError,
    Timeouts,
    TransportError,
    UsageError,
    ValidationError,
)
from flux_sagemaker.testing import (
    FLUX_ENGLISH_20260311,
    FLUX_MULTI_20260417,
    NEWEST,
    BundleProfile,
    Fault,
    FaultKind,
    RequestFailure,
)
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

from .helpers import (
    FAST_TIMEOUTS,
    NO_RETRY,
    QUICK_RETRY,
    SAMPLE,
    TEST_TIMEOUT,
    EndpointFactory,
    client_for,
    credentials_going_stale,
    events_until_error,
    ms,
    of_type,
    run_session,
)

pytestmark = pytest.mark.anyio

FIRST_TURN_DONE = SAMPLE.pcm[: ms(3100)]


def _is_request_id(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


async def _open_fails(ep: object, **kwargs: object) -> FluxError:
    with pytest.raises(FluxError) as info:
        async with client_for(ep, **kwargs):  # type: ignore[arg-type]
            raise AssertionError("the session opened")
    return info.value


# -- refused requests -----------------------------------------------------------------------


async def test_wrong_region_is_access_denied(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(region="us-east-1") as ep:
            error = await _open_fails(ep, region="us-west-2")
    assert isinstance(error, AccessDeniedError)
    assert error.status_code == 403
    assert error.error_type == "InvalidSignatureException"
    assert _is_request_id(error.request_id)
    assert not error.retryable
    assert ep.streams[0].status == 403


async def test_wrong_credentials_are_access_denied(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            wrong = Credentials("AKIDEXAMPLE", "not-the-secret")
            unknown = Credentials("AKIDUNKNOWN", "whatever")
            bad_secret = await _open_fails(ep, credentials=wrong)
            bad_key = await _open_fails(ep, credentials=unknown)
    for error in (bad_secret, bad_key):
        assert isinstance(error, AccessDeniedError)
        assert error.status_code == 403
        assert _is_request_id(error.request_id)
        assert "not-the-secret" not in repr(error) + str(error)


async def test_no_frame_of_a_failed_open_holds_the_secret_in_its_locals(
    endpoint: EndpointFactory,
) -> None:
    """Error trackers (Sentry's default) record each frame's local variables by their repr;
    only a few names, such as ``credentials``, are scrubbed."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            ep.rotate_credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, token="the-new-one")
            fixed = Credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, "the-old-one")
            error = await _open_fails(ep, credentials=fixed)
    ours = [
        frame
        for frame, _ in traceback.walk_tb(error.__traceback__)
        if "flux_sagemaker" in frame.f_code.co_filename
    ]
    assert [frame.f_code.co_name for frame in ours][-1:] == ["_open_once"]
    for frame in ours:
        for name, value in frame.f_locals.items():
            if name != "credentials":
                assert DEFAULT_SECRET_KEY not in repr(value), (frame.f_code.co_name, name)


async def test_no_frame_of_a_failed_connect_holds_the_token_or_signature_in_its_locals() -> None:
    """The same for a failure inside the connection pool (here a refused connection, as while
    an endpoint is down): its frames hold the signed headers, session token and all."""
    token = "the-session-token"
    with anyio.fail_after(TEST_TIMEOUT):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(SocketAttribute.local_port)
        await listener.aclose()  # nothing listens there any more
        from flux_sagemaker import FluxClient

        with pytest.raises(ConnectError) as info:
            async with FluxClient(
                "flux-e2e",
                endpoint_url=f"http://127.0.0.1:{port}",
                region="us-east-1",
                credentials=Credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, token),
                timeouts=FAST_TIMEOUTS,
                retry=NO_RETRY,
            ):
                raise AssertionError("connected to nothing")
    ours = [
        frame
        for frame, _ in traceback.walk_tb(info.value.__traceback__)
        if "flux_sagemaker" in frame.f_code.co_filename
    ]
    assert "open_stream" in [frame.f_code.co_name for frame in ours]
    for frame in ours:
        for name, value in frame.f_locals.items():
            if name != "credentials":
                shown = repr(value)
                for secret in (DEFAULT_SECRET_KEY, token, "Signature="):
                    assert secret not in shown, (frame.f_code.co_name, name)


async def test_an_expired_token_of_fixed_credentials_is_not_retried(
    endpoint: EndpointFactory,
) -> None:
    """Fixed credentials (not refreshable) come back the same on every attempt: once SageMaker
    calls their token expired, a retry can only be refused again."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            ep.rotate_credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, token="the-new-one")
            fixed = Credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, "the-old-one")
            error = await _open_fails(ep, credentials=fixed, retry=QUICK_RETRY)
    assert isinstance(error, ExpiredTokenError)
    assert not error.retryable
    assert [stream.status for stream in ep.streams] == [403]  # one attempt, not five


async def test_a_refresh_that_gives_back_expired_credentials_is_a_validation_error(
    endpoint: EndpointFactory,
) -> None:
    """botocore raises a RuntimeError when a mandatory refresh (credentials that expire within
    10 minutes) hands back ones that are already expired: a credential_process, a cache or a
    metadata service serving stale ones. It came out of ``async with FluxClient`` as it was,
    past an application's ``except FluxError``."""

    credentials, _ = credentials_going_stale(valid=1)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            error = await _open_fails(ep, credentials=credentials)
    assert isinstance(error, ValidationError)
    assert "could not get AWS credentials" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    assert ep.streams == []  # nothing was sent


async def test_unknown_endpoint_name_is_a_validation_error(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(endpoint_name="the-real-one") as ep:
            error = await _open_fails(ep)
    assert isinstance(error, InputValidationError)
    assert error.status_code == 400
    assert error.error_type == "ValidationError"
    assert "flux-e2e" in str(error)


async def test_bad_request_is_an_input_validation_error(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            ep.fail_requests(
                RequestFailure(
                    status=400, error_type="ValidationError", message="1 validation error"
                )
            )
            error = await _open_fails(ep)
    assert isinstance(error, InputValidationError)
    assert error.status_code == 400
    assert "1 validation error" in str(error)
    assert not error.retryable


async def test_model_error_keeps_the_original_status(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            ep.fail_requests(RequestFailure.model_error("the container said no"))
            error = await _open_fails(ep)
    assert isinstance(error, ModelError)
    assert error.status_code == 424
    assert error.original_status_code == 400
    assert error.original_message == "the container said no"
    assert _is_request_id(error.request_id)


async def test_query_parameter_the_bundle_rejects_is_a_model_error(
    endpoint: EndpointFactory,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(bundle=FLUX_ENGLISH_20260311) as ep:
            # The client believes the bundle is the newest one, so it sends numerals.
            error = await _open_fails(ep, settings=FluxSettings(numerals=True))
    assert isinstance(error, ModelError)
    assert error.status_code == 424
    assert ep.streams[0].error is not None
    assert "numerals" in ep.streams[0].error


@pytest.mark.parametrize(
    ("bundle", "settings", "reason"),
    [
        # The container's reject-unknown-params gate (flux.md section 1).
        (NEWEST, FluxSettings(extra_params={"detect_language": "true"}), "detect_language"),
        # The older bundles' ranges (flux.md section 8.1).
        (FLUX_ENGLISH_20260311, FluxSettings(eot_timeout_ms=20000), "eot_timeout_ms"),
        (FLUX_MULTI_20260417, FluxSettings(eot_threshold=0.95), "eot_threshold"),
    ],
    ids=["unknown-parameter", "timeout-above-10000", "threshold-above-0.9"],
)
async def test_query_parameters_the_container_refuses_are_a_model_error(
    endpoint: EndpointFactory, bundle: BundleProfile, settings: FluxSettings, reason: str
) -> None:
    """What the client cannot know (a parameter newer than the bundle, a bundle's older range)
    is refused at the container's handshake: SageMaker answers a generic 424."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(bundle=bundle) as ep:
            error = await _open_fails(ep, settings=settings)
    assert isinstance(error, ModelError)
    assert error.status_code == 424
    assert ep.streams[0].error is not None
    assert reason in ep.streams[0].error


RETRYABLE_FAILURES = {
    "throttling": (RequestFailure.throttling(), ThrottlingError),
    "unavailable": (RequestFailure.service_unavailable(), ServiceUnavailableError),
    "internal": (RequestFailure.internal_error(), InternalServerError),
}


@pytest.mark.parametrize(
    ("failure", "error_class"), RETRYABLE_FAILURES.values(), ids=RETRYABLE_FAILURES.keys()
)
async def test_retryable_failures_without_retries(
    endpoint: EndpointFactory, failure: RequestFailure, error_class: type[OperationError]
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            ep.fail_requests(failure)
            error = await _open_fails(ep)
    assert type(error) is error_class
    assert error.retryable
    assert error.status_code == failure.status
    assert len(ep.streams) == 1


@pytest.mark.parametrize(
    ("failure", "error_class"), RETRYABLE_FAILURES.values(), ids=RETRYABLE_FAILURES.keys()
)
async def test_one_retryable_failure_then_success(
    endpoint: EndpointFactory, failure: RequestFailure, error_class: type[OperationError]
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            ep.fail_requests(failure)
            async with client_for(ep, retry=QUICK_RETRY) as flux:
                events = await run_session(flux, FIRST_TURN_DONE)
            assert flux.stats.streams_opened == 2
    assert [s.status for s in ep.streams] == [failure.status, 200]
    assert [e.transcript for e in of_type(events, EndOfTurn)] == [SAMPLE.turns[0]]
    assert bytes(ep.streams[1].audio) == FIRST_TURN_DONE


async def test_retries_give_up_with_the_last_error(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            ep.fail_requests(RequestFailure.throttling(), count=10)
            retry = QUICK_RETRY.__class__(
                max_attempts=3, initial_backoff=0.01, max_backoff=0.02, jitter="none"
            )
            error = await _open_fails(ep, retry=retry)
    assert isinstance(error, ThrottlingError)
    assert 2 <= len(ep.streams) <= 4  # a few attempts, not ten


# -- opening that never completes -----------------------------------------------------------


async def test_connected_never_arrives_times_out(endpoint: EndpointFactory) -> None:
    timeouts = Timeouts(connect=2.0, connected=0.3, close=0.5, ping_interval=None)
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=[Fault(kind=FaultKind.NO_CONNECTED)]) as ep:
            error = await _open_fails(ep, timeouts=timeouts)
    assert isinstance(error, TimeoutError)
    assert "Connected" in str(error)
    assert ep.streams[0].status == 200
    assert ep.streams[0].sent == []


async def test_connection_refused_is_a_connect_error() -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(SocketAttribute.local_port)
        await listener.aclose()  # nothing listens there any more
        from flux_sagemaker import FluxClient, RetryPolicy

        with pytest.raises(ConnectError):
            async with FluxClient(
                "flux-e2e",
                endpoint_url=f"http://127.0.0.1:{port}",
                region="us-east-1",
                credentials=Credentials("AKIDEXAMPLE", "secret"),
                timeouts=FAST_TIMEOUTS,
                retry=RetryPolicy(enabled=False),
            ):
                raise AssertionError("connected to nothing")


# -- failures after the stream started ------------------------------------------------------

MID_STREAM_FAULTS = {
    "flux-error": (FaultKind.FLUX_ERROR, FluxServerError),
    "model-stream-error": (FaultKind.MODEL_STREAM_ERROR, ModelStreamError),
    "internal-stream-failure": (FaultKind.INTERNAL_STREAM_FAILURE, InternalStreamFailure),
    "reset": (FaultKind.RESET_STREAM, StreamReset),
    "dropped-connection": (FaultKind.DROP_CONNECTION, TransportError),
    "goaway": (FaultKind.GOAWAY, GoAway),
    "server-ended": (FaultKind.END_STREAM, TransportError),
}


async def _send_until_refused(flux: object, pcm: bytes) -> None:
    send = flux.send_audio  # type: ignore[attr-defined]
    try:
        for offset in range(0, len(pcm), ms(40)):
            await send(pcm[offset : offset + ms(40)])
    except UsageError:
        pass  # the session failed under us: the iterator says why


@pytest.mark.parametrize(
    ("kind", "error_class"), MID_STREAM_FAULTS.values(), ids=MID_STREAM_FAULTS.keys()
)
async def test_mid_stream_failure_after_the_earlier_events(
    endpoint: EndpointFactory, kind: FaultKind, error_class: type[FluxError]
) -> None:
    fault = Fault(kind=kind, after_audio_s=3.0, error_code="")
    events: list[FluxEvent] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(faults=[fault]) as ep, client_for(ep) as flux:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_send_until_refused, flux, SAMPLE.pcm)
                error = await events_until_error(flux, events)
            assert flux.is_closed
            with pytest.raises(UsageError):
                await flux.send_audio(b"\x00\x00")
    assert isinstance(error, error_class), repr(error)
    # Whatever broke the stream, the error names its request, for logs and support cases.
    assert _is_request_id(error.request_id)
    assert error.request_id == flux.request_id
    # Everything before the fault was delivered first: the first turn, complete.
    assert [e.transcript for e in of_type(events, EndOfTurn)] == [SAMPLE.turns[0]]
    assert ep.streams[0].error == f"fault: {kind.value}"
    if isinstance(error, FluxServerError):
        assert error.code == "INTERNAL_SERVER_ERROR"
        assert error.description == "injected fault"


async def test_stream_time_limit_ends_an_idle_stream(endpoint: EndpointFactory) -> None:
    # SageMaker's limit counts time, not audio: a client that sends nothing is cut off too.
    events: list[FluxEvent] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(max_stream_duration=0.05) as ep, client_for(ep) as flux:
            error = await events_until_error(flux, events)
    assert isinstance(error, ModelStreamError), repr(error)
    assert error.error_code == "ModelInvocationTimeExceeded"
    assert ep.streams[0].audio_events == 0
