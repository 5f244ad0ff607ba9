"""Stream audio to a SageMaker bidi endpoint through Deepgram's own route (a benchmark peer).

``deepgram-sdk`` ``listen.v2`` with the ``deepgram-sagemaker`` transport:
``AsyncDeepgramClient(api_key="unused", transport_factory=SageMakerTransportFactory(...))``.
Same workload, options and JSON summary as ``aws_sdk_stream.py`` (whose harness it reuses, so run
it from this directory or with this directory on ``sys.path``).

deepgram-sagemaker has no endpoint-URL or TLS option: ``SageMakerTransport._do_connect`` hard-codes
``https://runtime.sagemaker.{region}.amazonaws.com:8443`` and a default ``AWSCRTHTTPClient()``.
For a local endpoint this script replaces those two names in ``deepgram_sagemaker.transport``
(the endpoint URL is substituted inside ``AsyncSageMakerRuntimeHTTP2Config.resolve``); everything
else, including its per-stream SDK client, retries and replay buffer, runs unchanged.

    python deepgram_stream.py --endpoint-url https://127.0.0.1:8443 --ca-file ca.pem --streams 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl

from aws_sdk_stream import (
    Run,
    StreamStats,
    base_parser,
    crt_client_class,
    emit,
    load_frames,
    versions,
)

# Query parameters that listen.v2.connect() takes as keyword arguments; others travel as
# request_options["additional_query_parameters"].
CONNECT_PARAMS = frozenset(
    {
        "model",
        "encoding",
        "sample_rate",
        "eager_eot_threshold",
        "eot_threshold",
        "eot_timeout_ms",
        "keyterm",
        "language_hint",
        "profanity_filter",
        "numerals",
        "redact",
        "mip_opt_out",
        "tag",
    }
)


def point_transport_at(endpoint_url: str | None, ca_file: str | None) -> None:
    """Make deepgram-sagemaker connect to ``endpoint_url`` and trust ``ca_file``."""
    import deepgram_sagemaker.transport as dg_transport

    if endpoint_url:
        real = dg_transport.AsyncSageMakerRuntimeHTTP2Config

        class _EndpointOverride:
            @staticmethod
            async def resolve(**overrides: Any) -> Any:
                return await real.resolve(**(overrides | {"endpoint_uri": endpoint_url}))

        dg_transport.AsyncSageMakerRuntimeHTTP2Config = _EndpointOverride
    dg_transport.AWSCRTHTTPClient = crt_client_class(ca_file)


def connect_kwargs(query: str) -> dict[str, Any]:
    """Turn a Flux query string into listen.v2.connect() arguments (order kept)."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        target = kwargs if key in CONNECT_PARAMS else extra
        if key in target:  # repeated (e.g. keyterm): a list
            old = target[key]
            target[key] = [*old, value] if isinstance(old, list) else [old, value]
        else:
            target[key] = value
    if extra:
        kwargs["request_options"] = {"additional_query_parameters": extra}
    return kwargs


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Open the sessions through deepgram-sdk + deepgram-sagemaker and return the summary."""
    from deepgram import AsyncDeepgramClient
    from deepgram_sagemaker import SageMakerConfig, SageMakerTransportFactory

    point_transport_at(args.endpoint_url, args.ca_file)
    config = SageMakerConfig(
        endpoint_name=args.endpoint_name, region=args.region, max_retries=args.max_retries
    )
    client = AsyncDeepgramClient(
        api_key="unused", transport_factory=SageMakerTransportFactory(config=config)
    )
    kwargs = connect_kwargs(args.query_string)
    run = Run(args, load_frames(args))

    async def read_output(connection: Any, st: StreamStats, connected: asyncio.Event) -> None:
        # The socket client yields parsed Flux messages (pydantic models) until recv() gives None.
        async for message in connection:
            if isinstance(message, bytes):
                st.on_output("binary", None, args.event_times)
                continue
            kind = str(getattr(message, "type", type(message).__name__))
            fields = message.dict() if args.event_times and kind == "TurnInfo" else None
            st.on_output(kind, fields, args.event_times)
            connected.set()
        st.t_output_end = time.monotonic()

    async def session(st: StreamStats) -> None:
        async with client.listen.v2.connect(**kwargs) as connection:
            connected = asyncio.Event()
            # The transport connects lazily on the first recv()/send(); start audio once
            # Flux has said Connected (the AWS peer starts once the response headers are in).
            reader = asyncio.create_task(read_output(connection, st, connected))
            try:
                waiter = asyncio.create_task(connected.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if reader.done():
                    reader.result()  # raises the connect error, if any
                    raise RuntimeError("output ended before Connected")
                st.t_connected = time.monotonic()
                await run.pace(st, connection.send_media)
                await connection.send_close_stream()
                st.t_close_sent = time.monotonic()
                await reader  # until the stream ends
            finally:
                reader.cancel()
        st.t_end = time.monotonic()  # after the transport closed its input and its SDK client

    summary = await run.run(session)
    summary["peer"] = "deepgram-sdk listen.v2 + deepgram-sagemaker"
    summary["config"] |= {"max_retries": args.max_retries}
    summary["versions"] = versions(
        "deepgram-sdk",
        "deepgram-sagemaker",
        "aws-sdk-sagemaker-runtime-http2",
        "smithy-http",
        "smithy-core",
        "awscrt",
        "aws-sdk-signers",
    )
    return summary


def cli() -> None:
    """Parse options and run."""
    p = base_parser("Stream audio through deepgram-sdk listen.v2 with deepgram-sagemaker.")
    p.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="deepgram-sagemaker transient-error retries (its default is 5; 0 shows raw errors)",
    )
    args = p.parse_args()
    emit(asyncio.run(main(args)), args.output)


if __name__ == "__main__":
    cli()
