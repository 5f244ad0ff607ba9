"""One accepted stream of the mock endpoint: verify its events, run its engine, inject its fault.

:class:`StreamSession` is the per-stream half of :class:`~flux_sagemaker.testing.MockFluxEndpoint`
(:mod:`.server` accepts or refuses the request, then hands the stream over). It feeds the request
body through the :class:`~.event_verifier.EventVerifier`, the audio and control messages to the
:class:`~.engine.FluxEngine`, records everything on the :class:`~.server.RecordedStream`, and
encodes Flux's answers as SageMaker does: ``PayloadPart`` events, or an exception event when the
model stream breaks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import h2.errors

from ..core.eventstream import encode_headers, encode_message, encode_message_raw
from ..errors import FluxError
from .engine import FluxEngine
from .event_verifier import EventVerifier, InputEnded, InputEvent
from .faults import Fault, FaultKind
from .h2server import ServerStream
from .rejections import VerificationFailure

if TYPE_CHECKING:
    from .server import MockFluxEndpoint, RecordedStream

__all__ = ["RESPONSE_HEADERS", "StreamSession", "exception_event", "payload_part"]

#: The headers of every ``PayloadPart`` the endpoint sends (Flux's JSON messages are UTF8).
RESPONSE_HEADERS = encode_headers(
    {
        ":message-type": "event",
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        "DataType": "UTF8",
        "CompletionState": "COMPLETE",
    }
)


def payload_part(message: Mapping[str, Any]) -> bytes:
    """One Flux message as SageMaker sends it: a ``PayloadPart`` event with compact JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return encode_message_raw(RESPONSE_HEADERS, body)


def exception_event(exception_type: str, message: str, error_code: str) -> bytes:
    """An exception event (``ModelStreamError``, ``InternalStreamFailure``) ending the response."""
    fields: dict[str, str] = {"Message": message}
    if error_code:
        fields["ErrorCode"] = error_code
    return encode_message(
        {
            ":message-type": "exception",
            ":exception-type": exception_type,
            ":content-type": "application/json",
        },
        json.dumps(fields).encode(),
    )


