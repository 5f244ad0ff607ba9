"""SigV4 request signing and the chained event signer, byte for byte against the AWS SDK capture."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_sagemaker.core import signing
from flux_sagemaker.core.eventstream import EventStreamDecoder, Message, encode_message
from flux_sagemaker.core.request import Endpoint, InvokeRequest
from flux_sagemaker.core.signing import (
    EventSigner,
    SignatureChain,
    encode_date_header,
    sign_request,
    signing_key,
)
from flux_sagemaker.errors import LocalProtocolError, ValidationError
from tests.conftest import VECTORS

CAPTURE = VECTORS / "aws-sdk-capture"
HEADERS: dict[str, str] = json.loads((CAPTURE / "request-headers.json").read_text())
BODY = (CAPTURE / "request-body.bin").read_bytes()
ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FQoGZXIvYXdzEXAMPLE/session+token=="
CREDS = ReadOnlyCredentials(ACCESS_KEY, SECRET, None)
REGION = "us-east-1"
CAPTURE_TIME = datetime(2026, 11, 24, 20, 3, 27, tzinfo=UTC)
CAPTURE_SIGNATURE = HEADERS["authorization"].rpartition("Signature=")[2]


def capture_request() -> InvokeRequest:
    """The capture's request rebuilt from its headers."""
    host, _, port = HEADERS[":authority"].partition(":")
    name = HEADERS[":path"].split("/")[2]
    return InvokeRequest(
        Endpoint(scheme=HEADERS[":scheme"], host=host, port=int(port)),
        name,
        HEADERS["x-amzn-sagemaker-model-query-string"],
        invocation_path=HEADERS["x-amzn-sagemaker-model-invocation-path"],
    )


def capture_envelopes() -> list[Message]:
    return EventStreamDecoder().receive_data(BODY)


def replay_clock(envelopes: list[Message]) -> Any:
    """A clock returning each envelope's own :date, in order."""
    dates = iter([int(m.headers[":date"]) / 1000 for m in envelopes])  # type: ignore[call-overload]
    return lambda: next(dates)


# -- the opening request -----------------------------------------------------------------------


def test_capture_signature_recomputed_from_its_headers() -> None:
    """The vector itself: botocore over the signed headers, `:path` with its trailing `?`."""
    signed = HEADERS["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(
        method=HEADERS[":method"],
        url=f"https://{HEADERS[':authority']}{HEADERS[':path']}",
        headers={n: HEADERS[":authority"] if n == "host" else HEADERS[n] for n in signed},
    )
    request.context["timestamp"] = HEADERS["x-amz-date"]
    signer = SigV4Auth(CREDS, "sagemaker", REGION)
    signature = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    assert signature == CAPTURE_SIGNATURE
    assert signature.startswith("580f0be7")


def test_sign_request_reproduces_the_capture() -> None:
    signed = sign_request(capture_request(), CREDS, REGION, timestamp=CAPTURE_TIME)
    headers = dict(signed.headers)
    assert signed.signature == CAPTURE_SIGNATURE
    assert headers["authorization"] == HEADERS["authorization"]
    for name, value in signed.headers:
        assert value == HEADERS[name], name
    assert (signed.method, signed.scheme, signed.authority) == ("POST", "https", "127.0.0.1:43899")
    assert HEADERS[":path"] == signed.path + "?"
    assert "host" not in headers  # it travels as :authority
    assert signed.h2_headers()[:4] == [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "127.0.0.1:43899"),
        (":path", signed.path),
    ]
    assert signed.h2_headers()[4:] == list(signed.headers)


def test_timestamp_in_another_zone_is_converted_to_utc() -> None:
    local = CAPTURE_TIME.astimezone(timezone(timedelta(hours=-5))) + timedelta(microseconds=900)
    signed = sign_request(capture_request(), CREDS, REGION, timestamp=local)
    assert signed.signature == CAPTURE_SIGNATURE


def test_naive_timestamp_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        sign_request(capture_request(), CREDS, REGION, timestamp=datetime(2026, 11, 24))


def test_default_timestamp_is_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    signed = sign_request(capture_request(), CREDS, REGION)
    after = datetime.now(UTC)
    amz_date = datetime.strptime(dict(signed.headers)["x-amz-date"], "%Y%m%dT%H%M%SZ")
    assert before <= amz_date.replace(tzinfo=UTC) <= after


