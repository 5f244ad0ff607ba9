"""The one range check behind the policies' and timeouts' attrs validators."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import ValidationError

__all__ = ["number_in_range"]


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: the float math after it fails too
        return False


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
    if above_low and low == 0 and high == math.inf:
        wanted = "a positive number"
    elif high == math.inf:
        wanted = f"a number {'above' if above_low else 'from'} {low}"
    else:
        wanted = f"a number from {low} to {high}"
    if unit:
        wanted += f" of {unit}"
    if optional:
        wanted += " or None"

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not _finite(value)
            or not (low < value if above_low else low <= value)
            or not value <= high
        ):
            name = f"{type(instance).__name__}.{attribute.name}"
            try:
                shown = repr(value)
            except ValueError:  # an int past Python's int-to-str digit limit
                shown = f"<{type(value).__name__} too large to show>"
            raise ValidationError(f"{name} must be {wanted}, got {shown}")

    return check
