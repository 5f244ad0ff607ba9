"""The ``InvokeEndpointWithBidirectionalStream`` request: endpoint resolution and validated fields.

Sans-I/O: nothing here resolves DNS or opens sockets. :func:`resolve_endpoint` applies the
endpoint rules of the SageMaker Runtime HTTP/2 API model (wire spec, section 1)::

    https://runtime.sagemaker.{region}.{dnsSuffix}:8443            default
    https://runtime-fips.sagemaker.{region}.{dnsSuffix}:8443       FIPS
    ... .{dualStackDnsSuffix}:8443                                 dual-stack (with or without FIPS)

Every value that ends up in a header is checked against the API model's pattern with
``re.fullmatch`` (never ``$``, which also matches before a trailing newline), so no CR, LF or NUL
can reach a header.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import quote, urlsplit

import attrs

from flux_sagemaker.errors import ValidationError

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_INVOCATION_PATH",
    "HEADER_INVOCATION_PATH",
    "HEADER_QUERY_STRING",
    "HEADER_TARGET_VARIANT",
    "SAGEMAKER_PORT",
    "STREAMING_PAYLOAD",
    "Endpoint",
    "InvokeRequest",
    "host_port",
    "parse_endpoint_url",
    "resolve_endpoint",
    "validate_endpoint_name",
    "validate_invocation_path",
    "validate_query_string",
    "validate_region",
    "validate_target_variant",
]

CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"
#: The payload hash of an event-stream request: each event is signed on its own (section 4).
STREAMING_PAYLOAD: Final = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
HEADER_INVOCATION_PATH: Final = "x-amzn-sagemaker-model-invocation-path"
HEADER_QUERY_STRING: Final = "x-amzn-sagemaker-model-query-string"
HEADER_TARGET_VARIANT: Final = "x-amzn-sagemaker-target-variant"
DEFAULT_INVOCATION_PATH: Final = "v2/listen"
#: The bidirectional-stream service listens on 8443; 443 does not reach it.
SAGEMAKER_PORT: Final = 8443

# Patterns and lengths from the API model (wire spec, section 1).
_NAME_RE = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
_NAME_MAX = 63
_INVOCATION_PATH_RE = re.compile(r"[A-Za-z0-9\-._]+(?:/[A-Za-z0-9\-._]+)*")
_INVOCATION_PATH_MAX = 100
_QS_PAIR = r"[a-zA-Z0-9][A-Za-z0-9_-]*=(?:[A-Za-z0-9._~\-]|%[0-9A-Fa-f]{2})+"
_QUERY_STRING_RE = re.compile(rf"{_QS_PAIR}(?:&{_QS_PAIR})*")
_QUERY_STRING_MAX = 2048
# A region is one DNS label (botocore's own check, lower case only).
_REGION_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Host names of endpoint URLs: DNS labels (underscores tolerated, as some local setups use them).
_HOSTNAME_RE = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
)

# (partition, region pattern, DNS suffix, dual-stack DNS suffix), from botocore's partitions.json.
# A region matching none of them belongs to "aws", as in the AWS endpoint rules.
_PARTITIONS: Final = (
    ("aws-cn", re.compile(r"cn-\w+-\d+"), "amazonaws.com.cn", "api.amazonwebservices.com.cn"),
    ("aws-us-gov", re.compile(r"us-gov-\w+-\d+"), "amazonaws.com", "api.aws"),
    ("aws-iso", re.compile(r"us-iso-\w+-\d+"), "c2s.ic.gov", "api.aws.ic.gov"),
    ("aws-iso-b", re.compile(r"us-isob-\w+-\d+"), "sc2s.sgov.gov", "api.aws.scloud"),
    ("aws-iso-e", re.compile(r"eu-isoe-\w+-\d+"), "cloud.adc-e.uk", "api.cloud-aws.adc-e.uk"),
    ("aws-iso-f", re.compile(r"us-isof-\w+-\d+"), "csp.hci.ic.gov", "api.aws.hci.ic.gov"),
    ("aws-eusc", re.compile(r"eusc-de-\w+-\d+"), "amazonaws.eu", "api.amazonwebservices.eu"),
)
_AWS_SUFFIXES: Final = ("amazonaws.com", "api.aws")


def _check(field: str, value: object, pattern: re.Pattern[str], max_length: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= max_length:
        raise ValidationError(f"{field} must be 1 to {max_length} characters, got {len(value)}")
    if pattern.fullmatch(value) is None:
        raise ValidationError(f"{field} {value!r} does not match the pattern ^{pattern.pattern}$")
    return value


def validate_endpoint_name(value: object, field: str = "endpoint_name") -> str:
    """Return ``value`` if it is a valid SageMaker endpoint name, else raise ``ValidationError``."""
    return _check(field, value, _NAME_RE, _NAME_MAX)


def validate_target_variant(value: object, field: str = "target_variant") -> str:
    """Return ``value`` if it is a valid production variant name, else raise ``ValidationError``."""
    return _check(field, value, _NAME_RE, _NAME_MAX)


def validate_invocation_path(value: object, field: str = "invocation_path") -> str:
    """Return ``value`` if it is a valid model invocation path (no leading slash)."""
    return _check(field, value, _INVOCATION_PATH_RE, _INVOCATION_PATH_MAX)


def validate_query_string(value: object, field: str = "query_string") -> str:
    """Return ``value`` if it is a valid model query string (every reserved character encoded)."""
    return _check(field, value, _QUERY_STRING_RE, _QUERY_STRING_MAX)


def validate_region(value: object, field: str = "region") -> str:
    """Return ``value`` if it has the shape of an AWS region name (one lower-case DNS label)."""
    return _check(field, value, _REGION_RE, 63)


def _validate_host(host: str) -> None:
    if _HOSTNAME_RE.fullmatch(host) is not None:
        return
    try:
        # No zone ids ("fe80::1%eth0"): they would need escaping in the authority.
        ipaddress.IPv6Address(host if "%" not in host else "-")
    except ValueError:
        raise ValidationError(
            f"endpoint host {host!r} is not a valid host name or IP address"
        ) from None


def _host_validator(_instance: object, _attribute: object, value: str) -> None:
    _validate_host(value)


def _port_validator(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(f"endpoint port must be an integer from 1 to 65535, got {value!r}")


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (an authority, RFC 3986 section 3.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _scheme_validator(_instance: object, _attribute: object, value: str) -> None:
    if value not in ("https", "http"):
        raise ValidationError(f"endpoint scheme must be 'https' or 'http', got {value!r}")


@attrs.frozen
class Endpoint:
    """Where the HTTP/2 connection goes."""

    scheme: str = attrs.field(validator=_scheme_validator)
    """``"https"``, or ``"http"`` (HTTP/2 with prior knowledge, for local endpoints)."""
    host: str = attrs.field(validator=_host_validator)
    """Host name or IP address, lower case; an IPv6 address without brackets."""
    port: int = attrs.field(validator=_port_validator)
    """TCP port; 8443 for SageMaker."""

    @property
    def authority(self) -> str:
        """``host:port``, always with the port: it is the ``:authority`` and the signed ``host``."""
        return host_port(self.host, self.port)

    @property
    def url(self) -> str:
        """``scheme://host:port`` with no path."""
        return f"{self.scheme}://{self.authority}"


