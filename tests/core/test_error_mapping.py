"""HTTP error responses, exception events and Flux ``Error`` messages -> errors.py classes."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from flux_sagemaker import errors
from flux_sagemaker.core.error_mapping import (
    MAX_MESSAGE_CHARS,
    operation_error,
    server_error,
    stream_error,
)
from flux_sagemaker.core.events import ServerError
from flux_sagemaker.core.eventstream import Message, decode_message, encode_message

REQUEST_ID = "a1b2c3d4-5678-90ab-cdef-111122223333"
CORAL = "http://internal.amazon.com/coral/com.amazon.coral.service/"


def aws_headers(error_type: str | None, *, request_id: str = REQUEST_ID) -> list[tuple[str, str]]:
    """Response headers as SageMaker sends them (h2 gives name/value pairs)."""
    headers = [
        ("content-type", "application/json"),
        ("x-amzn-requestid", request_id),
        ("date", "Tue, 24 Nov 2026 12:00:00 GMT"),
    ]
    if error_type is not None:
        headers.append(("x-amzn-errortype", error_type))
    return headers


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("status", "error_type", "cls", "retryable"),
    [
        (400, "ValidationError", errors.InputValidationError, False),
        (400, "InputValidationError", errors.InputValidationError, False),
        (400, "ThrottlingException", errors.ThrottlingError, True),
        (429, "ThrottlingException", errors.ThrottlingError, True),
        (429, "ModelNotReadyException", errors.ThrottlingError, True),
        (403, "AccessDeniedException", errors.AccessDeniedError, False),
        (403, "UnrecognizedClientException", errors.AccessDeniedError, False),
        (403, "InvalidSignatureException", errors.AccessDeniedError, False),
        (403, "IncompleteSignature", errors.AccessDeniedError, False),
        (403, "MissingAuthenticationToken", errors.AccessDeniedError, False),
        (403, "ExpiredTokenException", errors.ExpiredTokenError, True),
        (424, "ModelError", errors.ModelError, False),
        (500, "InternalFailure", errors.InternalServerError, True),
        (500, "InternalServerError", errors.InternalServerError, True),
        (503, "ServiceUnavailable", errors.ServiceUnavailableError, True),
        (503, "ServiceUnavailableError", errors.ServiceUnavailableError, True),
    ],
)
def test_error_type_header_picks_class(
    status: int, error_type: str, cls: type[errors.OperationError], retryable: bool
) -> None:
    err = operation_error(
        status, aws_headers(f"{error_type}:{CORAL}"), body(message=f"{error_type} happened")
    )
    assert type(err) is cls
    assert err.retryable is retryable
    assert err.status_code == status
    assert err.error_type == error_type
    assert err.request_id == REQUEST_ID
    assert err.message == f"{error_type} happened"
    assert REQUEST_ID in str(err)


def test_throttling_with_coral_suffix_at_400() -> None:
    err = operation_error(
        400,
        {
            "x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/",
            "x-amzn-RequestId": REQUEST_ID,
        },
        b'{"message":"Rate exceeded"}',
    )
    assert isinstance(err, errors.ThrottlingError)
    assert err.retryable
    assert err.error_type == "ThrottlingException"
    assert err.request_id == REQUEST_ID  # header names are case-insensitive
    assert str(err) == f"ThrottlingException (400): Rate exceeded (request id {REQUEST_ID})"


def test_model_error_keeps_container_fields() -> None:
    arn = (
        "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/flux"
        ":log-stream:AllTraffic/i-0123456789abcdef0"
    )
    raw = body(
        ErrorCode="CLIENT_ERROR_FROM_MODEL",
        LogStreamArn=arn,
        OriginalMessage="Failed to establish WebSocket connection",
        OriginalStatusCode=400,
        Message="Received client error (400) from primary with message "
        '"Failed to establish WebSocket connection". See ' + arn + " for more information.",
    )
    err = operation_error(424, aws_headers("ModelError"), raw)
    assert isinstance(err, errors.ModelError)
    assert not err.retryable
    assert err.original_status_code == 400
    assert err.original_message == "Failed to establish WebSocket connection"
    assert err.log_stream_arn == arn
    assert err.error_code == "CLIENT_ERROR_FROM_MODEL"
    assert err.message.startswith("Received client error (400)")
    assert err.body["OriginalStatusCode"] == 400


def test_model_error_lenient_field_types() -> None:
    raw = body(OriginalStatusCode="502", OriginalMessage={"nested": 1}, message="bad")
    err = operation_error(424, aws_headers(None), raw)
    assert isinstance(err, errors.ModelError)
    assert err.original_status_code == 502
    assert err.original_message is None
    assert err.log_stream_arn is None
    assert err.error_type is None
    for odd in (True, "4x", 1.5, "\u00b2", "9" * 5000):
        err = operation_error(424, aws_headers("ModelError"), body(OriginalStatusCode=odd))
        assert isinstance(err, errors.ModelError)
        assert err.original_status_code is None


def test_body_type_used_without_header() -> None:
    raw = body(__type="com.amazonaws.sagemaker#ThrottlingException", message="slow down")
    err = operation_error(400, [("x-amzn-requestid", REQUEST_ID)], raw)
    assert isinstance(err, errors.ThrottlingError)
    assert err.error_type == "ThrottlingException"
    err = operation_error(403, [], body(code="ExpiredTokenException", Message="token expired"))
    assert isinstance(err, errors.ExpiredTokenError)
    assert err.message == "token expired"
    assert err.request_id is None


def test_header_wins_over_body_type() -> None:
    raw = body(__type="ThrottlingException", message="x")
    err = operation_error(403, aws_headers("AccessDeniedException"), raw)
    assert type(err) is errors.AccessDeniedError


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, errors.InputValidationError, False),
        (403, errors.AccessDeniedError, False),
        (424, errors.ModelError, False),
        (429, errors.ThrottlingError, True),
        (500, errors.InternalServerError, True),
        (503, errors.ServiceUnavailableError, True),
        (502, errors.OperationError, True),
        (504, errors.OperationError, True),
        (530, errors.OperationError, True),
        (404, errors.OperationError, False),
        (413, errors.OperationError, False),
    ],
)
def test_status_fallback(status: int, cls: type[errors.OperationError], retryable: bool) -> None:
    for error_type in (None, "SomeFutureException:http://x"):
        err = operation_error(status, aws_headers(error_type), b"")
        assert type(err) is cls
        assert err.retryable is retryable
        assert err.message == f"HTTP {status}"
        assert err.body == {}


def test_non_json_body_becomes_message() -> None:
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
    err = operation_error(502, [(b"x-amzn-requestid", REQUEST_ID.encode())], html)
    assert err.message == html.decode().strip()
    assert err.request_id == REQUEST_ID
    assert err.body == {}
    err = operation_error(500, {}, b"\xff\xfe not utf-8")
    assert "not utf-8" in err.message


def test_json_not_an_object_or_without_message() -> None:
    err = operation_error(400, aws_headers("ValidationError"), b'["a", "b"]')
    assert err.message == '["a", "b"]'
    assert err.body == {}
    err = operation_error(400, aws_headers("ValidationError"), body(message="", ErrorCode=7))
    assert err.message == "HTTP 400"
    assert err.error_code == "7"
    err = operation_error(400, aws_headers(None), body(code=5))
    assert type(err) is errors.InputValidationError
    assert err.error_type is None


def test_empty_error_type_header_falls_back_to_status() -> None:
    err = operation_error(503, aws_headers(":http://x"), b"")
    assert type(err) is errors.ServiceUnavailableError
    assert err.error_type is None


def test_huge_bodies_are_truncated() -> None:
    huge = "x" * 100_000
    err = operation_error(400, aws_headers("ValidationError"), body(message=huge))
    assert len(err.message) < MAX_MESSAGE_CHARS + 100
    assert err.message.startswith("x" * MAX_MESSAGE_CHARS)
    assert f"{100_000 - MAX_MESSAGE_CHARS} more characters" in err.message
    err = operation_error(500, aws_headers(None), huge.encode())
    assert len(err.message) < MAX_MESSAGE_CHARS + 100
    err = operation_error(424, aws_headers("ModelError"), body(OriginalMessage=huge))
    assert isinstance(err, errors.ModelError)
    assert err.original_message is not None
    assert len(err.original_message) < MAX_MESSAGE_CHARS + 100


def exception_message(exception_type: str, payload: dict[str, object] | bytes) -> Message:
    """An exception event as SageMaker frames it, round-tripped through the codec."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    frame = encode_message(
        {
            ":message-type": "exception",
            ":exception-type": exception_type,
            ":content-type": "application/json",
        },
        data,
    )
    return decode_message(frame)


