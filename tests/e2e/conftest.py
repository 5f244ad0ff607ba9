"""Fixtures of the end-to-end suite (helpers live in :mod:`.helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flux_sagemaker.testing import MockFluxEndpoint

from .helpers import SAMPLE, EndpointFactory


@pytest.fixture
def endpoint() -> Iterator[EndpointFactory]:
    """A factory of mock endpoints playing the sample's script unless told otherwise.

    Use it as ``async with endpoint(bundle=..., tls=...) as ep:``.
    """

    made: list[MockFluxEndpoint] = []

    def make(**kwargs: Any) -> MockFluxEndpoint:
        kwargs.setdefault("script", SAMPLE.turns)
        made.append(MockFluxEndpoint(**kwargs))
        return made[-1]

    yield make
    # A crash in the mock resets its stream, which the client may well recover from.
    assert [exc for ep in made for exc in ep.handler_errors] == []
