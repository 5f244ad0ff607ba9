"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


#: Bytes captured from the official AWS SDK client (copied from shared/protocol/vectors so the
#: suite runs on a fresh machine).
VECTORS = Path(__file__).parent / "vectors"
