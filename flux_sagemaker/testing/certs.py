"""A certificate authority made for one run of the mock endpoint (needs ``trustme``).

Install it with ``pip install flux-sagemaker[testing]``. Plaintext HTTP/2 needs none of this.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from types import TracebackType

import attrs

from ..errors import UsageError

__all__ = ["TestCA"]


@attrs.define(eq=False)
class TestCA:
    """A fresh CA and a server certificate for ``127.0.0.1`` and ``localhost``.

    Use it as a context manager: the CA's PEM file is removed on exit.

    Attributes:
        ca_pem_path: The CA certificate as a PEM file, for ``AWS_CA_BUNDLE`` or other clients.
    """

    __test__ = False  # not a pytest test class

    ca_pem_path: Path = attrs.field(init=False)
    _server_context: ssl.SSLContext = attrs.field(init=False, repr=False)
    _client_context: ssl.SSLContext = attrs.field(init=False, repr=False)
    _tmpdir: tempfile.TemporaryDirectory[str] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise UsageError(
                "TLS for the mock endpoint needs trustme: pip install 'flux-sagemaker[testing]'"
            ) from exc
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(self._server_context)
        self._server_context.set_alpn_protocols(["h2"])
        self._client_context = ssl.create_default_context()
        ca.configure_trust(self._client_context)
        self._client_context.set_alpn_protocols(["h2"])
        self._tmpdir = tempfile.TemporaryDirectory(prefix="flux-mock-ca-")
        self.ca_pem_path = Path(self._tmpdir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem_path))

    @property
    def server_context(self) -> ssl.SSLContext:
        """The server side: our certificate, ALPN ``h2``."""
        return self._server_context

    @property
    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and verifies hostnames), ALPN ``h2``."""
        return self._client_context

    def cleanup(self) -> None:
        """Remove the CA's PEM file."""
        self._tmpdir.cleanup()

    def __enter__(self) -> TestCA:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
