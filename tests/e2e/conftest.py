"""Fixtures of the end-to-end suite (helpers live in :mod:`.helpers`)."""

from __future__ import annotations

from typing import Any

import pytest

from flux_sagemaker.testing import MockFluxEndpoint

from .helpers import SAMPLE, EndpointFactory


@pytest.fixture
def endpoint() -> EndpointFactory:
    """A factory of mock endpoints playing the sample's script unless told otherwise.

    Use it as ``async with endpoint(bundle=..., tls=...) as ep:``.
    """

    def make(**kwargs: Any) -> MockFluxEndpoint:
        kwargs.setdefault("script", SAMPLE.turns)
        return MockFluxEndpoint(**kwargs)

    return make
