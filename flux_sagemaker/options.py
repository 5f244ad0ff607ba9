"""Policies of a FluxClient that are plain values: keepalive, watchdog and rollover."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from .errors import ValidationError

__all__ = ["KeepalivePolicy", "RolloverPolicy"]

#: SageMaker ends a bidirectional stream after 30 minutes.
SAGEMAKER_MAX_STREAM_SECONDS = 30 * 60


def _seconds(
    low: float, high: float, *, optional: bool = False
) -> Callable[[object, attrs.Attribute[object], object], None]:
    def check(_instance: object, attribute: attrs.Attribute[object], value: object) -> None:
        if value is None and optional:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise ValidationError(
                f"{attribute.name} must be a number of seconds from {low} to {high}"
                + (" or None" if optional else "")
                + f", got {value!r}"
            )

    return check


@attrs.frozen(kw_only=True)
class KeepalivePolicy:
    """What the client sends on its own so that Flux keeps producing events.

    Flux is clocked by audio: after ``StartOfTurn``, no ``EndOfTurn`` comes unless audio keeps
    arriving, and SageMaker has no event-level ping. So the client fills gaps with silence.
    """

    turn_silence_after: float | None = attrs.field(
        default=0.5, validator=_seconds(0.05, 60, optional=True)
    )
    """While a turn is open and the application sends nothing for this long, send silence in
    real time so that ``EndOfTurn`` still arrives. ``None`` disables it."""
    idle_interval: float | None = attrs.field(
        default=10.0, validator=_seconds(0.1, 3600, optional=True)
    )
    """While no turn is open and no audio flows, send one tiny silent frame this often so the
    stream stays alive (Deepgram's own harness uses 10 s). ``None`` disables it."""
    stall_timeout: float | None = attrs.field(
        default=10.0, validator=_seconds(0.1, 3600, optional=True)
    )
    """Audio flowed but no server event arrived for this long: the stream is stalled
    (:class:`~flux_sagemaker.errors.StreamStalled`) and is recovered. ``None`` disables it."""

    @classmethod
    def disabled(cls) -> KeepalivePolicy:
        """Send nothing on our own and never declare a stall."""
        return cls(turn_silence_after=None, idle_interval=None, stall_timeout=None)


@attrs.frozen(kw_only=True)
class RolloverPolicy:
    """When to move a long session to a fresh stream, before SageMaker's 30-minute limit."""

    max_stream_duration: float = attrs.field(
        default=SAGEMAKER_MAX_STREAM_SECONDS - 30, validator=_seconds(1, 24 * 3600)
    )
    """A stream is switched over at the latest this long after it opened."""
    margin: float = attrs.field(default=120.0, validator=_seconds(0, 3600))
    """From ``max_stream_duration - margin`` on, switch at the first turn boundary."""
    credential_margin: float = attrs.field(default=300.0, validator=_seconds(0, 3600))
    """Switch to a stream signed with fresh credentials this long before they expire."""
