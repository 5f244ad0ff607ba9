"""TLS with the per-run CA, and configuration resolved from the AWS environment."""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import botocore.session
import pytest
from botocore.credentials import CredentialProvider, Credentials, RefreshableCredentials
from botocore.exceptions import CredentialRetrievalError, EndpointConnectionError

from flux_sagemaker import (
    ConnectError,
    EndOfTurn,
    FluxClient,
    FluxError,
    KeepalivePolicy,
    ValidationError,
)
from flux_sagemaker.core.proxy import Proxy
from flux_sagemaker.testing import MockFluxEndpoint
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

from .helpers import (
    FAST_TIMEOUTS,
    NO_RETRY,
    QUICK_RETRY,
    SAMPLE,
    TEST_TIMEOUT,
    EndpointFactory,
    client_for,
    ms,
    of_type,
    run_session,
    tunnel_proxy,
)

pytestmark = pytest.mark.anyio

FIRST_TURN_DONE = SAMPLE.pcm[: ms(3100)]


def _assert_first_turn(events: Sequence[object], ep: MockFluxEndpoint) -> None:
    assert [e.transcript for e in of_type(events, EndOfTurn)] == [SAMPLE.turns[0]]
    assert bytes(ep.streams[0].audio) == FIRST_TURN_DONE


async def test_tls_with_the_endpoint_context(endpoint: EndpointFactory) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(tls=True) as ep:
            assert ep.url.startswith("https://")
            async with client_for(ep, ssl_context=ep.ssl_context) as flux:
                events = await run_session(flux, FIRST_TURN_DONE)
    _assert_first_turn(events, ep)


