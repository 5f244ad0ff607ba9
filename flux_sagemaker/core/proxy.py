"""HTTP proxies: which one an endpoint goes through, and the ``CONNECT`` exchange, as bytes.

A stream to SageMaker is HTTP/2 over TLS, end to end, so a proxy can only tunnel it: the
client asks the proxy for a TCP tunnel with ``CONNECT host:443 HTTP/1.1`` (RFC 9110 section
9.3.6), and once the proxy answers 2xx, TLS and HTTP/2 run through the tunnel as over a
direct connection. The proxy sees the endpoint's host name, never the request.

The proxy comes from the client's ``proxy`` argument, else from the environment as botocore
and httpx read it: ``https_proxy`` / ``HTTPS_PROXY`` (the lower-case name wins, as in
``urllib``), skipped for hosts ``no_proxy`` / ``NO_PROXY`` names (:func:`no_proxy_names`) and
for loopback hosts (no proxy can reach the caller's own loopback, and a test's mock endpoint
lives there).
"""

from __future__ import annotations

import base64
import ipaddress
import urllib.parse
from collections.abc import Mapping

import attrs

from ..errors import ProtocolError, ValidationError
from .request import host_port

__all__ = [
    "MAX_CONNECT_RESPONSE_BYTES",
    "ConnectResponse",
    "Proxy",
    "no_proxy_names",
    "parse_connect_response",
    "proxy_from_environment",
]

#: Bytes of a ``CONNECT`` answer to read before its end (a blank line) must have come: an
#: answer that long is not from an HTTP proxy.
MAX_CONNECT_RESPONSE_BYTES = 16 * 1024


@attrs.frozen
class Proxy:
    """An HTTP proxy that tunnels the client's connections with ``CONNECT``.

    The credentials, if any, go in a ``Proxy-Authorization: Basic`` header; the repr hides
    them.
    """

    host: str
    port: int
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        """Parse ``http://[user:password@]host[:port]`` (port 80 if not given).

        Raises:
            ValidationError: not such a URL. ``https://`` proxies (TLS to the proxy itself)
                are refused: the tunnel already carries TLS to the endpoint.
        """
        if not isinstance(url, str):
            raise ValidationError(f"proxy must be a URL string, got {type(url).__name__}")
        shown = _without_credentials(url)
        try:
            parts = urllib.parse.urlsplit(url)
            if "@" in url.partition("://")[2] and "@" not in parts.netloc:
                # A '/', '?' or '#' in the credentials ended the host part there: the parser's
                # own message would quote a piece of the password as the port.
                raise ValueError("percent-encode '/', '?' and '#' in its user name or password")
            port = parts.port
        except ValueError as exc:
            raise ValidationError(f"proxy {shown!r} is not a valid URL: {exc}") from None
        if parts.scheme.lower() != "http":
            raise ValidationError(
                f"proxy {shown!r}: only http:// proxies are supported (the client asks them for "
                "a CONNECT tunnel, and TLS to the endpoint runs inside it)"
            )
        if not parts.hostname:
            raise ValidationError(f"proxy {shown!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValidationError(f"proxy {shown!r}: a proxy URL has no path or query")
        username = urllib.parse.unquote(parts.username) if parts.username is not None else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port if port is not None else 80, username, password)

    @property
    def address(self) -> str:
        """``host:port``, for messages (IPv6 hosts in brackets)."""
        return host_port(self.host, self.port)

    def connect_request(self, host: str, port: int) -> bytes:
        """The ``CONNECT`` request for a tunnel to ``host:port``."""
        target = host_port(host, port)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.username is not None:
            token = f"{self.username}:{self.password or ''}".encode()
            lines.append(f"Proxy-Authorization: Basic {base64.b64encode(token).decode()}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@attrs.frozen
class ConnectResponse:
    """The status of a proxy's answer to ``CONNECT``, and where the tunnel's bytes begin."""

    status: int
    reason: str
    #: Offset of the first byte after the answer's blank line (the tunnel's own bytes).
    end: int

    @property
    def ok(self) -> bool:
        """Whether the tunnel is open (any 2xx, RFC 9110 section 9.3.6)."""
        return 200 <= self.status < 300


def parse_connect_response(data: bytes) -> ConnectResponse | None:
    """Parse a proxy's answer to ``CONNECT`` from the bytes received so far.

    Returns ``None`` while the answer's blank line has not arrived yet.

    Raises:
        ProtocolError: not an HTTP/1.x status line, or no end within
            :data:`MAX_CONNECT_RESPONSE_BYTES`.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_CONNECT_RESPONSE_BYTES or (
            len(data) >= 5 and not data.startswith(b"HTTP/")
        ):
            raise ProtocolError(f"not an HTTP proxy's answer to CONNECT: {data[:80]!r}")
        return None
    status_line = data[: data.find(b"\r\n")]
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP proxy's answer to CONNECT: {status_line[:80]!r}")
    return ConnectResponse(int(code), reason.decode("latin-1").strip(), end + 4)


def proxy_from_environment(host: str, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy ``environ`` names for an ``https`` endpoint on ``host``, if any.

    Raises:
        ValidationError: ``https_proxy`` is set to something :meth:`Proxy.from_url` refuses.
    """
    url = _env(environ, "https_proxy")
    if not url or _is_loopback(host):
        return None
    no_proxy = _env(environ, "no_proxy")
    if no_proxy and no_proxy_names(host, no_proxy):
        return None
    if "://" not in url:
        url = "http://" + url  # curl and requests take a bare host:port
    try:
        return Proxy.from_url(url)
    except ValidationError as exc:
        raise ValidationError(f"HTTPS_PROXY: {exc}") from None


def no_proxy_names(host: str, no_proxy: str) -> bool:
    """Whether a ``NO_PROXY`` value names ``host``.

    Entries are separated by commas (or spaces): ``*`` (every host), a host name, which also
    covers its subdomains (``.example.com`` and ``*.example.com`` mean the same), an IP
    address or a CIDR network. A ``:port`` on an entry is ignored.
    """
    host = host.lower().strip("[]").rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = _without_port(raw.strip().lower())
        if entry == "*":
            return True
        if not entry:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass  # a host name: it cannot name an address
            continue
        name = entry.lstrip("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _without_port(entry: str) -> str:
    if entry.startswith("["):  # [v6]:port
        return entry[1:].partition("]")[0]
    if entry.count(":") == 1:  # name:port or v4:port; more colons: a bare IPv6 address
        return entry.partition(":")[0]
    return entry


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        value = environ.get(name.upper())
    return value.strip() if value is not None else None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for messages.

    Everything before the last ``@`` goes: a password may hold a ``/``, ``?`` or ``#`` that
    was not percent-encoded, and a proxy URL has no path that could hold an ``@``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme: refused, and the message must not show the rest either
        scheme, rest = "", url
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"