def test_session_token_is_sent_and_signed() -> None:
    creds = ReadOnlyCredentials(ACCESS_KEY, SECRET, TOKEN)
    signed = sign_request(capture_request(), creds, REGION, timestamp=CAPTURE_TIME)
    headers = dict(signed.headers)
    assert headers["x-amz-security-token"] == TOKEN
    signed_names = signed_header_names(signed)
    assert "x-amz-security-token" in signed_names
    assert signed.signature != CAPTURE_SIGNATURE
    # The token is covered: botocore over the same headers with another token disagrees.
    request = AWSRequest(
        method="POST",
        url=f"https://{signed.authority}{signed.path}",
        headers={
            "host": signed.authority,
            **{n: v for n, v in signed.headers if n in signed_names},
        },
    )
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(creds, "sagemaker", REGION)
    sts = signer.string_to_sign(request, signer.canonical_request(request))
    assert signer.signature(sts, request) == signed.signature
    request.headers.replace_header("x-amz-security-token", "other")
    sts = signer.string_to_sign(request, signer.canonical_request(request))
    assert signer.signature(sts, request) != signed.signature


def signed_header_names(signed: signing.SignedRequest) -> list[str]:
    authorization = dict(signed.headers)["authorization"]
    return authorization.split("SignedHeaders=")[1].split(",")[0].split(";")


def test_target_variant_is_sent_and_signed() -> None:
    request = InvokeRequest(capture_request().endpoint, "flux-ep", "a=b", target_variant="v1")
    signed = sign_request(request, CREDS, REGION, timestamp=CAPTURE_TIME)
    assert dict(signed.headers)["x-amzn-sagemaker-target-variant"] == "v1"
    assert signed_header_names(signed) == [
        "content-type",
        "host",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amzn-sagemaker-model-invocation-path",
        "x-amzn-sagemaker-model-query-string",
        "x-amzn-sagemaker-target-variant",
    ]


@pytest.mark.parametrize(
    ("creds", "match"),
    [
        (ReadOnlyCredentials("AKID\r\nx: y", SECRET, None), "access_key"),
        (ReadOnlyCredentials("", SECRET, None), "access_key"),
        (ReadOnlyCredentials(ACCESS_KEY, "", None), "secret_key"),
        (ReadOnlyCredentials(ACCESS_KEY, SECRET, "tok\nx-evil: 1"), "token"),
        (ReadOnlyCredentials(ACCESS_KEY, SECRET, "tok\x00"), "token"),
    ],
)
def test_credentials_that_would_inject_headers_are_rejected(
    creds: ReadOnlyCredentials, match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        sign_request(capture_request(), creds, REGION, timestamp=CAPTURE_TIME)


def test_bad_region_is_rejected() -> None:
    with pytest.raises(ValidationError, match="region"):
        sign_request(capture_request(), CREDS, "us-east-1\n", timestamp=CAPTURE_TIME)


# -- the event chain ---------------------------------------------------------------------------


def test_event_signer_rebuilds_the_capture_body_byte_for_byte() -> None:
    envelopes = capture_envelopes()
    assert len(envelopes) == 27
    signer = EventSigner(
        credentials=CREDS,
        region=REGION,
        seed_signature=CAPTURE_SIGNATURE,
        clock=replay_clock(envelopes),
    )
    rebuilt = []
    for envelope in envelopes[:-1]:
        # Each inner message re-encodes from its parts, so sign() gets what the SDK signed.
        inner = EventStreamDecoder().receive_data(envelope.payload)[0]
        assert encode_message(inner.headers, inner.payload) == envelope.payload
        rebuilt.append(signer.sign(envelope.payload))
    assert not signer.finished
    rebuilt.append(signer.sign_empty())
    assert signer.finished
    assert b"".join(rebuilt) == BODY
    assert rebuilt[-2] == bytes.fromhex((CAPTURE / "close-stream-frame.hex").read_text().strip())
    assert rebuilt[-1] == bytes.fromhex((CAPTURE / "final-empty-frame.hex").read_text().strip())


def test_signing_after_the_final_envelope_raises() -> None:
    signer = EventSigner(credentials=CREDS, region=REGION, seed_signature=CAPTURE_SIGNATURE)
    signer.sign(b"audio")
    signer.sign_empty()
    with pytest.raises(LocalProtocolError, match="final"):
        signer.sign(b"more")
    with pytest.raises(LocalProtocolError, match="final"):
        signer.sign_empty()


def test_sign_refuses_empty_and_oversized_payloads() -> None:
    signer = EventSigner(credentials=CREDS, region=REGION, seed_signature=CAPTURE_SIGNATURE)
    with pytest.raises(LocalProtocolError, match="sign_empty"):
        signer.sign(b"")
    with pytest.raises(LocalProtocolError, match="at most"):
        signer.sign(bytes(16 * 1024 * 1024 + 1))
    assert not signer.finished


def test_seed_signature_must_be_hex() -> None:
    with pytest.raises(ValidationError, match="seed_signature"):
        EventSigner(credentials=CREDS, region=REGION, seed_signature="Signature=abc")


def oracle_signature(secret: str, region: str, prior: str, date_ms: int, payload: bytes) -> str:
    """Section 4's string to sign, signed by botocore's own key derivation."""
    amz_date = datetime.fromtimestamp(date_ms // 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
    request = AWSRequest(method="POST", url="https://x")
    request.context["timestamp"] = amz_date
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            amz_date,
            f"{amz_date[:8]}/{region}/sagemaker/aws4_request",
            prior,
            hashlib.sha256(b"\x05:date\x08" + date_ms.to_bytes(8, "big")).hexdigest(),
            hashlib.sha256(payload).hexdigest(),
        ]
    )
    creds = ReadOnlyCredentials("AKID", secret, None)
    return str(SigV4Auth(creds, "sagemaker", region).signature(string_to_sign, request))


