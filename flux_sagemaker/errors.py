"""The one exception tree of flux_sagemaker.

Every error the library raises is a :class:`FluxError`. Foreign exceptions (anyio, ssl, h2,
botocore) are translated once, at the boundary where they happen, into the most specific class
below, with the original chained as ``__cause__``::

    FluxError                         retryable, request_id
    ├── ValidationError               bad settings or arguments, before any I/O (a ValueError)
    │   └── ConfigureRejected         Flux answered a Configure with ConfigureFailure
    ├── UsageError                    the call does not fit the client's state: use after close, ...
    ├── CapabilityError               the endpoint's Flux bundle does not accept this message
    ├── ProtocolError
    │   ├── LocalProtocolError        we were about to break the protocol (a bug, or misuse)
    │   └── RemoteProtocolError       the peer broke it
    │       ├── FrameError            a corrupt or oversized event-stream frame
    │       └── MessageParseError     a Flux message that is not a JSON object
    ├── OperationError                SageMaker refused the request (HTTP status before the stream)
    │   ├── InputValidationError      400
    │   ├── ThrottlingError           400/429, retryable
    │   ├── AccessDeniedError         403: denied, unknown key, bad signature
    │   │   └── ExpiredTokenError     403, retryable after refreshing the credentials
    │   ├── ModelError                424: the container refused (keeps its original status/message)
    │   ├── InternalServerError       500, retryable
    │   └── ServiceUnavailableError   503, retryable
    ├── StreamError                   the stream broke after it started
    │   ├── ModelStreamError          SageMaker's ModelStreamError exception event
    │   ├── InternalStreamFailure     SageMaker's InternalStreamFailure exception event, retryable
    │   └── StreamStalled             no server event for too long while audio flowed, retryable
    ├── FluxServerError               Flux sent a fatal ``Error`` message
    └── TransportError                the network failed, retryable
        ├── ConnectError              could not open the connection (DNS, refused, TLS, no h2)
        ├── TimeoutError              an operation took longer than its configured timeout
        ├── ConnectionLost            the connection dropped, or a PING went unanswered
        ├── StreamReset               the peer reset our HTTP/2 stream (RST_STREAM)
        └── GoAway                    the peer is closing the connection (GOAWAY)

Each error carries ``retryable`` and, when SageMaker gave one, ``request_id`` as data.
"""

from __future__ import annotations

import builtins
from typing import Any

import h2.errors

__all__ = [
    "AccessDeniedError",
    "CapabilityError",
    "ConfigureRejected",
    "ConnectError",
    "ConnectionLost",
    "ExpiredTokenError",
    "FluxError",
    "FluxServerError",
    "FrameError",
    "GoAway",
    "InputValidationError",
    "InternalServerError",
    "InternalStreamFailure",
    "LocalProtocolError",
    "MessageParseError",
    "ModelError",
    "ModelStreamError",
    "OperationError",
    "ProtocolError",
    "RemoteProtocolError",
    "ServiceUnavailableError",
    "StreamError",
    "StreamReset",
    "StreamStalled",
    "ThrottlingError",
    "TimeoutError",
    "TransportError",
    "UsageError",
    "ValidationError",
]


class FluxError(Exception):
    """Base class of every error raised by flux_sagemaker.

    Attributes:
        message: What went wrong, in words.
        retryable: Whether opening a new stream may succeed where this one failed.
        request_id: SageMaker's ``x-amzn-requestid`` for the failed request, when known.
    """

    retryable: bool = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request id {self.request_id})"
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, retryable={self.retryable})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without __init__, whose keyword-only arguments the default (the positional
        # args) cannot give back: pickling (multiprocessing, task queues) and copy would fail.
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[FluxError], args: tuple[Any, ...], state: dict[str, Any]) -> FluxError:
    """A pickled or copied error, from its class, ``args`` and attributes."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ValidationError(FluxError, ValueError):
    """An argument or setting is invalid; raised before anything is sent."""


class ConfigureRejected(ValidationError):
    """Flux answered the ``Configure`` of a settings update with ``ConfigureFailure``; the
    settings in force did not change (the ``ConfigureFailure`` also arrives as an event).

    Attributes:
        code: Flux's reason, e.g. ``"INVALID_THRESHOLD"``.
        description: Flux's explanation.
    """

    def __init__(self, code: str, description: str, *, request_id: str | None = None) -> None:
        super().__init__(
            f"Flux refused the new settings: {code}: {description}", request_id=request_id
        )
        self.code = code
        self.description = description


class UsageError(FluxError):
    """The call does not fit the object's state (for example, sending after ``close()``)."""


class CapabilityError(FluxError):
    """The endpoint's Flux bundle does not accept this message (for example, ``Configure``)."""


class ProtocolError(FluxError):
    """The event-stream or Flux protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We were about to violate the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol."""


class FrameError(RemoteProtocolError):
    """A corrupt, truncated or oversized event-stream frame."""


