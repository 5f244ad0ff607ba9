"""SageMaker and Flux failures -> the classes of :mod:`flux_sagemaker.errors`, sans-I/O.

Three kinds of failure reach the client (SageMaker wire spec, sections 5 and 6; Flux spec 2.5):

- an HTTP error response before the stream starts: :func:`operation_error`;
- an ``exception`` or ``error`` event-stream message after it started: :func:`stream_error`;
- a Flux ``Error`` message inside a ``PayloadPart``: :func:`server_error`.

Everything here is server-controlled input: bodies may be empty, not JSON, not an object, or
huge, so every text that ends up in a message is truncated to :data:`MAX_MESSAGE_CHARS`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from flux_sagemaker.core.events import ServerError
from flux_sagemaker.core.eventstream import Message
from flux_sagemaker.errors import (
    AccessDeniedError,
    ExpiredTokenError,
    FluxServerError,
    InputValidationError,
    InternalServerError,
    InternalStreamFailure,
    LocalProtocolError,
    ModelError,
    ModelStreamError,
    OperationError,
    ServiceUnavailableError,
    StreamError,
    ThrottlingError,
)

__all__ = [
    "MAX_MESSAGE_CHARS",
    "RETRYABLE_SERVER_ERROR_CODES",
    "operation_error",
    "server_error",
    "stream_error",
]

#: Longest server-supplied text kept in an error message. Bodies are server-controlled; a
#: proxy error page or a misbehaving container could otherwise put megabytes into a log line.
MAX_MESSAGE_CHARS: Final = 1024

# x-amzn-errortype / __type values (sagemaker.md section 6) -> class. Names are matched
# exactly after stripping the ":<url>" suffix and any "namespace#" prefix.
_ERROR_TYPES: Final[Mapping[str, type[OperationError]]] = {
    "InputValidationError": InputValidationError,
    "ValidationError": InputValidationError,
    "ValidationException": InputValidationError,
    "ThrottlingException": ThrottlingError,
    # SageMaker's 429 while a serverless or multi-model endpoint is still loading: wait and retry.
    "ModelNotReadyException": ThrottlingError,
    "AccessDeniedException": AccessDeniedError,
    "UnrecognizedClientException": AccessDeniedError,
    "InvalidSignatureException": AccessDeniedError,
    "IncompleteSignature": AccessDeniedError,
    "MissingAuthenticationToken": AccessDeniedError,
    "ExpiredTokenException": ExpiredTokenError,
    "ModelError": ModelError,
    "InternalServerError": InternalServerError,
    "InternalFailure": InternalServerError,
    "ServiceUnavailable": ServiceUnavailableError,
    "ServiceUnavailableError": ServiceUnavailableError,
}

# Fallback when no error type is given or the type is unknown.
_STATUS_CLASSES: Final[Mapping[int, type[OperationError]]] = {
    400: InputValidationError,
    403: AccessDeniedError,
    424: ModelError,
    429: ThrottlingError,
    500: InternalServerError,
    503: ServiceUnavailableError,
}

#: Flux ``Error`` codes worth a new stream. ``INTERNAL_SERVER_ERROR`` is the server's own
#: failure. Every other code, known or not, is treated as non-retryable: the documented ones
#: (``UNPARSABLE_CLIENT_MESSAGE``) describe something the client sent, and a new stream that
#: replays the same session would hit the same error. The retry budget would bound a wrong
#: guess either way; failing fast shows the user the real reason sooner.
RETRYABLE_SERVER_ERROR_CODES: Final = frozenset({"INTERNAL_SERVER_ERROR"})

_Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _truncate(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"


def _header_dict(headers: _Headers) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {_text(name).lower(): _text(value) for name, value in items}


def _parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``, or ``{}`` when it is empty, not JSON or not an object."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError too; RecursionError: deep nesting
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _normalize_type(value: str) -> str | None:
    # "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/"
    # and "com.amazonaws.sagemaker#ModelError" both name a bare shape.
    name = value.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return name or None


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return _truncate(_text(value))


def _optional_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        try:
            return int(value)
        except ValueError:  # digits int() refuses ("\u00b2"), or more than it converts
            return None
    return None


def _message(fields: Mapping[str, Any], fallback: str) -> str:
    for key in ("message", "Message"):
        value = fields.get(key)
        if isinstance(value, str) and value:
            return _truncate(value)
    return fallback


def operation_error(status: int, headers: _Headers, body: bytes) -> OperationError:
    """Map a non-2xx response to SageMaker's opening request onto the most specific error.

    The class is chosen by ``x-amzn-errortype`` (the part before ``:``), else the body's
    ``__type`` or ``code``, else the status code. An unknown 5xx is a retryable
    :class:`~flux_sagemaker.errors.OperationError`; an unknown 4xx is not retryable.

    Args:
        status: The HTTP status code.
        headers: The response headers, as a mapping or as ``(name, value)`` pairs (names are
            matched case-insensitively; ``bytes`` are decoded as UTF-8).
        body: The raw response body; need not be JSON.
    """
    header_map = _header_dict(headers)
    fields = _parse_body(body)
    request_id = header_map.get("x-amzn-requestid") or None

    raw_type = header_map.get("x-amzn-errortype")
    if raw_type is None:
        body_type = fields.get("__type", fields.get("code"))
        raw_type = body_type if isinstance(body_type, str) else None
    error_type = _normalize_type(raw_type) if raw_type is not None else None

    cls = _ERROR_TYPES.get(error_type or "") or _STATUS_CLASSES.get(status, OperationError)
    # Only the generic class needs an explicit verdict; the subclasses carry their own.
    retryable = status >= 500 if cls is OperationError else None

    if fields:
        fallback = f"HTTP {status}"
    else:
        text = body.decode("utf-8", "replace").strip()
        fallback = _truncate(text) if text else f"HTTP {status}"
    message = _message(fields, fallback)
    error_code = _optional_str(fields.get("ErrorCode"))

    common: dict[str, Any] = {
        "status_code": status,
        "error_type": error_type,
        "error_code": error_code,
        "body": fields,
        "retryable": retryable,
        "request_id": request_id,
    }
    if issubclass(cls, ModelError):
        return cls(
            message,
            original_status_code=_optional_int(fields.get("OriginalStatusCode")),
            original_message=_optional_str(fields.get("OriginalMessage")),
            log_stream_arn=_optional_str(fields.get("LogStreamArn")),
            **common,
        )
    return cls(message, **common)


def stream_error(message: Message, *, request_id: str | None = None) -> StreamError:
    """Map an ``exception`` or ``error`` event-stream message onto a :class:`StreamError`.

    - ``exception`` / ``ModelStreamError``: :class:`ModelStreamError` with its ``ErrorCode``;
    - ``exception`` / ``InternalStreamFailure``: :class:`InternalStreamFailure`;
    - ``exception`` of any other type: :class:`InternalStreamFailure` naming the type;
    - ``error`` (``:error-code``/``:error-message`` headers): retryable
      :class:`InternalStreamFailure`.

    Args:
        message: The decoded message.
        request_id: The ``x-amzn-requestid`` of the stream's response, to attach.

    Raises:
        LocalProtocolError: ``message`` is not an ``exception`` or ``error`` message (a bug in
            the caller, which should route only those here).
    """
    headers = message.headers
    message_type = _text(headers.get(":message-type", ""))
    if message_type == "exception":
        exception_type = _text(headers.get(":exception-type", "")) or "(no :exception-type)"
        fields = _parse_body(message.payload)
        # As for operation_error: a payload that is not a JSON object is the reason itself.
        raw_text = "" if fields else message.payload.decode("utf-8", "replace").strip()
        text = _message(fields, _truncate(raw_text or exception_type))
        error_code = _optional_str(fields.get("ErrorCode"))
        if exception_type == "ModelStreamError":
            return ModelStreamError(text, error_code=error_code, request_id=request_id)
        if exception_type == "InternalStreamFailure":
            return InternalStreamFailure(text, error_code=error_code, request_id=request_id)
        return InternalStreamFailure(
            f"unmodelled stream exception {_truncate(exception_type)}: {text}",
            error_code=error_code,
            request_id=request_id,
        )
    if message_type == "error":
        code = _optional_str(headers.get(":error-code"))
        text = _optional_str(headers.get(":error-message")) or "no :error-message"
        return InternalStreamFailure(
            f"stream error {code or '(no :error-code)'}: {text}",
            error_code=code,
            retryable=True,
            request_id=request_id,
        )
    raise LocalProtocolError(
        f"stream_error() needs an 'exception' or 'error' message, got :message-type "
        f"{_truncate(message_type)!r}"
    )


def server_error(event: ServerError, *, request_id: str | None = None) -> FluxServerError:
    """Map Flux's fatal ``Error`` message onto :class:`FluxServerError`.

    Retryable only for the codes in :data:`RETRYABLE_SERVER_ERROR_CODES` (see there why).

    Args:
        event: The parsed ``Error`` message.
        request_id: The SageMaker request id of the stream (Flux's ``Error`` carries none).
    """
    code = _truncate(event.code) if event.code else "UNKNOWN"
    description = _truncate(event.description) if event.description else "(no description)"
    return FluxServerError(
        code,
        description,
        retryable=code in RETRYABLE_SERVER_ERROR_CODES,
        request_id=request_id,
    )
