"""The ``flux-sagemaker`` argument parser and entry point: exit codes and error reporting."""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ..core.settings import Model, Redact
from ..errors import FluxError
from .commands import CAPABILITIES, run_check, run_demo, run_transcribe

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
#: A runtime failure: a FluxError (the message says what to do), or an unreadable file.
EXIT_FAILURE = 1
#: Bad command-line usage (argparse's own exit status).
EXIT_USAGE = 2
#: Interrupted with Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], Awaitable[int]]

_DESCRIPTION = """\
Deepgram Flux speech-to-text on Amazon SageMaker.

  flux-sagemaker demo                                   try it, no AWS account needed
  flux-sagemaker transcribe call.wav --endpoint NAME --region us-east-1
  flux-sagemaker check --endpoint NAME --region us-east-1
"""


def _version() -> str:
    from .. import __version__

    return __version__


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help="log debug details and show tracebacks"
    )


def _add_pacing(parser: argparse.ArgumentParser) -> None:
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--realtime",
        dest="fast",
        action="store_false",
        help="send audio at the speed it was spoken, like a microphone (default)",
    )
    pacing.add_argument(
        "--fast", action="store_true", help="send audio as fast as the endpoint takes it"
    )
    # Without this, dest "fast" takes its default from the first action registered: the
    # store_false of --realtime, whose default is True, would make --fast the default.
    parser.set_defaults(fast=False)


def _add_aws(parser: argparse.ArgumentParser, *, mock: bool) -> None:
    """Endpoint and credential options; with ``mock``, ``--endpoint`` or ``--mock`` is required."""
    aws = parser.add_argument_group("endpoint and credentials (default: the AWS configuration)")
    endpoint_help = "the SageMaker endpoint serving Flux"
    if mock:
        where = aws.add_mutually_exclusive_group(required=True)
        where.add_argument("--endpoint", metavar="NAME", help=endpoint_help)
        where.add_argument(
            "--mock", action="store_true", help="use an embedded mock endpoint instead of AWS"
        )
    else:
        aws.add_argument("--endpoint", required=True, metavar="NAME", help=endpoint_help)
    aws.add_argument("--region", help="AWS region (default: AWS_REGION or the profile's region)")
    aws.add_argument("--profile", help="AWS profile (default: AWS_PROFILE or 'default')")
    aws.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="runtime endpoint override (VPC endpoint, or a mock's http://127.0.0.1:PORT)",
    )
    aws.add_argument("--ca-bundle", metavar="PEM", help="trust this CA (default: AWS_CA_BUNDLE)")
    aws.add_argument("--target-variant", metavar="VARIANT", help="production variant to invoke")
    aws.add_argument(
        "--bundle",
        choices=sorted(CAPABILITIES),
        default="latest",
        help="what the endpoint's Flux bundle accepts (default: latest)",
    )


def _add_flux(parser: argparse.ArgumentParser) -> None:
    flux = parser.add_argument_group("Flux settings (default: the server's)")
    flux.add_argument("--model", default=Model.GENERAL_EN.value, help="default: %(default)s")
    flux.add_argument("--eot-threshold", type=float, metavar="0.5-1.0")
    flux.add_argument("--eager-eot-threshold", type=float, metavar="0.3-0.9")
    flux.add_argument("--eot-timeout-ms", type=int, metavar="500-60000")
    flux.add_argument("--keyterm", action="append", metavar="TERM", help="repeatable")
    flux.add_argument(
        "--language-hint", action="append", metavar="CODE", help="repeatable (multi model)"
    )
    for name, text in [
        ("numerals", "write numbers as digits"),
        ("profanity-filter", "mask profanity"),
        ("mip-opt-out", "opt out of Deepgram's Model Improvement Program"),
    ]:
        flux.add_argument(f"--{name}", action="store_true", default=None, help=text)
    flux.add_argument("--redact", choices=[r.value for r in Redact])
    flux.add_argument("--tag", action="append", metavar="TAG", help="repeatable")


