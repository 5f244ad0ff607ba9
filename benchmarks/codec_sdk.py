"""The AWS SDK's event-stream encoder, event signer and decoder, timed (Python 3.12+ only).

Run under the AWS SDK's environment (``/work/venv312/bin/python benchmarks/codec_sdk.py``); it
does not import flux_sagemaker. Reads a JSON job on stdin::

    {"frame_sizes": [640, 2560], "events": 2000, "repeats": 5,
     "response_hex": "<one response event-stream message>", "response_count": 2000}

and prints JSON: per frame size, the time to serialize + sign + encode one audio event the way
``AWSEventPublisher.send`` does (``RequestStreamEventPayloadPart`` -> ``_EventSerializer`` ->
``AsyncEventSigner.sign`` -> ``EventMessage.encode``), and the time to decode response events
the way ``AWSEventReceiver.receive`` does (``Event.decode_async`` + the SDK's deserializer),
then ``json.loads`` of the payload as every caller must.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from importlib import metadata
from typing import Any


class _Sink:
    """An async writer that keeps only the byte count."""

    def __init__(self) -> None:
        self.written = 0

    async def write(self, data: bytes) -> None:
        self.written += len(data)


async def _encode_sign(size: int, events: int, repeats: int) -> dict[str, Any]:
    from aws_sdk_sagemaker_runtime_http2.config import _PROTOCOL_SETTINGS
    from aws_sdk_sagemaker_runtime_http2.models import (
        RequestPayloadPart,
        RequestStreamEventPayloadPart,
    )
    from aws_sdk_signers import AsyncEventSigner
    from smithy_aws_core.aio.protocols import RestJsonClientProtocol
    from smithy_aws_core.identity.components import AWSCredentialsIdentity
    from smithy_aws_core.identity.static import StaticCredentialsResolver
    from smithy_aws_event_stream.aio import AWSEventPublisher, SigningConfig
    from smithy_aws_event_stream.events import EventHeaderEncoder

    codec = RestJsonClientProtocol(_PROTOCOL_SETTINGS).payload_codec
    identity = AWSCredentialsIdentity(
        access_key_id="AKIDEXAMPLE", secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    )
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    best = float("inf")
    for _ in range(repeats):
        signer = AsyncEventSigner(initial_signature=b"0" * 64, event_encoder_cls=EventHeaderEncoder)
        config = SigningConfig(
            signer=signer,
            signing_properties={"region": "us-east-1", "service": "sagemaker"},
            identity_resolver=StaticCredentialsResolver(identity),
            identity_properties={},
        )
        sink = _Sink()
        publisher = AWSEventPublisher(payload_codec=codec, async_writer=sink, signing_config=config)
        start = time.perf_counter()
        for _ in range(events):
            part = RequestPayloadPart(bytes_=payload, data_type="BINARY")
            await publisher.send(RequestStreamEventPayloadPart(value=part))
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "events": events, "payload_bytes": size * events}


async def _decode(wire: bytes, count: int, repeats: int) -> dict[str, Any]:
    from aws_sdk_sagemaker_runtime_http2.config import _PROTOCOL_SETTINGS
    from aws_sdk_sagemaker_runtime_http2.models import _ResponseStreamEventDeserializer
    from smithy_aws_core.aio.protocols import RestJsonClientProtocol
    from smithy_aws_event_stream.aio import AWSEventReceiver
    from smithy_core.aio.types import AsyncBytesReader

    codec = RestJsonClientProtocol(_PROTOCOL_SETTINGS).payload_codec
    body = wire * count
    best = float("inf")
    for _ in range(repeats):
        receiver = AWSEventReceiver(
            payload_codec=codec,
            source=AsyncBytesReader(body),
            deserializer=_ResponseStreamEventDeserializer().deserialize,
        )
        start = time.perf_counter()
        n = 0
        while (event := await receiver.receive()) is not None:
            json.loads(event.value.bytes_)
            n += 1
        best = min(best, time.perf_counter() - start)
    assert n == count, n
    return {"seconds": best, "events": count, "wire_bytes": len(body)}


async def _main(job: dict[str, Any]) -> dict[str, Any]:
    encode = {
        str(size): await _encode_sign(size, job["events"], job["repeats"])
        for size in job["frame_sizes"]
    }
    decode = await _decode(
        bytes.fromhex(job["response_hex"]), job["response_count"], job["repeats"]
    )
    names = (
        "aws-sdk-sagemaker-runtime-http2",
        "smithy-aws-event-stream",
        "aws-sdk-signers",
        "smithy-core",
        "smithy-json",
    )
    return {
        "python": sys.version.split()[0],
        "versions": {n: metadata.version(n) for n in names},
        "encode_sign": encode,
        "decode": decode,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(json.load(sys.stdin)))))
