"""One SageMaker bidirectional stream carrying Flux, as a sans-I/O state machine.

:class:`StreamProtocol` turns calls into the bytes to write (signed event-stream envelopes) and
the bytes read into events, in the shape of h2's ``receive_data``/``data_to_send`` and wsproto's
``send``::

    proto = StreamProtocol(signer)
    wire = proto.send_audio(pcm)                 # bytes for the request body
    for event in proto.receive_data(chunk):      # bytes from the response body
        ...
    proto.receive_eof()                          # the server ended its side

Events are the Flux server messages of :mod:`.events`, plus :class:`StreamEnded` and
:class:`StreamFailed`, which the shell uses to decide between finishing and recovering. A fatal
condition is always the last event of a batch, after every message that preceded it on the wire.
"""

from __future__ import annotations

import enum

import attrs

from ..errors import FluxError, FrameError, LocalProtocolError, MessageParseError
from . import commands
from .error_mapping import server_error, stream_error
from .events import Connected, ServerError, ServerMessage, parse_server_message
from .eventstream import EventStreamDecoder, Message, encode_headers, encode_message_raw
from .signing import EventSigner

__all__ = ["StreamEnded", "StreamEvent", "StreamFailed", "StreamProtocol", "StreamState"]

_CONTENT_TYPE = "application/octet-stream"
# Inner message headers in the order the AWS SDK writes them; encoded once.
_BINARY_HEADERS = encode_headers(
    {
        ":message-type": "event",
        ":event-type": "PayloadPart",
        "DataType": "BINARY",
        ":content-type": _CONTENT_TYPE,
    }
)
_UTF8_HEADERS = encode_headers(
    {
        ":message-type": "event",
        ":event-type": "PayloadPart",
        "DataType": "UTF8",
        ":content-type": _CONTENT_TYPE,
    }
)
# Flux sends one small JSON document per PayloadPart; a PARTIAL run longer than this is hostile.
MAX_REASSEMBLED_MESSAGE = 1024 * 1024


class StreamState(enum.Enum):
    """Where one stream is in its life."""

    #: Request sent; Flux has not said ``Connected`` yet.
    OPENING = "opening"
    #: ``Connected`` received; audio and control messages flow.
    OPEN = "open"
    #: ``CloseStream`` sent; reading until the server ends its side.
    CLOSING = "closing"
    #: The server ended the response cleanly.
    ENDED = "ended"
    #: The stream failed; see the :class:`StreamFailed` event.
    FAILED = "failed"


@attrs.frozen
class StreamEnded:
    """The server ended the response stream cleanly."""


@attrs.frozen
class StreamFailed:
    """The stream cannot continue.

    Attributes:
        error: What went wrong; ``error.retryable`` says whether a new stream may help.
    """

    error: FluxError


StreamEvent = ServerMessage | StreamEnded | StreamFailed


