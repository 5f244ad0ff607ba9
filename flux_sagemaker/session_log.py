"""The log records of one session: which endpoint and stream they are about.

A voice agent runs many sessions in one process, so a line such as "Flux stream failed;
recovering" is only useful if it says whose. Every record a :class:`~flux_sagemaker.FluxClient`
logs (logger ``flux_sagemaker``) starts with ``[endpoint request-id]`` and carries, for
formatters and structured logging, ``flux_endpoint``, ``flux_request_id`` (the current stream's,
``None`` before the first) and the application's own ``log_extra`` (a call id, say).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from .errors import ValidationError

__all__ = ["SessionLog", "check_log_extra"]

# What a LogRecord already has: logging refuses an ``extra`` that would overwrite any of it,
# at the time of logging (KeyError), so a bad key must be refused when the client is made.
_RESERVED: frozenset[str] = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "flux_endpoint",
    "flux_request_id",
}


def check_log_extra(log_extra: object) -> dict[str, object]:
    """Return ``log_extra`` as a dict, or raise ``ValidationError`` for what logging refuses.

    Raises:
        ValidationError: not a mapping, a key that is not a ``str``, or a key a log record
            already has (``message``, ``name``, ``flux_request_id``...).
    """
    if log_extra is None:
        return {}
    if not isinstance(log_extra, Mapping):
        raise ValidationError(f"log_extra must be a mapping, got {type(log_extra).__name__}")
    extra = dict(log_extra)
    for key in extra:
        if not isinstance(key, str):
            raise ValidationError(f"log_extra keys must be str, got {key!r}")
        if key in _RESERVED:
            raise ValidationError(f"log_extra key {key!r} is a log record attribute already")
    return extra


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """``logger`` for one session: prefixes the message and adds the session's fields."""

    def __init__(
        self, logger: logging.Logger, endpoint_name: str, extra: Mapping[str, object]
    ) -> None:
        super().__init__(logger, dict(extra))
        # %-escaped: the prefix becomes part of the format string.
        self._endpoint = endpoint_name.replace("%", "%%")
        self._endpoint_name = endpoint_name
        self.request_id: str | None = None
        """The current stream's request id (the client sets it as streams open)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Add ``[endpoint request-id]`` and the session's fields to one record."""
        request_id = self.request_id
        kwargs["extra"] = {
            **(self.extra or {}),
            "flux_endpoint": self._endpoint_name,
            "flux_request_id": request_id,
        }
        where = self._endpoint
        if request_id is not None:
            where += " " + request_id.replace("%", "%%")
        return f"[{where}] {msg}", kwargs
