"""The ``flux-sagemaker`` command line: ``demo``, ``transcribe`` and ``check``.

Also ``python -m flux_sagemaker``. Built on argparse and the public client API only::

    flux-sagemaker demo [--eager] [--fast] [--tls]
    flux-sagemaker transcribe FILE.wav --endpoint NAME --region R [--fast] [--json] [Flux options]
    flux-sagemaker check --endpoint NAME --region R

Exit status: 0 ok, 1 a runtime failure (the message says what to do), 2 bad usage, 130 Ctrl-C.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