@attrs.define(eq=False)
class StreamProtocol:
    """The client side of one bidirectional stream: signed events out, Flux messages in.

    Args:
        signer: The event signer seeded with this stream's request signature.
        request_id: SageMaker's ``x-amzn-requestid`` of this stream, for errors.
    """

    signer: EventSigner = attrs.field(repr=False)
    request_id: str | None = None
    state: StreamState = StreamState.OPENING
    #: Flux's own request id, from ``Connected``.
    flux_request_id: str | None = None
    _decoder: EventStreamDecoder = attrs.field(factory=EventStreamDecoder, repr=False)
    _partial: bytearray = attrs.field(factory=bytearray, repr=False)
    _input_ended: bool = False

    # -- sending -----------------------------------------------------------------------------

    def _check_input_open(self, what: str) -> None:
        if self._input_ended:
            raise LocalProtocolError(f"cannot send {what}: the input stream has ended")
        if self.state is StreamState.FAILED:
            raise LocalProtocolError(f"cannot send {what}: the stream has failed")

    def send_audio(self, audio: bytes) -> bytes:
        """Return the signed event carrying ``audio`` as a BINARY payload part."""
        self._check_input_open("audio")
        return self.signer.sign(encode_message_raw(_BINARY_HEADERS, audio))

    def send_json(self, message: bytes) -> bytes:
        """Return the signed event carrying a Flux control message as a UTF8 payload part."""
        self._check_input_open("a control message")
        return self.signer.sign(encode_message_raw(_UTF8_HEADERS, message))

    def send_close_stream(self) -> bytes:
        """Return the signed ``CloseStream``; afterwards the stream drains."""
        data = self.send_json(commands.close_stream())
        if self.state in (StreamState.OPENING, StreamState.OPEN):
            self.state = StreamState.CLOSING
        return data

    def end_input(self) -> bytes:
        """Return the final empty signed envelope; nothing can be sent after it."""
        if self._input_ended:
            return b""
        self._input_ended = True
        return self.signer.sign_empty()

    @property
    def can_send(self) -> bool:
        """Whether events can still be sent: the input is open and the stream has not failed."""
        return not self._input_ended and self.state is not StreamState.FAILED

    @property
    def input_ended(self) -> bool:
        """Whether the final empty envelope was produced."""
        return self._input_ended

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[StreamEvent]:
        """Feed response-body bytes; return the events they complete, in wire order."""
        if self.state in (StreamState.FAILED, StreamState.ENDED):
            return []
        try:
            messages = self._decoder.receive_data(data)
        except FrameError as exc:
            return self._fail(exc)
        events: list[StreamEvent] = []
        for message in messages:
            event = self._handle(message)
            if event is None:
                continue
            events.append(event)
            if isinstance(event, StreamFailed):
                self.state = StreamState.FAILED
                return events
        if self._decoder.error is not None:
            # A corrupt frame after the messages just handled.
            events += self._fail(self._decoder.error)
        return events

    def receive_eof(self) -> list[StreamEvent]:
        """The server ended the response stream; return the final event."""
        if self.state in (StreamState.FAILED, StreamState.ENDED):
            return []
        try:
            self._decoder.eof()
        except FrameError as exc:
            return self._fail(exc)
        if self._partial:
            return self._fail(FrameError("the response ended inside a PARTIAL payload part"))
        self.state = StreamState.ENDED
        return [StreamEnded()]

    def _fail(self, error: FluxError) -> list[StreamEvent]:
        if error.request_id is None:
            error.request_id = self.request_id
        self.state = StreamState.FAILED
        return [StreamFailed(error)]

    def _handle(self, message: Message) -> StreamEvent | None:
        message_type = message.headers.get(":message-type")
        if message_type in ("exception", "error"):
            return StreamFailed(stream_error(message, request_id=self.request_id))
        if message_type != "event" or message.headers.get(":event-type") != "PayloadPart":
            # Unmodelled event types are skipped, as the AWS SDKs do.
            return None
        payload = message.payload
        if message.headers.get("CompletionState") == "PARTIAL" or self._partial:
            if len(self._partial) + len(payload) > MAX_REASSEMBLED_MESSAGE:
                return StreamFailed(
                    FrameError(
                        f"PARTIAL payload parts exceed {MAX_REASSEMBLED_MESSAGE} bytes",
                        request_id=self.request_id,
                    )
                )
            self._partial += payload
            if message.headers.get("CompletionState") == "PARTIAL":
                return None
            payload = bytes(self._partial)
            self._partial.clear()
        if not payload:
            return None
        try:
            event = parse_server_message(payload)
        except MessageParseError as exc:
            exc.request_id = self.request_id
            return StreamFailed(exc)
        if isinstance(event, Connected):
            self.flux_request_id = event.request_id
            if self.state is StreamState.OPENING:
                self.state = StreamState.OPEN
        elif isinstance(event, ServerError):
            # Flux closes the stream after a fatal Error; the shell raises it after delivery.
            return StreamFailed(server_error(event, request_id=self.request_id))
        return event
