"""Endpoint resolution and request validation (wire spec, section 1)."""

from __future__ import annotations

from urllib.parse import quote

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.core.request import (
    Endpoint,
    InvokeRequest,
    resolve_endpoint,
    validate_query_string,
)
from flux_sagemaker.errors import ValidationError

QS = "model=flux-general-en&encoding=linear16&sample_rate=16000"
LOCAL = Endpoint(scheme="http", host="127.0.0.1", port=8080)


@pytest.mark.parametrize(
    ("region", "fips", "dualstack", "url"),
    [
        ("us-east-1", False, False, "https://runtime.sagemaker.us-east-1.amazonaws.com:8443"),
        ("us-east-1", True, False, "https://runtime-fips.sagemaker.us-east-1.amazonaws.com:8443"),
        ("eu-west-2", False, True, "https://runtime.sagemaker.eu-west-2.api.aws:8443"),
        ("us-west-2", True, True, "https://runtime-fips.sagemaker.us-west-2.api.aws:8443"),
        ("cn-north-1", False, False, "https://runtime.sagemaker.cn-north-1.amazonaws.com.cn:8443"),
        (
            "cn-northwest-1",
            False,
            True,
            "https://runtime.sagemaker.cn-northwest-1.api.amazonwebservices.com.cn:8443",
        ),
        (
            "us-gov-west-1",
            True,
            False,
            "https://runtime-fips.sagemaker.us-gov-west-1.amazonaws.com:8443",
        ),
        ("us-iso-east-1", False, False, "https://runtime.sagemaker.us-iso-east-1.c2s.ic.gov:8443"),
        (
            "us-isob-east-1",
            False,
            False,
            "https://runtime.sagemaker.us-isob-east-1.sc2s.sgov.gov:8443",
        ),
        (
            "eusc-de-east-1",
            False,
            False,
            "https://runtime.sagemaker.eusc-de-east-1.amazonaws.eu:8443",
        ),
        # A region no partition claims belongs to "aws", as in the AWS endpoint rules.
        ("xx-new-9", False, False, "https://runtime.sagemaker.xx-new-9.amazonaws.com:8443"),
    ],
)
def test_resolve_endpoint_table(region: str, fips: bool, dualstack: bool, url: str) -> None:
    endpoint = resolve_endpoint(region, use_fips=fips, use_dualstack=dualstack)
    assert endpoint.url == url
    assert endpoint.scheme == "https"
    assert endpoint.port == 8443
    assert endpoint.authority == url.removeprefix("https://")


@pytest.mark.parametrize(
    ("endpoint_url", "scheme", "host", "port", "authority"),
    [
        ("https://example.com", "https", "example.com", 443, "example.com:443"),
        ("https://Example.COM:8443/", "https", "example.com", 8443, "example.com:8443"),
        ("http://127.0.0.1:43899", "http", "127.0.0.1", 43899, "127.0.0.1:43899"),
        ("http://localhost", "http", "localhost", 80, "localhost:80"),
        ("HTTPS://[::1]:9000", "https", "::1", 9000, "[::1]:9000"),
    ],
)
def test_resolve_endpoint_url_override(
    endpoint_url: str, scheme: str, host: str, port: int, authority: str
) -> None:
    endpoint = resolve_endpoint("us-east-1", endpoint_url=endpoint_url)
    assert (endpoint.scheme, endpoint.host, endpoint.port) == (scheme, host, port)
    assert endpoint.authority == authority
    assert endpoint.url == f"{scheme}://{authority}"


@pytest.mark.parametrize(
    "endpoint_url",
    [
        "ftp://example.com",
        "example.com:8443",
        "https://",
        "https://example.com/path",
        "https://example.com/?",
        "https://example.com?a=b",
        "https://example.com#frag",
        "https://user:pw@example.com",
        "https://user@example.com",
        "https://example.com:0",
        "https://example.com:65536",
        "https://example.com:port",
        "https://exa mple.com",
        "https://example.com\r\nx-injected: 1",
        "https://bad!host.com",
        "https://[fe80::1%25eth0]:8443",
    ],
)
def test_resolve_endpoint_rejects_bad_urls(endpoint_url: str) -> None:
    with pytest.raises(ValidationError, match="endpoint"):
        resolve_endpoint("us-east-1", endpoint_url=endpoint_url)


@pytest.mark.parametrize(
    ("fips", "dualstack", "what"), [(True, False, "FIPS"), (False, True, "Dualstack")]
)
def test_custom_url_with_fips_or_dualstack_is_a_configuration_error(
    fips: bool, dualstack: bool, what: str
) -> None:
    with pytest.raises(ValidationError, match=what):
        resolve_endpoint(
            "us-east-1", use_fips=fips, use_dualstack=dualstack, endpoint_url="https://x.test"
        )


