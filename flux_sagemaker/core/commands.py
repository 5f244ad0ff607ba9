"""Flux client control messages as the exact JSON bytes to send (as ``UTF8`` payload parts).

Audio is not here: it goes out as raw ``BINARY`` payload parts. Flux has no ``KeepAlive``, and
the SageMaker bundles reject ``Finalize`` (flux.md 3.5), so neither exists here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import attrs

from flux_sagemaker.core import settings as _s
from flux_sagemaker.core.settings import BundleCapabilities, FluxSettings
from flux_sagemaker.errors import CapabilityError, ValidationError

__all__ = [
    "CLOSE_STREAM",
    "CONFIGURABLE_FIELDS",
    "FORCE_END_TURN",
    "Configure",
    "close_stream",
    "force_end_turn",
]

#: Byte for byte what the AWS SDK capture sends (compact separators).
CLOSE_STREAM: Final = b'{"type":"CloseStream"}'
FORCE_END_TURN: Final = b'{"type":"ForceEndTurn"}'
#: The FluxSettings fields a ``Configure`` can change mid-stream.
CONFIGURABLE_FIELDS: Final = frozenset(
    {
        "eot_threshold",
        "eager_eot_threshold",
        "eot_timeout_ms",
        "keyterms",
        "language_hints",
        "numerals",
    }
)


def close_stream() -> bytes:
    """``CloseStream``: decode what was sent, then close (newer Flux sends no final EndOfTurn)."""
    return CLOSE_STREAM


def force_end_turn() -> bytes:
    """``ForceEndTurn``: end the open turn now (``EndOfTurn`` with trigger ``manual``)."""
    return FORCE_END_TURN


def _keyterms(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else _s.check_keyterms(value)


def _language_hints(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else _s.check_language_hints(value)


@attrs.frozen(kw_only=True)
class Configure:
    """A mid-stream ``Configure``: only the fields given are sent, and applied atomically.

    The thresholds are flat here and nested under ``"thresholds"`` on the wire. ``keyterms``
    replaces the whole list (``[]`` clears it); ``language_hints`` replaces the hints (``[]``
    clears them, ``None`` keeps them). Values are validated with the same rules as
    :class:`~flux_sagemaker.core.settings.FluxSettings`; :meth:`apply_to` also checks the
    combination against the settings in force.
    """

    eot_threshold: float | None = attrs.field(default=None, converter=_s.check_eot_threshold)
    eager_eot_threshold: float | None = attrs.field(
        default=None, converter=_s.check_eager_eot_threshold
    )
    eot_timeout_ms: int | None = attrs.field(default=None, converter=_s.check_eot_timeout_ms)
    keyterms: tuple[str, ...] | None = attrs.field(default=None, converter=_keyterms)
    language_hints: tuple[str, ...] | None = attrs.field(default=None, converter=_language_hints)
    numerals: bool | None = attrs.field(default=None, converter=_s.check_numerals)

    def __attrs_post_init__(self) -> None:
        if all(getattr(self, a.name) is None for a in attrs.fields(Configure)):
            raise ValidationError("Configure needs at least one field to change")
        eot, eager = self.eot_threshold, self.eager_eot_threshold
        if eot is not None and eager is not None and eager > eot:
            raise ValidationError(
                f"eager_eot_threshold={eager!r} is invalid:"
                f" expected at most eot_threshold ({eot!r})"
            )

    def to_json(self) -> bytes:
        """The message, compact UTF-8 JSON with only the given fields."""
        message: dict[str, Any] = {"type": "Configure"}
        thresholds = {
            name: getattr(self, name)
            for name in ("eot_threshold", "eager_eot_threshold", "eot_timeout_ms")
            if getattr(self, name) is not None
        }
        if thresholds:
            message["thresholds"] = thresholds
        for name in ("keyterms", "language_hints", "numerals"):
            value = getattr(self, name)
            if value is not None:
                message[name] = list(value) if isinstance(value, tuple) else value
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def apply_to(self, settings: FluxSettings) -> FluxSettings:
        """The settings after this change (to reconnect where the bundle cannot ``Configure``).

        Raises:
            ValidationError: The result is invalid, e.g. ``eager_eot_threshold`` above the
                effective ``eot_threshold``, or language hints on a model without them.
        """
        changes = {
            a.name: getattr(self, a.name)
            for a in attrs.fields(Configure)
            if getattr(self, a.name) is not None
        }
        return settings.with_changes(**changes)

    def check_capabilities(self, caps: BundleCapabilities) -> None:
        """Raise :class:`CapabilityError` if the bundle does not accept ``Configure`` at all, or
        not ``numerals`` (a bundle that refuses the parameter is not sent it in-band either)."""
        if not caps.configure:
            raise CapabilityError(
                "this Flux bundle does not accept Configure (a fatal UNPARSABLE_CLIENT_MESSAGE);"
                " reconnect with Configure.apply_to(settings) instead"
            )
        if self.numerals is not None and not caps.numerals_param:
            raise CapabilityError("this Flux bundle refuses numerals; leave it None")
