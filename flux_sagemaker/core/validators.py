"""The one range check behind the policies' and timeouts' attrs validators, and the
constructors' checks of plain number arguments."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import ValidationError

__all__ = ["check_number", "number_in_range"]


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: the float math after it fails too
        return False


def _wanted(low: float, high: float, above_low: bool, integer: bool, unit: str) -> str:
    if above_low and low == 0 and high == math.inf:
        wanted = "a positive integer" if integer else "a positive number"
    elif high == math.inf and integer:
        wanted = f"an integer >= {low}"
    elif high == math.inf:
        wanted = f"a number {'above' if above_low else 'from'} {low}"
    else:
        wanted = f"{'an integer' if integer else 'a number'} from {low} to {high}"
    return f"{wanted} of {unit}" if unit else wanted


def _in_range(value: object, low: float, high: float, above_low: bool, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return False
    # An int needs no finiteness check (and one too large for a float would fail it).
    if not integer and not _finite(value):
        return False
    return (low < value if above_low else low <= value) and value <= high


def _shown(value: object) -> str:
    try:
        return repr(value)
    except ValueError:  # an int past Python's int-to-str digit limit
        return f"<{type(value).__name__} too large to show>"


def check_number(
    name: str,
    value: object,
    low: float,
    high: float = math.inf,
    *,
    above_low: bool = False,
    integer: bool = False,
) -> None:
    """Refuse ``value`` unless it is an ``int`` or ``float`` (not ``bool``; only ``int`` when
    ``integer``) from ``low`` to ``high``, with a :class:`ValidationError` naming ``name``.

    For a constructor's plain arguments; the same rule as :func:`number_in_range`.
    """
    if not _in_range(value, low, high, above_low, integer):
        wanted = _wanted(low, high, above_low, integer, "")
        raise ValidationError(f"{name} must be {wanted}, got {_shown(value)}")


def number_in_range(
    low: float,
    high: float = math.inf,
    *,
    above_low: bool = False,
    optional: bool = False,
    unit: str = "",
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator: a finite ``int`` or ``float`` (not ``bool``) from ``low`` to ``high``.

    Args:
        low: The smallest value allowed (excluded when ``above_low``).
        high: The largest value allowed.
        above_low: Refuse ``low`` itself (``number_in_range(0, above_low=True)``: positive).
        optional: Also allow ``None``.
        unit: Named in the message, e.g. ``"seconds"``.

    The :class:`~flux_sagemaker.errors.ValidationError` names the class and the field.
    """
    wanted = _wanted(low, high, above_low, False, unit)
    if optional:
        wanted += " or None"

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not _in_range(value, low, high, above_low, False):
            name = f"{type(instance).__name__}.{attribute.name}"
            raise ValidationError(f"{name} must be {wanted}, got {_shown(value)}")

    return check
