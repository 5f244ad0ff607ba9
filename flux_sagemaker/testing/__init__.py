"""A mock SageMaker Flux endpoint to run in process, for your tests and ours.

``MockFluxEndpoint`` is a real HTTP/2 server (plaintext with prior knowledge, or TLS with a
per-run CA) that verifies SigV4 and every event signature, plays scripted Flux turns clocked by
the audio it receives, injects faults, and records what it received::

    async with MockFluxEndpoint(script=["Hello there."]) as endpoint:
        async with FluxClient("any-name", **endpoint.client_kwargs()) as flux:
            ...
"""

from .bundle import FLUX_ENGLISH_20260311, FLUX_MULTI_20260417, NEWEST, BundleProfile
from .certs import TestCA
from .engine import ScriptedTurn
from .faults import Fault, FaultKind, RequestFailure
from .server import MockFluxEndpoint, RecordedStream

__all__ = [
    "FLUX_ENGLISH_20260311",
    "FLUX_MULTI_20260417",
    "NEWEST",
    "BundleProfile",
    "Fault",
    "FaultKind",
    "MockFluxEndpoint",
    "RecordedStream",
    "RequestFailure",
    "ScriptedTurn",
    "TestCA",
]
