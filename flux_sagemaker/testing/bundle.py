"""What a simulated Flux bundle accepts: bundle profiles and client-message validation.

Sans-I/O helpers of :mod:`.engine`. :func:`parse_client_message` and :func:`apply_configure`
raise :class:`FatalMessage` for what Flux rejects with a fatal ``UNPARSABLE_CLIENT_MESSAGE``
(bad JSON, an unknown message type, a schema violation such as ``"numerals": "true"`` or flat
thresholds) and :class:`ConfigureRejected` for values out of range (a ``ConfigureFailure``;
the stream continues with the previous configuration). A Configure is atomic.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from flux_sagemaker.errors import RemoteProtocolError, ValidationError

__all__ = [
    "FLUX_ENGLISH_20260311",
    "FLUX_MULTI_20260417",
    "LANGUAGES",
    "MAX_KEYTERMS",
    "NEWEST",
    "ActiveConfig",
    "BundleProfile",
    "ConfigureRejected",
    "FatalMessage",
    "apply_configure",
    "parse_client_message",
]

LANGUAGES = frozenset({"en", "es", "fr", "de", "hi", "ru", "pt", "ja", "it", "nl"})
MAX_KEYTERMS = 100


@attrs.frozen
class BundleProfile:
    """What a Flux container bundle accepts, and how it ends a stream."""

    name: str
    configure: bool = True
    """``Configure`` is accepted; otherwise it is a fatal ``UNPARSABLE_CLIENT_MESSAGE``."""
    force_end_turn: bool = True
    """``ForceEndTurn`` is accepted; otherwise it is fatal like ``Configure``."""
    finalize_on_close: bool = False
    """``CloseStream`` ends an open turn with ``EndOfTurn`` (June-2026 SageMaker bundles)."""
    max_eot_threshold: float = 1.0
    max_eot_timeout_ms: int = 60000
    rejected_params: frozenset[str] = frozenset()
    """Query parameters the container refuses at the handshake (SageMaker answers 424)."""


#: The newest documented behaviour: everything accepted, CloseStream does not finalize.
NEWEST = BundleProfile("newest")
#: ``flux-english-20260311``: accepts only CloseStream; older ranges; finalizes on close.
FLUX_ENGLISH_20260311 = BundleProfile(
    "flux-english-20260311",
    configure=False,
    force_end_turn=False,
    finalize_on_close=True,
    max_eot_threshold=0.9,
    max_eot_timeout_ms=10000,
    rejected_params=frozenset({"numerals", "profanity_filter"}),
)
#: ``flux-multi-20260417``: Configure but no ForceEndTurn; older ranges; finalizes on close.
FLUX_MULTI_20260417 = BundleProfile(
    "flux-multi-20260417",
    force_end_turn=False,
    finalize_on_close=True,
    max_eot_threshold=0.9,
    max_eot_timeout_ms=10000,
    rejected_params=frozenset({"numerals", "profanity_filter"}),
)


@attrs.frozen
class ActiveConfig:
    """The configuration in force; ``Configure`` replaces it atomically."""

    eot_threshold: float
    eager_eot_threshold: float | None
    eot_timeout_ms: int
    keyterms: tuple[str, ...]
    language_hints: tuple[str, ...]
    numerals: bool


class FatalMessage(RemoteProtocolError):
    """The client message is unparsable: the server sends a fatal ``Error`` and closes."""

    code = "UNPARSABLE_CLIENT_MESSAGE"


class ConfigureRejected(ValidationError):
    """A Configure value is out of range: ``ConfigureFailure``, the stream continues."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _variants(bundle: BundleProfile) -> list[str]:
    names = ["CloseStream"]
    names += ["Configure"] if bundle.configure else []
    names += ["ForceEndTurn"] if bundle.force_end_turn else []
    return names


def _not_json(constant: str) -> object:
    raise ValueError(f"expected value, found {constant}")


