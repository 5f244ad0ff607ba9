"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The event loops async tests run on. ``nox -s tests`` runs both on its first Python and only
#: asyncio on the others, to keep the three-version run within CI's time on two cores.
BACKENDS = os.environ.get("FLUX_TEST_BACKENDS", "asyncio,trio").split(",")


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the machine's proxy settings (a CI runner's, say) for every test: the client reads
    ``HTTPS_PROXY``, and the tests that use one set their own."""
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


#: Bytes captured from the official AWS SDK client (copied from shared/protocol/vectors so the
#: suite runs on a fresh machine).
VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An AWS environment with no config files and none of the caller's ``AWS_*`` settings."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch
