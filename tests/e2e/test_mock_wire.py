"""The mock endpoint on the wire, below FluxClient: what it accepts, refuses, and how it fails."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.events
import pytest
from botocore.credentials import ReadOnlyCredentials

from flux_sagemaker import AccessDeniedError, FluxClient, UsageError, ValidationError
from flux_sagemaker.core.eventstream import EventStreamDecoder, encode_message
from flux_sagemaker.core.request import Endpoint, InvokeRequest
from flux_sagemaker.core.signing import EventSigner, sign_request
from flux_sagemaker.h2core import DrainingH2Connection
from flux_sagemaker.testing import Fault, FaultKind, MockFluxEndpoint, RequestFailure
from flux_sagemaker.testing import __main__ as testing_main
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY
from flux_sagemaker.transport import H2Stream, Timeouts, open_connection

from .helpers import TEST_TIMEOUT

pytestmark = pytest.mark.anyio

CREDENTIALS = ReadOnlyCredentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, None)
QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000"


async def read_body(stream: H2Stream) -> bytes:
    body = bytearray()
    while (chunk := await stream.receive()) is not None:
        body += chunk
    return bytes(body)


def payload_part(payload: bytes, data_type: str, completion: str | None = None) -> bytes:
    headers = {":message-type": "event", ":event-type": "PayloadPart", "DataType": data_type}
    if completion is not None:
        headers["CompletionState"] = completion
    return encode_message(headers, payload)


@asynccontextmanager
async def request_stream(
    ep: MockFluxEndpoint, **options: Any
) -> AsyncIterator[tuple[H2Stream, str]]:
    """A signed request to ``ep`` (``options`` as for InvokeRequest): its stream, and its
    signature (the seed of the event signatures)."""
    endpoint = Endpoint(scheme="http", host="127.0.0.1", port=ep.port)
    signed = sign_request(InvokeRequest(endpoint, "ep", QUERY, **options), CREDENTIALS, ep.region)
    async with open_connection(
        "127.0.0.1", ep.port, ssl_context=None, timeouts=Timeouts(ping_interval=None)
    ) as conn:
        stream = await conn.open_stream(
            "POST", signed.scheme, signed.authority, signed.path, signed.headers
        )
        yield stream, signed.signature


@asynccontextmanager
async def signed_stream(
    ep: MockFluxEndpoint, target_variant: str | None = None
) -> AsyncIterator[tuple[H2Stream, EventSigner]]:
    """An accepted stream of ``ep`` and the signer of its events."""
    async with request_stream(ep, target_variant=target_variant) as (stream, seed):
        assert (await stream.response())[0] == 200
        yield stream, EventSigner(credentials=CREDENTIALS, region=ep.region, seed_signature=seed)


async def flux_messages(stream: H2Stream) -> list[dict[str, Any]]:
    """The Flux messages of the whole response."""
    events = EventStreamDecoder().receive_data(await read_body(stream))
    assert all(e.headers[":message-type"] == "event" for e in events)
    return [json.loads(e.payload) for e in events]


async def test_a_control_message_in_partial_parts_is_one_message() -> None:
    # SageMaker sends PARTIAL...COMPLETE parts as one fragmented WebSocket text message, which
    # only as a whole must be UTF-8: this one is split inside the "é".
    configure = '{"type":"Configure","keyterms":["café"]}'.encode()
    cut = configure.index(b"\xa9")
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint() as ep, signed_stream(ep) as (stream, signer):
            await stream.send(signer.sign(payload_part(configure[:cut], "UTF8", "PARTIAL")))
            await stream.send(signer.sign(payload_part(configure[cut:], "UTF8", "COMPLETE")))
            await stream.send(signer.sign(payload_part(b'{"type":"CloseStream"}', "UTF8")))
            messages = await flux_messages(stream)
            await stream.send(signer.sign_empty())
            await stream.end_input()
    assert [m["type"] for m in messages] == ["Connected", "ConfigureSuccess"]
    assert messages[1]["keyterms"] == ["café"]
    assert ep.streams[0].texts == [configure.decode(), '{"type":"CloseStream"}']


async def test_an_invocation_path_flux_does_not_serve_gets_a_model_error() -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            MockFluxEndpoint() as ep,
            request_stream(ep, invocation_path="v1/listen") as (stream, _),
        ):
            status, headers = await stream.response()
            assert status == 424
            body = await read_body(stream)
    assert dict(headers)["x-amzn-errortype"].startswith("ModelError:")
    assert b"Failed to establish WebSocket connection" in body
    assert ep.streams[0].error is not None
    assert "v1/listen" in ep.streams[0].error


async def test_a_header_that_is_not_utf8_fails_only_its_request() -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint() as ep:
            h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            h2conn.initiate_connection()
            request = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x")]
            h2conn.send_headers(1, [*request, (b":path", b"/"), (b"x-junk", b"\xff\xfe")])
            status = None
            async with await anyio.connect_tcp("127.0.0.1", ep.port) as sock:
                await sock.send(h2conn.data_to_send())
                while status is None:
                    for event in h2conn.receive_data(await sock.receive()):
                        if isinstance(event, h2.events.ResponseReceived):
                            status = dict(event.headers or ())[b":status"]
    assert status == b"403"
    assert ep.streams[0].status == 403


@pytest.mark.parametrize(("variant", "invoked"), [(None, "AllTraffic"), ("blue", "blue")])
async def test_the_invoked_variant_is_the_target_variant(variant: str | None, invoked: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint() as ep, signed_stream(ep, variant) as (stream, signer):
            _status, headers = await stream.response()
            await stream.send(signer.sign(payload_part(b'{"type":"CloseStream"}', "UTF8")))
            await flux_messages(stream)
            await stream.send(signer.sign_empty())
            await stream.end_input()
    assert dict(headers)["x-amzn-invoked-production-variant"] == invoked


async def test_an_error_in_the_endpoint_body_is_not_wrapped_in_a_group() -> None:
    # `pytest.raises(AccessDeniedError)` around the README's pattern got an ExceptionGroup.
    async def session() -> None:
        async with MockFluxEndpoint() as endpoint:
            endpoint.fail_requests(RequestFailure.access_denied())
            async with FluxClient("any", **endpoint.client_kwargs()):
                pass

    with anyio.fail_after(TEST_TIMEOUT), pytest.raises(AccessDeniedError):
        await session()


def test_a_fault_kind_given_as_its_value_is_that_kind() -> None:
    # As a plain string it would never equal a FaultKind: the fault would never strike, and a
    # test meant to exercise it would pass without it.
    assert Fault(kind="reset_stream").kind is FaultKind.RESET_STREAM
    with pytest.raises(ValidationError, match="'reset' is not one of: drop_connection, "):
        Fault(kind="reset")


def test_a_fault_kind_is_typed_for_type_checkers() -> None:
    # attrs types __init__ by the converter's parameter: typed `object`, mypy accepted
    # Fault(kind=3) or kind=None in a user's test.
    assert Fault.__init__.__annotations__["kind"] == "FaultKind | str"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tls": "no"},  # truthy: TLS on
        {"bundle": "newest"},
        {"faults": ["reset_stream"]},
    ],
)
def test_mock_arguments_of_the_wrong_type_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MockFluxEndpoint(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"after_audio_s": "1.0"},  # failed mid-stream, reported as a bug of the mock
        {"after_audio_s": float("nan")},  # never due
        {"latency": "0.5"},
        {"latency": -1.0},
        {"stream_index": -1},  # names no stream: never struck
        {"stream_index": 1.0},
        {"stream_index": "1"},
    ],
)
def test_fault_fields_of_the_wrong_type_or_range_are_refused(kwargs: dict[str, Any]) -> None:
    # A Fault that could never strike, or would fail only in the middle of a stream, would
    # leave a test meant to exercise it passing without it (or blaming the mock).
    with pytest.raises(ValidationError, match="Fault "):
        Fault(kind=FaultKind.RESET_STREAM, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"region": ""},  # signed with an empty scope: every request refused
        {"max_stream_duration": -1.0},  # every stream ended at once
        {"max_stream_duration": "30"},  # failed mid-stream
        {"receive_window": 0},  # the client could never send audio
        {"receive_window": 2**31},  # not HTTP/2
        {"keep_streams": -1},
        {"keep_streams": 1.5},
    ],
)
def test_endpoint_arguments_that_could_not_work_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        MockFluxEndpoint(**kwargs)


async def test_the_url_of_an_endpoint_not_entered_yet_is_a_usage_error() -> None:
    # It was http://127.0.0.1:0 until entered: a client pointed there got a connection error.
    ep = MockFluxEndpoint()
    for attribute in ("url", "port"):
        with pytest.raises(UsageError, match="listens once entered"):
            getattr(ep, attribute)
    with pytest.raises(UsageError, match="listens once entered"):
        ep.client_kwargs()
    with anyio.fail_after(TEST_TIMEOUT):
        async with ep, FluxClient("any", **ep.client_kwargs()) as flux:
            await flux.close()
    assert ep.port > 0  # still known after it stopped, for the records


async def test_request_failure_counts_and_kinds_are_checked() -> None:
    # goaway_requests(-1) left every later request unprocessed, for ever; a failure that is
    # not a RequestFailure failed only when a request came, as a bug of the mock.
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint() as ep:
            with pytest.raises(ValidationError, match="count must be an int >= 0, got -1"):
                ep.goaway_requests(-1)
            with pytest.raises(ValidationError, match="count must be an int >= 0"):
                ep.fail_requests(RequestFailure.throttling(), count=-1)
            with pytest.raises(ValidationError, match="must be a RequestFailure"):
                ep.fail_requests("throttling")  # type: ignore[arg-type]
            async with FluxClient("any", **ep.client_kwargs()) as flux:
                await flux.close()
    assert [s.status for s in ep.streams] == [200]


def test_inject_refuses_what_is_not_a_fault() -> None:
    with pytest.raises(ValidationError, match="Fault instances"):
        MockFluxEndpoint().inject("reset_stream")  # type: ignore[arg-type]


async def test_a_fault_injected_into_an_open_stream_strikes_it() -> None:
    # inject() says the fault strikes the stream it names: the stream already open too, or a
    # test meant to exercise the fault would pass without it.
    audio = payload_part(bytes(2560), "BINARY")
    close = payload_part(b'{"type":"CloseStream"}', "UTF8")
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint() as ep, signed_stream(ep) as (stream, signer):
            decoder = EventStreamDecoder()
            connected: list[Any] = []
            while not connected:  # the stream is served: the fault can only come later
                chunk = await stream.receive()
                assert chunk is not None
                connected = decoder.receive_data(chunk)
            ep.inject(Fault(kind=FaultKind.MODEL_STREAM_ERROR))
            await stream.send(signer.sign(audio) + signer.sign(close))
            events = decoder.receive_data(await read_body(stream))
    assert [e.headers[":message-type"] for e in events] == ["exception"]
    assert events[0].headers[":exception-type"] == "ModelStreamError"
    assert ep.streams[0].error == "fault: model_stream_error"


async def test_every_fault_for_a_stream_strikes_it() -> None:
    # "each into the stream it names": a slow server that then breaks, not only the first.
    faults = [
        Fault(kind=FaultKind.LATENCY, latency=0.001),
        Fault(kind=FaultKind.INTERNAL_STREAM_FAILURE, after_audio_s=0.16),
    ]
    audio = payload_part(bytes(2560), "BINARY")
    close = payload_part(b'{"type":"CloseStream"}', "UTF8")
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint(faults=faults) as ep, signed_stream(ep) as (stream, signer):
            await stream.send(
                b"".join([*(signer.sign(audio) for _ in range(3)), signer.sign(close)])
            )
            events = EventStreamDecoder().receive_data(await read_body(stream))
    assert events[-1].headers[":exception-type"] == "InternalStreamFailure"
    assert ep.streams[0].error == "fault: internal_stream_failure"
    assert ep.streams[0].fault == faults[1]


async def test_a_goaway_request_leaves_the_requests_after_it_unprocessed() -> None:
    # A GOAWAY says no stream above its last stream id was processed: a request that arrived
    # in the same read as the refused one, just after it, must not be served anyway (given a
    # 200 and Connected, recorded, counted against the faults' stream indices) while the
    # client retries it elsewhere.
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint() as ep:
            ep.goaway_requests(1)
            endpoint = Endpoint(scheme="http", host="127.0.0.1", port=ep.port)
            # Draining: it still takes frames after the GOAWAY, as a client must.
            h2conn = DrainingH2Connection(h2.config.H2Configuration(client_side=True))
            h2conn.initiate_connection()
            for stream_id in (1, 3):
                signed = sign_request(InvokeRequest(endpoint, "ep", QUERY), CREDENTIALS, ep.region)
                h2conn.send_headers(stream_id, signed.h2_headers())
            seen: list[h2.events.Event] = []
            async with await anyio.connect_tcp("127.0.0.1", ep.port) as sock:
                await sock.send(h2conn.data_to_send())  # both requests in one write
                pinged = False
                while not any(isinstance(e, h2.events.PingAckReceived) for e in seen):
                    seen += h2conn.receive_data(await sock.receive())
                    if not pinged and any(
                        isinstance(e, h2.events.ConnectionTerminated) for e in seen
                    ):
                        # The server's reader answers after the handlers it started have run.
                        h2conn.ping(b"barrier!")
                        await sock.send(h2conn.data_to_send())
                        pinged = True
    (goaway,) = [e for e in seen if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.last_stream_id == 0
    assert not [e for e in seen if isinstance(e, h2.events.ResponseReceived)]
    assert [s.status for s in ep.streams] == [0]


async def test_an_endpoint_can_be_entered_only_once() -> None:
    # Entered again while running, it started a second server and its exit then failed
    # inside anyio ('TaskGroup' has no '_exceptions'; trio: "Nursery misnesting"); entered
    # again after it stopped, its TLS CA file (ca_pem_path) was already deleted.
    with anyio.fail_after(TEST_TIMEOUT):
        ep = MockFluxEndpoint(tls=True)
        async with ep:
            url = ep.url
            with pytest.raises(UsageError, match="entered only once"):
                async with ep:
                    pass
            assert ep.url == url
            async with FluxClient("any", **ep.client_kwargs()) as flux:
                await flux.close()
        with pytest.raises(UsageError, match="entered only once"):
            async with ep:
                pass


@pytest.mark.parametrize("keep", [0, 2])
async def test_keep_streams_keeps_the_records_of_the_newest_streams_only(keep: int) -> None:
    """A long-running endpoint would otherwise hold every stream's audio for ever."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with MockFluxEndpoint(keep_streams=keep) as ep:
            for n in range(1, 4):
                async with FluxClient("any", **ep.client_kwargs()) as flux:
                    await flux.send_audio(bytes(640 * n))
                    await flux.close()
    assert [(s.index, len(s.audio)) for s in ep.streams] == [(1, 1280), (2, 1920)][2 - keep :]


async def test_the_served_endpoint_keeps_no_stream_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[MockFluxEndpoint] = []
    listening = anyio.Event()

    class Recorded(MockFluxEndpoint):
        async def __aenter__(self) -> MockFluxEndpoint:
            entered = await super().__aenter__()
            made.append(self)
            listening.set()
            return entered

    monkeypatch.setattr(testing_main, "MockFluxEndpoint", Recorded)
    args = testing_main.build_parser().parse_args(["serve"])
    with anyio.fail_after(TEST_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(testing_main.serve, args)
            await listening.wait()
            (ep,) = made
            async with FluxClient("any", **ep.client_kwargs()) as flux:
                await flux.send_audio(bytes(640))
                await flux.close()
            tg.cancel_scope.cancel()
    assert ep.streams == []
