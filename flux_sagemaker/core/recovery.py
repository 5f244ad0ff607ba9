"""Reconnect policy and audio replay, sans-I/O.

When a stream fails with a retryable error, the client opens a new one after a backoff and sends
again the audio the server has not yet turned into a final transcript. Defaults follow Deepgram's
own SageMaker transport (Flux spec 5.6): 5 retries, 0.1 s to 5 s doubling with full jitter, a
30 s budget, and a replay buffer of 8 MiB.

Nothing here sleeps or reads a clock: :meth:`Backoff.next_delay` takes the current monotonic
time from the caller, and randomness is injected so tests are deterministic.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Final, Literal

import attrs

from flux_sagemaker.core.validators import number_in_range
from flux_sagemaker.errors import ValidationError

__all__ = ["DEFAULT_REPLAY_BYTES", "Backoff", "ReplayBuffer", "RetryPolicy"]

#: Replay bound used by Deepgram's SageMaker transport: 8 MiB is about 4.4 minutes of 16 kHz
#: linear16, far longer than any turn, yet small next to a process's memory.
DEFAULT_REPLAY_BYTES: Final = 8 * 1024 * 1024

Jitter = Literal["full", "equal", "none"]


@attrs.frozen
class RetryPolicy:
    """How the client retries a stream that failed with a retryable error."""

    max_attempts: int = attrs.field(default=5)
    """Reconnect attempts after a failure, before giving up (0 disables retrying)."""
    initial_backoff: float = attrs.field(default=0.1, validator=number_in_range(0, 60))
    """Backoff ceiling of the first attempt, in seconds."""
    max_backoff: float = attrs.field(default=5.0, validator=number_in_range(0, 300))
    """Largest backoff ceiling, in seconds."""
    multiplier: float = attrs.field(default=2.0, validator=number_in_range(1, 10))
    """Growth of the ceiling per attempt."""
    jitter: Jitter = attrs.field(default="full")
    """``full``: uniform in ``[0, ceiling)``; ``equal``: in ``[ceiling/2, ceiling)``;
    ``none``: the ceiling itself."""
    budget: float = attrs.field(default=30.0, validator=number_in_range(0, 3600))
    """Seconds from the first failure after which no new attempt starts."""
    enabled: bool = attrs.field(default=True)
    """``False`` turns retrying off: the first failure is raised."""

    @max_attempts.validator
    def _check_attempts(self, _attr: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise ValidationError(f"max_attempts must be an integer from 0 to 100, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _attr: attrs.Attribute[str], value: str) -> None:
        if value not in ("full", "equal", "none"):
            raise ValidationError(f"jitter must be 'full', 'equal' or 'none', got {value!r}")

    @enabled.validator
    def _check_enabled(self, _attr: attrs.Attribute[bool], value: bool) -> None:
        if not isinstance(value, bool):
            raise ValidationError(f"enabled must be a bool, got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.max_backoff < self.initial_backoff:
            raise ValidationError(
                f"max_backoff ({self.max_backoff}) must be >= initial_backoff "
                f"({self.initial_backoff})"
            )

    def ceiling(self, attempt: int) -> float:
        """The backoff ceiling of the 0-based ``attempt``, before jitter."""
        # min() in log space: multiplier ** attempt overflows long before attempt 100.
        if self.initial_backoff == 0:
            return 0.0
        limit = math.log(self.max_backoff / self.initial_backoff)
        if self.multiplier == 1 or attempt * math.log(self.multiplier) < limit:
            return min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return self.max_backoff


@attrs.define(eq=False)
class Backoff:
    """Backoff state for one run of failures; :meth:`reset` after a stream succeeds.

    ``random`` returns a float in ``[0, 1)`` (``random.random`` in the shell, a fixed sequence in
    tests). The budget counts from the ``now`` of the first :meth:`next_delay` after a reset; a
    delay that would end past the budget is shortened to end on it.
    """

    policy: RetryPolicy
    """The policy being followed."""
    random: Callable[[], float] = attrs.field(repr=False)
    """Source of jitter in ``[0, 1)``."""
    _attempts: int = attrs.field(init=False, default=0)
    _started: float | None = attrs.field(init=False, default=None)

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset."""
        return self._attempts

    @property
    def started(self) -> float | None:
        """The ``now`` of the first delay since the last reset (the budget counts from it)."""
        return self._started

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up.

        Args:
            now: The current monotonic time, in seconds.
        """
        policy = self.policy
        if not policy.enabled or self._attempts >= policy.max_attempts:
            return None
        if self._started is None:
            self._started = now
        remaining = self._started + policy.budget - now
        if remaining <= 0:
            return None
        ceiling = policy.ceiling(self._attempts)
        if policy.jitter == "full":
            delay = ceiling * self._draw()
        elif policy.jitter == "equal":
            delay = ceiling / 2 + ceiling / 2 * self._draw()
        else:
            delay = ceiling
        self._attempts += 1
        return min(delay, remaining)

    def _draw(self) -> float:
        value = self.random()
        # Clamp a misbehaving source rather than sleep for a negative or huge time.
        return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0

    def reset(self) -> None:
        """Start afresh: a stream succeeded, so the next failure begins a new run."""
        self._attempts = 0
        self._started = None


# Validated at construction only: a per-assignment hook costs every audio chunk.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class ReplayBuffer:
    """The audio sent since the last completed turn, bounded, on the session's byte timeline.

    Byte offsets count every byte ever appended: :attr:`total_bytes` is the offset just past
    the newest byte and :attr:`start_offset` the offset of the oldest byte still held. When the
    bound is hit, the oldest audio is dropped, whole samples at a time, and counted in
    :attr:`dropped_bytes` so the client can report a replay that will have a gap.

    ``alignment`` is the sample width: appends must be whole samples, and drops and trims stay
    on sample boundaries, so :meth:`replay` always starts on a sample.
    """

    max_bytes: int = attrs.field(default=DEFAULT_REPLAY_BYTES)
    """Most bytes held (rounded down to whole samples); ``0`` keeps nothing."""
    alignment: int = attrs.field(default=1, kw_only=True)
    """Sample width in bytes."""
    _chunks: deque[bytes] = attrs.field(init=False, factory=deque, repr=False)
    _held: int = attrs.field(init=False, default=0)
    _start: int = attrs.field(init=False, default=0)
    _dropped: int = attrs.field(init=False, default=0)
    _needed_from: int = attrs.field(init=False, default=0)

    @max_bytes.validator
    def _check_max(self, _attr: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationError(f"max_bytes must be an integer >= 0, got {value!r}")

    @alignment.validator
    def _check_alignment(self, _attr: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
            raise ValidationError(f"alignment must be an integer from 1 to 8, got {value!r}")

    @property
    def capacity(self) -> int:
        """The bound in bytes, rounded down to whole samples."""
        return self.max_bytes // self.alignment * self.alignment

    @property
    def start_offset(self) -> int:
        """Session byte offset of the first byte :meth:`replay` returns."""
        return self._start

    @property
    def total_bytes(self) -> int:
        """Bytes appended since the buffer was created (the offset of the next append)."""
        return self._start + self._held

    @property
    def held_bytes(self) -> int:
        """Bytes currently held."""
        return self._held

    @property
    def dropped_bytes(self) -> int:
        """Bytes dropped, since creation, because the bound was hit (trims are not drops)."""
        return self._dropped

    def take_gap(self) -> int:
        """Bytes a replay now would miss: needed (after the last trim, or the last gap taken)
        but dropped for the bound. Taken once: the next gap counts from here.

        :attr:`dropped_bytes` also counts drops no replay needed any more (audio of a long
        turn that has since ended), so it is no measure of one replay's gap.
        """
        gap = max(0, self._start - self._needed_from)
        self._needed_from = self._start
        return gap

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Record audio that was just sent.

        Raises:
            ValidationError: ``data`` is not a whole number of samples.
        """
        chunk = bytes(data)
        if len(chunk) % self.alignment:
            raise ValidationError(
                f"replay chunk of {len(chunk)} bytes is not a whole number of "
                f"{self.alignment}-byte samples"
            )
        if not chunk:
            return
        self._chunks.append(chunk)
        self._held += len(chunk)
        excess = self._held - self.capacity
        if excess > 0:
            self._drop_front(excess)
            self._dropped += excess

    def trim_to(self, byte_offset: int) -> None:
        """Forget the audio before ``byte_offset``: the server has finalized it.

        Offsets before :attr:`start_offset` do nothing; offsets past :attr:`total_bytes` are
        clamped to it. The offset is rounded down to a sample boundary.
        """
        if isinstance(byte_offset, bool) or not isinstance(byte_offset, int) or byte_offset < 0:
            raise ValidationError(f"byte_offset must be an integer >= 0, got {byte_offset!r}")
        target = min(byte_offset, self.total_bytes) // self.alignment * self.alignment
        self._needed_from = max(self._needed_from, target)
        if target > self._start:
            self._drop_front(target - self._start)

    def replay(self) -> bytes:
        """The held audio, from :attr:`start_offset` to :attr:`total_bytes`.

        A copy, each time: kept as the buffer's one chunk, it would be copied again, whole, by
        every later append that drops audio from the front (a turn longer than the bound).
        """
        return b"".join(self._chunks)

    def _drop_front(self, n: int) -> None:
        self._start += n
        self._held -= n
        while n:
            first = self._chunks[0]
            if len(first) <= n:
                self._chunks.popleft()
                n -= len(first)
            else:
                self._chunks[0] = first[n:]
                n = 0
