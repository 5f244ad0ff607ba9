"""SigV4 for the opening request, and the chained signatures of the request's events.

The opening request is signed by botocore's :class:`~botocore.auth.SigV4Auth` (wire spec,
section 2); this module only feeds it the right headers and a fixed timestamp. Each input event
is then wrapped in a signed envelope whose signature chains on the previous one (section 4)::

    AWS4-HMAC-SHA256-PAYLOAD \\n <YYYYMMDDTHHMMSSZ> \\n <date>/<region>/<service>/aws4_request \\n
    <previous hex signature> \\n hex(sha256(<:date header record>)) \\n hex(sha256(<payload>))

:class:`SignatureChain` is that chain, shared by the client's :class:`EventSigner` and the mock
endpoint's verifier. It derives the signing key once per day, formats the date and scope once
per second, and hashes a ``:date`` record once for every stream signing in that millisecond, so
one event costs a SHA-256 of its payload and one HMAC plus a few microseconds of Python.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Final

import attrs
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from flux_sagemaker.core.eventstream import MAX_PAYLOAD_LENGTH, encode_message_raw
from flux_sagemaker.core.request import InvokeRequest, validate_region
from flux_sagemaker.errors import LocalProtocolError, ValidationError

__all__ = [
    "ALGORITHM",
    "SERVICE",
    "EventSigner",
    "RedactedHeaders",
    "SignatureChain",
    "SignedRequest",
    "encode_date_header",
    "sign_request",
    "signing_key",
]

SERVICE: Final = "sagemaker"
ALGORITHM: Final = "AWS4-HMAC-SHA256"
_EVENT_ALGORITHM: Final = b"AWS4-HMAC-SHA256-PAYLOAD"
_AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"

# The envelope's two header records, as bytes: name length, name, type (8 timestamp, 6 bytes).
_DATE_RECORD_PREFIX: Final = b"\x05:date\x08"
_SIGNATURE_RECORD_PREFIX: Final = b"\x10:chunk-signature\x06\x00\x20"
_INT64: Final = struct.Struct("!q")
# time.gmtime() works up to year 9999; the :date of an envelope comes from the peer in the verifier.
_MAX_DATE_MS: Final = 253_402_300_800_000

# HMAC's key pads (RFC 2104): the key XOR 0x36 for the inner hash, XOR 0x5C for the outer.
_INNER_PAD: Final = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD: Final = bytes(x ^ 0x5C for x in range(256))
_SHA256_BLOCK: Final = 64

# Access keys go into the authorization header and session tokens are a header of their own:
# checking them keeps CR, LF and NUL (header injection) out whatever the credential source.
_ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9_\-.]{1,128}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")
_REDACTED_HEADERS: Final = frozenset({"authorization", "x-amz-security-token"})


def signing_key(secret_key: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """Derive the SigV4 signing key: HMAC chain ``"AWS4"+secret`` → date → region → service.

    Args:
        secret_key: The secret access key.
        date: ``YYYYMMDD``.
        region: The region of the credential scope.
        service: The service of the credential scope.
    """
    key = hmac.digest(f"AWS4{secret_key}".encode(), date.encode(), "sha256")
    key = hmac.digest(key, region.encode(), "sha256")
    key = hmac.digest(key, service.encode(), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


@attrs.frozen
class _HmacSha256:
    """HMAC-SHA256 under one key, with the key's two blocks hashed once.

    ``hmac.digest`` sets the key up again on every call: 1.7 us for a 230-byte string to sign,
    against 0.7 us for copying these states and hashing only the message.
    """

    _inner: hashlib._Hash
    _outer: hashlib._Hash

    @classmethod
    def keyed(cls, key: bytes) -> _HmacSha256:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        return cls(
            hashlib.sha256(key.translate(_INNER_PAD)), hashlib.sha256(key.translate(_OUTER_PAD))
        )

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def encode_date_header(date_ms: int) -> bytes:
    """The envelope's ``:date`` header record (type 8): the bytes whose SHA-256 is signed."""
    return _DATE_RECORD_PREFIX + _INT64.pack(date_ms)


@functools.lru_cache(maxsize=64)
def _date_record_and_hash(date_ms: int) -> tuple[bytes, bytes]:
    """The ``:date`` record and its hex SHA-256: streams signing in the same ms share them."""
    record = encode_date_header(date_ms)
    return record, hashlib.sha256(record).hexdigest().encode()


def _redact(headers: tuple[tuple[str, str], ...]) -> str:
    shown = tuple((k, "<redacted>" if k in _REDACTED_HEADERS else v) for k, v in headers)
    return repr(shown)


