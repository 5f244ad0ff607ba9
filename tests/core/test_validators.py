"""number_in_range, the attrs validator behind the policies and the transport timeouts, and
check_number, the same rule for constructors' plain arguments."""

from __future__ import annotations

import math

import attrs
import pytest

from flux_sagemaker.core.validators import check_number, number_in_range
from flux_sagemaker.errors import ValidationError


@attrs.define
class Limits:
    ratio: float = attrs.field(default=1.0, validator=number_in_range(0.5, 2))
    wait: float | None = attrs.field(
        default=None, validator=number_in_range(0, above_low=True, optional=True, unit="seconds")
    )


@pytest.mark.parametrize("ratio", [0.5, 1, 2, 1.25])
def test_the_bounds_are_inclusive(ratio: float) -> None:
    assert Limits(ratio=ratio).ratio == ratio


@pytest.mark.parametrize("ratio", [0.49, 2.01, math.nan, math.inf, True, "1", None])
def test_out_of_range_or_not_a_number_is_refused(ratio: object) -> None:
    with pytest.raises(ValidationError, match=r"Limits\.ratio must be a number from 0.5 to 2, got"):
        Limits(ratio=ratio)  # type: ignore[arg-type]


def test_above_low_excludes_low_and_optional_allows_none() -> None:
    assert Limits(wait=None).wait is None
    assert Limits(wait=0.001).wait == 0.001
    message = r"Limits\.wait must be a positive number of seconds or None, got 0"
    with pytest.raises(ValidationError, match=message):
        Limits(wait=0)
    with pytest.raises(ValidationError, match="got -1"):
        Limits(wait=-1)


def test_an_open_upper_bound_is_described() -> None:
    check = number_in_range(3, above_low=True)
    attribute = attrs.fields(Limits).ratio
    check(Limits(), attribute, 3.5)
    with pytest.raises(ValidationError, match="must be a number above 3, got 3"):
        check(Limits(), attribute, 3)


@pytest.mark.parametrize("digits", [400, 5000])
def test_an_int_too_large_for_a_float_is_refused(digits: int) -> None:
    # Finite in principle, but no float holds it: refused, not an OverflowError (nor a
    # ValueError from repr() past Python's int-to-str digit limit).
    with pytest.raises(ValidationError, match=r"Limits\.wait must be a positive number"):
        Limits(wait=10**digits)


@pytest.mark.parametrize("value", [0, 1.0, True, "2", None])
def test_check_number_for_integers_names_the_argument(value: object) -> None:
    with pytest.raises(ValidationError, match=r"^streams must be an integer >= 1, got "):
        check_number("streams", value, 1, integer=True)


def test_check_number_accepts_the_bounds_and_any_int_size() -> None:
    check_number("window", 1, 1, 2**31 - 1, integer=True)
    check_number("window", 2**31 - 1, 1, 2**31 - 1, integer=True)
    check_number("events", 10**400, 1, integer=True)  # an int needs no float
    check_number("ms", 10_000, 0, 10_000)
    with pytest.raises(ValidationError, match=r"^window must be an integer from 1 to 2147483647"):
        check_number("window", 2**31, 1, 2**31 - 1, integer=True)
    with pytest.raises(ValidationError, match=r"^ms must be a number from 0 to 10000, got nan"):
        check_number("ms", math.nan, 0, 10_000)