def parse_client_message(text: str | bytes, bundle: BundleProfile) -> tuple[str, dict[str, Any]]:
    """Parse a UTF8 payload part into ``(type, message)``, as the bundle's serde enum would."""
    try:
        # serde_json reads the text frame as UTF-8 JSON: Python's json would also take bytes
        # in UTF-16 or with a BOM, and NaN or Infinity (json.dumps writes them for a bad float).
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        message = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:  # also too deep a nesting: serde refuses it too
        raise FatalMessage(str(exc)) from exc
    if not isinstance(message, dict):
        raise FatalMessage("invalid type: expected internally tagged enum ClientMessage")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise FatalMessage("missing field `type`")
    names = _variants(bundle)
    if kind not in names:
        # serde's wording, e.g. "unknown variant `Configure`, expected `CloseStream`".
        quoted = [f"`{n}`" for n in names]
        expected = {1: quoted[0], 2: " or ".join(quoted)}.get(len(names))
        expected = expected or "one of " + ", ".join(quoted)
        raise FatalMessage(f"unknown variant `{kind}`, expected {expected}")
    return kind, message


def _number(value: object, name: str, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FatalMessage(f"invalid type: {json.dumps(value)}, expected a number for `{name}`")
    if integer and not isinstance(value, int):
        raise FatalMessage(f"invalid type: floating point `{value}`, expected u32 for `{name}`")
    return value


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FatalMessage(f"invalid type: expected a sequence of strings for `{name}`")
    return tuple(value)


def apply_configure(
    current: ActiveConfig, message: dict[str, Any], model: str, bundle: BundleProfile
) -> ActiveConfig:
    """Return the configuration after the Configure ``message``, validated like Flux does.

    Raises:
        FatalMessage: A schema violation (the stream ends).
        ConfigureRejected: A value out of range (``ConfigureFailure``).
    """
    unknown = set(message) - {"type", "thresholds", "keyterms", "language_hints", "numerals"}
    if unknown:
        raise FatalMessage(f"unknown field `{sorted(unknown)[0]}` in Configure")
    changes: dict[str, Any] = {}
    thresholds = message.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, dict):
            raise FatalMessage("invalid type: expected struct Thresholds for `thresholds`")
        extra = set(thresholds) - {"eot_threshold", "eager_eot_threshold", "eot_timeout_ms"}
        if extra:
            raise FatalMessage(f"unknown field `{sorted(extra)[0]}` in thresholds")
        for name, value in thresholds.items():
            if value is not None:
                changes[name] = _number(value, name, integer=name == "eot_timeout_ms")
    if message.get("keyterms") is not None:
        changes["keyterms"] = _strings(message["keyterms"], "keyterms")
    if message.get("language_hints") is not None:
        changes["language_hints"] = _strings(message["language_hints"], "language_hints")
    if message.get("numerals") is not None:
        if not isinstance(message["numerals"], bool):
            raise FatalMessage(
                f"invalid type: {json.dumps(message['numerals'])}, expected a boolean"
            )
        changes["numerals"] = message["numerals"]
    new = attrs.evolve(current, **changes)
    threshold = "INVALID_THRESHOLD"
    if not 0.5 <= new.eot_threshold <= bundle.max_eot_threshold:
        limit = bundle.max_eot_threshold
        raise ConfigureRejected(threshold, f"eot_threshold must be between 0.5 and {limit}")
    eager = new.eager_eot_threshold
    if eager is not None and not 0.3 <= eager <= 0.9:
        raise ConfigureRejected(threshold, "eager_eot_threshold must be between 0.3 and 0.9")
    if eager is not None and eager > new.eot_threshold:
        description = "eager_eot_threshold must be less than or equal to eot_threshold"
        raise ConfigureRejected(threshold, description)
    if not 500 <= new.eot_timeout_ms <= bundle.max_eot_timeout_ms:
        limit_ms = bundle.max_eot_timeout_ms
        raise ConfigureRejected(threshold, f"eot_timeout_ms must be between 500 and {limit_ms}")
    if len(new.keyterms) > MAX_KEYTERMS or not all(k.strip() for k in new.keyterms):
        description = f"keyterms must be at most {MAX_KEYTERMS} non-empty terms"
        raise ConfigureRejected("INVALID_PARAMETER", description)
    if new.language_hints and model != "flux-general-multi":
        description = f"language_hints is not supported for model {model}"
        raise ConfigureRejected("INVALID_PARAMETER", description)
    hints = tuple(dict.fromkeys(h.split("-")[0].lower() for h in new.language_hints))
    if not set(hints) <= LANGUAGES:
        description = f"unsupported language_hints: {sorted(set(hints) - LANGUAGES)}"
        raise ConfigureRejected("INVALID_PARAMETER", description)
    return attrs.evolve(new, language_hints=hints)
