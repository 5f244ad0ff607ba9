"""Where to connect and as whom, resolved the way the AWS SDKs do it, through botocore.

Users already configure AWS with environment variables and ``~/.aws/config``; this module reads
the same settings through botocore so that an application (the Pipecat adapter included) can be
pointed at a VPC endpoint or at the mock endpoint without code changes:

- region: the argument, else one set on the botocore session (``set_config_variable``,
  boto3's ``Session(region_name=...)``), else ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the
  profile's ``region``;
- endpoint URL: the argument, else ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``,
  ``AWS_ENDPOINT_URL``, the profile's ``services`` section or ``endpoint_url`` (unless
  ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is set);
- FIPS and dual-stack: the argument, else ``AWS_USE_FIPS_ENDPOINT`` / ``use_fips_endpoint`` and
  ``AWS_USE_DUALSTACK_ENDPOINT`` / ``use_dualstack_endpoint``;
- CA bundle: the ``ssl_context`` argument, else ``AWS_CA_BUNDLE`` / ``ca_bundle``, else the
  system store;
- proxy (``https`` endpoints): the argument, else ``https_proxy`` / ``HTTPS_PROXY``, except for
  hosts ``no_proxy`` / ``NO_PROXY`` names and loopback hosts (see :mod:`.core.proxy`);
- credentials: the argument, else botocore's default chain (environment, shared files and
  profiles, SSO, assume-role, container and instance metadata), refreshed as it expires.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import anyio
import attrs
import botocore.session
from botocore.configprovider import ConfiguredEndpointProvider
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError

from .core.proxy import Proxy, proxy_from_environment
from .core.request import Endpoint, resolve_endpoint
from .errors import ValidationError

__all__ = [
    "CredentialSource",
    "ResolvedConfig",
    "default_ssl_context",
    "resolve_config",
    "resolve_region",
]

# The botocore client whose configured endpoint applies (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME).
_CLIENT_NAME = "sagemaker-runtime"


@attrs.define(eq=False)
class CredentialSource:
    """A client's credentials: the ones given, or what botocore's default chain finds.

    The chain is walked on first use, in a worker thread: its container and instance-metadata
    steps fetch over the network (about a second where no metadata service answers), which
    must hold up neither the client's constructor nor the event loop. botocore keeps what a
    session's chain found, so clients sharing a session walk it once.
    """

    _session: botocore.session.Session | None = None
    _credentials: Credentials | None = None

    @classmethod
    def given(cls, credentials: Credentials) -> CredentialSource:
        """Credentials passed by the application."""
        return cls(credentials=credentials)

    @classmethod
    def chain(cls, session: botocore.session.Session) -> CredentialSource:
        """botocore's default chain of ``session``, walked on first use."""
        return cls(session=session)

    async def get(self) -> Credentials | None:
        """The credentials, or ``None`` if the chain found none.

        Raises:
            BotoCoreError: the chain failed (a bad profile, an SSO login that expired, ...).
        """
        if self._credentials is None and self._session is not None:
            self._credentials = await anyio.to_thread.run_sync(self._session.get_credentials)
        return self._credentials


@attrs.frozen
class ResolvedConfig:
    """Everything needed to open streams, resolved once per FluxClient."""

    region: str
    endpoint: Endpoint
    ssl_context: ssl.SSLContext | None = attrs.field(repr=False)
    credentials: CredentialSource = attrs.field(repr=False)
    #: The HTTP proxy that tunnels the connections, if any.
    proxy: Proxy | None = None


