"""Flux server messages as attrs frozen values, and the one lenient parser that makes them.

:func:`parse_server_message` runs for every server message, so it is a single ``json.loads`` and
plain dict lookups. All leniency lives here (flux.md section 2):

- unknown fields are ignored; unknown ``type`` values become :class:`Unknown`; an unknown TurnInfo
  ``event`` stays a plain :class:`TurnInfo`; ``event`` and ``trigger`` stay ``str`` (open enums);
- numbers may arrive as numeric strings (``"1.3"``), integers as integral floats (``3.0``);
- a missing or ``null`` optional field gets a default: ``request_id`` and ``sequence_id`` ``None``,
  strings ``""``, numbers ``0`` / ``0.0``, lists ``()``, ``trigger`` and word timings ``None``,
  a word's ``confidence`` ``0.0``, ConfigureSuccess ``thresholds`` all ``None``;
- a TurnInfo needs its ``event`` and ``turn_index`` (turn tracking is keyed on them).

Anything else (bytes that are not UTF-8 JSON, a non-object, no string ``type``, NaN or Infinity, a
field whose type cannot be read) raises :class:`~flux_sagemaker.errors.MessageParseError`.

Every message keeps the decoded object as ``raw``. It is left out of ``repr`` (it can be large) and
out of equality and hashing (two messages that mean the same compare equal, and dicts don't hash).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final, TypeAlias, final

import attrs

from flux_sagemaker.errors import MessageParseError

__all__ = [
    "ConfigureFailure",
    "ConfigureSuccess",
    "Connected",
    "EagerEndOfTurn",
    "EndOfTurn",
    "ServerError",
    "ServerMessage",
    "ServerWarning",
    "StartOfTurn",
    "Thresholds",
    "Trigger",
    "TurnEventType",
    "TurnInfo",
    "TurnResumed",
    "Unknown",
    "Update",
    "Word",
    "parse_server_message",
]


class TurnEventType(StrEnum):
    """Known values of ``TurnInfo.event`` (the field itself stays ``str``)."""

    START_OF_TURN = "StartOfTurn"
    UPDATE = "Update"
    EAGER_END_OF_TURN = "EagerEndOfTurn"
    TURN_RESUMED = "TurnResumed"
    END_OF_TURN = "EndOfTurn"


class Trigger(StrEnum):
    """Known values of ``EndOfTurn.trigger`` (the field itself stays ``str``)."""

    MODEL = "model"
    MANUAL = "manual"
    TIMEOUT = "timeout"


@final
@attrs.frozen(kw_only=True)
class Word:
    """One word of a transcript; ``start``/``end`` (seconds) are absent on older servers."""

    word: str
    confidence: float
    start: float | None = None
    end: float | None = None


@final
@attrs.frozen(kw_only=True)
class Connected:
    """The session is open (``sequence_id`` 0); audio may flow."""

    request_id: str | None = None
    sequence_id: int | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class TurnInfo:
    """A turn update. Known events are the subclasses; an unknown ``event`` is a plain TurnInfo."""

    request_id: str | None = None
    sequence_id: int | None = None
    event: str
    """The event name (open enum, compare with :class:`TurnEventType`)."""
    turn_index: int
    """Which turn this is; increments right after an ``EndOfTurn``."""
    audio_window_start: float = 0.0
    """Start of the transcribed audio range, in seconds."""
    audio_window_end: float = 0.0
    """End of the transcribed audio range, in seconds."""
    transcript: str = ""
    """The whole turn so far, not a delta."""
    words: tuple[Word, ...] = ()
    end_of_turn_confidence: float = 0.0
    trigger: str | None = None
    """Why the turn ended (``EndOfTurn`` only; open enum, compare with :class:`Trigger`)."""
    languages: tuple[str, ...] = ()
    """Detected languages, most words first (``flux-general-multi``)."""
    languages_hinted: tuple[str, ...] = ()
    """Language hints active for this turn (``flux-general-multi``)."""
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def average_confidence(self) -> float | None:
        """The mean word confidence, or ``None`` without words (Pipecat's ``min_confidence``)."""
        if not self.words:
            return None
        return sum(w.confidence for w in self.words) / len(self.words)


@final
@attrs.frozen(kw_only=True)
class StartOfTurn(TurnInfo):
    """The user started speaking; the transcript is non-empty (the barge-in trigger)."""

    event: str = attrs.field(default=TurnEventType.START_OF_TURN.value, init=False)


@final
@attrs.frozen(kw_only=True)
class Update(TurnInfo):
    """About every 0.25 s of audio, inside or between turns (then with an empty transcript)."""

    event: str = attrs.field(default=TurnEventType.UPDATE.value, init=False)


@final
@attrs.frozen(kw_only=True)
class EagerEndOfTurn(TurnInfo):
    """The turn probably ended (eager mode); a ``TurnResumed`` or ``EndOfTurn`` follows."""

    event: str = attrs.field(default=TurnEventType.EAGER_END_OF_TURN.value, init=False)


@final
@attrs.frozen(kw_only=True)
class TurnResumed(TurnInfo):
    """The user kept speaking after an ``EagerEndOfTurn``; drop any speculative work."""

    event: str = attrs.field(default=TurnEventType.TURN_RESUMED.value, init=False)


@final
@attrs.frozen(kw_only=True)
class EndOfTurn(TurnInfo):
    """The turn is final."""

    event: str = attrs.field(default=TurnEventType.END_OF_TURN.value, init=False)
    synthetic: bool = False
    """Made by the client from the last ``Update``: the server ended an open turn without one."""

    @classmethod
    def promote(cls, last: TurnInfo) -> EndOfTurn:
        """A synthetic ``EndOfTurn`` carrying ``last``'s fields (its ``trigger`` is ``None``)."""
        skip = {"event", "trigger"}
        fields = {
            a.name: getattr(last, a.name) for a in attrs.fields(TurnInfo) if a.name not in skip
        }
        return cls(**fields, synthetic=True)


@final
@attrs.frozen(kw_only=True)
class Thresholds:
    """The thresholds a ``ConfigureSuccess`` reports as active (each may be absent)."""

    eot_threshold: float | None = None
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int | None = None


@final
@attrs.frozen(kw_only=True)
class ConfigureSuccess:
    """A ``Configure`` was applied; carries the full active configuration."""

    request_id: str | None = None
    sequence_id: int | None = None
    thresholds: Thresholds = Thresholds()
    keyterms: tuple[str, ...] = ()
    language_hints: tuple[str, ...] | None = None
    numerals: bool | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@final
@attrs.frozen(kw_only=True)
class ConfigureFailure:
    """A ``Configure`` was refused; the previous configuration stays (wire field ``code``)."""

    request_id: str | None = None
    sequence_id: int | None = None
    code: str = ""
    description: str = ""
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@final
@attrs.frozen(kw_only=True)
class ServerWarning:
    """Flux's ``Warning`` message (e.g. ``FORCE_END_TURN_NO_ACTIVE_TURN``); the stream goes on."""

    request_id: str | None = None
    sequence_id: int | None = None
    code: str = ""
    description: str = ""
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@final
@attrs.frozen(kw_only=True)
class ServerError:
    """Flux's fatal ``Error`` message; the server closes the stream after it."""

    sequence_id: int | None = None
    code: str = ""
    description: str = ""
    request_id: str | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@final
@attrs.frozen(kw_only=True)
class Unknown:
    """A message whose ``type`` this library does not know; kept, never dropped."""

    type: str | None
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


ServerMessage: TypeAlias = (
    Connected
    | TurnInfo
    | ConfigureSuccess
    | ConfigureFailure
    | ServerWarning
    | ServerError
    | Unknown
)


# ---- parsing -------------------------------------------------------------------------------------

# Each digit belongs to one run only: with "[0-9]+\.?[0-9]*" a digit string could split between
# the two runs any way, and refusing one (server-controlled) took time quadratic in its length.
_NUMERIC: Final = re.compile(r"\s*-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*")


class _Bad(Exception):
    """A field could not be read; turned into MessageParseError with the payload."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + "..."


def _float(obj: dict[str, Any], key: str, default: float | None) -> Any:
    value = obj.get(key)
    if type(value) is float and math.isfinite(value):  # the common case first
        return value
    if value is None:
        return default
    if isinstance(value, str) and _NUMERIC.fullmatch(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"{key} is {_show(value)}, not a number")
    try:
        result = float(value)
    except OverflowError:
        raise _Bad(f"{key} is too large") from None
    if not math.isfinite(result):
        raise _Bad(f"{key} is {_show(value)}, not a finite number")
    return result


def _int(obj: dict[str, Any], key: str, default: int | None) -> Any:
    value = obj.get(key)
    if value is None or type(value) is int:  # the common case first
        return default if value is None else value
    number = _float(obj, key, None)
    if not number.is_integer():
        raise _Bad(f"{key} is {_show(value)}, not an integer")
    return int(number)


def _str(obj: dict[str, Any], key: str, default: str | None) -> Any:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _Bad(f"{key} is {_show(value)}, not a string")
    return value


def _strs(obj: dict[str, Any], key: str, default: tuple[str, ...] | None) -> Any:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{key} is {_show(value)}, not a list of strings")
    return tuple(value)


def _dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"{key} is {_show(value)}, not an object")
    return value


def _checked_word(item: object) -> Word:
    if not isinstance(item, dict):
        raise _Bad(f"a word is {_show(item)}, not an object")
    return Word(
        word=_str(item, "word", ""),
        confidence=_float(item, "confidence", 0.0),
        start=_float(item, "start", None),
        end=_float(item, "end", None),
    )


# Word's slot setters, in field order. attrs' frozen __init__ sets each field through
# object.__setattr__ (0.7 us a word, keywords included); the slots take 0.35 us. An Update
# carries every word of its turn so far, about four times a second per stream.
_WORD_SETTERS: Final = tuple(Word.__dict__[field.name].__set__ for field in attrs.fields(Word))


def _words(obj: dict[str, Any]) -> tuple[Word, ...]:
    value = obj.get("words")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad(f"words is {_show(value)}, not a list")
    set_word, set_confidence, set_start, set_end = _WORD_SETTERS
    words = []
    for item in value:
        if type(item) is dict:
            text, confidence = item.get("word"), item.get("confidence")
            start, end = item.get("start"), item.get("end")
            if (
                type(text) is str
                and type(confidence) is float
                and type(start) is float
                and type(end) is float
                # x - x is 0.0 only for a finite x (NaN and infinities give NaN).
                and confidence - confidence == start - start == end - end == 0.0
            ):
                word = object.__new__(Word)
                set_word(word, text)
                set_confidence(word, confidence)
                set_start(word, start)
                set_end(word, end)
                words.append(word)
                continue
        words.append(_checked_word(item))  # anything else: defaults, conversions, errors
    return tuple(words)


def _ids(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": _str(obj, "request_id", None),
        "sequence_id": _int(obj, "sequence_id", None),
        "raw": obj,
    }


_TURN_CLASSES: Final[dict[str, type[TurnInfo]]] = {
    TurnEventType.START_OF_TURN: StartOfTurn,
    TurnEventType.UPDATE: Update,
    TurnEventType.EAGER_END_OF_TURN: EagerEndOfTurn,
    TurnEventType.TURN_RESUMED: TurnResumed,
    TurnEventType.END_OF_TURN: EndOfTurn,
}


def _turn_info(obj: dict[str, Any]) -> TurnInfo:
    event = _str(obj, "event", None)
    turn_index = _int(obj, "turn_index", None)
    if event is None or turn_index is None:
        raise _Bad("a TurnInfo needs event and turn_index")
    fields = {
        **_ids(obj),
        "turn_index": turn_index,
        "audio_window_start": _float(obj, "audio_window_start", 0.0),
        "audio_window_end": _float(obj, "audio_window_end", 0.0),
        "transcript": _str(obj, "transcript", ""),
        "words": _words(obj),
        "end_of_turn_confidence": _float(obj, "end_of_turn_confidence", 0.0),
        "trigger": _str(obj, "trigger", None),
        "languages": _strs(obj, "languages", ()),
        "languages_hinted": _strs(obj, "languages_hinted", ()),
    }
    cls = _TURN_CLASSES.get(event)
    return TurnInfo(event=event, **fields) if cls is None else cls(**fields)


def _configure_success(obj: dict[str, Any]) -> ConfigureSuccess:
    thresholds = _dict(obj, "thresholds")
    numerals = obj.get("numerals")
    if numerals is not None and not isinstance(numerals, bool):
        raise _Bad(f"numerals is {_show(numerals)}, not a bool")
    return ConfigureSuccess(
        **_ids(obj),
        thresholds=Thresholds(
            eot_threshold=_float(thresholds, "eot_threshold", None),
            eager_eot_threshold=_float(thresholds, "eager_eot_threshold", None),
            eot_timeout_ms=_int(thresholds, "eot_timeout_ms", None),
        ),
        keyterms=_strs(obj, "keyterms", ()),
        language_hints=_strs(obj, "language_hints", None),
        numerals=numerals,
    )


def _coded(cls: type[ConfigureFailure | ServerWarning | ServerError]) -> Callable[..., Any]:
    def parse(obj: dict[str, Any]) -> Any:
        return cls(
            **_ids(obj), code=_str(obj, "code", ""), description=_str(obj, "description", "")
        )

    return parse


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ServerMessage]]] = {
    "TurnInfo": _turn_info,
    "Connected": lambda obj: Connected(**_ids(obj)),
    "ConfigureSuccess": _configure_success,
    "ConfigureFailure": _coded(ConfigureFailure),
    "Warning": _coded(ServerWarning),
    "Error": _coded(ServerError),
}


def _refuse_constant(name: str) -> None:
    raise _Bad(f"{name} is not a JSON number")


# One decoder for every message: json.loads with any option builds a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant)


def _parse(payload: bytes | str) -> ServerMessage:
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    obj = _DECODER.decode(text)
    if not isinstance(obj, dict):
        raise _Bad(f"a {type(obj).__name__}, not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _Bad(f"type is {_show(kind)}, not a string")
    parser = _PARSERS.get(kind)
    return Unknown(type=kind, raw=obj) if parser is None else parser(obj)


def parse_server_message(payload: bytes | str) -> ServerMessage:
    """Parse one Flux server message (a UTF-8 JSON object with a string ``type``).

    Raises:
        MessageParseError: For anything that is not such an object, or a field that cannot be read.
    """
    try:
        return _parse(payload)
    except (ValueError, RecursionError, _Bad) as exc:  # JSONDecodeError, UnicodeDecodeError too
        raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
        raise MessageParseError(f"bad Flux server message: {exc}", raw=raw[:200]) from exc