class MessageParseError(RemoteProtocolError):
    """A Flux server message that is not a JSON object with a ``type``.

    Attributes:
        raw: The offending payload, truncated for display.
    """

    def __init__(self, message: str, *, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw


class OperationError(FluxError):
    """SageMaker refused to open the stream; raised from ``FluxClient.__aenter__``.

    Attributes:
        status_code: The HTTP status.
        error_type: The ``x-amzn-errortype`` value (before any ``:``), or ``None``.
        error_code: The ``ErrorCode`` field of the body, when present.
        body: The parsed JSON body (an empty dict when the body was not JSON).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        error_code: str | None = None,
        body: dict[str, Any] | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, request_id=request_id)
        self.status_code = status_code
        self.error_type = error_type
        self.error_code = error_code
        self.body = body if body is not None else {}

    def __str__(self) -> str:
        kind = self.error_type or "HTTP error"
        return f"{kind} ({self.status_code}): {super().__str__()}"


class InputValidationError(OperationError):
    """SageMaker rejected the request's parameters (400)."""


class ThrottlingError(OperationError):
    """SageMaker throttled the request; retry with backoff."""

    retryable = True


class AccessDeniedError(OperationError):
    """Access denied, unknown access key, or a signature SageMaker did not accept (403)."""


class ExpiredTokenError(AccessDeniedError):
    """The session token expired; retryable once the credentials are refreshed (so not with
    fixed credentials: the client then raises it with ``retryable=False``)."""

    retryable = True


class ModelError(OperationError):
    """The model container refused the session (424).

    A Flux container that rejects its parameters shows up here as a generic
    "Failed to establish WebSocket connection", without Flux's own reason.

    Attributes:
        original_status_code: The container's status, when SageMaker passed it on.
        original_message: The container's message, when SageMaker passed it on.
        log_stream_arn: The CloudWatch log stream of the container, when given.
    """

    def __init__(
        self,
        message: str,
        *,
        original_status_code: int | None = None,
        original_message: str | None = None,
        log_stream_arn: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.original_status_code = original_status_code
        self.original_message = original_message
        self.log_stream_arn = log_stream_arn


class InternalServerError(OperationError):
    """SageMaker failed internally (500); retryable."""

    retryable = True


class ServiceUnavailableError(OperationError):
    """SageMaker is unavailable (503); retryable."""

    retryable = True


class StreamError(FluxError):
    """The stream failed after it had started."""


class ModelStreamError(StreamError):
    """SageMaker's ``ModelStreamError`` event: the model side of the stream broke.

    Attributes:
        error_code: For example ``ModelInvocationTimeExceeded`` or ``StreamBroken``.
    """

    retryable = True

    def __init__(self, message: str, *, error_code: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.error_code = error_code


class InternalStreamFailure(StreamError):
    """SageMaker's ``InternalStreamFailure`` event (or an unmodelled stream error)."""

    retryable = True

    def __init__(self, message: str, *, error_code: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.error_code = error_code


class StreamStalled(StreamError):
    """No server event arrived for too long while audio was flowing."""

    retryable = True


class FluxServerError(FluxError):
    """Flux sent a fatal ``Error`` message; the server closes the stream after it.

    Attributes:
        code: Flux's error code, e.g. ``UNPARSABLE_CLIENT_MESSAGE``.
        description: Flux's explanation.
    """

    def __init__(self, code: str, description: str, **kwargs: Any) -> None:
        super().__init__(f"Flux error {code}: {description}", **kwargs)
        self.code = code
        self.description = description


class TransportError(FluxError):
    """The network failed under the stream."""

    retryable = True


class ConnectError(TransportError):
    """The connection could not be opened (DNS, refused, TLS, no ``h2`` via ALPN)."""


class TimeoutError(TransportError, builtins.TimeoutError):
    """An operation took longer than its configured timeout."""


class ConnectionLost(TransportError):
    """The connection dropped, or a keepalive PING went unanswered."""


class StreamReset(TransportError):
    """The peer reset the HTTP/2 stream.

    Attributes:
        error_code: The HTTP/2 error code of the RST_STREAM frame.
    """

    def __init__(self, message: str, *, error_code: int = 0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.error_code = error_code

    @property
    def unprocessed(self) -> bool:
        """``REFUSED_STREAM``: the server did not process the request (RFC 9113 section 8.7),
        so it can be sent again at once."""
        return self.error_code == h2.errors.ErrorCodes.REFUSED_STREAM


class GoAway(TransportError):
    """The peer sent GOAWAY and will not finish this stream.

    Attributes:
        error_code: The HTTP/2 error code of the GOAWAY frame.
        unprocessed: The stream was above the GOAWAY's last stream id: the server did not
            process the request (RFC 9113 section 6.8), so it can be sent again at once.
    """

    def __init__(
        self, message: str, *, error_code: int = 0, unprocessed: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.error_code = error_code
        self.unprocessed = unprocessed