class RedactedHeaders:
    """Request headers as ``(name, value)`` pairs whose repr hides the authorization and the
    token: what the connection pool and the connection get to send.

    Error trackers record the locals of every frame of a traceback, those of a failed connect
    included. They show objects by their repr but walk sequences item by item: so this is
    only iterable (and sized), not a sequence.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields = tuple(fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, field: object) -> bool:
        return field in self._fields

    def __repr__(self) -> str:
        return f"RedactedHeaders({_redact(self._fields)})"


@attrs.frozen
class SignedRequest:
    """A signed request, ready for h2. Its repr hides the authorization and the token."""

    method: str
    """Always ``"POST"``."""
    scheme: str
    """``:scheme``."""
    authority: str
    """``:authority``, which is also the signed ``host`` (``host:port``)."""
    path: str
    """``:path``."""
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=_redact)
    """Regular headers, lower-case names, to send after the pseudo-headers."""
    signature: str = attrs.field(repr=False)
    """The hex ``Signature=`` value; it seeds the event chain (:class:`EventSigner`)."""

    def h2_headers(self) -> list[tuple[str, str]]:
        """The pseudo-headers followed by :attr:`headers`, as h2's ``send_headers`` wants them."""
        return [
            (":method", self.method),
            (":scheme", self.scheme),
            (":authority", self.authority),
            (":path", self.path),
            *self.headers,
        ]


def sign_request(
    request: InvokeRequest,
    credentials: ReadOnlyCredentials,
    region: str,
    *,
    timestamp: datetime | None = None,
) -> SignedRequest:
    """Sign ``request`` with SigV4 (service ``sagemaker``) through botocore.

    Pure apart from one clock read: when ``timestamp`` is ``None`` it is taken as "now" here,
    the only clock read in ``core/``; pass a time to sign deterministically.

    Args:
        request: The validated request.
        credentials: Frozen credentials (``credentials.get_frozen_credentials()``), so that a
            refresh cannot change them halfway through.
        region: The signing region.
        timestamp: The signing time, timezone-aware; sub-second precision is dropped.

    Raises:
        ValidationError: A naive ``timestamp``, a bad region, or credentials whose access key or
            token could not travel safely in a header.
    """
    validate_region(region)
    if timestamp is None:
        timestamp = datetime.now(UTC)
    elif timestamp.tzinfo is None:
        raise ValidationError("timestamp must be timezone-aware (UTC)")
    amz_date = timestamp.astimezone(UTC).strftime(_AMZ_DATE_FORMAT)
    if _ACCESS_KEY_RE.fullmatch(credentials.access_key or "") is None:
        raise ValidationError("credentials.access_key is empty or has characters not allowed")
    if not isinstance(credentials.secret_key, str) or not credentials.secret_key:
        raise ValidationError("credentials.secret_key is empty")
    token = credentials.token
    if token and _TOKEN_RE.fullmatch(token) is None:
        raise ValidationError("credentials.token has whitespace or control characters")

    headers: list[tuple[str, str]] = list(request.unsigned_headers())
    headers.insert(2, ("x-amz-date", amz_date))
    if token:
        headers.insert(3, ("x-amz-security-token", token))
    authority = request.endpoint.authority
    aws_request = AWSRequest(
        method="POST",
        url=f"{request.endpoint.scheme}://{authority}{request.path}",
        headers={"host": authority, **dict(headers)},
    )
    aws_request.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, SERVICE, region)
    canonical_request = signer.canonical_request(aws_request)
    signature: str = signer.signature(
        signer.string_to_sign(aws_request, canonical_request), aws_request
    )
    signed_headers = signer.signed_headers(signer.headers_to_sign(aws_request))
    headers.append(
        (
            "authorization",
            f"{ALGORITHM} Credential={signer.scope(aws_request)}, "
            f"SignedHeaders={signed_headers}, Signature={signature}",
        )
    )
    return SignedRequest(
        method="POST",
        scheme=request.endpoint.scheme,
        authority=authority,
        path=request.path,
        headers=tuple(headers),
        signature=signature,
    )


