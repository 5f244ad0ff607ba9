"""The CLI's commands: ``demo``, ``transcribe`` and ``check``, async functions of the args."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import AsyncIterable
from typing import Any

import anyio

from ..client import FluxClient
from ..config import CredentialSource, default_ssl_context, resolve_region
from ..core.recovery import RetryPolicy
from ..core.settings import BundleCapabilities, FluxSettings
from ..errors import FluxError, UsageError, ValidationError
from ..samples import load_sample, sample_path
from ..streams import frozen_credentials
from .check import (
    describe_endpoint,
    explain_stream_error,
    require_in_service,
)
from .render import JsonRenderer, LineRenderer, LiveRenderer, Renderer
from .session import PipedWav, SessionResult, file_chunks, stderr_progress, stream_audio
from .wavfile import WavFormat, parse_wav, read_wav

__all__ = ["CAPABILITIES", "run_check", "run_demo", "run_transcribe", "settings_from_args"]

#: ``--bundle`` choices: what the endpoint's Flux bundle accepts.
CAPABILITIES = {
    "latest": BundleCapabilities.latest,
    "flux-english-20260311": BundleCapabilities.flux_english_20260311,
    "flux-multi-20260417": BundleCapabilities.flux_multi_20260417,
}


def info(message: str) -> None:
    """A status line on stderr (stdout carries only the events)."""
    print(message, file=sys.stderr, flush=True)


def settings_from_args(
    args: argparse.Namespace, *, encoding: str, sample_rate: int
) -> FluxSettings:
    """FluxSettings from the Flux options (validated: a bad value is a ValidationError)."""
    return FluxSettings(
        model=args.model,
        encoding=encoding,
        sample_rate=sample_rate,
        eot_threshold=args.eot_threshold,
        eager_eot_threshold=args.eager_eot_threshold,
        eot_timeout_ms=args.eot_timeout_ms,
        keyterms=args.keyterm or (),
        language_hints=args.language_hint or (),
        numerals=args.numerals,
        profanity_filter=args.profanity_filter,
        redact=args.redact,
        mip_opt_out=args.mip_opt_out,
        tags=args.tag or (),
        allow_unknown_model=True,
    )


def _client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Where to connect and as whom, from the AWS options (the rest from the AWS config)."""
    kwargs: dict[str, Any] = {
        "region": args.region,
        "endpoint_url": args.endpoint_url,
        "profile": args.profile,
        "target_variant": args.target_variant,
        "capabilities": CAPABILITIES[args.bundle](),
    }
    if args.ca_bundle:
        kwargs["ssl_context"] = default_ssl_context(args.ca_bundle)
    return kwargs


def _renderer(args: argparse.Namespace) -> Renderer:
    if getattr(args, "json", False):
        return JsonRenderer(sys.stdout)
    return LiveRenderer(sys.stdout) if sys.stdout.isatty() else LineRenderer(sys.stdout)


def _summary(result: SessionResult, realtime: bool) -> str:
    text = (
        f"{len(result.turns)} turn(s), {result.audio_seconds:.1f} s of audio "
        f"in {result.elapsed:.1f} s"
    )
    if realtime and result.latencies:
        mean = sum(result.latencies) / len(result.latencies)
        text += f"; end-of-turn latency after speech: mean {mean * 1000:.0f} ms"
    return text


async def run_demo(args: argparse.Namespace) -> int:
    """Stream the bundled sample through FluxClient to an in-process mock endpoint."""
    from ..testing import MockFluxEndpoint

    pcm, sample_rate, turns = load_sample()
    settings = FluxSettings(
        sample_rate=sample_rate, eager_eot_threshold=0.5 if args.eager else None
    )
    realtime = not args.fast
    async with MockFluxEndpoint(script=turns, tls=args.tls) as endpoint:
        info(
            f"Streaming {sample_path().name} ({len(pcm) / (2 * sample_rate):.1f} s, "
            f"{sample_rate} Hz) {'in real time' if realtime else 'as fast as possible'} "
            f"to a mock SageMaker endpoint at {endpoint.url}"
        )
        start = anyio.current_time()
        async with FluxClient("flux-demo", settings=settings, **endpoint.client_kwargs()) as flux:
            info(f"Connected in {(anyio.current_time() - start) * 1000:.0f} ms")
            chunks = file_chunks(pcm, sample_width=2, sample_rate=sample_rate, realtime=realtime)
            result = await stream_audio(
                flux,
                chunks,
                bytes_per_second=2 * sample_rate,
                live=realtime,
                renderer=_renderer(args),
            )
    info(_summary(result, realtime))
    return 0


