"""Fixtures of the interop suite: the official AWS SDK client against the mock endpoint.

The SDK (``aws-sdk-sagemaker-runtime-http2``, Python 3.12+, installed by ``nox -s interop``) is
asyncio-only, so these tests run on asyncio alone. Where it is missing (Python 3.11, or an
environment without the ``interop`` dependency group) the test modules skip themselves at import
with ``pytest.importorskip``; this file must therefore import nothing from the SDK.
"""

from __future__ import annotations

import pytest

from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY


@pytest.fixture
def anyio_backend() -> str:
    """The AWS SDK runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def sdk_credentials(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Put the mock's default credentials where the SDK's EnvironmentCredentialsResolver looks."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY
