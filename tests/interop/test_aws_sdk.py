"""The official AWS SDK client (aws-sdk-sagemaker-runtime-http2 on awscrt) against MockFluxEndpoint.

The mock must accept what the real client sends, byte for byte: its SigV4 request signature,
every chained event signature and the final empty envelope, over TLS with ALPN ``h2`` (awscrt
cannot speak plaintext HTTP/2 with prior knowledge). Run with ``nox -s interop`` (Python 3.12+).

Everything is bounded by ``asyncio.timeout``: the SDK is known to hang on some faults, and a hang
must fail the test, not stall CI.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

pytest.importorskip(
    "aws_sdk_sagemaker_runtime_http2",
    reason="the official AWS SDK client is not installed (Python 3.12+, run `nox -s interop`)",
)
pytest.importorskip("awscrt", reason="awscrt is not installed (smithy-http[awscrt])")

from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    ModelStreamError,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
    ResponseStreamEventPayloadPart,
)
from awscrt import io as crt_io
from smithy_aws_core.identity import EnvironmentCredentialsResolver
from smithy_core.exceptions import CallError
from smithy_http.aio.crt import AWSCRTHTTPClient

from flux_sagemaker.samples import load_sample
from flux_sagemaker.testing import Fault, FaultKind, MockFluxEndpoint

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: Seconds allowed for one whole exchange (the sample is 6.1 s of audio, sent unpaced).
EXCHANGE_TIMEOUT = 20.0
#: Seconds allowed for closing the client (awscrt tears down on native threads).
CLOSE_TIMEOUT = 5.0
#: ``input_stream.close()`` returns before awscrt has written END_STREAM; closing the client at
#: once would cut that write off (see benchmarks/peers/aws_sdk_stream.py, ``close_client``).
CLOSE_GRACE_S = 0.05
QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000"
CLOSE_STREAM = b'{"type":"CloseStream"}'

SAMPLE = load_sample()
#: 80 ms of 16 kHz linear16 mono.
FRAME_BYTES = SAMPLE.sample_rate * 2 * 80 // 1000
FRAMES = [SAMPLE.pcm[i : i + FRAME_BYTES] for i in range(0, len(SAMPLE.pcm), FRAME_BYTES)]


def _trusting_transport(ca_pem_path: str) -> AWSCRTHTTPClient:
    """An awscrt transport that trusts only the mock's per-run CA.

    The SDK has no public TLS option, so this swaps the transport's private TLS context, as the
    benchmark peer does.
    """
    options = crt_io.TlsContextOptions()
    options.override_default_trust_store_from_path(ca_filepath=ca_pem_path)
    transport = AWSCRTHTTPClient()
    transport._tls_ctx = crt_io.ClientTlsContext(options)
    return transport


@asynccontextmanager
async def sdk_client(endpoint: MockFluxEndpoint) -> AsyncIterator[AsyncSageMakerRuntimeHTTP2Client]:
    """An SDK client pointed at ``endpoint``, with credentials from the environment."""
    assert endpoint.ca_pem_path is not None, "the SDK needs the mock's TLS mode"
    config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
        endpoint_uri=endpoint.url,
        region=endpoint.region,
        transport=_trusting_transport(endpoint.ca_pem_path),
        aws_credentials_identity_resolver=EnvironmentCredentialsResolver(),
    )
    client = AsyncSageMakerRuntimeHTTP2Client(config=config)
    try:
        yield client
    finally:
        await asyncio.sleep(CLOSE_GRACE_S)
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.close()


def _request() -> InvokeEndpointWithBidirectionalStreamInput:
    return InvokeEndpointWithBidirectionalStreamInput(
        endpoint_name="flux-ep", model_invocation_path="v2/listen", model_query_string=QUERY
    )


async def _send(stream: Any, payload: bytes, data_type: str) -> None:
    part = RequestPayloadPart(bytes_=payload, data_type=data_type)
    await stream.input_stream.send(RequestStreamEventPayloadPart(value=part))


async def _send_audio(stream: Any, frames: Sequence[bytes]) -> None:
    for frame in frames:
        await _send(stream, frame, "BINARY")


async def _read_messages(output: Any, into: list[dict[str, Any]]) -> None:
    """Decode every output PayloadPart as one Flux JSON message, until the response ends."""
    while (event := await output.receive()) is not None:
        assert isinstance(event, ResponseStreamEventPayloadPart), event
        part = event.value
        assert (part.data_type, part.completion_state) == ("UTF8", "COMPLETE")
        into.append(json.loads(part.bytes_))


def _end_of_turn_transcripts(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [
        m["transcript"]
        for m in messages
        if m["type"] == "TurnInfo" and m.get("event") == "EndOfTurn"
    ]


async def test_sdk_streams_the_sample_through_the_mock(sdk_credentials: object) -> None:
    messages: list[dict[str, Any]] = []
    async with (
        asyncio.timeout(EXCHANGE_TIMEOUT),
        MockFluxEndpoint(tls=True, script=SAMPLE.turns) as endpoint,
        sdk_client(endpoint) as client,
    ):
        stream = await client.invoke_endpoint_with_bidirectional_stream(_request())
        _, output = await stream.await_output()  # the response headers, before any input
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_read_messages(output, messages))
            await _send_audio(stream, FRAMES)
            await _send(stream, CLOSE_STREAM, "UTF8")
        await stream.input_stream.close()  # the final empty signed envelope
        record = endpoint.streams[0]
        # The envelope may still be in flight; nothing signals it, so poll (bounded above).
        while not record.input_ended:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    assert _end_of_turn_transcripts(messages) == list(SAMPLE.turns)
    assert messages == record.sent  # every message the mock sent arrived intact, in order
    assert messages[0]["type"] == "Connected"
    assert len(endpoint.streams) == 1
    assert record.status == 200
    assert record.error is None
    assert bytes(record.audio) == SAMPLE.pcm
    assert record.audio_event_sizes == [len(f) for f in FRAMES]
    assert record.texts == [CLOSE_STREAM.decode()]
    assert record.inputs == ["BINARY"] * len(FRAMES) + ["UTF8", "END"]


@pytest.mark.parametrize(
    ("variable", "value", "error_type"),
    [
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret-key", "InvalidSignatureException"),
        ("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN", "UnrecognizedClientException"),
        ("AWS_SESSION_TOKEN", "unexpected-token", "UnrecognizedClientException"),
    ],
)
async def test_sdk_with_wrong_credentials_gets_403(
    sdk_credentials: object,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    error_type: str,
) -> None:
    monkeypatch.setenv(variable, value)
    async with (
        asyncio.timeout(EXCHANGE_TIMEOUT),
        MockFluxEndpoint(tls=True, script=SAMPLE.turns) as endpoint,
        sdk_client(endpoint) as client,
    ):
        stream = await client.invoke_endpoint_with_bidirectional_stream(_request())
        # The SDK raises the refusal when the response headers arrive.
        with pytest.raises(CallError) as caught:
            await stream.await_output()

    # Not modelled for this operation, so the SDK raises its generic CallError with the status
    # and the x-amzn-errortype it was given.
    assert caught.value.response_metadata.http_status_code == 403
    assert f"#{error_type}" in caught.value.message
    assert endpoint.streams, "the request never reached the mock"
    for record in endpoint.streams:  # every attempt, should the SDK ever retry
        assert record.status == 403
        assert record.error is not None
        assert record.error.startswith(f"{error_type}:")
        assert not record.audio


async def test_injected_model_stream_error_reaches_the_sdk(sdk_credentials: object) -> None:
    fault = Fault(kind=FaultKind.MODEL_STREAM_ERROR, after_audio_s=1.0, error_code="InjectedFault")
    messages: list[dict[str, Any]] = []
    async with (
        asyncio.timeout(EXCHANGE_TIMEOUT),
        MockFluxEndpoint(tls=True, script=SAMPLE.turns, faults=[fault]) as endpoint,
        sdk_client(endpoint) as client,
    ):
        stream = await client.invoke_endpoint_with_bidirectional_stream(_request())
        _, output = await stream.await_output()
        sender = asyncio.create_task(_send_audio(stream, FRAMES))
        try:
            with pytest.raises(ModelStreamError) as caught:
                await _read_messages(output, messages)
        finally:
            # Once the mock has broken the stream off, awscrt stops draining the SDK's send
            # buffer, so the sender may be blocked for good.
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        # No input_stream.close() here: after the server has ended the stream, the SDK's
        # close() waits forever for its unsent buffer to drain. Closing the client ends it.

    assert caught.value.error_code == "InjectedFault"
    assert caught.value.message == "The model stream broke"
    record = endpoint.streams[0]
    assert record.status == 200
    assert record.error == f"fault: {FaultKind.MODEL_STREAM_ERROR.value}"
    # The fault struck once a second of audio had arrived, before any turn could end ...
    assert len(record.audio) >= SAMPLE.sample_rate * 2 * fault.after_audio_s
    assert SAMPLE.pcm.startswith(bytes(record.audio))
    # ... and every message the mock sent before it reached the SDK, in order.
    assert messages == record.sent
    assert messages[0]["type"] == "Connected"
    assert _end_of_turn_transcripts(messages) == []