async def run_transcribe(args: argparse.Namespace) -> int:
    """Transcribe a WAV file, or a WAV stream piped to stdin (``-``), on a SageMaker endpoint
    (or the embedded mock with ``--mock``)."""
    chunks: AsyncIterable[bytes]
    progress = None
    name = "stdin" if args.file == "-" else args.file
    if args.file == "-" and sys.stdin.isatty():
        raise UsageError("pipe a WAV stream to stdin (e.g. from arecord or ffmpeg -f wav -)")
    if args.file == "-" and not stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
        piped = PipedWav(sys.stdin.fileno(), "stdin")
        wav: WavFormat = await piped.read_format()
        chunks = piped.chunks()
        live = True  # the pipe delivers the audio at the pace it is captured
        info(f"stdin: {wav.description}; streaming until it closes")
    else:
        # A file on stdin (< call.wav) arrives all at once: it is paced (or --fast) as a file.
        if args.file == "-":
            audio = parse_wav(await anyio.to_thread.run_sync(sys.stdin.buffer.read), name)
        else:
            audio = read_wav(args.file)
        if not audio.data:  # checked before connecting: a stream would carry nothing
            raise ValidationError(f"{name} holds no audio: nothing to transcribe")
        wav, live = audio, not args.fast
        chunks = file_chunks(
            audio.data,
            sample_width=audio.sample_width,
            sample_rate=audio.sample_rate,
            realtime=live,
        )
        conversion = ", widened to linear16" if audio.converted else ""
        info(f"{name}: {audio.description}, {audio.duration:.1f} s{conversion}")
        progress = stderr_progress(audio.duration)
    settings = settings_from_args(args, encoding=wav.encoding, sample_rate=wav.sample_rate)
    renderer = _renderer(args)

    async def run(client_kwargs: dict[str, Any]) -> SessionResult:
        # --mock or --endpoint: the parser's rule
        endpoint_name = "mock" if args.mock else args.endpoint
        async with FluxClient(endpoint_name, settings=settings, **client_kwargs) as flux:
            return await stream_audio(
                flux,
                chunks,
                bytes_per_second=wav.sample_width * wav.sample_rate,
                live=live,
                renderer=renderer,
                progress=progress,
            )

    if args.mock:
        from ..testing import MockFluxEndpoint

        async with MockFluxEndpoint(script=args.mock_script or ()) as endpoint:
            kwargs = endpoint.client_kwargs()
            kwargs["capabilities"] = CAPABILITIES[args.bundle]()
            result = await run(kwargs)
    else:
        result = await run(_client_kwargs(args))
    info(_summary(result, live))
    return 0


async def run_check(args: argparse.Namespace) -> int:
    """Preflight: describe the endpoint, then open a short Flux stream and time Connected."""
    import botocore.session
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session = botocore.session.Session(profile=args.profile)
        region = resolve_region(args.region, session)  # as FluxClient resolves it
        if not region:
            raise UsageError("no AWS region: pass --region, or set AWS_REGION or a profile region")
        # As FluxClient gets them: the chain walked off the event loop, and a source that
        # cannot be reached (STS, SSO, instance metadata) reported as a ConnectError.
        credentials, _ = await frozen_credentials(CredentialSource.chain(session))
        # As FluxClient has it: --ca-bundle, else AWS_CA_BUNDLE or the profile's ca_bundle.
        ca_bundle = args.ca_bundle or session.get_config_variable("ca_bundle")
    except (BotoCoreError, ClientError) as exc:  # an unknown profile, an expired SSO login, ...
        raise ValidationError(f"invalid AWS configuration: {exc}") from exc
    ssl_context = default_ssl_context(ca_bundle) if ca_bundle else None
    report = await describe_endpoint(
        args.endpoint,
        region=region,
        credentials=credentials,
        url=args.control_endpoint_url,
        ssl_context=ssl_context,
    )
    print(f"endpoint: {report.name} ({region})")
    print(f"status: {report.status}")
    for variant in report.variants:
        print(f"variant: {variant}")
    require_in_service(report)
    settings = settings_from_args(args, encoding="linear16", sample_rate=16000)
    kwargs = _client_kwargs(args)
    # The session whose chain was walked above: botocore keeps its credentials, so a
    # credential_process or an assume-role MFA prompt is not asked a second time.
    del kwargs["profile"]
    kwargs.update(region=region, session=session)
    start = anyio.current_time()
    try:
        async with FluxClient(
            args.endpoint, settings=settings, retry=RetryPolicy(enabled=False), **kwargs
        ) as flux:
            connected = anyio.current_time() - start
            await flux.close()
            request_id = flux.request_id
    except FluxError as exc:
        if args.debug:
            raise
        info(f"flux-sagemaker check: error: {explain_stream_error(exc, endpoint=args.endpoint)}")
        return 1
    print(f"flux: Connected in {connected * 1000:.0f} ms (request {request_id or '-'})")
    print("ok: the endpoint is ready for Flux")
    return 0