async def test_tls_with_system_trust_fails_the_certificate(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(tls=True) as ep:
            with pytest.raises(ConnectError) as info:
                async with client_for(ep, ssl_context=None):
                    pass
    assert "certificate" in str(info.value).lower()
    assert ep.streams == []  # no request got through


async def test_aws_ca_bundle_is_honoured(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(tls=True) as ep:
            assert ep.ca_pem_path is not None
            aws_env.setenv("AWS_CA_BUNDLE", ep.ca_pem_path)
            async with client_for(ep, ssl_context=None) as flux:
                events = await run_session(flux, FIRST_TURN_DONE)
    _assert_first_turn(events, ep)


@pytest.mark.parametrize(
    "bundle", ["missing.pem", "empty.pem", "."], ids=["missing", "empty", "dir"]
)
def test_an_unusable_aws_ca_bundle_is_a_validation_error(
    aws_env: pytest.MonkeyPatch, tmp_path: Path, bundle: str
) -> None:
    """A typo in AWS_CA_BUNDLE is a configuration error naming the file, not a raw OSError."""
    (tmp_path / "empty.pem").write_bytes(b"")
    path = str(tmp_path / bundle)
    aws_env.setenv("AWS_CA_BUNDLE", path)
    with pytest.raises(ValidationError, match="CA bundle") as info:
        FluxClient("flux-e2e", region="us-east-1", endpoint_url="https://127.0.0.1:8443")
    assert path in str(info.value)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_everything_from_the_aws_environment(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch, tls: bool
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(tls=tls, region="eu-central-1") as ep:
            aws_env.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", ep.url)
            aws_env.setenv("AWS_REGION", "eu-central-1")
            aws_env.setenv("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
            aws_env.setenv("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
            if ep.ca_pem_path is not None:
                aws_env.setenv("AWS_CA_BUNDLE", ep.ca_pem_path)
            flux = FluxClient(
                "flux-e2e",
                timeouts=FAST_TIMEOUTS,
                retry=NO_RETRY,
                keepalive=KeepalivePolicy.disabled(),
            )
            async with flux:
                events = await run_session(flux, FIRST_TURN_DONE)
    _assert_first_turn(events, ep)
    authority = dict(ep.streams[0].headers).get("authorization", "")
    assert "/eu-central-1/sagemaker/aws4_request" in authority


async def test_a_region_set_on_the_session_wins_over_aws_region(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch
) -> None:
    """As for botocore's own clients: ``boto3.Session(region_name=...)._session`` or
    ``set_config_variable("region", ...)`` is an explicit choice; AWS_REGION, which ECS and
    Lambda always set to their own region, is only a default."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(region="eu-central-1") as ep:
            aws_env.setenv("AWS_REGION", "us-east-1")
            aws_env.setenv("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
            aws_env.setenv("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
            session = botocore.session.Session()
            session.set_config_variable("region", "eu-central-1")
            flux = FluxClient(
                "flux-e2e",
                endpoint_url=ep.url,
                session=session,
                timeouts=FAST_TIMEOUTS,
                retry=NO_RETRY,
                keepalive=KeepalivePolicy.disabled(),
            )
            async with flux:
                events = await run_session(flux, FIRST_TURN_DONE)
    _assert_first_turn(events, ep)


@pytest.mark.parametrize(
    ("failure", "raised"),
    [
        (
            CredentialRetrievalError(provider="sso", error_msg="the SSO session expired"),
            ValidationError,
        ),
        (EndpointConnectionError(endpoint_url="https://sts.us-east-1.amazonaws.com"), ConnectError),
    ],
    ids=["refused", "unreachable"],
)
async def test_a_failed_credential_refresh_raises_a_typed_error(
    failure: Exception, raised: type[FluxError]
) -> None:
    def refresh() -> dict[str, str]:
        raise failure

    expired = {
        "access_key": DEFAULT_ACCESS_KEY,
        "secret_key": DEFAULT_SECRET_KEY,
        "token": "token",
        "expiry_time": datetime(2020, 1, 1, tzinfo=UTC).isoformat(),
    }
    credentials = RefreshableCredentials.create_from_metadata(
        metadata=expired, refresh_using=refresh, method="test"
    )
    # No endpoint: the credentials fail before anything connects.
    flux = FluxClient(
        "flux-e2e",
        region="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        credentials=credentials,
        retry=NO_RETRY,
    )
    with anyio.fail_after(TEST_TIMEOUT), pytest.raises(raised) as info:
        async with flux:
            pass
    assert "AWS credentials" in str(info.value)
    assert info.value.__cause__ is failure


async def test_the_credential_chain_is_walked_on_first_use_off_the_event_loop(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch
) -> None:
    """botocore's chain can fetch over the network (container and instance metadata): not in
    the constructor, not on the event loop's thread, and once for the clients of a session."""
    walked_on: list[threading.Thread] = []

    class RecordingProvider(CredentialProvider):  # type: ignore[misc]  # botocore is untyped
        METHOD = "test-recording"

        def load(self) -> Credentials:
            walked_on.append(threading.current_thread())
            return Credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, method=self.METHOD)

    session = botocore.session.Session()
    session.get_component("credential_provider").insert_before("env", RecordingProvider())
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint() as ep:
            flux = FluxClient(
                "flux-e2e",
                endpoint_url=ep.url,
                region=ep.region,
                session=session,
                timeouts=FAST_TIMEOUTS,
                retry=NO_RETRY,
                keepalive=KeepalivePolicy.disabled(),
            )
            assert walked_on == []
            async with flux:
                events = await run_session(flux, FIRST_TURN_DONE)
            assert len(walked_on) == 1
            assert walked_on[0] is not threading.main_thread()
            second = FluxClient("flux-e2e", endpoint_url=ep.url, region=ep.region, session=session)
            async with second:
                await second.close()
    _assert_first_turn(events, ep)
    assert len(walked_on) == 1
    assert len(ep.streams) == 2


async def test_a_session_through_an_http_proxy_tunnel(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch
) -> None:
    """The connection goes to the proxy, which tunnels it; TLS and HTTP/2 run inside."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(tls=True) as ep, tunnel_proxy() as proxy:
            url = f"http://user:p%40ss@127.0.0.1:{proxy.port}"
            async with client_for(ep, proxy=url) as flux:
                events = await run_session(flux, FIRST_TURN_DONE)
    _assert_first_turn(events, ep)
    target = ep.url.removeprefix("https://")
    token = base64.b64encode(b"user:p@ss").decode()
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}"
    assert proxy.requests == [head.encode()]
    assert ep.connections_accepted == 1  # the proxy's, not a direct one


async def test_https_proxy_from_the_environment(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY tunnels a remote endpoint; NO_PROXY and loopback hosts go direct."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with (
            endpoint(tls=True) as ep,
            tunnel_proxy(hosts={"flux.test": "127.0.0.1"}) as proxy,
        ):
            aws_env.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")  # no scheme, as curl takes it
            assert ep.ca_pem_path is not None
            context = ssl.create_default_context(cafile=ep.ca_pem_path)
            context.check_hostname = False  # the mock's certificate names 127.0.0.1 only
            remote = f"https://flux.test:{ep.port}"
            async with client_for(ep, endpoint_url=remote, ssl_context=context) as flux:
                events = await run_session(flux, FIRST_TURN_DONE)
            assert proxy.requests == [
                f"CONNECT flux.test:{ep.port} HTTP/1.1\r\nHost: flux.test:{ep.port}".encode()
            ]
            # A loopback host goes direct; so does one NO_PROXY names, which this machine's
            # DNS does not know.
            async with client_for(ep, endpoint_url=ep.url, ssl_context=context) as flux:
                await flux.close()
            aws_env.setenv("NO_PROXY", "example.com, .test")
            with pytest.raises(ConnectError, match=r"could not connect to flux\.test:"):
                async with client_for(ep, endpoint_url=remote, ssl_context=context):
                    pass
            assert len(proxy.requests) == 1
            assert len(proxy.requests) == 1
    _assert_first_turn(events, ep)


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n", False),
        (b"HTTP/1.0 403 Forbidden\r\n\r\n", False),
        (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", True),
    ],
    ids=["407", "403", "502"],
)
async def test_a_proxy_that_refuses_the_tunnel(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch, answer: bytes, retryable: bool
) -> None:
    """Its answer is the error, and a 4xx (the proxy's policy) is not tried again."""
    status = answer.split()[1].decode()
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(tls=True) as ep, tunnel_proxy(answer=answer) as proxy:
            with pytest.raises(ConnectError, match=f"refused the tunnel .*: {status}") as info:
                async with client_for(ep, proxy=proxy.url, retry=QUICK_RETRY):
                    pass
    assert info.value.retryable is retryable
    assert f"proxy 127.0.0.1:{proxy.port}" in str(info.value)
    if not retryable:
        assert len(proxy.requests) == 1
    assert ep.streams == []


@pytest.mark.parametrize(
    "answer",
    [b"", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\n\r\nearly"],
    ids=["closed", "not-http", "bytes-after-the-answer"],
)
async def test_a_proxy_that_does_not_tunnel_is_a_connect_error(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch, answer: bytes
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with endpoint(tls=True) as ep, tunnel_proxy(answer=answer) as proxy:
            with pytest.raises(ConnectError, match=f"proxy 127.0.0.1:{proxy.port}"):
                async with client_for(ep, proxy=proxy.url):
                    pass
    assert ep.streams == []


async def test_an_unreachable_proxy_is_a_retryable_connect_error(
    endpoint: EndpointFactory, aws_env: pytest.MonkeyPatch
) -> None:
    async with endpoint(tls=True) as ep:
        async with tunnel_proxy() as proxy:
            url = proxy.url  # closed below: nothing listens there any more
        with anyio.fail_after(TEST_TIMEOUT), pytest.raises(ConnectError) as info:
            async with client_for(ep, proxy=url):
                pass
    assert info.value.retryable
    assert "through proxy 127.0.0.1" in str(info.value)


def test_proxy_settings_are_checked_before_connecting(aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="only http:// proxies"):
        FluxClient("flux-e2e", region="us-east-1", proxy="https://proxy:3128")
    with pytest.raises(ValidationError, match="tunnels only https:// endpoints"):
        FluxClient(
            "flux-e2e", region="us-east-1", endpoint_url="http://127.0.0.1:1", proxy="http://p"
        )
    aws_env.setenv("HTTPS_PROXY", "socks5://proxy:1080")
    with pytest.raises(ValidationError, match="HTTPS_PROXY"):
        FluxClient("flux-e2e", region="us-east-1")
    # An h2c endpoint never goes through the environment's proxy (no proxy carries h2c).
    FluxClient("flux-e2e", region="us-east-1", endpoint_url="http://mock.internal:8080")
    aws_env.setenv("HTTPS_PROXY", "http://user:hunter2@proxy:3128")
    flux = FluxClient("flux-e2e", region="us-east-1")
    assert flux._config.proxy == Proxy("proxy", 3128, "user", "hunter2")
    assert "hunter2" not in repr(flux._config)
