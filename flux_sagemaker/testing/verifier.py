"""Sans-I/O check of the opening request the mock endpoint makes: SigV4, path and headers.

:class:`RequestVerifier` checks the opening request the way an AWS front end does: it parses the
``authorization`` header, rebuilds the canonical request from the headers the client says it
signed, lets botocore compute the signature with the client's own ``x-amz-date``, and compares.
Failures raise :class:`VerificationFailure`, which carries the status and ``x-amzn-errortype``
SageMaker would answer with. :meth:`RequestVerifier.event_verifier` then gives the
:class:`~.event_verifier.EventVerifier` that checks the request body; this module re-exports
that module's names too.

Error types chosen where AWS's exact answer is not documented: constraint violations of the
modelled fields are ``ValidationError``; a wrong content type or payload hash is
``InputValidationError``; a session token that does not match the one on record is
``ExpiredTokenException`` (so a test can "expire" a token by rotating it); a request dated more
than ``max_skew`` away is ``InvalidSignatureException: Signature expired``, as AWS answers.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final
from urllib.parse import unquote

import attrs
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from flux_sagemaker.core.request import (
    CONTENT_TYPE,
    HEADER_INVOCATION_PATH,
    HEADER_QUERY_STRING,
    HEADER_TARGET_VARIANT,
    STREAMING_PAYLOAD,
    validate_endpoint_name,
    validate_invocation_path,
    validate_query_string,
    validate_region,
    validate_target_variant,
)
from flux_sagemaker.core.signing import ALGORITHM, SERVICE
from flux_sagemaker.errors import ValidationError
from flux_sagemaker.testing.event_verifier import (
    EventVerifier,
    InputEnded,
    InputEvent,
    VerifiedEvent,
)
from flux_sagemaker.testing.rejections import EventSignatureError, VerificationFailure

__all__ = [
    "EventSignatureError",
    "EventVerifier",
    "InputEnded",
    "InputEvent",
    "RequestVerifier",
    "VerificationFailure",
    "VerifiedEvent",
    "VerifiedRequest",
]

_PATH_RE = re.compile(r"/endpoints/([^/?]+)/invocations-bidirectional-stream")
_AUTHORITY_RE = re.compile(r"[A-Za-z0-9.\-_:\[\]]+")
_PRINTABLE_PATH_RE = re.compile(r"/[\x21-\x7e]*")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE_RE = re.compile(r"\d{8}T\d{6}Z")
# Headers whose value decides what the request does: an unsigned one could be swapped in transit.
_MUST_SIGN: Final = ("host", "x-amz-date", "x-amz-content-sha256", "content-type")
_MUST_SIGN_IF_PRESENT: Final = (
    "x-amz-security-token",
    HEADER_INVOCATION_PATH,
    HEADER_QUERY_STRING,
    HEADER_TARGET_VARIANT,
)


def _denied(error_type: str, message: str) -> VerificationFailure:
    return VerificationFailure(403, error_type, message)


def _invalid(message: str, error_type: str = "ValidationError") -> VerificationFailure:
    return VerificationFailure(400, error_type, message)


@attrs.frozen
class VerifiedRequest:
    """What a request that passed :meth:`RequestVerifier.verify` asked for."""

    endpoint_name: str
    """The endpoint name from the path, percent-decoded."""
    query_string: str | None
    """The model query string header, or ``None`` if absent."""
    invocation_path: str | None
    """The model invocation path header, or ``None`` if absent."""
    target_variant: str | None
    """The target variant header, or ``None`` if absent."""
    region: str
    """The region of the credential scope."""
    access_key: str
    """The access key that signed the request."""
    seed_signature: str = attrs.field(repr=False)
    """The request's hex signature; the body's event chain starts from it."""
    amz_date: str
    """The ``x-amz-date`` value, ``YYYYMMDDTHHMMSSZ``."""


def _header_map(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in headers:
        found.setdefault(name.lower(), []).append(value)
    return found


@attrs.define(eq=False)
class RequestVerifier:
    """Checks opening requests against known credentials.

    Args:
        credentials: Access key -> ``(secret key, session token or None)``.
        region: The only region accepted in the credential scope, or ``None`` for any.
        clock: Seconds since the epoch, for the ``x-amz-date`` skew check.
        max_skew: Largest accepted distance between ``x-amz-date`` and ``clock()``, in seconds.
    """

    credentials: Mapping[str, tuple[str, str | None]] = attrs.field(repr=False)
    region: str | None = None
    clock: Callable[[], float] = attrs.field(default=time.time, repr=False)
    max_skew: float = 300

    def verify(self, method: str, path: str, headers: Sequence[tuple[str, str]]) -> VerifiedRequest:
        """Verify one request; ``headers`` may include the pseudo-headers (``:authority``).

        Raises:
            VerificationFailure: With the status and error type SageMaker would answer with.
        """
        found = _header_map(headers)
        for name, values in found.items():
            if len(values) > 1 and not name.startswith(":"):
                raise _invalid(f"header {name!r} appears {len(values)} times")
        one = {name: values[0] for name, values in found.items()}
        authority = one.get(":authority", one.get("host"))
        if authority is None or _AUTHORITY_RE.fullmatch(authority) is None:
            raise _invalid(f"missing or malformed :authority {authority!r}")
        one["host"] = authority
        if method != "POST":
            raise _invalid(f"method must be POST, got {method!r}")
        if _PRINTABLE_PATH_RE.fullmatch(path) is None:
            raise _invalid(f"malformed path {path!r}")
        bare_path, _, query = path.partition("?")
        if query:
            raise _invalid(f"unexpected query string {query!r} in the path")

        access_key, signed_names, signature, region, amz_date = self._parse_authorization(one)
        self._check_signature(one, bare_path, signed_names, signature, region, amz_date, access_key)
        self._check_token(self.credentials[access_key][1], one.get("x-amz-security-token"))
        self._check_skew(amz_date)
        return self._validate_fields(one, bare_path, region, access_key, signature, amz_date)

    def event_verifier(self, verified: VerifiedRequest) -> EventVerifier:
        """An :class:`EventVerifier` for the body of the ``verified`` request."""
        secret, _token = self.credentials[verified.access_key]
        return EventVerifier(
            secret_key=secret, region=verified.region, seed_signature=verified.seed_signature
        )

    def _parse_authorization(self, one: Mapping[str, str]) -> tuple[str, str, str, str, str]:
        authorization = one.get("authorization")
        if authorization is None:
            raise _denied("MissingAuthenticationToken", "Missing Authentication Token")
        algorithm, _, rest = authorization.partition(" ")
        if algorithm != ALGORITHM:
            raise _denied("IncompleteSignature", f"Unsupported algorithm {algorithm!r}")
        fields: dict[str, str] = {}
        for part in rest.split(","):
            key, eq, value = part.strip().partition("=")
            if not eq or key in fields:
                raise _denied("IncompleteSignature", f"Malformed authorization element {part!r}")
            fields[key] = value
        missing = [k for k in ("Credential", "SignedHeaders", "Signature") if k not in fields]
        if missing:
            raise _denied(
                "IncompleteSignature", f"Authorization header requires {', '.join(missing)}"
            )
        scope = fields["Credential"].split("/")
        if len(scope) != 5:
            raise _denied("IncompleteSignature", f"Malformed credential {fields['Credential']!r}")
        access_key, date, region, service, terminator = scope
        if _SIGNATURE_RE.fullmatch(fields["Signature"]) is None:
            raise _denied("IncompleteSignature", "Signature must be 64 lower-case hex digits")
        amz_date = one.get("x-amz-date")
        if amz_date is None or _AMZ_DATE_RE.fullmatch(amz_date) is None:
            raise _denied(
                "IncompleteSignature",
                "Authorization header requires an 'X-Amz-Date' in ISO-8601 basic format",
            )
        if date != amz_date[:8]:
            raise _denied(
                "InvalidSignatureException",
                f"Date in Credential scope {date!r} does not match X-Amz-Date {amz_date!r}",
            )
        try:
            validate_region(region)
        except ValidationError:
            raise _denied(
                "InvalidSignatureException", "Credential should be scoped to a valid region."
            ) from None
        if self.region is not None and region != self.region:
            raise _denied(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not {region!r}.",
            )
        if service != SERVICE:
            raise _denied(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: {SERVICE!r}.",
            )
        if terminator != "aws4_request":
            raise _denied(
                "InvalidSignatureException",
                "Credential should be scoped with a valid terminator: 'aws4_request'",
            )
        if access_key not in self.credentials:
            raise _denied(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        return access_key, fields["SignedHeaders"], fields["Signature"], region, amz_date

    def _check_signature(
        self,
        one: Mapping[str, str],
        bare_path: str,
        signed_names: str,
        signature: str,
        region: str,
        amz_date: str,
        access_key: str,
    ) -> None:
        names = signed_names.split(";")
        for name in (*_MUST_SIGN, *(n for n in _MUST_SIGN_IF_PRESENT if n in one)):
            if name not in names:
                raise _denied("InvalidSignatureException", f"Header {name!r} must be signed")
        for name in names:
            if name not in one:
                raise _denied("IncompleteSignature", f"Signed header {name!r} is missing")
        secret, token = self.credentials[access_key]
        request = AWSRequest(
            method="POST",
            url=f"https://{one['host']}{bare_path}",
            headers={name: one[name] for name in names},
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(ReadOnlyCredentials(access_key, secret, token), SERVICE, region)
        if signer.signed_headers(signer.headers_to_sign(request)) != signed_names:
            # Not sorted, not lower case, repeated, or naming a header botocore never signs.
            raise _denied("IncompleteSignature", f"SignedHeaders {signed_names!r} is not canonical")
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, signature):
            raise _denied(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )

    def _check_token(self, expected: str | None, sent: str | None) -> None:
        if expected is None and sent is None:
            return
        if expected is None or sent is None:
            raise _denied(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        if not hmac.compare_digest(expected.encode(), sent.encode()):
            raise _denied(
                "ExpiredTokenException", "The security token included in the request is expired"
            )

    def _check_skew(self, amz_date: str) -> None:
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _denied("IncompleteSignature", f"Invalid X-Amz-Date {amz_date!r}") from None
        now = self.clock()
        if abs(now - signed_at.timestamp()) > self.max_skew:
            now_text = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
            raise _denied(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is too far from now ({now_text}, "
                f"{self.max_skew:g} s allowed)",
            )

    def _validate_fields(
        self,
        one: Mapping[str, str],
        bare_path: str,
        region: str,
        access_key: str,
        signature: str,
        amz_date: str,
    ) -> VerifiedRequest:
        if one.get("content-type") != CONTENT_TYPE:
            raise _invalid(
                f"content-type must be {CONTENT_TYPE!r}, got {one.get('content-type')!r}",
                "InputValidationError",
            )
        if one.get("x-amz-content-sha256") != STREAMING_PAYLOAD:
            raise _invalid(
                f"x-amz-content-sha256 must be {STREAMING_PAYLOAD!r}", "InputValidationError"
            )
        match = _PATH_RE.fullmatch(bare_path)
        if match is None:
            raise _invalid(
                f"path {bare_path!r} is not /endpoints/{{name}}/invocations-bidirectional-stream"
            )
        query = one.get(HEADER_QUERY_STRING)
        invocation_path = one.get(HEADER_INVOCATION_PATH)
        variant = one.get(HEADER_TARGET_VARIANT)
        try:
            name = validate_endpoint_name(unquote(match.group(1)), "endpointName")
            if query is not None:
                validate_query_string(query, "modelQueryString")
            if invocation_path is not None:
                validate_invocation_path(invocation_path, "modelInvocationPath")
            if variant is not None:
                validate_target_variant(variant, "targetVariant")
        except ValidationError as exc:
            raise _invalid(f"1 validation error detected: {exc.message}") from None
        return VerifiedRequest(
            endpoint_name=name,
            query_string=query,
            invocation_path=invocation_path,
            target_variant=variant,
            region=region,
            access_key=access_key,
            seed_signature=signature,
            amz_date=amz_date,
        )
