"""What the mock endpoint can do wrong on purpose: request failures and in-stream faults."""

from __future__ import annotations

import enum
import json

import attrs

from flux_sagemaker.errors import ValidationError

__all__ = ["Fault", "FaultKind", "RequestFailure"]


class FaultKind(enum.Enum):
    """The in-stream faults :class:`~flux_sagemaker.testing.MockFluxEndpoint` can inject."""

    #: Close the TCP connection without a frame.
    DROP_CONNECTION = "drop_connection"
    #: Send GOAWAY (last stream id below this stream), then close the connection.
    GOAWAY = "goaway"
    #: Reset the stream with RST_STREAM(INTERNAL_ERROR).
    RESET_STREAM = "reset_stream"
    #: Keep reading audio but send no event any more (Flux went silent).
    STALL = "stall"
    #: Stop reading the socket and answering PINGs (the whole peer went silent).
    SILENT_CONNECTION = "silent_connection"
    #: Send SageMaker's ``ModelStreamError`` exception event and end the response.
    MODEL_STREAM_ERROR = "model_stream_error"
    #: Send SageMaker's ``InternalStreamFailure`` exception event and end the response.
    INTERNAL_STREAM_FAILURE = "internal_stream_failure"
    #: Send a fatal Flux ``Error`` message and end the response.
    FLUX_ERROR = "flux_error"
    #: A slow server: ``latency`` seconds pass before each later message goes out, one after
    #: another, and no input is read meanwhile (messages queue behind each other, and HTTP/2
    #: flow control holds the client's audio back once the windows fill).
    LATENCY = "latency"
    #: End the response cleanly, as if the server were done.
    END_STREAM = "end_stream"
    #: Answer 200 but never send ``Connected`` (nor anything else); ``after_audio_s`` is ignored.
    NO_CONNECTED = "no_connected"


def _fault_kind(value: FaultKind | str) -> FaultKind:
    # A plain string would never equal an enum member: the fault would silently never strike,
    # and a test meant to exercise it would pass without it. Its value is accepted instead.
    if isinstance(value, FaultKind):
        return value
    try:
        return FaultKind(value)
    except ValueError:
        kinds = ", ".join(kind.value for kind in FaultKind)
        raise ValidationError(f"Fault kind {value!r} is not one of: {kinds}") from None


def _check_index(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    # Any other value names no stream: the fault would silently never strike.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(f"Fault {attribute.name} must be an int >= 0, got {value!r}")


def _check_seconds(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    # A string would fail only mid-stream, reported as a bug of the mock.
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValidationError(f"Fault {attribute.name} must be seconds >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Fault:
    """A fault that strikes one stream once it has received ``after_audio_s`` of audio.

    Attributes:
        kind: What goes wrong: a :class:`FaultKind`, or its value (``"reset_stream"``).
        after_audio_s: Seconds of audio the stream must have received first.
        stream_index: Which stream of the endpoint (0 = the first one opened) it strikes.
        latency: Seconds of delay, for :attr:`FaultKind.LATENCY`.
        error_code: The error code sent with exception events and Flux errors.
    """

    kind: FaultKind = attrs.field(converter=_fault_kind)
    after_audio_s: float = attrs.field(default=0.0, validator=_check_seconds)
    stream_index: int = attrs.field(default=0, validator=_check_index)
    latency: float = attrs.field(default=0.0, validator=_check_seconds)
    error_code: str = ""


@attrs.frozen(kw_only=True)
class RequestFailure:
    """An error answer to the next request(s), as SageMaker sends it before a stream starts."""

    status: int
    error_type: str
    message: str
    extra: tuple[tuple[str, object], ...] = ()

    def body(self) -> bytes:
        """The JSON body SageMaker would send."""
        return json.dumps({"message": self.message, **dict(self.extra)}).encode()

    @classmethod
    def throttling(cls) -> RequestFailure:
        """``ThrottlingException`` (400), retryable."""
        return cls(status=400, error_type="ThrottlingException", message="Rate exceeded")

    @classmethod
    def service_unavailable(cls) -> RequestFailure:
        """``ServiceUnavailable`` (503), retryable."""
        return cls(status=503, error_type="ServiceUnavailable", message="Service is unavailable")

    @classmethod
    def internal_error(cls) -> RequestFailure:
        """``InternalFailure`` (500), retryable."""
        return cls(status=500, error_type="InternalFailure", message="An internal error occurred")

    @classmethod
    def model_error(
        cls, message: str = "Failed to establish WebSocket connection"
    ) -> RequestFailure:
        """``ModelError`` (424): the container refused the session."""
        return cls(
            status=424,
            error_type="ModelError",
            message=message,
            extra=(("OriginalStatusCode", 400), ("OriginalMessage", message)),
        )

    @classmethod
    def access_denied(cls) -> RequestFailure:
        """``AccessDeniedException`` (403)."""
        return cls(
            status=403,
            error_type="AccessDeniedException",
            message="User is not authorized to perform: sagemaker:InvokeEndpoint",
        )