@pytest.mark.parametrize(
    "region", ["", "US-EAST-1", "us_east_1", "us-east-1.", "-us", "a" * 64, "us-east-1\n"]
)
def test_resolve_endpoint_rejects_bad_regions(region: str) -> None:
    with pytest.raises(ValidationError, match="region"):
        resolve_endpoint(region)


def test_endpoint_validates_direct_construction() -> None:
    with pytest.raises(ValidationError, match="scheme"):
        Endpoint(scheme="ws", host="x.test", port=1)
    with pytest.raises(ValidationError, match="port"):
        Endpoint(scheme="https", host="x.test", port=True)
    with pytest.raises(ValidationError, match="host"):
        Endpoint(scheme="https", host="x.test\r\nevil: 1", port=443)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        LOCAL.port = 1  # type: ignore[misc]


def test_invoke_request_path_and_headers() -> None:
    request = InvokeRequest(LOCAL, "flux-ep", QS, target_variant="variant-1")
    assert request.path == "/endpoints/flux-ep/invocations-bidirectional-stream"
    assert request.unsigned_headers() == (
        ("content-type", "application/vnd.amazon.eventstream"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-EVENTS"),
        ("x-amzn-sagemaker-model-invocation-path", "v2/listen"),
        ("x-amzn-sagemaker-model-query-string", QS),
        ("x-amzn-sagemaker-target-variant", "variant-1"),
    )
    plain = InvokeRequest(LOCAL, "a", "k=v")
    assert [name for name, _ in plain.unsigned_headers()][
        -1
    ] == "x-amzn-sagemaker-model-query-string"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"endpoint_name": "-lead"}, "endpoint_name"),
        ({"endpoint_name": "trail-"}, "endpoint_name"),
        ({"endpoint_name": "a" * 64}, "endpoint_name"),
        ({"endpoint_name": "with space"}, "endpoint_name"),
        ({"endpoint_name": "ep\n"}, "endpoint_name"),
        ({"endpoint_name": "ep/../x"}, "endpoint_name"),
        ({"query_string": ""}, "query_string"),
        ({"query_string": "a=b c"}, "query_string"),
        ({"query_string": "a=b+c"}, "query_string"),
        ({"query_string": "a="}, "query_string"),
        ({"query_string": "a=b&"}, "query_string"),
        ({"query_string": "a=%zz"}, "query_string"),
        ({"query_string": "a=b\r\nx-evil: 1"}, "query_string"),
        ({"query_string": "k=" + "v" * 2047}, "query_string"),
        ({"invocation_path": "/v2/listen"}, "invocation_path"),
        ({"invocation_path": "v2//listen"}, "invocation_path"),
        ({"invocation_path": "v2/listen/"}, "invocation_path"),
        ({"invocation_path": "a" * 101}, "invocation_path"),
        ({"invocation_path": "v2/listen\x00"}, "invocation_path"),
        ({"target_variant": ""}, "target_variant"),
        ({"target_variant": "v\r"}, "target_variant"),
        ({"target_variant": "b" * 64}, "target_variant"),
    ],
)
def test_invoke_request_rejects_bad_fields(kwargs: dict[str, str], field: str) -> None:
    args = {"endpoint_name": "flux-ep", "query_string": QS, **kwargs}
    with pytest.raises(ValidationError, match=field):
        InvokeRequest(LOCAL, **args)


def test_invoke_request_accepts_limits() -> None:
    request = InvokeRequest(
        LOCAL,
        "a" + "-" * 61 + "b",
        "k=" + "v" * 2046,
        invocation_path="a" * 100,
        target_variant="Z" * 63,
    )
    assert len(request.query_string) == 2048
    assert InvokeRequest(LOCAL, "e", "keyterm=hello%20world&x_y-z=%C3%A9.~").query_string


@given(st.text(max_size=300))
def test_no_control_character_ever_reaches_a_header(text: str) -> None:
    """Whatever string a caller passes, an accepted header value is visible ASCII only."""
    for field in ("endpoint_name", "query_string", "invocation_path", "target_variant"):
        args = {"endpoint_name": "ep", "query_string": "a=b", field: text}
        try:
            request = InvokeRequest(LOCAL, **args)
        except ValidationError:
            continue
        for name, value in request.unsigned_headers():
            assert all(0x21 <= ord(c) <= 0x7E or c == " " for c in name + value)
            assert not {"\r", "\n", "\x00"} & set(value)
        assert all(0x21 <= ord(c) <= 0x7E for c in request.path)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-zA-Z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True),
            st.text(min_size=1, max_size=20),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_percent_encoded_query_strings_are_accepted(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)
    assert validate_query_string(query) == query