@attrs.define(eq=False)
class SignatureChain:
    """The chained event signatures of one request body.

    Each :meth:`next_signature` signs one envelope payload and makes that signature the one the
    next envelope chains on. Used by :class:`EventSigner` to sign and by the mock endpoint to
    verify (it compares what the peer sent with what the chain computes).
    """

    secret_key: str = attrs.field(repr=False)
    """The secret access key."""
    region: str
    """The region of the credential scope."""
    seed_signature: str = attrs.field(repr=False)
    """The hex signature of the opening request."""
    service: str = SERVICE
    """The service of the credential scope."""
    _prior: bytes = attrs.field(init=False, repr=False)
    _second: int = attrs.field(init=False, default=-1, repr=False)
    _prefix: bytes = attrs.field(init=False, default=b"", repr=False)
    _day: str = attrs.field(init=False, default="", repr=False)
    _hmac: _HmacSha256 | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if re.fullmatch(r"[0-9a-f]{64}", self.seed_signature) is None:
            raise ValidationError("seed_signature must be 64 lower-case hex digits")
        self._prior = self.seed_signature.encode("ascii")

    def _enter_second(self, second: int) -> None:
        amz_date = time.strftime(_AMZ_DATE_FORMAT, time.gmtime(second))
        day = amz_date[:8]
        if day != self._day:
            key = signing_key(self.secret_key, day, self.region, self.service)
            self._hmac = _HmacSha256.keyed(key)
            self._day = day
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        self._prefix = b"\n".join((_EVENT_ALGORITHM, amz_date.encode(), scope.encode(), b""))
        self._second = second

    def next_signature(self, date_ms: int, payload: bytes) -> tuple[bytes, bytes]:
        """Sign one envelope and advance the chain.

        Args:
            date_ms: The envelope's ``:date`` in milliseconds since the epoch; the string to
                sign uses it truncated to seconds.
            payload: The envelope's payload (the encoded inner message, or ``b""``).

        Returns:
            ``(date_header_record, signature)``: the encoded ``:date`` record and the 32-byte
            signature.

        Raises:
            ValidationError: ``date_ms`` is before 1970 or after 9999.
        """
        if not 0 <= date_ms < _MAX_DATE_MS:
            raise ValidationError(f":date {date_ms} ms is outside 1970-9999")
        second = date_ms // 1000
        if second != self._second:
            self._enter_second(second)
        date_record, date_hash = _date_record_and_hash(date_ms)
        string_to_sign = b"".join(
            (
                self._prefix,
                self._prior,
                b"\n",
                date_hash,
                b"\n",
                hashlib.sha256(payload).hexdigest().encode(),
            )
        )
        assert self._hmac is not None  # set with the day, by _enter_second
        signature = self._hmac.digest(string_to_sign)
        self._prior = signature.hex().encode()
        return date_record, signature


@attrs.define(eq=False)
class EventSigner:
    """Wraps each event payload in a signed envelope; one signer per request body.

    ``sign`` reads ``clock`` (seconds since the epoch, ``time.time`` by default) for each
    envelope's ``:date``; inject a clock for byte-exact tests. After :meth:`sign_empty` (the
    final empty envelope) the signer refuses to sign.
    """

    credentials: ReadOnlyCredentials = attrs.field(repr=False, kw_only=True)
    """Frozen credentials; only the secret key is used here."""
    region: str = attrs.field(kw_only=True)
    """The signing region (the same as the request's)."""
    seed_signature: str = attrs.field(repr=False, kw_only=True)
    """The request's hex ``Signature=`` (:attr:`SignedRequest.signature`)."""
    clock: Callable[[], float] = attrs.field(default=time.time, repr=False, kw_only=True)
    """Returns the current time in seconds since the epoch."""
    service: str = attrs.field(default=SERVICE, kw_only=True)
    """The service of the credential scope."""
    _chain: SignatureChain = attrs.field(init=False, repr=False)
    _finished: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._chain = SignatureChain(
            self.credentials.secret_key, self.region, self.seed_signature, self.service
        )

    @property
    def finished(self) -> bool:
        """Whether the final empty envelope has been signed."""
        return self._finished

    def sign(self, payload: bytes) -> bytes:
        """Return the whole signed envelope (``:date``, ``:chunk-signature``, ``payload``).

        Raises:
            LocalProtocolError: After :meth:`sign_empty`, for an empty payload (that would end
                the input), or for a payload over the event-stream limit.
        """
        if not payload:
            raise LocalProtocolError("an empty payload ends the input: use sign_empty()")
        return self._sign(payload)

    def sign_empty(self) -> bytes:
        """Return the final empty envelope; the signer refuses to sign after it.

        Raises:
            LocalProtocolError: If the final envelope was already signed.
        """
        envelope = self._sign(b"")
        self._finished = True
        return envelope

    def _sign(self, payload: bytes) -> bytes:
        if self._finished:
            raise LocalProtocolError("the final empty envelope was already signed")
        if len(payload) > MAX_PAYLOAD_LENGTH:
            raise LocalProtocolError(
                f"event payload is {len(payload)} bytes; at most {MAX_PAYLOAD_LENGTH} allowed"
            )
        # round(), not int(): a clock returning ms / 1000 must give back the same ms.
        date_record, signature = self._chain.next_signature(round(self.clock() * 1000), payload)
        return encode_message_raw(date_record + _SIGNATURE_RECORD_PREFIX + signature, payload)