def test_model_stream_error() -> None:
    msg = exception_message(
        "ModelStreamError",
        {
            "Message": "Model invocation exceeded the maximum time",
            "ErrorCode": "ModelInvocationTimeExceeded",
        },
    )
    err = stream_error(msg, request_id=REQUEST_ID)
    assert type(err) is errors.ModelStreamError
    assert err.error_code == "ModelInvocationTimeExceeded"
    assert err.message == "Model invocation exceeded the maximum time"
    assert err.request_id == REQUEST_ID
    assert err.retryable


# The AWS SDK's encodings of the two exception events (shared vectors, eventstream-vectors.json).
MODEL_STREAM_ERROR_HEX = (
    "000000d00000005e6004dcc30d3a6d6573736167652d74797065070009657863657074696f6e0f3a65786365"
    "7074696f6e2d747970650700104d6f64656c53747265616d4572726f720d3a636f6e74656e742d7479706507"
    "00106170706c69636174696f6e2f6a736f6e7b224d657373616765223a224d6f64656c20696e766f63617469"
    "6f6e20657863656564656420746865206d6178696d756d2074696d65222c224572726f72436f6465223a224d"
    "6f64656c496e766f636174696f6e54696d654578636565646564227d62bc31be"
)
INTERNAL_STREAM_FAILURE_HEX = (
    "000000980000006350ef835a0d3a6d6573736167652d74797065070009657863657074696f6e0f3a65786365"
    "7074696f6e2d74797065070015496e7465726e616c53747265616d4661696c7572650d3a636f6e74656e742d"
    "747970650700106170706c69636174696f6e2f6a736f6e7b224d657373616765223a22496e7465726e616c20"
    "73747265616d206661696c757265227d0dd86469"
)


