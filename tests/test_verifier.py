"""The mock endpoint's verifier: the AWS SDK capture passes, every tampering is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from flux_sagemaker.core.eventstream import (
    EventStreamDecoder,
    Long,
    Message,
    Timestamp,
    encode_message,
)
from flux_sagemaker.core.request import Endpoint, InvokeRequest
from flux_sagemaker.core.signing import EventSigner, sign_request
from flux_sagemaker.errors import FluxError
from flux_sagemaker.testing.verifier import (
    EventSignatureError,
    EventVerifier,
    InputEnded,
    InputEvent,
    RequestVerifier,
    VerificationFailure,
    VerifiedRequest,
)
from tests.conftest import VECTORS

CAPTURE = VECTORS / "aws-sdk-capture"
CAPTURE_HEADERS: dict[str, str] = json.loads((CAPTURE / "request-headers.json").read_text())
BODY = (CAPTURE / "request-body.bin").read_bytes()
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
NOW = datetime(2026, 11, 24, 20, 3, 27, tzinfo=UTC).timestamp()
SIGNATURE = CAPTURE_HEADERS["authorization"].rpartition("Signature=")[2]
PATH = CAPTURE_HEADERS[":path"]
QS = CAPTURE_HEADERS["x-amzn-sagemaker-model-query-string"]
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE+token/=="

Headers = list[tuple[str, str]]


def verifier(
    secret: str = SECRET, token: str | None = None, now: float = NOW, region: str | None = REGION
) -> RequestVerifier:
    return RequestVerifier({"AKIDEXAMPLE": (secret, token)}, region=region, clock=lambda: now)


def capture_headers(**changes: str | None) -> Headers:
    """The captured request headers (pseudo-headers included), with some replaced or dropped."""
    headers = {**CAPTURE_HEADERS, **changes}
    return [(k, v) for k, v in headers.items() if v is not None and k not in (":method", ":path")]


def envelopes() -> list[Message]:
    return EventStreamDecoder().receive_data(BODY)


def reencode(message: Message, **changes: object) -> bytes:
    return encode_message({**message.headers, **changes}, message.payload)  # type: ignore[arg-type]


def botocore_signed(
    path: str, headers: dict[str, str], amz_date: str = "20261124T200327Z"
) -> Headers:
    """Sign arbitrary headers the way any SigV4 client would (for requests our client refuses)."""
    headers = {"x-amz-date": amz_date, **headers}
    request = AWSRequest(method="POST", url=f"https://127.0.0.1:43899{path}", headers=headers)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(ReadOnlyCredentials("AKIDEXAMPLE", SECRET, None), "sagemaker", REGION)
    sig = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    names = signer.signed_headers(signer.headers_to_sign(request))
    scope = signer.scope(request)
    auth = f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={names}, Signature={sig}"
    return [(":authority", "127.0.0.1:43899"), *headers.items(), ("authorization", auth)]


def sagemaker_headers(**changes: str) -> dict[str, str]:
    return {
        "content-type": "application/vnd.amazon.eventstream",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-EVENTS",
        "x-amzn-sagemaker-model-invocation-path": "v2/listen",
        "x-amzn-sagemaker-model-query-string": QS,
        **changes,
    }


# -- the captured session ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [PATH, PATH.rstrip("?")])
def test_capture_request_verifies(path: str) -> None:
    verified = verifier().verify("POST", path, capture_headers())
    assert verified == VerifiedRequest(
        endpoint_name="flux-ep",
        query_string=QS,
        invocation_path="v2/listen",
        target_variant=None,
        region=REGION,
        access_key="AKIDEXAMPLE",
        seed_signature=SIGNATURE,
        amz_date="20261124T200327Z",
    )
    assert SIGNATURE not in repr(verified)


def check_capture_events(events: list[InputEvent | InputEnded]) -> None:
    assert len(events) == 27
    audio, close, end = events[:25], events[25], events[26]
    raw = envelopes()
    for event, envelope in zip(audio, raw, strict=False):
        assert isinstance(event, InputEvent)
        assert event.data_type == "BINARY"
        assert event.date_ms == envelope.headers[":date"]
        assert event.payload == EventStreamDecoder().receive_data(envelope.payload)[0].payload
        assert len(event.payload) == 2560  # 80 ms of 16 kHz linear16
    assert isinstance(close, InputEvent)
    assert (close.data_type, close.payload) == ("UTF8", b'{"type":"CloseStream"}')
    assert close.headers[":content-type"] == "application/octet-stream"
    assert end == InputEnded(int(raw[-1].headers[":date"]))  # type: ignore[call-overload]


@pytest.mark.parametrize("chunk", [len(BODY), 1, 7, 2700])
def test_capture_body_verifies_in_any_chunking(chunk: int) -> None:
    requests = verifier()
    events_verifier = requests.event_verifier(requests.verify("POST", PATH, capture_headers()))
    events = []
    for i in range(0, len(BODY), chunk):
        events += events_verifier.receive_data(BODY[i : i + chunk])
    events_verifier.eof()
    assert events_verifier.ended
    check_capture_events(events)


def test_our_client_round_trips_with_token_and_variant() -> None:
    creds = ReadOnlyCredentials("ASIAEXAMPLE", "another/secret", TOKEN)
    request = InvokeRequest(
        Endpoint(scheme="http", host="localhost", port=8080),
        "my-ep",
        "model=flux-general-en",
        target_variant="blue",
    )
    signed = sign_request(request, creds, "eu-central-1")
    requests = RequestVerifier({"ASIAEXAMPLE": ("another/secret", TOKEN)}, region="eu-central-1")
    verified = requests.verify(signed.method, signed.path, signed.h2_headers())
    assert (verified.endpoint_name, verified.target_variant, verified.region) == (
        "my-ep",
        "blue",
        "eu-central-1",
    )
    signer = EventSigner(credentials=creds, region="eu-central-1", seed_signature=signed.signature)
    body = signer.sign(
        encode_message(
            {":message-type": "event", ":event-type": "PayloadPart", "DataType": "BINARY"}, b"pcm"
        )
    )
    body += signer.sign_empty()
    events = requests.event_verifier(verified).receive_data(body)
    assert isinstance(events[0], InputEvent)
    assert events[0].payload == b"pcm"
    assert isinstance(events[1], InputEnded)


# -- request failures --------------------------------------------------------------------------


def flip(hex_signature: str, index: int) -> str:
    digit = int(hex_signature[index], 16) ^ 1
    return hex_signature[:index] + f"{digit:x}" + hex_signature[index + 1 :]


AUTH = CAPTURE_HEADERS["authorization"]


@pytest.mark.parametrize(
    ("make", "status", "error_type"),
    [
        (
            lambda: (verifier(), capture_headers(authorization=None)),
            403,
            "MissingAuthenticationToken",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(authorization=AUTH.replace(SIGNATURE, flip(SIGNATURE, 0))),
            ),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(authorization=AUTH.replace(SIGNATURE, flip(SIGNATURE, 63))),
            ),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (verifier(secret=SECRET[:-1] + "X"), capture_headers()),
            403,
            "InvalidSignatureException",
        ),
        (lambda: (verifier(now=NOW + 301), capture_headers()), 403, "InvalidSignatureException"),
        (lambda: (verifier(now=NOW - 301), capture_headers()), 403, "InvalidSignatureException"),
        (
            lambda: (
                verifier(),
                capture_headers(**{"x-amzn-sagemaker-model-query-string": QS + "&x=1"}),
            ),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (verifier(), capture_headers(**{"content-type": "application/json"})),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (verifier(), capture_headers(**{":authority": "127.0.0.1:443"})),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (verifier(), capture_headers(**{"x-amz-date": "20261124T200328Z"})),
            403,
            "InvalidSignatureException",
        ),
        (lambda: (verifier(), capture_headers(**{"x-amz-date": None})), 403, "IncompleteSignature"),
        (
            lambda: (
                verifier(),
                capture_headers(**{"x-amzn-sagemaker-model-invocation-path": None}),
            ),
            403,
            "IncompleteSignature",
        ),
        (
            lambda: (verifier(), capture_headers(authorization=AUTH.split(", Signature=")[0])),
            403,
            "IncompleteSignature",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(
                    authorization=AUTH.replace("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA512 ")
                ),
            ),
            403,
            "IncompleteSignature",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(authorization=AUTH.replace("AKIDEXAMPLE", "AKIDOTHER")),
            ),
            403,
            "UnrecognizedClientException",
        ),
        (
            lambda: (verifier(region="us-west-2"), capture_headers()),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(authorization=AUTH.replace("/sagemaker/", "/s3/")),
            ),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(authorization=AUTH.replace("20261124/", "20261123/")),
            ),
            403,
            "InvalidSignatureException",
        ),
        (lambda: (verifier(token=TOKEN), capture_headers()), 403, "UnrecognizedClientException"),
        (
            lambda: (verifier(), capture_headers(**{"x-amz-security-token": TOKEN})),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (verifier(), capture_headers(authorization=AUTH.replace("content-type;", ""))),
            403,
            "InvalidSignatureException",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(
                    authorization=AUTH.replace("content-type;host;", "host;content-type;")
                ),
            ),
            403,
            "IncompleteSignature",
        ),
        (
            lambda: (
                verifier(),
                capture_headers(authorization=AUTH.replace("host;", "host;user-agent;")),
            ),
            403,
            "IncompleteSignature",
        ),
    ],
)
def test_bad_requests_are_refused(
    make: Callable[[], tuple[RequestVerifier, Headers]], status: int, error_type: str
) -> None:
    requests, headers = make()
    with pytest.raises(VerificationFailure) as info:
        requests.verify("POST", PATH, headers)
    assert (info.value.status, info.value.error_type) == (status, error_type)
    assert isinstance(info.value, FluxError)
    assert json.loads(info.value.body()) == {"message": info.value.message}
    assert SECRET not in str(info.value)


def test_skew_within_the_limit_is_accepted() -> None:
    assert (
        verifier(now=NOW + 300).verify("POST", PATH, capture_headers()).amz_date
        == "20261124T200327Z"
    )
    with pytest.raises(VerificationFailure, match="expired"):
        verifier(now=NOW + 300.5).verify("POST", PATH, capture_headers())


@pytest.mark.parametrize(
    "name", ["x-amzn-sagemaker-model-query-string", "x-amzn-sagemaker-model-invocation-path"]
)
def test_a_header_that_says_what_runs_must_be_signed(name: str) -> None:
    # A valid signature over the other headers, this one added unsigned: it could be swapped
    # in transit (another model, other parameters), so SageMaker refuses it.
    headers = sagemaker_headers()
    value = headers.pop(name)
    request = [*botocore_signed(PATH, headers), (name, value)]
    with pytest.raises(VerificationFailure, match=f"{name!r} must be signed") as info:
        verifier().verify("POST", PATH, request)
    assert (info.value.status, info.value.error_type) == (403, "InvalidSignatureException")


def test_unsigned_header_may_change() -> None:
    headers = capture_headers(**{"user-agent": "something else", "accept": None})
    assert verifier().verify("POST", PATH, headers).endpoint_name == "flux-ep"


def test_tampered_path_is_refused() -> None:
    with pytest.raises(VerificationFailure) as info:
        verifier().verify("POST", PATH.replace("flux-ep", "flux-ex"), capture_headers())
    assert info.value.error_type == "InvalidSignatureException"


def test_session_tokens() -> None:
    creds = ReadOnlyCredentials("AKIDEXAMPLE", SECRET, TOKEN)
    request = InvokeRequest(Endpoint(scheme="https", host="127.0.0.1", port=43899), "flux-ep", QS)
    signed = sign_request(request, creds, REGION, timestamp=datetime.fromtimestamp(NOW, UTC))
    assert (
        verifier(token=TOKEN).verify("POST", signed.path, signed.h2_headers()).access_key
        == "AKIDEXAMPLE"
    )
    # Rotating the token on record "expires" the one the client holds.
    with pytest.raises(VerificationFailure) as info:
        verifier(token="rotated").verify("POST", signed.path, signed.h2_headers())
    assert (info.value.status, info.value.error_type) == (403, "ExpiredTokenException")
    with pytest.raises(VerificationFailure) as info:
        verifier(token=None).verify("POST", signed.path, signed.h2_headers())
    assert info.value.error_type == "UnrecognizedClientException"


@pytest.mark.parametrize(
    ("method", "path", "headers", "error_type"),
    [
        ("GET", PATH, capture_headers(), "ValidationError"),
        ("POST", PATH + "a=b", capture_headers(), "ValidationError"),
        ("POST", PATH, [*capture_headers(), ("x-amz-date", "20261124T200327Z")], "ValidationError"),
        ("POST", PATH, capture_headers(**{":authority": "evil host"}), "ValidationError"),
        (
            "POST",
            "/endpoints/-bad-/invocations-bidirectional-stream",
            botocore_signed(
                "/endpoints/-bad-/invocations-bidirectional-stream", sagemaker_headers()
            ),
            "ValidationError",
        ),
        (
            "POST",
            "/endpoints/ep/invocations",
            botocore_signed("/endpoints/ep/invocations", sagemaker_headers()),
            "ValidationError",
        ),
        (
            "POST",
            PATH,
            botocore_signed(
                PATH, sagemaker_headers(**{"x-amzn-sagemaker-model-query-string": "a=b+c"})
            ),
            "ValidationError",
        ),
        (
            "POST",
            PATH,
            botocore_signed(
                PATH, sagemaker_headers(**{"x-amzn-sagemaker-model-invocation-path": "/v2"})
            ),
            "ValidationError",
        ),
        (
            "POST",
            PATH,
            botocore_signed(PATH, sagemaker_headers(**{"x-amzn-sagemaker-target-variant": "a_b"})),
            "ValidationError",
        ),
        (
            "POST",
            PATH,
            botocore_signed(PATH, sagemaker_headers(**{"content-type": "text/plain"})),
            "InputValidationError",
        ),
        (
            "POST",
            PATH,
            botocore_signed(
                PATH, sagemaker_headers(**{"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
            ),
            "InputValidationError",
        ),
    ],
)
def test_invalid_requests_get_400(
    method: str, path: str, headers: Headers, error_type: str
) -> None:
    with pytest.raises(VerificationFailure) as info:
        verifier().verify(method, path, headers)
    assert (info.value.status, info.value.error_type) == (400, error_type)


def test_botocore_signed_helper_is_accepted_when_valid() -> None:
    """The 400 cases above fail on validation, not on signing."""
    verified = verifier().verify("POST", PATH, botocore_signed(PATH, sagemaker_headers()))
    assert verified.query_string == QS


# -- event failures ----------------------------------------------------------------------------


def event_verifier(secret: str = SECRET) -> EventVerifier:
    return EventVerifier(secret_key=secret, region=REGION, seed_signature=SIGNATURE)


def feed(frames: list[bytes], verifier: EventVerifier) -> tuple[int, VerificationFailure]:
    """Feed frames one by one; return the index of the refused one and the error."""
    for index, frame in enumerate(frames):
        try:
            verifier.receive_data(frame)
        except VerificationFailure as exc:
            return index, exc
    raise AssertionError("every frame was accepted")


@pytest.mark.parametrize("index", range(27))
def test_flipped_signature_bit_is_refused_at_its_envelope(index: int) -> None:
    raw = envelopes()
    frames = [reencode(m) for m in raw]
    assert b"".join(frames) == BODY
    signature = bytearray(raw[index].headers[":chunk-signature"])  # type: ignore[arg-type]
    signature[index % 32] ^= 1 << (index % 8)
    frames[index] = reencode(raw[index], **{":chunk-signature": bytes(signature)})
    refused, error = feed(frames, event_verifier())
    assert refused == index
    assert (error.status, error.error_type) == (403, "InvalidSignatureException")
    assert isinstance(error, EventSignatureError)


def test_reordered_envelopes_are_refused() -> None:
    frames = [reencode(m) for m in envelopes()]
    frames[3], frames[4] = frames[4], frames[3]
    refused, error = feed(frames, event_verifier())
    assert (refused, error.error_type) == (3, "InvalidSignatureException")


def test_wrong_secret_is_refused_at_the_first_envelope() -> None:
    refused, error = feed([reencode(m) for m in envelopes()], event_verifier(SECRET + "x"))
    assert (refused, error.status) == (0, 403)


def test_changed_date_is_refused() -> None:
    raw = envelopes()
    frames = [reencode(m) for m in raw]
    frames[5] = reencode(raw[5], **{":date": Timestamp(int(raw[5].headers[":date"]) + 1)})  # type: ignore[call-overload]
    assert feed(frames, event_verifier())[0] == 5


def test_corrupt_crc_is_refused_and_the_verifier_stays_broken() -> None:
    body = bytearray(BODY)
    body[100] ^= 0x40
    events = event_verifier()
    with pytest.raises(EventSignatureError) as info:
        events.receive_data(bytes(body))
    assert (info.value.status, info.value.error_type) == (400, "ValidationError")
    assert "CRC" in info.value.message
    with pytest.raises(EventSignatureError):
        events.receive_data(b"")


def test_data_after_the_final_envelope_is_refused() -> None:
    events = event_verifier()
    extra = reencode(envelopes()[0])
    with pytest.raises(EventSignatureError, match="after the final"):
        events.receive_data(BODY + extra)
    events = event_verifier()
    assert isinstance(events.receive_data(BODY)[-1], InputEnded)
    with pytest.raises(EventSignatureError, match="after the final"):
        events.receive_data(b"\x00")


def test_truncated_body_is_reported_at_eof() -> None:
    events = event_verifier()
    assert len(events.receive_data(BODY[:-10])) == 26
    assert not events.ended
    with pytest.raises(EventSignatureError, match="inside an envelope"):
        events.eof()


def signed_body(*payloads: bytes) -> bytes:
    clock = iter([NOW + i for i in range(len(payloads))])
    creds = ReadOnlyCredentials("AKIDEXAMPLE", SECRET, None)
    signer = EventSigner(
        credentials=creds, region=REGION, seed_signature=SIGNATURE, clock=lambda: next(clock)
    )
    return b"".join(signer.sign(p) for p in payloads)


def inner(data_type: str | None = "BINARY", payload: bytes = b"x", **extra: str) -> bytes:
    headers: dict[str, str] = {":message-type": "event", ":event-type": "PayloadPart"}
    if data_type is not None:
        headers["DataType"] = data_type
    return encode_message({**headers, **extra}, payload)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not an event-stream message", "malformed inner"),
        (inner() + b"x", "malformed inner"),
        (inner(data_type="TEXT"), "DataType"),
        (inner(data_type=""), "DataType"),
        (inner(data_type="UTF8", payload=b"\xff\xfe"), "UTF-8"),
        (inner(CompletionState="DONE"), "CompletionState"),
        (
            encode_message({":message-type": "exception", ":event-type": "PayloadPart"}, b""),
            "PayloadPart",
        ),
    ],
)
def test_malformed_inner_messages_are_refused(payload: bytes, match: str) -> None:
    body = signed_body(inner(), payload)
    events = event_verifier()
    with pytest.raises(EventSignatureError, match=match) as info:
        events.receive_data(body)
    assert (info.value.status, info.value.error_type) == (400, "ValidationError")


def test_a_part_without_data_type_is_binary() -> None:
    # deepgram-sagemaker sends audio this way; the API model makes DataType optional.
    [event] = event_verifier().receive_data(signed_body(inner(data_type=None, payload=b"pcm")))
    assert isinstance(event, InputEvent)
    assert (event.data_type, event.payload) == ("BINARY", b"pcm")
    assert "DataType" not in event.headers


def test_inner_message_fields_are_reported() -> None:
    events = event_verifier().receive_data(
        signed_body(inner("UTF8", b"{}", CompletionState="PARTIAL", P="pad"))
    )
    assert events == [
        InputEvent(
            data_type="UTF8",
            payload=b"{}",
            date_ms=int(NOW * 1000),
            headers={
                ":message-type": "event",
                ":event-type": "PayloadPart",
                "DataType": "UTF8",
                "CompletionState": "PARTIAL",
                "P": "pad",
            },
            completion_state="PARTIAL",
        )
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {":date": Timestamp(int(NOW * 1000))},
        {":date": Timestamp(int(NOW * 1000)), ":chunk-signature": b"short"},
        {":date": Long(int(NOW * 1000)), ":chunk-signature": bytes(32)},
        {":date": Timestamp(int(NOW * 1000)), ":chunk-signature": bytes(32), "extra": "x"},
        {":date": Timestamp(-5), ":chunk-signature": bytes(32)},
    ],
)
def test_malformed_envelopes_are_refused(headers: dict[str, object]) -> None:
    with pytest.raises(EventSignatureError) as info:
        event_verifier().receive_data(encode_message(headers, b""))  # type: ignore[arg-type]
    assert info.value.status == 400


def test_reprs_hide_secrets() -> None:
    requests = verifier()
    events = requests.event_verifier(requests.verify("POST", PATH, capture_headers()))
    for text in (
        repr(requests),
        repr(events),
        repr(requests.verify("POST", PATH, capture_headers())),
    ):
        assert SECRET not in text
        assert SIGNATURE not in text
