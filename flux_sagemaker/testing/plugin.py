"""The pytest plugin of flux_sagemaker: a ``flux_endpoint`` fixture that runs a MockFluxEndpoint.

Installed with the package (entry point ``pytest11``), so nothing needs registering::

    import pytest
    from flux_sagemaker import EndOfTurn, FluxClient

    @pytest.mark.anyio
    @pytest.mark.flux_endpoint(script=["Hello there."])
    async def test_hello(flux_endpoint):
        async with FluxClient("any", **flux_endpoint.client_kwargs()) as flux:
            ...

The fixture is an async generator fixture, run by anyio's pytest plugin under the test's
``anyio_backend``; a test using it must be marked ``@pytest.mark.anyio``. The marker takes the
keyword arguments of :class:`~flux_sagemaker.testing.MockFluxEndpoint` (``script``, ``tls``,
``bundle``, ``faults``, ``region``, ``endpoint_name``, ``script_scope``, ...); the closest marker
wins (function over class over module).

Loading the plugin imports the package and its mock server, but nothing optional: ``trustme``
(needed only for ``tls=True``) is imported when an endpoint with TLS starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flux_sagemaker.testing.server import MockFluxEndpoint

__all__ = ["MARKER", "endpoint_kwargs", "flux_endpoint", "pytest_configure"]

#: The name of the marker that configures the ``flux_endpoint`` fixture.
MARKER = "flux_endpoint"

_MARKER_HELP = (
    f"{MARKER}(script=(), tls=False, bundle=NEWEST, faults=(), **kwargs): configure the "
    "MockFluxEndpoint of the flux_endpoint fixture (keyword arguments of MockFluxEndpoint)"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``flux_endpoint`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line("markers", _MARKER_HELP)


def endpoint_kwargs(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    """The MockFluxEndpoint keyword arguments from the closest ``flux_endpoint`` marker.

    A single positional argument is taken as ``script``.

    Raises:
        pytest.UsageError: The marker has more than one positional argument.
    """
    marker = node.get_closest_marker(MARKER)
    if marker is None:
        return {}
    kwargs = dict(marker.kwargs)
    if len(marker.args) > 1 or (marker.args and "script" in kwargs):
        raise pytest.UsageError(
            f"@pytest.mark.{MARKER} takes the script as its only positional argument or as "
            f"script=..., and MockFluxEndpoint options as keywords; got {marker.args!r}"
        )
    if marker.args:
        kwargs["script"] = marker.args[0]
    return kwargs


@pytest.fixture
async def flux_endpoint(request: pytest.FixtureRequest) -> AsyncIterator[MockFluxEndpoint]:
    """A started :class:`~flux_sagemaker.testing.MockFluxEndpoint`, stopped after the test.

    Configure it with ``@pytest.mark.flux_endpoint(...)``; point a client at it with
    ``FluxClient("any", **flux_endpoint.client_kwargs())``. The test errors at teardown if
    the mock's own request handling raised (:attr:`~.MockFluxEndpoint.handler_errors`): the
    client would have seen only a stream reset, and a passing test would hide the mock's bug.
    """
    from flux_sagemaker.testing.server import MockFluxEndpoint

    async with MockFluxEndpoint(**endpoint_kwargs(request.node)) as endpoint:
        yield endpoint
    if endpoint.handler_errors:
        pytest.fail(f"the mock endpoint's request handling raised: {endpoint.handler_errors!r}")