@settings(max_examples=50, deadline=None)
@given(
    start_ms=st.integers(min_value=0, max_value=4_102_444_800_000),
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=90_000_000), st.binary(min_size=1, max_size=64)
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_chain_matches_the_botocore_oracle(start_ms: int, steps: list[tuple[int, bytes]]) -> None:
    """Across seconds and days (a new signing key), each envelope decodes and checks out."""
    times, now = [], start_ms
    for delta, _ in steps:
        now += delta
        times.append(now / 1000)
    clock = iter(times)
    signer = EventSigner(
        credentials=CREDS,
        region="eu-west-1",
        seed_signature=CAPTURE_SIGNATURE,
        clock=lambda: next(clock),
    )
    prior = CAPTURE_SIGNATURE
    for (_, payload), when in zip(steps, times, strict=True):
        envelope = EventStreamDecoder().receive_data(signer.sign(payload))[0]
        assert envelope.payload == payload
        assert envelope.headers[":date"] == round(when * 1000)
        expected = oracle_signature(SECRET, "eu-west-1", prior, round(when * 1000), payload)
        assert envelope.headers[":chunk-signature"] == bytes.fromhex(expected)
        prior = expected


def test_signing_key_is_botocores_and_derived_once_per_day(monkeypatch: pytest.MonkeyPatch) -> None:
    request = AWSRequest(method="POST", url="https://x")
    request.context["timestamp"] = "20261124T200327Z"
    key = signing_key(SECRET, "20261124", REGION, "sagemaker")
    botocore_sig = SigV4Auth(CREDS, "sagemaker", REGION).signature("text", request)
    assert hmac.new(key, b"text", "sha256").hexdigest() == botocore_sig

    calls: list[str] = []

    def counting(secret: str, date: str, region: str, service: str = "sagemaker") -> bytes:
        calls.append(date)
        return signing_key(secret, date, region, service)

    monkeypatch.setattr(signing, "signing_key", counting)
    day = 1_795_564_800.0  # 2026-11-25T00:00:00Z
    clock = iter([day - 2, day - 1.5, day - 0.001, day, day + 3, day + 86_399])
    signer = EventSigner(
        credentials=CREDS,
        region=REGION,
        seed_signature=CAPTURE_SIGNATURE,
        clock=lambda: next(clock),
    )
    for _ in range(6):
        signer.sign(b"x")
    assert calls == ["20261124", "20261125"]


def test_date_outside_the_supported_range_is_rejected() -> None:
    chain = SignatureChain(SECRET, REGION, CAPTURE_SIGNATURE)
    with pytest.raises(ValidationError, match="outside"):
        chain.next_signature(-1, b"")
    with pytest.raises(ValidationError, match="outside"):
        chain.next_signature(2**63 - 1, b"")
    assert encode_date_header(1) == b"\x05:date\x08" + (1).to_bytes(8, "big")


def test_reprs_never_show_secrets() -> None:
    creds = ReadOnlyCredentials(ACCESS_KEY, SECRET, TOKEN)
    signed = sign_request(capture_request(), creds, REGION, timestamp=CAPTURE_TIME)
    signer = EventSigner(credentials=creds, region=REGION, seed_signature=signed.signature)
    chunk = EventStreamDecoder().receive_data(signer.sign(b"x"))[0].headers[":chunk-signature"]
    chain = SignatureChain(SECRET, REGION, signed.signature)
    chain.next_signature(1_795_550_607_000, b"x")
    key = signing_key(SECRET, "20261124", REGION)
    for obj in (signed, signer, chain):
        for text in (repr(obj), str(obj)):
            assert SECRET not in text
            assert TOKEN not in text
            assert signed.signature not in text
            assert chunk.hex() not in text  # type: ignore[union-attr]
            assert key.hex() not in text
            assert repr(key) not in text
    assert "127.0.0.1:43899" in repr(signed)  # the rest stays visible
    assert "<redacted>" in repr(signed)


@given(key=st.binary(max_size=200), message=st.binary(max_size=600))
def test_hmac_with_hashed_key_blocks_equals_the_standard_library(
    key: bytes, message: bytes
) -> None:
    """The chain's HMAC hashes the key blocks once; it must stay HMAC-SHA256 for any key."""
    keyed = signing._HmacSha256.keyed(key)
    assert keyed.digest(message) == hmac.digest(key, message, "sha256")
    assert keyed.digest(message) == keyed.digest(message)  # the stored states are not consumed
