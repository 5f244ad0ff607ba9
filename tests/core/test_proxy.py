"""Proxies: their URLs, the CONNECT exchange as bytes, and which hosts go through one."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.core.proxy import (
    MAX_CONNECT_RESPONSE_BYTES,
    ConnectResponse,
    Proxy,
    no_proxy_names,
    parse_connect_response,
    proxy_from_environment,
)
from flux_sagemaker.errors import ProtocolError, ValidationError


def test_a_proxy_url_with_credentials() -> None:
    proxy = Proxy.from_url("http://al%40ice:s3cr%3At@proxy.corp:3128")
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == (
        "proxy.corp",
        3128,
        "al@ice",
        "s3cr:t",
    )
    assert "s3cr" not in repr(proxy)
    assert "al@ice" not in repr(proxy)
    assert proxy.address == "proxy.corp:3128"


def test_a_proxy_url_without_port_or_credentials() -> None:
    assert Proxy.from_url("http://10.0.0.1") == Proxy("10.0.0.1", 80)
    assert Proxy.from_url("HTTP://[fd00::1]:8080/") == Proxy("fd00::1", 8080)
    assert Proxy("fd00::1", 8080).address == "[fd00::1]:8080"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://proxy:3128", "only http:// proxies"),
        ("socks5://proxy:1080", "only http:// proxies"),
        ("proxy:3128", "only http:// proxies"),
        ("http://:3128", "has no host"),
        ("http://proxy:99999", "not a valid URL"),
        ("http://proxy:3128/path", "no path or query"),
        ("http://proxy:3128?x=1", "no path or query"),
    ],
)
def test_proxy_urls_that_cannot_work_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Proxy.from_url(url)


def test_a_refused_proxy_url_does_not_show_its_password() -> None:
    with pytest.raises(ValidationError) as info:
        Proxy.from_url("https://user:hunter2@proxy:3128")
    assert "hunter2" not in str(info.value)
    assert "***@proxy:3128" in str(info.value)


def test_a_proxy_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be a URL string"):
        Proxy.from_url(3128)  # type: ignore[arg-type]


def test_the_connect_request() -> None:
    assert Proxy("proxy", 3128).connect_request(
        "runtime.sagemaker.us-east-1.amazonaws.com", 443
    ) == (
        b"CONNECT runtime.sagemaker.us-east-1.amazonaws.com:443 HTTP/1.1\r\n"
        b"Host: runtime.sagemaker.us-east-1.amazonaws.com:443\r\n\r\n"
    )
    token = base64.b64encode(b"u:p@ss").decode()
    assert (
        Proxy("proxy", 3128, "u", "p@ss").connect_request("fd00::2", 8443)
        == (
            f"CONNECT [fd00::2]:8443 HTTP/1.1\r\nHost: [fd00::2]:8443\r\n"
            f"Proxy-Authorization: Basic {token}\r\n\r\n"
        ).encode()
    )


def test_connect_answers() -> None:
    assert parse_connect_response(b"HTTP/1.1 200 Connection established\r\n") is None
    answer = b"HTTP/1.1 200 Connection established\r\nVia: squid\r\n\r\n"
    assert parse_connect_response(answer) == ConnectResponse(
        200, "Connection established", len(answer)
    )
    assert parse_connect_response(answer + b"tls").end == len(answer)  # type: ignore[union-attr]
    refused = parse_connect_response(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
    assert refused is not None
    assert (refused.status, refused.ok) == (407, False)
    no_reason = parse_connect_response(b"HTTP/1.1 204\r\n\r\n")
    assert no_reason == ConnectResponse(204, "", 16)
    assert no_reason.ok


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x03\x01\x00",  # too short to tell yet: more is read
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 " + b"x" * MAX_CONNECT_RESPONSE_BYTES,
    ],
)
def test_answers_that_are_not_an_http_proxys(data: bytes) -> None:
    if len(data) < 5:
        assert parse_connect_response(data) is None
        with pytest.raises(ProtocolError, match="not an HTTP proxy's answer"):
            parse_connect_response(data + b"\x00" * 4)
        return
    with pytest.raises(ProtocolError, match="not an HTTP proxy's answer"):
        parse_connect_response(data)


@given(
    status=st.integers(100, 599),
    headers=st.lists(st.from_regex(r"[A-Za-z-]{1,20}: [ -~]{0,40}", fullmatch=True), max_size=5),
    tail=st.binary(max_size=20),
    cut=st.integers(0, 400),
)
def test_an_answer_is_parsed_the_same_however_it_arrives(
    status: int, headers: list[str], tail: bytes, cut: int
) -> None:
    head = "\r\n".join([f"HTTP/1.1 {status} Reason Phrase", *headers]).encode() + b"\r\n\r\n"
    whole = parse_connect_response(head + tail)
    assert whole == ConnectResponse(status, "Reason Phrase", len(head))
    prefix = (head + tail)[: min(cut, len(head) - 1)]
    assert parse_connect_response(prefix) is None


@pytest.mark.parametrize(
    ("host", "no_proxy", "named"),
    [
        ("runtime.sagemaker.us-east-1.amazonaws.com", "*", True),
        ("runtime.sagemaker.us-east-1.amazonaws.com", "amazonaws.com", True),
        ("runtime.sagemaker.us-east-1.amazonaws.com", ".amazonaws.com", True),
        ("runtime.sagemaker.us-east-1.amazonaws.com", "*.amazonaws.com", True),
        ("runtime.sagemaker.us-east-1.amazonaws.com", "corp.example, amazonaws.com:443", True),
        ("Runtime.SageMaker.us-east-1.amazonaws.com.", "AMAZONAWS.COM", True),
        ("amazonaws.com", "amazonaws.com", True),
        ("notamazonaws.com", "amazonaws.com", False),
        ("runtime.sagemaker.us-east-1.amazonaws.com", "example.com other.org", False),
        ("runtime.sagemaker.us-east-1.amazonaws.com", ",,", False),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("10.1.2.3", "10.1.2.3", True),
        ("10.1.2.3", "10.1.2.3:443", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("10.1.2.3", "10", False),
        ("fd00::5", "fd00::/8", True),
        ("fd00::5", "[fd00::5]:443", True),
        ("fd00::5", "fd00::6", False),
    ],
)
def test_no_proxy(host: str, no_proxy: str, named: bool) -> None:
    assert no_proxy_names(host, no_proxy) is named


def test_the_environments_proxy() -> None:
    host = "runtime.sagemaker.us-east-1.amazonaws.com"
    assert proxy_from_environment(host, {}) is None
    assert proxy_from_environment(host, {"HTTPS_PROXY": "proxy:3128"}) == Proxy("proxy", 3128)
    both = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}
    assert proxy_from_environment(host, both) == Proxy("lower", 1)  # as urllib reads them
    assert proxy_from_environment(host, {"https_proxy": "  "}) is None
    assert proxy_from_environment(host, {"HTTP_PROXY": "http://proxy:3128"}) is None  # https only
    named = {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": ".amazonaws.com"}
    assert proxy_from_environment(host, named) is None
    for loopback in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost", "mock.localhost"):
        assert proxy_from_environment(loopback, {"HTTPS_PROXY": "http://proxy:3128"}) is None


def test_an_unusable_https_proxy_variable_is_named() -> None:
    with pytest.raises(ValidationError, match="HTTPS_PROXY: proxy 'socks5://\\*\\*\\*@p:1'"):
        proxy_from_environment("example.com", {"HTTPS_PROXY": "socks5://u:hunter2@p:1"})


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hun/ter2@proxy:3128",
        "http://user:hun#ter2@proxy:3128",
        "http://user:hun?ter2@proxy:3128",
        "http://us/er:hunter2@proxy:3128",
        "http://user:hunter2@proxy:99999",
        "user:hunter2@proxy:3128",
    ],
    ids=["slash", "hash", "question-mark", "slash-in-user", "bad-port", "no-scheme"],
)
def test_a_proxy_url_that_does_not_parse_shows_no_piece_of_its_password(url: str) -> None:
    """A password with a '/', '?' or '#' that was not percent-encoded ends the URL's host part
    early: neither the URL shown nor the parser's reason may quote a piece of it."""
    with pytest.raises(ValidationError) as info:
        Proxy.from_url(url)
    assert "hun" not in str(info.value)
    assert "ter2" not in str(info.value)
    assert "***@proxy:" in str(info.value)
    if "://" not in url:
        return  # HTTPS_PROXY takes host:port without a scheme
    with pytest.raises(ValidationError) as from_env:
        proxy_from_environment("example.com", {"HTTPS_PROXY": url})
    assert "hun" not in str(from_env.value)
    assert "ter2" not in str(from_env.value)
