"""Sans-I/O check of a request body: every envelope's CRCs and chained signature, then its event.

:class:`EventVerifier` checks what the client streams after the opening request: each envelope's
CRCs (our decoder) and chained signature (:class:`~flux_sagemaker.core.signing.SignatureChain`,
the same code that signs), then decodes the inner ``PayloadPart``. Get one for a verified request
from :meth:`.verifier.RequestVerifier.event_verifier`.
"""

from __future__ import annotations

import codecs
import hmac
from collections.abc import Mapping
from typing import Final

import attrs

from flux_sagemaker.core.eventstream import EventStreamDecoder, Timestamp, decode_message
from flux_sagemaker.core.signing import SERVICE, SignatureChain
from flux_sagemaker.errors import FrameError, ValidationError
from flux_sagemaker.testing.rejections import EventSignatureError

__all__ = ["EventSignatureError", "EventVerifier", "InputEnded", "InputEvent", "VerifiedEvent"]

_DATA_TYPES: Final = frozenset({"BINARY", "UTF8"})


@attrs.frozen
class InputEvent:
    """One verified ``PayloadPart`` of the request body."""

    data_type: str
    """``"BINARY"`` (audio) or ``"UTF8"`` (a JSON control message)."""
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    """The part's bytes."""
    date_ms: int
    """The envelope's ``:date``, milliseconds since the epoch."""
    headers: Mapping[str, object] = attrs.field(repr=False)
    """All headers of the inner message."""
    completion_state: str | None = None
    """``"PARTIAL"``, ``"COMPLETE"`` or ``None``."""


@attrs.frozen
class InputEnded:
    """The final empty envelope arrived: the client sends no more events."""

    date_ms: int
    """The envelope's ``:date``, milliseconds since the epoch."""


VerifiedEvent = InputEvent | InputEnded
"""What :meth:`EventVerifier.receive_data` returns for each envelope."""


def _bad_event(message: str) -> EventSignatureError:
    return EventSignatureError(400, "ValidationError", message)


@attrs.define(eq=False)
class EventVerifier:
    """Verifies the request body: feed it bytes, get the events back once their signatures check.

    After any :class:`EventSignatureError` the verifier is broken and keeps raising.
    """

    secret_key: str = attrs.field(repr=False, kw_only=True)
    """The secret key of the access key that signed the request."""
    region: str = attrs.field(kw_only=True)
    """The region of the request's credential scope."""
    seed_signature: str = attrs.field(repr=False, kw_only=True)
    """The request's hex signature."""
    service: str = attrs.field(default=SERVICE, kw_only=True)
    """The service of the credential scope."""
    _chain: SignatureChain = attrs.field(init=False, repr=False)
    _decoder: EventStreamDecoder = attrs.field(init=False, factory=EventStreamDecoder, repr=False)
    _ended: bool = attrs.field(init=False, default=False)
    _error: EventSignatureError | None = attrs.field(init=False, default=None, repr=False)
    # PARTIAL UTF8 parts reach Flux as the fragments of one text frame: only the whole message
    # must be UTF-8, so a part may end inside a character.
    _utf8: codecs.IncrementalDecoder = attrs.field(
        init=False, factory=codecs.getincrementaldecoder("utf-8"), repr=False
    )

    def __attrs_post_init__(self) -> None:
        self._chain = SignatureChain(
            self.secret_key, self.region, self.seed_signature, self.service
        )

    @property
    def ended(self) -> bool:
        """Whether the final empty envelope has arrived."""
        return self._ended

    def receive_data(self, data: bytes) -> list[VerifiedEvent]:
        """Add body bytes; return the events of the envelopes they completed, in order.

        Raises:
            EventSignatureError: A bad signature (403 ``InvalidSignatureException``), or a bad
                frame, inner message, or data after the final envelope (400 ``ValidationError``).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._receive(data)
        except EventSignatureError as exc:
            self._error = exc
            raise

    def eof(self) -> None:
        """The body ended; raise :class:`EventSignatureError` if it ended inside an envelope."""
        if self._decoder.buffered_bytes:
            raise _bad_event(
                f"the body ended inside an envelope ({self._decoder.buffered_bytes} bytes)"
            )

    def _receive(self, data: bytes) -> list[VerifiedEvent]:
        if self._ended and data:
            raise _bad_event("data after the final empty envelope")
        try:
            envelopes = self._decoder.receive_data(data)
        except FrameError as exc:
            raise _bad_event(f"malformed envelope: {exc.message}") from exc
        error = self._decoder.error
        if error is not None:  # after the envelopes returned: refuse them all
            raise _bad_event(f"malformed envelope: {error.message}") from error
        events: list[VerifiedEvent] = []
        for envelope in envelopes:
            if self._ended:
                raise _bad_event("data after the final empty envelope")
            date = envelope.headers.get(":date")
            sent = envelope.headers.get(":chunk-signature")
            if len(envelope.headers) != 2 or not isinstance(date, Timestamp):
                raise _bad_event(
                    "an envelope must have exactly :date (timestamp) and :chunk-signature"
                )
            if not isinstance(sent, bytes) or len(sent) != 32:
                raise _bad_event(":chunk-signature must be 32 bytes")
            try:
                _record, expected = self._chain.next_signature(int(date), envelope.payload)
            except ValidationError as exc:
                raise _bad_event(exc.message) from None
            if not hmac.compare_digest(expected, sent):
                raise EventSignatureError(
                    403,
                    "InvalidSignatureException",
                    f"event at {int(date)} ms: the chunk signature we calculated "
                    "does not match the one you provided",
                )
            if not envelope.payload:
                self._ended = True
                events.append(InputEnded(int(date)))
            else:
                events.append(self._inner_event(int(date), envelope.payload))
        return events

    def _inner_event(self, date_ms: int, payload: bytes) -> InputEvent:
        try:
            inner = decode_message(payload)
        except FrameError as exc:
            raise _bad_event(f"malformed inner message: {exc.message}") from exc
        if inner.header_str(":message-type") != "event" or (
            inner.header_str(":event-type") != "PayloadPart"
        ):
            raise _bad_event("the inner message must be a PayloadPart event")
        # DataType is optional in the API model (the AWS SDK's ``data_type`` defaults to None),
        # and deepgram-sagemaker, written for SageMaker, sends audio without it. We take such a
        # part as BINARY, as that transport relies on (not checked against SageMaker itself).
        data_type = inner.header_str("DataType")
        if data_type is None:
            data_type = "BINARY"
        if data_type not in _DATA_TYPES:
            raise _bad_event(f"DataType must be BINARY or UTF8, got {data_type!r}")
        completion = inner.header_str("CompletionState")
        if completion not in (None, "PARTIAL", "COMPLETE"):
            raise _bad_event(f"CompletionState must be PARTIAL or COMPLETE, got {completion!r}")
        if data_type == "UTF8":
            try:
                self._utf8.decode(inner.payload, final=completion != "PARTIAL")
            except UnicodeDecodeError:
                raise _bad_event("a UTF8 PayloadPart is not valid UTF-8") from None
        return InputEvent(
            data_type=data_type,
            payload=inner.payload,
            date_ms=date_ms,
            headers=dict(inner.headers),
            completion_state=completion,
        )
