"""Tests of the Pipecat adapter, skipped as a whole (with the reason) where Pipecat is missing.

Pipecat (the ``pipecat`` extra) runs only on asyncio, so these tests do too.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

_SKIP_REASON = (
    "pipecat is not installed: the Pipecat adapter tests need the 'pipecat' extra "
    "(pip install 'flux-sagemaker[pipecat]')"
)
HAVE_PIPECAT = importlib.util.find_spec("pipecat") is not None

if HAVE_PIPECAT:
    # Pipecat imports the stdlib's deprecated audioop; the suite turns warnings into errors,
    # so import it once here with that one warning silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        import pipecat.audio.utils  # noqa: F401
else:
    # The test modules import pipecat, so they are not collected; one skipped item says why.
    collect_ignore_glob = ["test_*.py"]

    class _PipecatMissing(pytest.Item):
        def runtest(self) -> None:
            pytest.skip(_SKIP_REASON)

    class _PipecatMissingFile(pytest.File):
        def collect(self) -> list[pytest.Item]:
            return [_PipecatMissing.from_parent(self, name="pipecat_tests")]

    def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.File | None:
        """Stand one skipped item in for this directory's tests."""
        if file_path.name == "conftest.py" and file_path.parent == Path(__file__).parent:
            return _PipecatMissingFile.from_parent(parent, path=file_path)
        return None


@pytest.fixture
def anyio_backend() -> str:
    """Pipecat is asyncio-only."""
    return "asyncio"