def test_aws_sdk_encoded_exceptions() -> None:
    err = stream_error(decode_message(bytes.fromhex(MODEL_STREAM_ERROR_HEX)))
    assert isinstance(err, errors.ModelStreamError)
    assert err.error_code == "ModelInvocationTimeExceeded"
    failure = decode_message(bytes.fromhex(INTERNAL_STREAM_FAILURE_HEX))
    err = stream_error(failure)
    assert type(err) is errors.InternalStreamFailure
    assert err.message == "Internal stream failure"
    assert err.error_code is None
    assert err.retryable


def test_unknown_exception_type() -> None:
    err = stream_error(exception_message("ModelStreamTimeout", {"message": "too slow"}))
    assert type(err) is errors.InternalStreamFailure
    assert err.retryable
    assert "ModelStreamTimeout" in err.message
    assert "too slow" in err.message


def test_exception_with_non_json_payload_and_no_type() -> None:
    err = stream_error(Message({":message-type": "exception"}, b"boom"))
    assert type(err) is errors.InternalStreamFailure
    assert "(no :exception-type)" in err.message


def test_exception_message_keeps_a_non_json_reason_and_is_truncated() -> None:
    """A plain-text exception payload was dropped (the message was just the type), unlike the
    same body before the stream; an unknown :exception-type went in untruncated (32 KiB)."""
    err = stream_error(exception_message("ModelStreamError", b"upstream connection reset\n"))
    assert type(err) is errors.ModelStreamError
    assert err.message == "upstream connection reset"
    assert err.error_code is None
    assert err.retryable
    empty = stream_error(exception_message("InternalStreamFailure", b""))
    assert (type(empty), empty.message) == (errors.InternalStreamFailure, "InternalStreamFailure")
    long_type = "X" * 32767
    err = stream_error(exception_message(long_type, {"ErrorCode": "E"}))
    assert type(err) is errors.InternalStreamFailure
    assert err.error_code == "E"
    assert len(err.message) < 2 * MAX_MESSAGE_CHARS + 200


