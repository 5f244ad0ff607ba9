"""What the mock endpoint's verifiers raise: the answer SageMaker would give a bad request.

Shared by :mod:`.verifier` (the opening request) and :mod:`.event_verifier` (the request body).
"""

from __future__ import annotations

import json

from flux_sagemaker.errors import RemoteProtocolError

__all__ = ["EventSignatureError", "VerificationFailure"]


class VerificationFailure(RemoteProtocolError):
    """The request (or its body) is not what SageMaker accepts; answer with this error.

    Attributes:
        status: The HTTP status SageMaker would answer with.
        error_type: The ``x-amzn-errortype`` value, e.g. ``"InvalidSignatureException"``.
        message: The explanation, for the JSON body.
    """

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type

    def __str__(self) -> str:
        return f"{self.error_type} ({self.status}): {self.message}"

    def body(self) -> bytes:
        """The JSON error body, ``{"message": ...}``."""
        return json.dumps({"message": self.message}).encode()


class EventSignatureError(VerificationFailure):
    """An envelope of the request body failed: bad signature, CRC, framing or inner message."""
