"""Events the client itself adds to the event iterator, beside Flux's own messages."""

from __future__ import annotations

import attrs

from ..errors import FluxError

__all__ = ["ClientEvent", "Reconnected", "StreamRolledOver"]


@attrs.frozen
class Reconnected:
    """A stream failed and the session continues on a new one.

    The audio since the last completed turn was sent again, so no speech is lost; turn indexes
    and audio times continue on the session's timeline.
    """

    reason: str
    """What happened to the old stream, in words."""
    error: FluxError = attrs.field(eq=False)
    """The retryable error that ended the old stream."""
    attempts: int = 1
    """Streams tried until one opened."""
    resumed_at_s: float = 0.0
    """Session audio time at which the new stream's audio begins (the replay's start)."""
    replayed_audio_s: float = 0.0
    """Seconds of audio sent again on the new stream."""
    dropped_audio_s: float = 0.0
    """Seconds of audio this replay misses: audio after the last completed turn that the replay
    buffer's bound dropped (0 unless the open turn outgrew the buffer). Audio without a fixed
    byte rate (Opus, containers) has no seconds to count: see :attr:`dropped_audio_bytes`."""
    dropped_audio_bytes: int = 0
    """Bytes of accepted audio no stream received: what :attr:`dropped_audio_s` counts or, for
    audio that is not replayed (Opus, containers), what was sent since the old stream failed."""


@attrs.frozen
class StreamRolledOver:
    """The session moved to a fresh stream on purpose (not after a failure).

    This happens before SageMaker's 30-minute stream limit and before the credentials expire,
    at a turn boundary when one comes in time (else mid-turn, the open turn replayed), and at
    once when a setting changes that only a new stream can carry.
    """

    reason: str
    """Why the session switched streams."""
    resumed_at_s: float = 0.0
    """Session audio time at which the new stream's audio begins (the replay's start)."""
    replayed_audio_s: float = 0.0
    """Seconds of audio since the last completed turn sent again on the new stream."""
    dropped_audio_s: float = 0.0
    """Seconds of the open turn's audio the replay buffer's bound dropped (0 unless the turn
    outgrew the buffer; no seconds to count for Opus and containers)."""
    dropped_audio_bytes: int = 0
    """Bytes of accepted audio no stream received: what :attr:`dropped_audio_s` counts or, for
    audio that is not replayed (Opus, containers), what was sent during the switch."""


ClientEvent = Reconnected | StreamRolledOver