def parse_endpoint_url(url: str, name: str = "endpoint_url") -> Endpoint:
    """The endpoint of ``scheme://host[:port][/]`` (default ports 443 and 80).

    Raises:
        ValidationError: ``url`` is not such a URL; the message calls it ``name``.
    """
    if not isinstance(url, str) or any(c in url for c in "\r\n\t\x00 "):
        raise ValidationError(f"{name} {url!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"{name} {url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValidationError(f"{name} {url!r} must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(f"{name} must not contain user information")  # nor echo it
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValidationError(f"{name} {url!r} must not have a path, query or fragment")
    if not parts.hostname:
        raise ValidationError(f"{name} {url!r} has no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    return Endpoint(scheme=scheme, host=parts.hostname, port=port)


def resolve_endpoint(
    region: str,
    *,
    use_fips: bool = False,
    use_dualstack: bool = False,
    endpoint_url: str | None = None,
) -> Endpoint:
    """Resolve the bidirectional-stream endpoint for ``region``.

    Args:
        region: The AWS region, e.g. ``"us-east-1"``; it is also validated when ``endpoint_url``
            is given, since the request is still signed for it.
        use_fips: Use the FIPS host name ``runtime-fips.sagemaker...``.
        use_dualstack: Use the partition's dual-stack (IPv4 and IPv6) DNS suffix.
        endpoint_url: A custom ``https://host[:port]`` or ``http://host[:port]`` (default ports
            443 and 80). It may not be combined with ``use_fips`` or ``use_dualstack``.

    Raises:
        ValidationError: A malformed region or URL, or a custom URL with FIPS or dual-stack.
    """
    validate_region(region)
    if endpoint_url is not None:
        if use_fips:
            raise ValidationError(
                "Invalid Configuration: FIPS and custom endpoint are not supported"
            )
        if use_dualstack:
            raise ValidationError(
                "Invalid Configuration: Dualstack and custom endpoint are not supported"
            )
        return parse_endpoint_url(endpoint_url)
    dns_suffix, dualstack_suffix = _AWS_SUFFIXES
    for _name, pattern, suffix, dualstack in _PARTITIONS:
        if pattern.fullmatch(region):
            dns_suffix, dualstack_suffix = suffix, dualstack
            break
    prefix = "runtime-fips" if use_fips else "runtime"
    suffix = dualstack_suffix if use_dualstack else dns_suffix
    return Endpoint(
        scheme="https", host=f"{prefix}.sagemaker.{region}.{suffix}", port=SAGEMAKER_PORT
    )


def _endpoint_name_validator(_instance: object, _attribute: object, value: str) -> None:
    validate_endpoint_name(value)


def _query_string_validator(_instance: object, _attribute: object, value: str) -> None:
    validate_query_string(value)


def _invocation_path_validator(_instance: object, _attribute: object, value: str) -> None:
    validate_invocation_path(value)


def _target_variant_validator(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None:
        validate_target_variant(value)


def _endpoint_validator(_instance: object, _attribute: object, value: Endpoint) -> None:
    if not isinstance(value, Endpoint):
        raise ValidationError(f"endpoint must be an Endpoint, got {type(value).__name__}")


@attrs.frozen
class InvokeRequest:
    """One ``InvokeEndpointWithBidirectionalStream`` request, validated at construction.

    Raises:
        ValidationError: A field violates the API model's pattern or length; the message names it.
    """

    endpoint: Endpoint = attrs.field(validator=_endpoint_validator)
    """Where to send it (see :func:`resolve_endpoint`)."""
    endpoint_name: str = attrs.field(validator=_endpoint_name_validator)
    """The SageMaker endpoint's name."""
    query_string: str = attrs.field(validator=_query_string_validator)
    """The model query string (Flux settings), already percent-encoded."""
    invocation_path: str = attrs.field(
        default=DEFAULT_INVOCATION_PATH, validator=_invocation_path_validator
    )
    """The container path SageMaker opens its WebSocket to, without a leading slash."""
    target_variant: str | None = attrs.field(default=None, validator=_target_variant_validator)
    """The production variant to route to, or ``None`` for SageMaker's choice."""

    @property
    def path(self) -> str:
        """The HTTP ``:path`` (without the empty query the AWS SDK appends as a bare ``?``)."""
        name = quote(self.endpoint_name, safe="")
        return f"/endpoints/{name}/invocations-bidirectional-stream"

    def unsigned_headers(self) -> tuple[tuple[str, str], ...]:
        """The request headers before signing, lower-case names, in wire order."""
        headers = [
            ("content-type", CONTENT_TYPE),
            ("x-amz-content-sha256", STREAMING_PAYLOAD),
            (HEADER_INVOCATION_PATH, self.invocation_path),
            (HEADER_QUERY_STRING, self.query_string),
        ]
        if self.target_variant is not None:
            headers.append((HEADER_TARGET_VARIANT, self.target_variant))
        return tuple(headers)