def build_parser() -> argparse.ArgumentParser:
    """The ``flux-sagemaker`` parser (also ``python -m flux_sagemaker``)."""
    parser = argparse.ArgumentParser(
        prog="flux-sagemaker",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="stream the bundled sample to an in-process mock endpoint",
        description="Stream the bundled speech sample through FluxClient to an in-process "
        "mock SageMaker endpoint and show the turns as they arrive.",
    )
    demo.add_argument("--eager", action="store_true", help="eager end-of-turn (threshold 0.5)")
    demo.add_argument("--fast", action="store_true", help="no real-time pacing")
    demo.add_argument("--tls", action="store_true", help="HTTPS with a per-run CA (trustme)")
    _add_common(demo)
    demo.set_defaults(run=run_demo)

    transcribe = commands.add_parser(
        "transcribe",
        help="transcribe a WAV file, or a WAV stream on stdin",
        description="Stream a WAV file (mono PCM 8/16/32-bit, mu-law or A-law) to a Flux "
        "endpoint and print the turns. With - the WAV stream on stdin is sent as it arrives "
        "(e.g. arecord -f S16_LE -r 16000 | flux-sagemaker transcribe - ...): the pipe sets "
        "the pace.",
    )
    transcribe.add_argument(
        "file", metavar="FILE.wav", help="the WAV file, or - for a WAV stream on stdin"
    )
    _add_pacing(transcribe)
    transcribe.add_argument("--json", action="store_true", help="one JSON object per event")
    transcribe.add_argument(
        "--mock-script",
        action="append",
        metavar="TEXT",
        help="with --mock: the transcript of a turn, repeatable",
    )
    _add_aws(transcribe, mock=True)
    _add_flux(transcribe)
    _add_common(transcribe)
    transcribe.set_defaults(run=run_transcribe)

    check = commands.add_parser(
        "check",
        help="preflight: endpoint status, variants, time to Connected",
        description="Describe the endpoint (status, instance types, variants), then open a "
        "short Flux stream and report the time to Connected.",
    )
    _add_aws(check, mock=False)
    check.add_argument(
        "--control-endpoint-url",
        metavar="URL",
        help="SageMaker API override (default: https://api.sagemaker.REGION.amazonaws.com/)",
    )
    _add_flux(check)
    _add_common(check)
    check.set_defaults(run=run_check)
    return parser


def _leaf(error: BaseException) -> BaseException:
    """The first FluxError, interrupt or broken pipe inside (nested) exception groups, else
    ``error``."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _leaf(inner)
            if isinstance(found, FluxError | KeyboardInterrupt | BrokenPipeError):
                return found
    return error


async def _run(command: Command, args: argparse.Namespace) -> int:
    """Run ``command``; Ctrl-C cancels it through a cancel scope, so every close runs."""
    if sys.platform == "win32":  # no signal receivers there: KeyboardInterrupt does the job
        return await command(args)
    status = EXIT_INTERRUPTED
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        status = await command(args)
        tg.cancel_scope.cancel()
    if tg.cancel_scope.cancel_called and status == EXIT_INTERRUPTED:
        print("\ninterrupted", file=sys.stderr)
    return status


def _encode_any_transcript(*, json_lines: bool) -> None:
    """Make stdout take every character a transcript may hold.

    Its encoding is the locale's where that is not UTF-8 (a Windows redirect uses the ANSI code
    page), and a Japanese or Hindi transcript would end the session with UnicodeEncodeError.
    JSON lines are UTF-8 by definition; text shows what stdout cannot encode as escapes.
    """
    if not isinstance(sys.stdout, io.TextIOWrapper):
        return
    if json_lines:
        sys.stdout.reconfigure(encoding="utf-8")
    else:
        sys.stdout.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flux-sagemaker``; return the exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    if args.debug:
        # Our debug log; the others' from INFO on: botocore's debug log prints each request it
        # signs, session token included, and --debug output is what goes into bug reports.
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("flux_sagemaker").setLevel(logging.DEBUG)
    if getattr(args, "mock", False) and args.endpoint_url:
        build_parser().error("--mock and --endpoint-url exclude each other")
    _encode_any_transcript(json_lines=getattr(args, "json", False))
    command: Command = args.run
    try:
        return anyio.run(_run, command, args)
    except BaseException as raised:  # sorted out below; re-raised unless ours
        error = _leaf(raised)
        if isinstance(error, KeyboardInterrupt):
            print("\ninterrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(error, BrokenPipeError):
            # The reader went away (`... | head`): stop quietly. Python would still try to
            # flush stdout at exit and complain, so point it at /dev/null first.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_FAILURE
        if not isinstance(error, FluxError):
            raise
        if args.debug:
            traceback.print_exception(error)
        print(f"flux-sagemaker {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
