"""Flux connection settings: validated once, rendered as SageMaker's model query string.

SageMaker forwards ``X-Amzn-SageMaker-Model-Query-String`` to the container, and the container
rejects a bad parameter at its WebSocket handshake, which the caller only sees as a generic 424 or
``ModelStreamError`` (flux.md section 1). So everything is checked here, before any I/O, and each
:class:`~flux_sagemaker.errors.ValidationError` names the field, the value and what is allowed.

Decisions beyond the wire spec:

- ``model``: only the known Flux models, unless ``allow_unknown_model=True`` (then any
  ``flux-...`` name; ``language_hints`` is then allowed too, since we cannot know).
- ``eot_threshold`` uses the newer range 0.5-1.0 and ``eot_timeout_ms`` 500-60000 (flux.md 8.1).
- ``keyterms`` and ``tags`` are stripped of surrounding whitespace; control characters are refused.
- ``language_hints`` are case-insensitive; a locale (``en-GB``, ``en_US``) is reduced to its base
  code, as the server does, and duplicates are dropped. ``None`` means ``()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote, unquote

import attrs

from flux_sagemaker.errors import CapabilityError, ValidationError

__all__ = [
    "DEFAULT_EOT_THRESHOLD",
    "INVOCATION_PATH",
    "LANGUAGE_CODES",
    "MAX_QUERY_STRING_LENGTH",
    "QUERY_STRING_PATTERN",
    "SAMPLE_RATES",
    "BundleCapabilities",
    "Encoding",
    "FluxSettings",
    "Model",
    "Redact",
    "check_eager_eot_threshold",
    "check_eot_threshold",
    "check_eot_timeout_ms",
    "check_keyterms",
    "check_language_hints",
    "check_numerals",
    "check_tags",
    "format_float",
]

INVOCATION_PATH: Final = "v2/listen"
MAX_QUERY_STRING_LENGTH: Final = 2048
#: SageMaker's ``ModelQueryString`` pattern (sagemaker.md section 1): no empty values, no ``+``.
QUERY_STRING_PATTERN: Final = re.compile(
    r"[a-zA-Z0-9][A-Za-z0-9_-]*=(?:[A-Za-z0-9._~\-]|%[0-9A-Fa-f]{2})+"
    r"(?:&[a-zA-Z0-9][A-Za-z0-9_-]*=(?:[A-Za-z0-9._~\-]|%[0-9A-Fa-f]{2})+)*"
)
_KEY_PATTERN: Final = re.compile(r"[a-zA-Z0-9][A-Za-z0-9_-]*")
_FLUX_MODEL_PATTERN: Final = re.compile(r"flux-[a-z0-9]+(?:[-.][a-z0-9]+)*")
_LANGUAGE_TAG: Final = re.compile(r"([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*")
_CONTROL_OR_SURROGATE: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_UNSIGNED_INT: Final = re.compile(r"[0-9]{1,9}")
_DECIMAL: Final = re.compile(r"[0-9]{1,20}(?:\.[0-9]{0,40})?|\.[0-9]{1,40}")


class Model(StrEnum):
    """The Flux models this library knows."""

    GENERAL_EN = "flux-general-en"
    GENERAL_MULTI = "flux-general-multi"


class Encoding(StrEnum):
    """Raw audio encodings Flux accepts; ``None`` in :class:`FluxSettings` means containerized."""

    LINEAR16 = "linear16"
    LINEAR32 = "linear32"
    MULAW = "mulaw"
    ALAW = "alaw"
    OPUS = "opus"
    OGG_OPUS = "ogg-opus"


class Redact(StrEnum):
    """Values of the ``redact`` parameter."""

    NUMBERS = "numbers"
    AGGRESSIVE_NUMBERS = "aggressive_numbers"


_MODELS: Final = frozenset(m.value for m in Model)
SAMPLE_RATES: Final = (8000, 16000, 24000, 44100, 48000)
LANGUAGE_CODES: Final = frozenset({"en", "es", "fr", "de", "hi", "ru", "pt", "ja", "it", "nl"})
#: The server's ``eot_threshold`` when none is given; ``eager_eot_threshold`` is checked against it.
DEFAULT_EOT_THRESHOLD: Final = 0.7
EOT_THRESHOLD_RANGE: Final = (0.5, 1.0)
EAGER_EOT_THRESHOLD_RANGE: Final = (0.3, 0.9)
EOT_TIMEOUT_MS_RANGE: Final = (500, 60000)
MAX_KEYTERMS: Final = 100
MAX_KEYTERM_LENGTH: Final = 100
MAX_TAG_LENGTH: Final = 128

_REPEATED = {"keyterm": "keyterms", "language_hint": "language_hints", "tag": "tags"}
_SINGLE = (
    "model", "encoding", "sample_rate", "eager_eot_threshold", "eot_threshold", "eot_timeout_ms",
    "numerals", "profanity_filter", "redact", "mip_opt_out",
)  # fmt: skip
_KNOWN_PARAMS = frozenset(_SINGLE) | _REPEATED.keys() | set(_REPEATED.values())
# Nova (/v1) parameters that Flux rejects at the handshake (flux.md section 1).
_NOT_FLUX_PARAMS = frozenset(
    {"language", "smart_format", "diarize", "interim_results", "endpointing", "keywords"}
)


# Validating converters, shared with commands.Configure. Each returns the normalized value.


def _fail(field: str, value: object, allowed: str) -> ValidationError:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's int-to-str digit limit
        text = f"<{type(value).__name__} too large to show>"
    if len(text) > 80:
        text = f"{text[:60]}... ({len(text)} characters)"
    return ValidationError(f"{field}={text} is invalid: expected {allowed}")


def _number(field: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(field, value, f"a number from {low} to {high}")
    try:
        result = float(value)
    except OverflowError:  # an int too large for a float is out of range anyway
        raise _fail(field, value, f"a number from {low} to {high}") from None
    if not low <= result <= high:  # also refuses NaN
        raise _fail(field, value, f"a number from {low} to {high}")
    return result


def check_eot_threshold(value: float | None) -> float | None:
    """Validate ``eot_threshold``: ``None`` or a number in 0.5-1.0 (1.0 disables natural ends)."""
    return None if value is None else _number("eot_threshold", value, *EOT_THRESHOLD_RANGE)


def check_eager_eot_threshold(value: float | None) -> float | None:
    """Validate ``eager_eot_threshold``: ``None`` (eager mode off) or a number in 0.3-0.9."""
    if value is None:
        return None
    return _number("eager_eot_threshold", value, *EAGER_EOT_THRESHOLD_RANGE)


def check_eot_timeout_ms(value: int | None) -> int | None:
    """Validate ``eot_timeout_ms``: ``None`` or an int of milliseconds in 500-60000."""
    if value is None:
        return None
    low, high = EOT_TIMEOUT_MS_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail("eot_timeout_ms", value, f"an int from {low} to {high}")
    return value


def _strings(
    field: str, value: object, *, max_count: int | None, max_length: int
) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail(field, value, "a list of strings")
    items = tuple(value)
    if max_count is not None and len(items) > max_count:
        raise ValidationError(f"{field} has {len(items)} items: expected at most {max_count}")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise _fail(field, item, "a list of strings")
        text = str.strip(item)
        if not text or len(text) > max_length or _CONTROL_OR_SURROGATE.search(text):
            allowed = f"non-empty strings of at most {max_length} printable characters"
            raise _fail(f"{field} item", item, allowed)
        out.append(text)
    return tuple(out)


def check_keyterms(value: Iterable[str] | None) -> tuple[str, ...]:
    """Validate ``keyterms``: at most 100 non-empty terms of at most 100 characters, stripped."""
    return _strings("keyterms", value, max_count=MAX_KEYTERMS, max_length=MAX_KEYTERM_LENGTH)


def check_tags(value: Iterable[str] | None) -> tuple[str, ...]:
    """Validate ``tags``: non-empty labels of at most 128 characters, stripped."""
    return _strings("tags", value, max_count=None, max_length=MAX_TAG_LENGTH)


def check_language_hints(value: Iterable[str] | None) -> tuple[str, ...]:
    """Validate ``language_hints``: known codes, locales reduced to the base code, no repeats."""
    out: dict[str, None] = {}
    for item in _strings("language_hints", value, max_count=None, max_length=35):
        match = _LANGUAGE_TAG.fullmatch(item)
        code = match.group(1).lower() if match else ""
        if code not in LANGUAGE_CODES:
            raise _fail("language_hints item", item, f"one of {sorted(LANGUAGE_CODES)}")
        out[code] = None
    return tuple(out)


def _flag(field: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise _fail(field, value, "True, False or None (not a string)")
    return value


def check_numerals(value: bool | None) -> bool | None:
    """Validate ``numerals``: a bool or None (strings like ``"true"`` are refused)."""
    return _flag("numerals", value)


def _profanity_filter(value: bool | None) -> bool | None:
    return _flag("profanity_filter", value)


def _mip_opt_out(value: bool | None) -> bool | None:
    return _flag("mip_opt_out", value)


def _choice(field: str, value: object, choices: Iterable[str], *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    allowed = [str(c) for c in choices]
    if not isinstance(value, str) or value not in allowed:
        raise _fail(field, value, "one of " + ", ".join(allowed) + (" or None" if optional else ""))
    return str.__str__(value)  # a plain str, not the StrEnum member


def _model(value: str) -> str:
    # Which names are allowed depends on allow_unknown_model, so that is checked after init.
    if not isinstance(value, str):
        raise _fail("model", value, "a model name such as " + Model.GENERAL_EN.value)
    return str.__str__(value)


def _encoding(value: str | None) -> str | None:
    return _choice("encoding", value, Encoding, optional=True)


def _redact(value: str | None) -> str | None:
    return _choice("redact", value, Redact, optional=True)


def _sample_rate(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in SAMPLE_RATES:
        raise _fail("sample_rate", value, f"an int, one of {SAMPLE_RATES} (or None)")
    return value


def _extra_params(
    value: Mapping[str, str | Sequence[str]] | tuple[tuple[str, tuple[str, ...]], ...] | None,
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    # Also takes its own stored form (pairs), since attrs.evolve feeds it back in.
    if value is None:
        return ()
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        pairs = list(value)
    else:
        raise _fail("extra_params", value, "a mapping of parameter name to string(s)")
    out = []
    for key, raw in pairs:
        if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
            raise _fail("extra_params key", key, "a name matching [a-zA-Z0-9][A-Za-z0-9_-]*")
        if key in _KNOWN_PARAMS:
            raise ValidationError(f"extra_params key {key!r} shadows a FluxSettings field; use it")
        if key in _NOT_FLUX_PARAMS:
            raise ValidationError(f"extra_params key {key!r} is a Nova parameter, invalid on Flux")
        values = (raw,) if isinstance(raw, str) else raw
        if not isinstance(values, Sequence) or not values:
            raise _fail(f"extra_params[{key!r}]", raw, "a non-empty string or list of them")
        for item in values:
            if not isinstance(item, str) or not item or _CONTROL_OR_SURROGATE.search(item):
                raise _fail(f"extra_params[{key!r}] value", item, "a non-empty printable string")
        out.append((key, tuple(values)))
    return tuple(sorted(out))


def format_float(value: float) -> str:
    """Render a float in its shortest round-tripping form, never with an exponent."""
    text = repr(value)
    return format(Decimal(text), "f") if "e" in text else text


def _quote(value: str) -> str:
    return quote(value, safe="-._~")


@attrs.frozen(kw_only=True)
class FluxSettings:
    """Everything that goes into one Flux session's query string, validated at construction.

    Use :meth:`with_changes` for a modified copy. Unset (``None``) parameters are omitted, so the
    server's defaults apply (``eot_threshold`` 0.7, ``eot_timeout_ms`` 5000, eager mode off).
    """

    model: str = attrs.field(default=Model.GENERAL_EN.value, converter=_model)
    """``flux-general-en`` or ``flux-general-multi`` (others need ``allow_unknown_model``)."""
    encoding: str | None = attrs.field(default=Encoding.LINEAR16.value, converter=_encoding)
    """Raw audio encoding; ``None`` for containerized audio (WAV, Ogg, WebM)."""
    sample_rate: int | None = attrs.field(default=16000, converter=_sample_rate)
    """Hz, for raw audio only; must be ``None`` when ``encoding`` is."""
    eot_threshold: float | None = attrs.field(default=None, converter=check_eot_threshold)
    """End-of-turn confidence, 0.5-1.0; ``None`` leaves the server default (0.7)."""
    eager_eot_threshold: float | None = attrs.field(
        default=None, converter=check_eager_eot_threshold
    )
    """0.3-0.9 and at most the effective ``eot_threshold``; setting it turns on eager mode."""
    eot_timeout_ms: int | None = attrs.field(default=None, converter=check_eot_timeout_ms)
    """Silence (ms, 500-60000) after which a turn ends regardless of confidence."""
    keyterms: tuple[str, ...] = attrs.field(default=(), converter=check_keyterms)
    """Terms to boost (query parameter ``keyterm``, repeated)."""
    language_hints: tuple[str, ...] = attrs.field(default=(), converter=check_language_hints)
    """Expected languages, ``flux-general-multi`` only (``language_hint``, repeated)."""
    numerals: bool | None = attrs.field(default=None, converter=check_numerals)
    """Write numbers as digits. Some SageMaker bundles refuse the parameter."""
    profanity_filter: bool | None = attrs.field(default=None, converter=_profanity_filter)
    """Mask profanity. Some SageMaker bundles refuse the parameter."""
    redact: str | None = attrs.field(default=None, converter=_redact)
    """``numbers`` or ``aggressive_numbers``."""
    mip_opt_out: bool | None = attrs.field(default=None, converter=_mip_opt_out)
    """Opt out of Deepgram's Model Improvement Program."""
    tags: tuple[str, ...] = attrs.field(default=(), converter=check_tags)
    """Usage-reporting labels (``tag``, repeated)."""
    extra_params: tuple[tuple[str, tuple[str, ...]], ...] = attrs.field(
        default=(), converter=_extra_params
    )
    """Parameters newer than this library: give a mapping; stored as sorted (key, values) pairs."""
    allow_unknown_model: bool = attrs.field(default=False, eq=False, repr=False)
    """Accept any ``flux-...`` model name. Not part of equality."""
    _query_string: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        known = self.model in _MODELS
        allowed_unknown = self.allow_unknown_model and _FLUX_MODEL_PATTERN.fullmatch(self.model)
        if not known and not allowed_unknown:
            allowed = ", ".join(Model) + " (other flux-* names need allow_unknown_model=True)"
            raise _fail("model", self.model, allowed)
        if (self.encoding is None) != (self.sample_rate is None):
            raise ValidationError(
                f"encoding={self.encoding!r} with sample_rate={self.sample_rate!r}: raw audio needs"
                " both, containerized audio (encoding=None) needs sample_rate=None"
            )
        eot = DEFAULT_EOT_THRESHOLD if self.eot_threshold is None else self.eot_threshold
        if self.eager_eot_threshold is not None and self.eager_eot_threshold > eot:
            raise ValidationError(
                f"eager_eot_threshold={self.eager_eot_threshold!r} is invalid: expected at most"
                f" eot_threshold ({eot!r}{' by default' if self.eot_threshold is None else ''})"
            )
        if self.language_hints and known and self.model != Model.GENERAL_MULTI:
            raise ValidationError(
                f"language_hints={list(self.language_hints)!r} is invalid for model"
                f" {self.model!r}: only {Model.GENERAL_MULTI.value} accepts language hints"
            )
        qs = self._render()
        if len(qs) > MAX_QUERY_STRING_LENGTH:
            raise ValidationError(
                f"the query string is {len(qs)} characters, {len(qs) - MAX_QUERY_STRING_LENGTH}"
                f" over SageMaker's {MAX_QUERY_STRING_LENGTH}-character limit"
                " (fewer or shorter keyterms/tags?)"
            )
        object.__setattr__(self, "_query_string", qs)

    def _render(self) -> str:
        scalars: list[tuple[str, object]] = [
            ("model", self.model),
            ("encoding", self.encoding),
            ("sample_rate", self.sample_rate),
            ("eager_eot_threshold", self.eager_eot_threshold),
            ("eot_threshold", self.eot_threshold),
            ("eot_timeout_ms", self.eot_timeout_ms),
        ]
        parts = [f"{k}={_render_value(v)}" for k, v in scalars if v is not None]
        parts += [f"keyterm={_quote(v)}" for v in self.keyterms]
        parts += [f"language_hint={v}" for v in self.language_hints]
        flags = [
            ("numerals", self.numerals),
            ("profanity_filter", self.profanity_filter),
            ("redact", self.redact),
            ("mip_opt_out", self.mip_opt_out),
        ]
        parts += [f"{k}={_render_value(v)}" for k, v in flags if v is not None]
        parts += [f"tag={_quote(v)}" for v in self.tags]
        parts += [f"{k}={_quote(v)}" for k, values in self.extra_params for v in values]
        return "&".join(parts)

    def query_string(self) -> str:
        """The ``X-Amzn-SageMaker-Model-Query-String`` value (deterministic order, ``%20``)."""
        return self._query_string

    def with_changes(self, **changes: Any) -> FluxSettings:
        """Return a validated copy with ``changes`` applied.

        Raises:
            ValidationError: a name is not a setting (a typo such as ``eot_treshold``), or a
                value is invalid.
        """
        names = {a.alias for a in attrs.fields(type(self)) if a.init}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValidationError(
                f"not a Flux setting: {', '.join(unknown)} (settings: {', '.join(sorted(names))})"
            )
        return attrs.evolve(self, **changes)

    def check_capabilities(self, caps: BundleCapabilities) -> None:
        """Raise :class:`CapabilityError` if the bundle refuses a parameter these settings use."""
        if self.numerals is not None and not caps.numerals_param:
            raise CapabilityError("this Flux bundle refuses the numerals parameter; leave it None")
        if self.profanity_filter is not None and not caps.profanity_filter_param:
            raise CapabilityError(
                "this Flux bundle refuses the profanity_filter parameter; leave it None"
            )

    @classmethod
    def from_query_string(
        cls, qs: str, *, allow_extra_params: bool = True, allow_unknown_model: bool = False
    ) -> FluxSettings:
        """Parse a model query string as SageMaker forwards it (the mock endpoint's check).

        Unknown parameters become ``extra_params`` when ``allow_extra_params`` (and must satisfy
        its rules); otherwise, like the container's reject-unknown-params gate, they are refused.
        Raises :class:`ValidationError` for anything :class:`FluxSettings` would refuse.
        """
        single: dict[str, str] = {}
        repeated: dict[str, list[str]] = {}
        extra: dict[str, list[str]] = {}
        for part in qs.split("&") if qs else ():
            key, sep, raw = part.partition("=")
            if not sep or not raw or not _KEY_PATTERN.fullmatch(key):
                raise ValidationError(f"query string part {part!r} is not key=value")
            try:
                value = unquote(raw, errors="strict")
            except UnicodeDecodeError:
                raise ValidationError(f"{key}={raw!r} is not percent-encoded UTF-8") from None
            if key in _REPEATED:
                repeated.setdefault(_REPEATED[key], []).append(value)
            elif key in _SINGLE:
                if key in single:
                    raise ValidationError(f"{key} is given more than once")
                single[key] = value
            elif allow_extra_params:
                extra.setdefault(key, []).append(value)
            else:
                raise ValidationError(f"unknown query parameter {key!r}")
        if "model" not in single:
            raise ValidationError("model is required in the query string")
        kwargs: dict[str, Any] = {k: _parse_param(k, v) for k, v in single.items()} | repeated
        kwargs.setdefault("encoding", None)
        kwargs.setdefault("sample_rate", None)
        return cls(**kwargs, extra_params=extra, allow_unknown_model=allow_unknown_model)


