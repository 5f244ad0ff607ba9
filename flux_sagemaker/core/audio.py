"""Audio formats and event coalescing, sans-I/O.

Flux wants about 80 ms of audio per frame (Flux spec 3.1), and every SageMaker input event costs a
signature and an envelope (SageMaker wire spec 7: the official client sends one event per call,
so 20 ms frames become 50 signed events a second). :class:`AudioCoalescer` turns whatever sizes
the application pushes into sample-aligned events of about ``target_ms``. It never reads a clock:
the shell calls :meth:`AudioCoalescer.flush` when its coalescing window elapses, and before a
control message or the close so that audio and control messages keep their order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import attrs

from flux_sagemaker.core.eventstream import MAX_PAYLOAD_LENGTH
from flux_sagemaker.core.validators import check_number
from flux_sagemaker.errors import ValidationError

if TYPE_CHECKING:
    from flux_sagemaker.core.settings import FluxSettings

__all__ = [
    "MAX_AUDIO_EVENT_BYTES",
    "MAX_COALESCE_MS",
    "MAX_EVENT_FACTOR",
    "AudioCoalescer",
    "AudioFormat",
]

# Bytes per sample of the raw encodings Flux accepts (mono). Formats missing here (``opus``,
# ``ogg-opus``, containerized audio with no ``encoding``) have no fixed sample size.
_SAMPLE_WIDTHS: Final = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}

# The byte that decodes to zero amplitude. Linear PCM (integer or float) is all zero bytes;
# G.711 stores the complement: mu-law 0xFF and A-law 0x55 ^ 0x80 = 0xD5.
_SILENCE_BYTES: Final = {"linear16": 0x00, "linear32": 0x00, "mulaw": 0xFF, "alaw": 0xD5}

#: A coalesced event holds at most this many targets. A bigger push is split so that one signed
#: event never carries seconds of audio (Flux is clocked by audio it has decoded; a huge frame
#: arrives all at once and delays every event behind it).
MAX_EVENT_FACTOR: Final = 4

#: The longest coalescing window, in milliseconds.
MAX_COALESCE_MS: Final = 10_000

#: The most audio one event carries: the event-stream payload limit, less room for the audio
#: event's own prelude and headers inside the signed envelope that carries it.
MAX_AUDIO_EVENT_BYTES: Final = MAX_PAYLOAD_LENGTH - 1024


@attrs.frozen
class AudioFormat:
    """The shape of the audio a session sends, as declared in its query string.

    An encoding this module does not know is treated like Opus: opaque bytes, no sample width.
    """

    encoding: str | None
    """``linear16``, ``linear32``, ``mulaw``, ``alaw``, ``opus``, ``ogg-opus``, or ``None`` for
    containerized audio (WAV, Ogg, WebM) whose header describes itself."""
    sample_rate: int | None
    """Samples per second, or ``None`` for containerized audio."""

    @classmethod
    def from_settings(cls, settings: FluxSettings) -> AudioFormat:
        """The format declared by ``settings.encoding`` and ``settings.sample_rate``."""
        return cls(encoding=settings.encoding, sample_rate=settings.sample_rate)

    @property
    def sample_width(self) -> int | None:
        """Bytes per (mono) sample, or ``None`` when the audio is not sample-aligned bytes."""
        return _SAMPLE_WIDTHS.get(self.encoding or "")

    @property
    def bytes_per_second(self) -> int | None:
        """Bytes per second of audio, or ``None`` when it cannot be known from the format."""
        width = self.sample_width
        if width is None or not self.sample_rate:
            return None
        return width * self.sample_rate

    def _require_rate(self, what: str) -> int:
        rate = self.bytes_per_second
        if rate is None:
            raise ValidationError(
                f"cannot {what} for encoding={self.encoding!r}, sample_rate={self.sample_rate!r}: "
                f"needs raw PCM or G.711 ({', '.join(_SAMPLE_WIDTHS)}) with a sample_rate"
            )
        return rate

    def byte_offset(self, seconds: float) -> int:
        """The byte position of ``seconds`` into a stream, rounded down to a whole sample."""
        rate = self._require_rate("convert seconds to bytes")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValidationError(f"seconds must be a finite number >= 0, got {seconds!r}")
        width = self.sample_width or 1
        position = seconds * rate
        if not math.isfinite(position):  # a finite time whose byte count overflows a float
            raise ValidationError(f"seconds={seconds!r} is too large for a byte offset")
        # round() first so that 0.3 s of 16 kHz audio is 9600 bytes, not 9598 (0.3 * 32000
        # is 9599.999... in binary floating point).
        return math.floor(round(position, 6)) // width * width

    def duration(self, n_bytes: int) -> float:
        """How many seconds of audio ``n_bytes`` hold."""
        rate = self._require_rate("compute a duration")
        if n_bytes < 0:
            raise ValidationError(f"n_bytes must be >= 0, got {n_bytes}")
        return n_bytes / rate

    def silence(self, duration_s: float) -> bytes:
        """``duration_s`` seconds of digital silence, rounded down to whole samples.

        Raises:
            ValidationError: The format has no fixed sample size (Opus, containerized audio),
                so silence cannot be synthesized, or ``duration_s`` is negative.
        """
        n_bytes = self.byte_offset(duration_s)
        return bytes([_SILENCE_BYTES[self.encoding or ""]]) * n_bytes


def _as_view(data: object) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationError(
            f"audio must be bytes, bytearray or memoryview, got {type(data).__name__}"
        )
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


# Validated at construction only: a per-assignment hook costs every audio chunk.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class AudioCoalescer:
    """Regroups pushed audio into sample-aligned events of ``target_ms`` to ``4 x target_ms``.

    Rules, for a format with a known byte rate and ``target_ms > 0`` (``T`` = target bytes):

    - every event returned by :meth:`push` holds between ``T`` and ``MAX_EVENT_FACTOR * T``
      bytes and a whole number of samples;
    - what is left (always fewer than ``T`` bytes) stays pending until a later push fills it or
      :meth:`flush` takes it;
    - a push of ``T`` to ``4 T`` bytes while nothing is pending is returned as it is (no copy if
      it is ``bytes``); a larger one is cut into ``T``-byte events.

    With ``target_ms=0``, or a format without a fixed byte rate (Opus packets must not be cut,
    containers describe themselves), the coalescer passes each non-empty push through as one
    event; one larger than an event can carry (:data:`MAX_AUDIO_EVENT_BYTES`) is cut into
    sample-aligned events, or refused when the format cannot be cut. Input from a ``bytearray``
    or ``memoryview`` is always copied, since the caller may reuse its buffer.
    """

    format: AudioFormat
    """The audio format; gives the sample width and byte rate."""
    target_ms: float = attrs.field(default=80)
    """Target event duration in milliseconds; ``0`` disables coalescing."""
    _target: int = attrs.field(init=False, default=0)
    _width: int | None = attrs.field(init=False, default=None, repr=False)
    _buffer: bytearray = attrs.field(init=False, factory=bytearray, repr=False)

    @target_ms.validator
    def _check_target(self, _attr: attrs.Attribute[float], value: float) -> None:
        check_number("target_ms", value, 0, MAX_COALESCE_MS)

    def __attrs_post_init__(self) -> None:
        rate = self.format.bytes_per_second
        width = self._width = self.format.sample_width
        if rate is not None and width is not None and self.target_ms > 0:
            samples = max(1, round(rate * self.target_ms / 1000) // width)
            self._target = samples * width

    @property
    def target_bytes(self) -> int:
        """Bytes in a target-sized event; ``0`` when coalescing is off."""
        return self._target

    @property
    def pending_bytes(self) -> int:
        """Bytes pushed but not yet returned in an event."""
        return len(self._buffer)

    def push(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add audio; return the events now ready to send, in order (possibly none).

        Raises:
            ValidationError: ``data`` is not a bytes-like object, or its size is not a
                multiple of the sample width.
        """
        # bytes, the usual input, needs no memoryview unless it is cut.
        view = None if type(data) is bytes else _as_view(data)
        size = len(data) if view is None else view.nbytes
        width = self._width
        if width is not None and size % width:
            raise ValidationError(
                f"audio chunk of {size} bytes is not a whole number of {width}-byte "
                f"{self.format.encoding} samples; keep chunks sample-aligned"
            )
        if size == 0:
            return []
        target = self._target
        if target == 0 or (not self._buffer and target <= size <= MAX_EVENT_FACTOR * target):
            if size > MAX_AUDIO_EVENT_BYTES:
                return self._cut_oversized(data if view is None else view, size)
            # Passed through whole: a copy only of a buffer the caller may reuse.
            return [bytes(data) if view is None else view.tobytes()]
        chunk = data if view is None else view
        if not self._buffer:
            if size < target:
                self._buffer.extend(chunk)
                return []
            return self._split(memoryview(chunk))
        buffer = self._buffer
        buffer.extend(chunk)
        if len(buffer) < target:
            return []
        if len(buffer) <= MAX_EVENT_FACTOR * target:
            event = bytes(buffer)
            buffer.clear()
            return [event]
        with memoryview(buffer) as buffered:
            events = self._split(buffered, into_buffer=False)
        del buffer[: len(events) * target]
        return events

    def _split(self, view: memoryview, *, into_buffer: bool = True) -> list[bytes]:
        """Cut ``view`` into target-sized events; keep the remainder pending if ``into_buffer``."""
        target = self._target
        full = view.nbytes // target * target
        events = [view[start : start + target].tobytes() for start in range(0, full, target)]
        if into_buffer:
            self._buffer.extend(view[full:])
        return events

    def _cut_oversized(self, data: bytes | bytearray | memoryview, size: int) -> list[bytes]:
        """A push too large for one event: sample-aligned events of at most the limit."""
        width = self._width
        if width is None:
            raise ValidationError(
                f"audio chunk of {size} bytes is larger than one event carries "
                f"({MAX_AUDIO_EVENT_BYTES} bytes), and {self.format.encoding} audio cannot be "
                "cut; send smaller chunks"
            )
        step = MAX_AUDIO_EVENT_BYTES // width * width
        with memoryview(data) as octets:  # bytes, or a one-dimensional byte view
            return [octets[start : start + step].tobytes() for start in range(0, size, step)]

    def flush(self) -> bytes | None:
        """Take the pending partial event, or ``None`` if nothing is pending.

        Call it when the coalescing window has elapsed, and before sending a control message
        or closing, so the audio goes out first.
        """
        if not self._buffer:
            return None
        event = bytes(self._buffer)
        self._buffer.clear()
        return event
