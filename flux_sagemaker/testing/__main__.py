"""Serve a MockFluxEndpoint from the command line, for clients in other processes.

``python -m flux_sagemaker.testing serve [--port N] [--tls] [--script TEXT ...]`` prints the
endpoint's URL, the CA file to trust under ``--tls``, and the environment that points the AWS
SDKs (and ``flux-sagemaker``) at it, then serves until interrupted (Ctrl-C exits with 130).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence

import anyio
import anyio.abc

from ..errors import FluxError
from ..samples import load_sample
from .bundle import FLUX_ENGLISH_20260311, FLUX_MULTI_20260417, NEWEST, BundleProfile
from .server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, MockFluxEndpoint

__all__ = ["build_parser", "main"]

BUNDLES: dict[str, BundleProfile] = {
    "newest": NEWEST,
    "flux-english-20260311": FLUX_ENGLISH_20260311,
    "flux-multi-20260417": FLUX_MULTI_20260417,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flux_sagemaker.testing`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m flux_sagemaker.testing",
        description="Run the mock SageMaker Flux endpoint in this process.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a mock endpoint until interrupted",
        description="Serve a MockFluxEndpoint on 127.0.0.1 until interrupted (Ctrl-C).",
    )
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    serve.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a per-run CA (needs trustme)"
    )
    serve.add_argument(
        "--script",
        action="append",
        metavar="TEXT",
        help="the transcript of a turn, repeatable (default: the bundled sample's turns)",
    )
    serve.add_argument(
        "--bundle",
        choices=sorted(BUNDLES),
        default="newest",
        help="which SageMaker Flux bundle to simulate (default: newest)",
    )
    serve.add_argument("--region", default="us-east-1", help="signing region (default: us-east-1)")
    return parser


def _environment(endpoint: MockFluxEndpoint, url: str) -> str:
    env = {
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": url,
        "AWS_REGION": endpoint.region,
        "AWS_ACCESS_KEY_ID": DEFAULT_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DEFAULT_SECRET_KEY,
    }
    if endpoint.ca_pem_path:
        env["AWS_CA_BUNDLE"] = endpoint.ca_pem_path
    return "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())


async def _relay(client: anyio.abc.SocketStream, port: int) -> None:
    """Copy bytes both ways between ``client`` and the endpoint's own port (TLS included)."""
    async with client, await anyio.connect_tcp("127.0.0.1", port) as upstream:

        async def pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
            try:
                async for chunk in source:
                    await sink.send(chunk)
                await sink.send_eof()  # half-close: the other direction may still flow
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, client, upstream)
            tg.start_soon(pump, upstream, client)


async def serve(args: argparse.Namespace) -> None:
    """Run the endpoint (and, for a fixed ``--port``, a relay to it) until cancelled."""
    script = args.script if args.script else load_sample().turns
    endpoint = MockFluxEndpoint(
        script=script,
        tls=args.tls,
        bundle=BUNDLES[args.bundle],
        region=args.region,
        keep_streams=0,  # nobody reads them, and each holds its stream's audio
    )
    async with endpoint:
        if args.port == 0:
            url = endpoint.url
            listener = None
        else:
            # The endpoint always listens on a free port; a fixed one is relayed to it.
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=args.port)
            url = f"{endpoint.url.rsplit(':', 1)[0]}:{args.port}"
        lines = [
            f"Mock Flux endpoint ({'HTTPS' if args.tls else 'plaintext HTTP/2'}, "
            f"bundle {endpoint.bundle.name}, {len(endpoint.script)} scripted turns)",
            f"URL: {url}",
            f"CA file: {endpoint.ca_pem_path or '-'}",
            _environment(endpoint, url),
            "Press Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)
        if listener is None:
            await anyio.sleep_forever()
        else:
            async with listener:
                await listener.serve(lambda client: _relay(client, endpoint.port))


async def _serve_until_terminated(args: argparse.Namespace) -> None:
    """Serve; SIGTERM stops cleanly (the CA file is removed) like Ctrl-C does."""
    async with anyio.create_task_group() as tg:
        if sys.platform != "win32":

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()

            tg.start_soon(watch)
        await serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        anyio.run(_serve_until_terminated, args)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except (FluxError, OSError) as exc:
        print(f"python -m flux_sagemaker.testing: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