def _render_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(value)
    return str(value)  # model, encoding and redact names are all unreserved characters


def _parse_param(key: str, value: str) -> object:
    if key in {"numerals", "profanity_filter", "mip_opt_out"}:
        if value not in {"true", "false"}:
            raise _fail(key, value, "true or false")
        return value == "true"
    if key in {"sample_rate", "eot_timeout_ms"}:
        if not _UNSIGNED_INT.fullmatch(value):
            raise _fail(key, value, "an integer")
        return int(value)
    if key in {"eot_threshold", "eager_eot_threshold"}:
        if not _DECIMAL.fullmatch(value):
            raise _fail(key, value, "a decimal number")
        return float(value)
    return value


def _bool(instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    # A string from a config file ("false") is truthy: the client would send what the bundle
    # answers by ending the stream.
    if not isinstance(value, bool):
        raise _fail(f"{type(instance).__name__}.{attribute.name}", value, "True or False")


@attrs.frozen(kw_only=True)
class BundleCapabilities:
    """What a deployed Flux bundle accepts; Configure, ForceEndTurn and newer params are gated.

    Use a preset for a known SageMaker bundle, or build one from what you have verified.
    """

    configure: bool = attrs.field(default=True, validator=_bool)
    """The bundle accepts ``Configure`` (otherwise it is a fatal ``UNPARSABLE_CLIENT_MESSAGE``)."""
    force_end_turn: bool = attrs.field(default=True, validator=_bool)
    """The bundle accepts ``ForceEndTurn``."""
    numerals_param: bool = attrs.field(default=True, validator=_bool)
    """The bundle accepts the ``numerals`` query parameter."""
    profanity_filter_param: bool = attrs.field(default=True, validator=_bool)
    """The bundle accepts the ``profanity_filter`` query parameter."""
    close_stream_finalizes: bool = attrs.field(default=False, validator=_bool)
    """``CloseStream`` emits a final ``EndOfTurn`` (older bundles); newer Flux does not."""

    @classmethod
    def latest(cls) -> BundleCapabilities:
        """Current hosted Flux: every message and parameter; CloseStream does not finalize."""
        return cls()

    @classmethod
    def flux_english_20260311(cls) -> BundleCapabilities:
        """SageMaker ``flux-english-20260311``: accepts only CloseStream (flux.md 5.5).

        ``numerals`` stops the connection being established (Pipecat PR #5498); ForceEndTurn and
        ``profanity_filter`` are unverified, so off. CloseStream gave a final ``EndOfTurn`` in
        June 2026 (flux.md 3.2).
        """
        return cls(
            configure=False,
            force_end_turn=False,
            numerals_param=False,
            profanity_filter_param=False,
            close_stream_finalizes=True,
        )

    @classmethod
    def flux_multi_20260417(cls) -> BundleCapabilities:
        """SageMaker ``flux-multi-20260417``: Configure yes, ``profanity_filter`` refused.

        Per flux.md 5.5. ForceEndTurn and ``numerals`` are unverified on SageMaker, so off.
        """
        return cls(
            configure=True,
            force_end_turn=False,
            numerals_param=False,
            profanity_filter_param=False,
            close_stream_finalizes=True,
        )