@attrs.define(eq=False)
class StreamSession:
    """One accepted stream: verify events, run the engine, inject the fault."""

    endpoint: MockFluxEndpoint
    """The endpoint that accepted the stream (its faults, limits and script position)."""
    stream: ServerStream
    """The HTTP/2 stream, its 200 response headers already sent."""
    record: RecordedStream
    """Where everything received and sent is recorded."""
    events: EventVerifier
    """Checks the request body's envelopes."""
    engine: FluxEngine
    """The Flux turn engine for this stream."""
    latency: float = 0.0
    """Seconds to wait before each message sent (a ``LATENCY`` fault)."""
    stalled: bool = False
    """Send nothing more (a ``STALL`` or ``NO_CONNECTED`` fault)."""
    response_ended: bool = False
    """The response was ended (END_STREAM sent)."""
    opened_at: float = 0.0
    """``anyio.current_time()`` when the session started."""
    _text_parts: list[bytes] = attrs.field(init=False, factory=list, repr=False)
    """The ``PARTIAL`` UTF8 parts of a control message still being received."""

    async def run(self) -> None:
        """Serve the stream until its request body ends or the stream is broken off."""
        self.opened_at = anyio.current_time()
        pending = self.endpoint._pending_faults(self.record.index)
        for fault in [f for f in pending if f.kind is FaultKind.NO_CONNECTED]:
            # Answer 200 but say nothing, ever: the client's Connected timeout must fire.
            pending.remove(fault)
            self.record.fault = fault
            self.record.error = f"fault: {FaultKind.NO_CONNECTED.value}"
            self.stalled = True
        await self._send(self.engine.connected())
        try:
            while True:
                # SageMaker's limit holds for a client that sends nothing too.
                # A CancelScope, not anyio.move_on_at (new in anyio 4.15; we support 4.5).
                with anyio.CancelScope(deadline=self._deadline()) as waiting:
                    chunk = await self.stream.receive()
                if waiting.cancelled_caught:
                    await self._time_exceeded()
                    return
                if chunk is None:
                    self.events.eof()
                    break
                for event in self.events.receive_data(chunk):
                    if isinstance(event, InputEnded):
                        self.record.input_ended = True
                        self.record.inputs.append("END")
                        continue
                    if await self._on_event(event):
                        return
                if self.engine.closed and not self.response_ended:
                    await self._end_response()
        except VerificationFailure as exc:
            self.record.error = str(exc)
            await self._send_raw(
                encode_message(
                    {
                        ":message-type": "error",
                        ":error-code": exc.error_type,
                        ":error-message": exc.message,
                    }
                )
            )
            await self._end_response()
            return
        except FluxError as exc:
            # The client went away (reset, dropped connection): nothing left to answer.
            self.record.error = self.record.error or str(exc)
            return
        if not self.response_ended:
            await self._end_response()

    async def _on_event(self, event: InputEvent) -> bool:
        """Handle one input event; return True when the stream was broken off."""
        self.record.inputs.append(event.data_type)
        if event.data_type == "BINARY":
            self.record.audio += event.payload
            self.record.audio_events += 1
            self.record.audio_event_sizes.append(len(event.payload))
            if anyio.current_time() >= self._deadline():
                await self._time_exceeded()
                return True
            # Looked up at every event: a fault injected while the stream runs strikes it too.
            pending = self.endpoint._pending_faults(self.record.index)
            if pending:
                heard = self.engine.audio_seconds_received + self._duration(event.payload)
                due = sorted(
                    (
                        f
                        for f in pending
                        if f.kind is not FaultKind.NO_CONNECTED and heard >= f.after_audio_s
                    ),
                    key=lambda f: f.after_audio_s,
                )
                for fault in due:
                    pending.remove(fault)
                    if await self._strike(fault):
                        return True
            messages = self.engine.receive_audio(event.payload)
        else:
            # SageMaker sends PARTIAL...COMPLETE parts as one fragmented WebSocket message.
            self._text_parts.append(event.payload)
            if event.completion_state == "PARTIAL":
                return False
            payload = b"".join(self._text_parts)
            self._text_parts.clear()
            self.record.texts.append(payload.decode("utf-8", "replace"))
            messages = self.engine.receive_text(payload)
        await self._send(messages)
        return False

    def _duration(self, payload: bytes) -> float:
        params = self.engine.params
        if params.encoding in ("opus", "ogg-opus"):
            return 0.0  # not decoded: a fault due after any audio strikes at the first event
        width = 4 if params.encoding == "linear32" else 2 if params.encoding == "linear16" else 1
        return len(payload) / (width * params.sample_rate)

    def _deadline(self) -> float:
        limit = self.endpoint.max_stream_duration
        return math.inf if limit is None else self.opened_at + limit

    async def _time_exceeded(self) -> None:
        await self._break(
            FaultKind.MODEL_STREAM_ERROR,
            "ModelInvocationTimeExceeded",
            "Model invocation exceeded the maximum time",
        )

    async def _strike(self, fault: Fault) -> bool:
        kind = fault.kind
        connection = self.stream.connection
        self.record.fault = fault
        self.record.error = f"fault: {kind.value}"
        if kind is FaultKind.DROP_CONNECTION:
            await connection.abort()
            return True
        if kind is FaultKind.GOAWAY:
            await connection.goaway(error_code=0, last_stream_id=max(0, self.stream.stream_id - 2))
            await connection.abort()
            return True
        if kind is FaultKind.RESET_STREAM:
            await self.stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            return True
        if kind is FaultKind.SILENT_CONNECTION:
            # Hold the stream open on a peer that answers nothing, not even PINGs.
            connection.pause()
            await anyio.sleep_forever()
        if kind is FaultKind.STALL:
            self.stalled = True
            return False
        if kind is FaultKind.LATENCY:
            self.latency = fault.latency
            return False
        if kind is FaultKind.END_STREAM:
            await self._end_response()
            return True
        if kind is FaultKind.FLUX_ERROR:
            await self._send(
                [
                    {
                        "type": "Error",
                        "sequence_id": self.engine.messages_sent,
                        "code": fault.error_code or "INTERNAL_SERVER_ERROR",
                        "description": "injected fault",
                    }
                ]
            )
            await self._end_response()
            return True
        if kind is FaultKind.INTERNAL_STREAM_FAILURE:
            await self._break(kind, fault.error_code, "Internal stream failure")
            return True
        await self._break(kind, fault.error_code or "StreamBroken", "The model stream broke")
        return True

    async def _break(self, kind: FaultKind, error_code: str, message: str) -> None:
        name = (
            "InternalStreamFailure"
            if kind is FaultKind.INTERNAL_STREAM_FAILURE
            else "ModelStreamError"
        )
        await self._send_raw(exception_event(name, message, error_code))
        await self._end_response()

    async def _send(self, messages: Sequence[dict[str, Any]]) -> None:
        if self.stalled or self.response_ended:
            return
        for message in messages:
            self.record.sent.append(message)
            if (
                message.get("type") == "TurnInfo"
                and message.get("event") == "EndOfTurn"
                and self.endpoint.script_scope == "endpoint"
            ):
                self.endpoint._turns_done += 1
            if self.latency:
                await anyio.sleep(self.latency)
            await self._send_raw(payload_part(message))

    async def _send_raw(self, data: bytes) -> None:
        if not self.response_ended:
            await self.stream.send_data(data)

    async def _end_response(self) -> None:
        if self.response_ended:
            return
        self.response_ended = True
        await self.stream.end()