def default_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context that offers only ``h2`` through ALPN.

    One per CA bundle, made once and shared: a pool shares a connection only among clients
    with the same context, so clients left to the defaults share their connections.

    Raises:
        ValidationError: ``ca_bundle`` cannot be read or holds no certificate.
    """
    context = _DEFAULT_CONTEXTS.get(ca_bundle)
    if context is None:
        try:
            context = ssl.create_default_context(cafile=ca_bundle)
        except OSError as exc:  # a missing file, or no PEM certificate in it (ssl.SSLError)
            raise ValidationError(
                f"cannot use the CA bundle {ca_bundle!r}: {exc.strerror or exc}"
            ) from exc
        context.set_alpn_protocols(["h2"])
        _DEFAULT_CONTEXTS[ca_bundle] = context
    return context


_DEFAULT_CONTEXTS: dict[str | None, ssl.SSLContext] = {}


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def resolve_region(region: str | None, session: botocore.session.Session) -> str | None:
    """The region: ``region``, else one set on ``session``, else ``AWS_REGION``, else
    botocore's (``AWS_DEFAULT_REGION``, the profile's ``region``); ``None`` when none is set.

    A region set on the session is an explicit choice, as it is for botocore's own clients:
    ``AWS_REGION``, which ECS and Lambda set to their own region, must not override it.

    Raises:
        BotoCoreError: the profile cannot be read (an unknown profile, say).
    """
    return (
        region
        or session.instance_variables().get("region")
        or os.environ.get("AWS_REGION")
        or session.get_config_variable("region")
        or None
    )


def resolve_config(
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    use_fips: bool | None = None,
    use_dualstack: bool | None = None,
    session: botocore.session.Session | None = None,
    profile: str | None = None,
    credentials: Credentials | None = None,
    ssl_context: ssl.SSLContext | None = None,
    proxy: str | None = None,
) -> ResolvedConfig:
    """Resolve region, endpoint, TLS and credentials from the arguments and the AWS config.

    This reads files and the environment but does no network I/O: the credential chain is
    walked on first use, off the event loop (see :class:`CredentialSource`), and the client
    fetches frozen credentials off the event loop for each new stream.
    """
    explicit_url = endpoint_url is not None
    explicit_flags = bool(use_fips) or bool(use_dualstack)
    if session is not None and profile is not None:
        raise ValidationError("pass either a botocore session or a profile name, not both")
    try:
        if session is None:
            session = botocore.session.Session(profile=profile)
        region = resolve_region(region, session)
        if not region:
            raise ValidationError(
                "no AWS region: pass region=..., or set AWS_REGION or a region in the AWS profile"
            )
        if endpoint_url is None and not _flag(
            session.get_config_variable("ignore_configured_endpoint_urls")
        ):
            endpoint_url = ConfiguredEndpointProvider(
                full_config=session.full_config,
                scoped_config=session.get_scoped_config(),
                client_name=_CLIENT_NAME,
            ).provide()
        if use_fips is None:
            use_fips = _flag(session.get_config_variable("use_fips_endpoint"))
        if use_dualstack is None:
            use_dualstack = _flag(session.get_config_variable("use_dualstack_endpoint"))
        ca_bundle = session.get_config_variable("ca_bundle")
    except BotoCoreError as exc:
        raise ValidationError(f"invalid AWS configuration: {exc}") from exc
    if endpoint_url is not None and not (explicit_url and explicit_flags):
        # An endpoint URL wins over FIPS/dual-stack flags; only passing both as arguments
        # is an error (raised by resolve_endpoint), as in the AWS SDKs.
        use_fips = use_dualstack = False
    endpoint = resolve_endpoint(
        region, use_fips=use_fips, use_dualstack=use_dualstack, endpoint_url=endpoint_url
    )
    if endpoint.scheme == "https" and ssl_context is None:
        ssl_context = default_ssl_context(ca_bundle)
    elif endpoint.scheme == "http":
        ssl_context = None
    if endpoint.scheme != "https":
        # An h2c endpoint (a local mock) speaks HTTP/2 in the clear, which forward proxies
        # do not carry; a proxy named for it is refused.
        if proxy is not None:
            raise ValidationError(f"a proxy tunnels only https:// endpoints, not {endpoint.url}")
        tunnel = None
    elif proxy is not None:
        tunnel = Proxy.from_url(proxy)
    else:
        tunnel = proxy_from_environment(endpoint.host, os.environ)
    source = (
        CredentialSource.given(credentials)
        if credentials is not None
        else CredentialSource.chain(session)
    )
    return ResolvedConfig(
        region=region,
        endpoint=endpoint,
        ssl_context=ssl_context,
        credentials=source,
        proxy=tunnel,
    )