def test_error_message_type() -> None:
    frame = encode_message(
        {
            ":message-type": "error",
            ":error-code": "InternalError",
            ":error-message": "An internal error occurred",
        }
    )
    err = stream_error(decode_message(frame), request_id=REQUEST_ID)
    assert type(err) is errors.InternalStreamFailure
    assert err.retryable
    assert err.error_code == "InternalError"
    assert "An internal error occurred" in err.message
    assert err.request_id == REQUEST_ID
    bare = stream_error(Message({":message-type": "error"}, b""))
    assert bare.retryable
    assert "(no :error-code)" in bare.message


def test_stream_error_rejects_events() -> None:
    with pytest.raises(errors.LocalProtocolError, match="'event'"):
        stream_error(Message({":message-type": "event", ":event-type": "PayloadPart"}, b"{}"))


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("INTERNAL_SERVER_ERROR", True),
        ("UNPARSABLE_CLIENT_MESSAGE", False),
        ("SOMETHING_NEW", False),
    ],
)
def test_server_error(code: str, retryable: bool) -> None:
    raw = {"type": "Error", "sequence_id": 9, "code": code, "description": "unknown variant"}
    event = ServerError(
        request_id=None, sequence_id=9, code=code, description="unknown variant", raw=raw
    )
    err = server_error(event, request_id=REQUEST_ID)
    assert type(err) is errors.FluxServerError
    assert err.code == code
    assert err.description == "unknown variant"
    assert err.retryable is retryable
    assert err.request_id == REQUEST_ID
    assert str(err) == f"Flux error {code}: unknown variant (request id {REQUEST_ID})"


def test_server_error_missing_fields() -> None:
    event = ServerError(request_id=None, sequence_id=None, code="", description="", raw={})
    err = server_error(event)
    assert err.code == "UNKNOWN"
    assert err.description == "(no description)"
    assert not err.retryable


def test_deeply_nested_body_is_not_json_to_us() -> None:
    # Server-controlled: nesting that exhausts json's recursion is "not JSON", not a crash.
    nested = b"[" * 100_000
    err = operation_error(500, aws_headers(None), nested)
    assert type(err) is errors.InternalServerError
    assert err.body == {}
    assert err.message.startswith("[[[")
    failure = stream_error(exception_message("ModelStreamError", nested))
    assert type(failure) is errors.ModelStreamError
    assert failure.message.startswith("[[[")
    assert len(failure.message) < MAX_MESSAGE_CHARS + 100


@pytest.mark.parametrize(
    "error",
    [
        operation_error(403, aws_headers("ExpiredTokenException"), body(message="expired")),
        operation_error(424, aws_headers("ModelError"), body(message="no", OriginalStatusCode=400)),
        errors.ConfigureRejected("INVALID_THRESHOLD", "too low", request_id=REQUEST_ID),
        errors.MessageParseError("not JSON", raw=b"{"),
        errors.GoAway("going away", error_code=0, unprocessed=True),
        errors.TimeoutError("slow", request_id=REQUEST_ID),
    ],
    ids=type,
)
def test_errors_survive_pickling_and_copying(error: errors.FluxError) -> None:
    """Across processes (multiprocessing, task queues) and through copy, whatever keyword-only
    arguments the class's constructor takes."""
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(again) is type(error)
        assert again.__dict__ == error.__dict__
        assert (again.args, str(again), repr(again)) == (error.args, str(error), repr(error))
