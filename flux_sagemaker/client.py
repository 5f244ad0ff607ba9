"""FluxClient: one Flux session on SageMaker, over one or more HTTP/2 streams.

The client is the thin shell around the sans-I/O core. It resolves where to connect and as whom
(:mod:`.config`), signs the request (:mod:`.core.signing`), opens a stream (:mod:`.pool`), and
pumps bytes between :class:`~.core.protocol.StreamProtocol` and the stream. A session outlives
its streams: a retryable failure opens a new stream and replays the audio since the last
completed turn, and a long session rolls over to a fresh stream before SageMaker's 30-minute
limit. Both happen behind the event iterator, which only sees an informational event.

Tasks: per client, one reader task per live stream and one supervisor task for the timers
(coalescing flush, silence keepalive, stall watchdog, rollover). Writes happen in the caller's
task under one lock, so signing order equals wire order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import botocore.session
from botocore.credentials import Credentials

from .config import ResolvedConfig, resolve_config
from .core import commands
from .core.audio import MAX_COALESCE_MS, AudioCoalescer, AudioFormat
from .core.events import (
    ConfigureFailure,
    ConfigureSuccess,
    Connected,
    EndOfTurn,
    ServerMessage,
    ServerWarning,
    Trigger,
    TurnInfo,
)
from .core.lifecycle import ClientEvent, Reconnected, StreamRolledOver
from .core.protocol import StreamEnded, StreamFailed, StreamState
from .core.recovery import Backoff, ReplayBuffer, RetryPolicy
from .core.request import InvokeRequest
from .core.settings import INVOCATION_PATH, BundleCapabilities, FluxSettings
from .core.timers import (
    FlushAudio,
    KeepalivePolicy,
    RolloverPolicy,
    SendSilence,
    SessionTimers,
    Stalled,
)
from .core.turns import TurnTracker
from .core.validators import check_number
from .errors import (
    CapabilityError,
    ConfigureRejected,
    FluxError,
    LocalProtocolError,
    StreamStalled,
    TimeoutError,
    TransportError,
    UsageError,
    ValidationError,
)
from .event_queue import EventQueue
from .pool import ConnectionPool, default_pool
from .session_log import SessionLog, check_log_extra
from .streams import LiveStream, aclose_quietly, open_stream
from .transport import Timeouts

__all__ = ["ClientStats", "FluxClient", "FluxEvent"]

logger = logging.getLogger("flux_sagemaker")
_T = TypeVar("_T")

# The session's timers only compare times taken here (sleeps are relative), and
# time.monotonic() is far cheaper on the hot path than the event loop's clock via anyio.
_now = time.monotonic
# After CloseStream, this much server silence makes the client probe the connection with a
# PING that must be answered within _DRAIN_PROBE_TIMEOUT (a healthy HTTP/2 server answers PINGs
# at once, however long Flux takes to finalize).
_DRAIN_QUIET = 1.0
_DRAIN_PROBE_TIMEOUT = 2.0

FluxEvent = ServerMessage | ClientEvent

# Pipecat's ack timeout for Configure; Flux answers within a few audio frames.
_CONFIGURE_ACK_TIMEOUT = 5.0
# With no turn open, a new stream gets only this much of the audio since the last EndOfTurn:
# speech Flux had not yet called a turn is in it, and the new stream does not first wade
# through every quiet minute since. Between turns the replay buffer keeps little more than that.
_IDLE_REPLAY_S = 3.0


@attrs.define
class ClientStats:
    """Counters of one FluxClient, for logs and benchmarks."""

    streams_opened: int = 0
    """HTTP/2 streams opened (1 + reconnects + rollovers)."""
    reconnects: int = 0
    """Streams replaced after a failure."""
    rollovers: int = 0
    """Streams replaced before the maximum stream duration."""
    audio_bytes_accepted: int = 0
    """Audio bytes accepted from the application."""
    audio_bytes_sent: int = 0
    """Audio bytes written to streams, replays and keepalive silence included."""
    audio_events_sent: int = 0
    """Signed audio events written."""
    silence_bytes_sent: int = 0
    """Keepalive silence the client added on its own."""
    replayed_bytes: int = 0
    """Audio sent again after reconnects and rollovers."""
    dropped_bytes: int = 0
    """Accepted audio that no stream received, as the replays reported it: what the replay
    buffer's bound dropped of an open turn or, for audio without replay (Opus, containers),
    what came while a stream was being replaced or was being written when its stream failed."""
    events_received: int = 0
    """Server messages received."""


class _ReplayFigures(NamedTuple):
    """What a new stream's replay holds and misses, as the session events report it."""

    resumed_at_s: float
    replayed_audio_s: float
    dropped_audio_s: float
    dropped_audio_bytes: int


@attrs.define(eq=False)
class _Ack:
    """A Configure waiting for its ConfigureSuccess or ConfigureFailure."""

    message: commands.Configure
    done: anyio.Event = attrs.field(factory=anyio.Event)
    answer: ConfigureSuccess | ConfigureFailure | None = None


class FluxClient:
    """A Deepgram Flux session on a SageMaker endpoint.

    Use it as an async context manager; entering returns once Flux has sent ``Connected``::

        async with FluxClient("my-flux", region="us-east-1", settings=settings) as flux:
            ...  # one task sends audio, another iterates the events

    Args:
        endpoint_name: The SageMaker endpoint serving Flux.
        region: AWS region; default: the one set on ``session``, else ``AWS_REGION``,
            ``AWS_DEFAULT_REGION`` or the profile's.
        settings: Flux parameters, validated already (default: ``flux-general-en``,
            linear16 at 16 kHz).
        endpoint_url: Override the endpoint (a VPC endpoint, or the mock's ``http://`` URL);
            default from ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` and the AWS config.
        use_fips: Use the FIPS endpoint; default from ``AWS_USE_FIPS_ENDPOINT``.
        use_dualstack: Use the dual-stack endpoint.
        target_variant: The production variant to invoke.
        session: A botocore session whose credentials and config to use.
        profile: An AWS profile name (instead of ``session``).
        credentials: botocore credentials; default: botocore's default chain.
        ssl_context: TLS context; default verifies against ``AWS_CA_BUNDLE`` or the system store.
        proxy: An ``http://[user:password@]host:port`` proxy that tunnels the connections
            (``CONNECT``); default: ``HTTPS_PROXY`` unless ``NO_PROXY`` names the endpoint's host.
        timeouts: Connect, ``Connected``, close and PING timeouts.
        retry: How failed streams are retried; ``RetryPolicy(enabled=False)`` raises at once.
        keepalive: Silence keepalive and stall watchdog.
        rollover: When long sessions move to a fresh stream.
        capabilities: What the endpoint's Flux bundle accepts (``Configure``, ...).
        coalesce_ms: Audio is sent in events of about this length; ``0`` sends each chunk.
        replay_buffer_bytes: Bound of the audio kept for replay after a failure.
        max_buffered_events: Events held for a slow consumer; beyond it the client stops
            reading, and HTTP/2 flow control slows the server down.
        pool: A :class:`ConnectionPool` to open streams from; default: the event loop's
            shared pool, so clients of one process share one connection per endpoint.
        log_extra: Fields added to every log record of this session (logging's ``extra``),
            such as ``{"call_id": ...}``. Records also carry ``flux_endpoint`` and
            ``flux_request_id``, and their message starts with ``[endpoint request-id]``.
    """

    def __init__(
        self,
        endpoint_name: str,
        *,
        region: str | None = None,
        settings: FluxSettings | None = None,
        endpoint_url: str | None = None,
        use_fips: bool | None = None,
        use_dualstack: bool | None = None,
        target_variant: str | None = None,
        session: botocore.session.Session | None = None,
        profile: str | None = None,
        credentials: Credentials | None = None,
        ssl_context: ssl.SSLContext | None = None,
        proxy: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        keepalive: KeepalivePolicy | None = None,
        rollover: RolloverPolicy | None = None,
        capabilities: BundleCapabilities | None = None,
        coalesce_ms: float = 80,
        replay_buffer_bytes: int = 8 * 1024 * 1024,
        max_buffered_events: int = 1024,
        pool: ConnectionPool | None = None,
        log_extra: Mapping[str, object] | None = None,
    ) -> None:
        _check_types(
            settings=(settings, FluxSettings),
            capabilities=(capabilities, BundleCapabilities),
            timeouts=(timeouts, Timeouts),
            retry=(retry, RetryPolicy),
            keepalive=(keepalive, KeepalivePolicy),
            rollover=(rollover, RolloverPolicy),
            pool=(pool, ConnectionPool),
            use_fips=(use_fips, bool),
            use_dualstack=(use_dualstack, bool),
            ssl_context=(ssl_context, ssl.SSLContext),
            session=(session, botocore.session.Session),  # not a boto3 Session
            credentials=(credentials, Credentials),
        )
        self._settings = settings if settings is not None else FluxSettings()
        self._capabilities = capabilities if capabilities is not None else BundleCapabilities()
        self._settings.check_capabilities(self._capabilities)
        self._config: ResolvedConfig = resolve_config(
            region=region,
            endpoint_url=endpoint_url,
            use_fips=use_fips,
            use_dualstack=use_dualstack,
            session=session,
            profile=profile,
            credentials=credentials,
            ssl_context=ssl_context,
            proxy=proxy,
        )
        self._endpoint_name = endpoint_name
        self._target_variant = target_variant
        # Validates the endpoint name, variant and query string before any I/O.
        self._request_for(self._settings)
        self._log = SessionLog(logger, endpoint_name, check_log_extra(log_extra))
        # Checked here, under the argument's own name: the objects they configure would name
        # their own fields (target_ms, max_bytes), and Opus never builds a replay buffer.
        check_number("max_buffered_events", max_buffered_events, 1, integer=True)
        check_number("replay_buffer_bytes", replay_buffer_bytes, 0, integer=True)
        check_number("coalesce_ms", coalesce_ms, 0, MAX_COALESCE_MS)
        self._timeouts = timeouts if timeouts is not None else Timeouts()
        self._retry = retry if retry is not None else RetryPolicy()
        self._keepalive = keepalive if keepalive is not None else KeepalivePolicy()
        self._rollover = rollover if rollover is not None else RolloverPolicy()
        self._format = AudioFormat.from_settings(self._settings)
        rate = self._format.bytes_per_second
        self._byte_rate = rate or 0  # 0: no fixed byte rate (Opus, containers)
        self._coalescer = AudioCoalescer(self._format, target_ms=coalesce_ms)
        self._timers = SessionTimers(self._keepalive, coalesce_s=coalesce_ms / 1000)
        # Compressed or containerized audio cannot be cut at a turn boundary: no replay.
        self._replay = ReplayBuffer(
            replay_buffer_bytes if self._format.bytes_per_second else 0,
            alignment=self._format.sample_width or 1,
        )
        self._tracker = TurnTracker()
        self._pool = pool
        self._stats = ClientStats()
        self._state = "new"
        self._current: LiveStream | None = None
        self._streams: list[LiveStream] = []
        # No yield when uncontended: send_audio is the hot path.
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._pending_configures: deque[_Ack] = deque()
        # Where in the replay's audio each ForceEndTurn not answered yet went out: a stream
        # that fails (or is rolled over) before answering gets them again, in place, in the
        # replay that brings their turn back.
        self._unanswered_force_ends: deque[int] = deque()
        self._configure_lock = anyio.Lock()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._events: EventQueue[FluxEvent | FluxError] = EventQueue(max_buffered_events)
        self._closed_event = anyio.Event()
        self._error: FluxError | None = None
        self._connected_delivered = False
        self._attempts = 0
        # The stream the last recovery opened, and that recovery's run of failures: it goes on
        # if the stream breaks before Flux answers anything (see _reconnect).
        self._recovered: tuple[LiveStream, Backoff] | None = None
        self._switching = False
        self._switch_finished = anyio.Event()
        # One stream replacement at a time (a rollover, a settings change, a recovery): each
        # starts from the stream the previous one left, so none installs a stream over another.
        self._stream_change = anyio.Lock()
        # Set while a stream takes events; a new one replaces it when the stream is retired.
        # Control messages made meanwhile wait on it for the next stream.
        self._stream_installed = anyio.Event()
        # The supervisor sleeps in a cancel scope whose deadline send_audio moves as partial
        # events come and go: no task switch per coalescing window in steady streaming.
        self._alarm: anyio.CancelScope | None = None
        self._look_at = -math.inf  # when the timers that audio does not move need a look
        self._clock_offset = 0.0  # anyio's clock minus _now() (trio's clock has its own origin)
        self._supervisor_rounds = 0
        self._look_again = False  # a wake-up came while the supervisor was awake
        self._drain_started = math.inf  # when close() sent CloseStream
        self._probed: LiveStream | None = None  # the draining stream whose connection was probed
        # Session byte offset of the audio sent before the current stream was retired.
        self._heard_until = 0
        # Where on the session's byte timeline the current stream's audio began, and
        # audio_bytes_sent then: what it was sent since is the timeline's next bytes, in order.
        self._stream_start = 0
        self._sent_at_stream_start = 0
        # Whether the retired stream had events the turn tracker had not seen yet.
        self._tracker_lags = False
        # Counts stream take-overs: audio events made before one must not be sent after it.
        self._epoch = 0
        # Audio events out of the coalescer and not written yet, in its order. Whoever holds the
        # send lock writes them before anything else: a call's events are written by a task
        # of its own (see _uncancelled), which another writer (a flush, a control message) may
        # beat to the lock.
        self._outbox: deque[bytes] = deque()
        # send_audio calls waiting to write (for the send lock or the stream's window): the
        # application is not quiet then, only held back, and is due no keepalive silence.
        self._sends_waiting = 0
        # send_audio and control calls cancelled while their writes went on (see _uncancelled).
        self._cancelled_writers = 0

    # -- public properties --------------------------------------------------------------------

    @property
    def settings(self) -> FluxSettings:
        """The settings in force (updated by acknowledged ``configure`` calls)."""
        return self._settings

    @property
    def capabilities(self) -> BundleCapabilities:
        """What the endpoint's Flux bundle is assumed to accept."""
        return self._capabilities

    @property
    def request_id(self) -> str | None:
        """SageMaker's request id of the current stream."""
        return self._log.request_id

    @property
    def stats(self) -> ClientStats:
        """Counters for logs and benchmarks."""
        return self._stats

    @property
    def is_closed(self) -> bool:
        """Whether the session has ended (closed, failed or exited)."""
        return self._state == "closed"

    @property
    def turn_open(self) -> bool:
        """Whether Flux is in the middle of a turn, as far as the events tell."""
        return self._tracker.turn_open

    def __repr__(self) -> str:
        return (
            f"<FluxClient endpoint={self._endpoint_name!r} "
            f"url={self._config.endpoint.url!r} state={self._state}>"
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise UsageError("a FluxClient can be entered only once")
        self._state = "opening"
        self._timers.start(_now())
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            if self._pool is None:
                # Clients given no pool share the event loop's: one connection per endpoint.
                self._pool = await default_pool()
            stream = await self._open_with_retry(first_error=None)
            self._install(stream)
            self._state = "open"
            task_group.start_soon(self._guarded, self._supervise)
        except BaseException as exc:
            await self._shutdown(exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None and self._state in ("open", "closing"):
                try:
                    await self.close()
                except FluxError as close_error:
                    self._log.warning("closing the Flux session failed: %s", close_error)
        finally:
            # Also when the graceful close is cancelled (an outer timeout, a sibling's
            # failure): the task group entered in __aenter__ must be left here, in order.
            await self._shutdown(exc)

    async def _shutdown(self, exc: BaseException | None) -> None:
        """Free every stream and task; never hangs, never raises a group."""
        self._mark_closed()
        self._wake_supervisor()
        with anyio.CancelScope(shield=True):
            for stream in self._streams:
                with anyio.move_on_after(self._timeouts.close):
                    await stream.h2.aclose()
        self._streams.clear()
        self._current = None
        # Outside any scope opened here: our task group was entered before them.
        try:
            if self._task_group is not None:
                task_group, self._task_group = self._task_group, None
                task_group.cancel_scope.cancel()
                try:
                    await task_group.__aexit__(None, None, None)
                except Exception:
                    self._log.exception("a Flux background task failed")
        finally:
            # Also when an outer cancellation ends the wait above: the iterator must end.
            self._events.close(discard=True)

    async def close(self) -> None:
        """End the session cleanly: send ``CloseStream``, drain every event, end the input.

        The events that arrive while draining are still delivered to the iterator; if the
        server ends a turn without ``EndOfTurn``, a synthetic final ``EndOfTurn`` is delivered.
        A call while another one drains waits for the same end; after the end it does
        nothing. Cancelling the call does not cancel the close: it goes on in the background,
        and the session ends within ``Timeouts.close`` of ``CloseStream`` all the same. A
        stream switch in flight (a rollover, a settings change) is waited for first, for up to
        ``Timeouts.close`` more, so that its new stream is the one closed. If the server has not
        ended the stream within ``Timeouts.close``, the call still returns, and the iterator
        raises a non-retryable ``TimeoutError`` after the events before it (a synthetic
        ``EndOfTurn`` for an open turn among them).
        """
        if self._state == "closed":
            return
        if self._state == "open" and self._switching:
            # A rollover in flight finishes first: its new stream is the one to close.
            with anyio.move_on_after(self._timeouts.close):
                await self._switch_finished.wait()
            if self._state == "closed":
                return  # the session failed meanwhile: over, as after any other end
        if self._state == "closing":
            # Another close() went on first (perhaps while this one waited for the switch):
            # returning now would let this caller leave the block and cut the drain short.
            await self._closed_event.wait()
            return
        self._check_open("close")
        self._state = "closing"
        # In the session's task group, not the caller's task: a caller cancelled midway (its
        # own, shorter timeout) must not leave the session closing with no CloseStream sent,
        # or with nothing to bound the drain.
        self._task_group_start(self._close_stream)
        await self._closed_event.wait()

    async def _close_stream(self) -> None:
        """Send CloseStream and wait for the drain, within ``Timeouts.close``."""
        # One deadline for all of it: a sender blocked on flow control holds the send lock,
        # and a peer that stopped reading never opens the window for CloseStream either.
        with anyio.move_on_after(self._timeouts.close):
            async with self._send_lock:
                # A stream being replaced gets its CloseStream once the new one took over.
                current = self._live_stream()
                # A take-over that finished while we waited for the lock closed its stream. One
                # that failed during the flush is replaced, and its successor gets the
                # CloseStream once it took over (we are closing now).
                if (
                    current is not None
                    and current.proto.state is not StreamState.CLOSING
                    and await self._flush_audio(current, whole=False)
                ):
                    data = current.proto.send_close_stream()
                    await self._write(current, data, whole=False)
            self._drain_started = _now()
            self._wake_supervisor()  # it watches the drain now
            await self._closed_event.wait()
        if not self._closed_event.is_set():
            self._log.warning(
                "Flux did not end the stream within %.1f s of CloseStream", self._timeouts.close
            )
            # Like any other end of the stream: an open turn still gets its final EndOfTurn,
            # with what was heard. Forced: close() must not wait for a consumer to make room.
            synthetic = self._tracker.stream_ended()
            if synthetic is not None:
                self._deliver_now(synthetic)
            self._finish(
                TimeoutError(
                    f"the stream did not end within {self._timeouts.close} s of CloseStream",
                    retryable=False,
                )
            )

    # -- sending ------------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._state == "new" or self._state == "opening":
            raise UsageError(f"cannot {what}: enter the client with 'async with' first")
        if self._state != "open":
            if self._error is not None:
                raise UsageError(f"cannot {what}: the session failed: {self._error}")
            raise UsageError(f"cannot {what}: the session is closed")

    async def send_audio(self, audio: bytes | bytearray | memoryview) -> None:
        """Send audio in the session's encoding.

        Audio is coalesced into events of about ``coalesce_ms``; a partial event is sent at
        the latest one window (and at most 10 ms) later. While a stream is being replaced,
        audio is kept in the replay buffer and sent on the new stream. Waits while HTTP/2 flow
        control holds the stream back; cancelled meanwhile, the call still writes its events
        whole and in order (within ``Timeouts.write``), then raises the cancellation.

        Raises:
            ValidationError: ``audio`` is not bytes-like or not a whole number of samples.
            UsageError: the session is not open.
        """
        if self._state != "open":
            self._check_open("send audio")
        coalescer = self._coalescer
        events = coalescer.push(audio)  # validates type and alignment first
        size = len(audio) if type(audio) is bytes else memoryview(audio).nbytes
        if size == 0:
            return
        self._stats.audio_bytes_accepted += size
        self._replay.append(audio)
        pending = coalescer.pending_bytes > 0
        if self._timers.on_app_audio(_now(), self._seconds(size), pending=pending) and pending:
            # A partial event started waiting: bring the alarm to its flush time (plus a little
            # slack, see SessionTimers.flush_alarm_at). When one leaves in a full event, the
            # alarm stays (no second timer reschedule per event); in steady audio the next
            # chunk, due at about that time, moves it on before it rings.
            self._set_alarm()
        if events:
            lock, current = self._send_lock, self._current
            if (
                len(events) == 1
                and not lock.locked()
                and not self._outbox
                and current is not None
                and _writable(current)
            ):
                # The usual case: one event and no other sender. Nothing here awaits before
                # the event is queued, so the order is kept without the lock's checkpoints.
                event = events[0]
                data = self._sign_audio(current, event)
                if current.h2.send_nowait(data):
                    if current.h2.backlogged:
                        # A burst: let the writer send it before we queue more (latency). The
                        # event is queued whole, so a cancellation here loses nothing.
                        await anyio.lowlevel.checkpoint()
                    return
                lock.acquire_nowait()  # still free: nothing was awaited since locked()
                self._sends_waiting += 1
                try:
                    await self._uncancelled(self._write_signed_audio, current, data, len(event))
                finally:
                    self._sends_waiting -= 1
                    lock.release()
            else:
                # The events have left the coalescer: a caller cancelled now (its own timeout)
                # would leave a gap in the stream's audio. They are written first.
                self._outbox.extend(events)
                self._sends_waiting += 1
                try:
                    await self._uncancelled(self._send_events, self._epoch)
                finally:
                    self._sends_waiting -= 1
            # A cancellation that came while the audio was written is raised now: a cancelled
            # sending loop must stop, not go on through calls that never reach a checkpoint.
            await anyio.lowlevel.checkpoint_if_cancelled()

    async def _uncancelled(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Run ``func(*args)`` to its end even if the caller is cancelled meanwhile, and return
        its result; the cancellation goes through afterwards.

        The work runs in a task of the session's, shielded: anyio's shield holds off anyio's
        and trio's cancellation, not asyncio's own (``Task.cancel()``: ``asyncio.timeout``,
        ``wait_for``, asyncio's TaskGroup), which would cut a write in half. The caller waits
        for it unshielded, so it sees its cancellation: its writes then keep to
        ``Timeouts.write`` even while a window waits for our own consumer, who may never read
        again (a task group ending the call cancels it too). A ``FluxError`` of ``func`` (the
        session closed under it) gives way to the caller's cancellation, which is what a
        cancelled caller raises.
        """
        done = anyio.Event()
        result: list[_T] = []
        failure: list[BaseException] = []

        async def work() -> None:
            try:
                with anyio.CancelScope(shield=True):  # nor does the session's shutdown
                    result.append(await func(*args))
            except BaseException as exc:
                # KeyboardInterrupt and SystemExit too: the caller raises them, as a write in
                # its own task would; in ours they would stop the session's task group (the
                # caller then had no result) or, on asyncio, the event loop.
                failure.append(exc)
            finally:
                done.set()

        task_group = self._task_group
        if task_group is None:
            await work()  # shutting down: no task to hand it to; shielded all the same
        else:
            task_group.start_soon(work)
        cancelled: BaseException | None = None
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class() as exc:
            cancelled = exc
            self._hold_writes_to_limit(1)
            try:
                while not done.is_set():
                    try:
                        with anyio.CancelScope(shield=True):
                            await done.wait()
                    except anyio.get_cancelled_exc_class() as again:  # asyncio's own, again
                        cancelled = again
            finally:
                self._hold_writes_to_limit(-1)
        if cancelled is not None:
            raise cancelled
        if failure:
            raise failure[0]
        return result[0]

    def _hold_writes_to_limit(self, change: int = 0) -> None:
        """Count a cancelled caller waiting for its writes (``change``: 1 or -1). While any
        does, or once the session is over (nobody will read its events), the streams' writes
        keep to ``Timeouts.write`` even while their data waits for our consumer."""
        self._cancelled_writers += change
        hold = self._cancelled_writers > 0 or self._state == "closed"
        for stream in self._streams:
            stream.h2.hold_writes_to_limit(hold)

    async def _send_events(self, epoch: int) -> None:
        """Write the outbox: the caller's events, unless another writer has written them."""
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # the usual case, no other sender: skip acquire()'s checkpoint
        except anyio.WouldBlock:
            await lock.acquire()
        try:
            current = self._live_stream()
            if current is None or epoch != self._epoch:
                # Being replaced, or replaced while we waited for the lock: the replay
                # buffer had this audio and the new stream got it already, in order.
                return
            if self._outbox and (
                self._state == "closed" or current.proto.state is StreamState.CLOSING
            ):
                # A failure or close() overtook this call: never write after CloseStream.
                self._check_open("send audio")
            await self._write_outbox(current)
        finally:
            lock.release()

    async def _write_outbox(self, stream: LiveStream, *, whole: bool = True) -> None:
        """Write the events waiting in the outbox (caller holds the send lock)."""
        outbox = self._outbox
        while outbox and not _replaced(stream):
            # Replaced meanwhile: the replay buffer has the rest, and the take-over drops them.
            await self._write_audio(stream, outbox.popleft(), whole=whole)

    async def _write_audio(self, stream: LiveStream, audio: bytes, *, whole: bool = True) -> None:
        if not _writable(stream):
            # The stream failed while we waited for the lock or the window (perhaps during the
            # replay that installed it), or its failure is still on its way to its reader: the
            # replay buffer holds this audio for the stream that replaces it.
            return
        data = self._sign_audio(stream, audio)
        if not stream.h2.send_nowait(data):
            await self._write_signed_audio(stream, data, len(audio), whole=whole)

    def _sign_audio(self, stream: LiveStream, audio: bytes) -> bytes:
        """Count ``audio`` as sent and return its signed event (the caller writes it next)."""
        self._stats.audio_bytes_sent += len(audio)
        self._stats.audio_events_sent += 1
        self._timers.on_audio_sent(_now())
        return stream.proto.send_audio(audio)

    async def _write_signed_audio(
        self, stream: LiveStream, data: bytes, size: int, *, whole: bool = True
    ) -> None:
        """Write the signed audio event ``data`` (``size`` bytes of audio, counted as sent).

        If the stream fails under it, the event reached no stream: it is counted as sent no
        more. The replay sends it again, or, without replay (Opus, containers), the next
        stream's figures report it dropped, which they count as accepted less sent.
        """
        if not await self._write(stream, data, whole=whole):
            self._stats.audio_bytes_sent -= size
            self._stats.audio_events_sent -= 1

    async def _flush_audio(self, stream: LiveStream, *, whole: bool = True) -> bool:
        """Send the pending partial audio event (caller holds the send lock); return whether
        ``stream`` still takes events (it may have failed meanwhile)."""
        await self._write_outbox(stream, whole=whole)  # the events made before it go first
        pending = self._coalescer.flush()
        self._timers.on_flushed()
        if pending:
            await self._write_audio(stream, pending, whole=whole)
        return _writable(stream)

    async def _write(self, stream: LiveStream, data: bytes, *, whole: bool = True) -> bool:
        """Write a signed event to a stream; a transport failure there starts recovery.

        With ``whole`` (all but ``close()``, which ends the stream on its own deadline), a
        cancelled caller still waits for the event's last byte: half an event would corrupt
        the stream, and an event never sent would break the signature chain. The wait is
        bounded: by ``Timeouts.write`` for a window that does not open (not while the stream's
        data waits for our consumer, unless the caller was cancelled: see ``_uncancelled``),
        and by the stream's failure otherwise. Returns whether the event was written
        (``False``: the stream failed).
        """
        if not data:
            return True
        try:
            with anyio.CancelScope(shield=whole):
                await stream.h2.send(data)
        except FluxError as exc:
            self._on_failure(stream, exc)
            return False
        return True

    async def configure(
        self,
        *,
        eot_threshold: float | None = None,
        eager_eot_threshold: float | None = None,
        eot_timeout_ms: int | None = None,
        keyterms: Sequence[str] | None = None,
        language_hints: Sequence[str] | None = None,
        numerals: bool | None = None,
    ) -> ConfigureSuccess | ConfigureFailure | None:
        """Change thresholds, keyterms, language hints or numerals mid-stream.

        Sends Flux's ``Configure`` and waits for its answer, which also arrives through the
        iterator. Configures are sent one at a time (Flux caps the unacknowledged ones); an
        acknowledged change also applies to later streams. While the session moves to a new
        stream (a rollover, a settings change), the Configure waits and goes out on that one.

        Returns:
            The ``ConfigureSuccess`` or ``ConfigureFailure``, or ``None`` when no answer came
            within the ack timeout or the stream was replaced first. A late answer still
            arrives through the iterator, and a late ``ConfigureSuccess`` still applies.

        Raises:
            ValidationError: a value is out of range, or the settings would be invalid with
                it applied after the Configures still unanswered (checked before sending).
            CapabilityError: the endpoint's bundle does not accept ``Configure``; use
                :meth:`update_settings`, which opens a new stream instead.
            UsageError: the session is not open.

        While a failed stream is being replaced, the Configure waits for the new stream and
        goes out there (after the replay); the session failing meanwhile raises ``UsageError``.
        """
        self._check_open("configure")
        message = commands.Configure(
            eot_threshold=eot_threshold,
            eager_eot_threshold=eager_eot_threshold,
            eot_timeout_ms=eot_timeout_ms,
            keyterms=keyterms,
            language_hints=language_hints,
            numerals=numerals,
        )
        message.apply_to(self._settings)  # validates against the settings in force
        if not self._capabilities.configure:
            raise CapabilityError(
                "this endpoint's Flux bundle does not accept Configure (it would end the "
                "stream); use update_settings(), which opens a new stream with the new settings"
            )
        message.check_capabilities(self._capabilities)  # what it carries (numerals)
        async with self._configure_lock:
            waiter = _Ack(message)
            await self._send_control(message.to_json(), waiter)
            with anyio.move_on_after(_CONFIGURE_ACK_TIMEOUT):
                await waiter.done.wait()
            # Unanswered, it stays queued: its late answer must not be matched to the next
            # Configure, and a late ConfigureSuccess still updates the settings in force.
            return waiter.answer

    async def update_settings(self, **changes: Any) -> None:
        """Change any Flux setting of the running session, the best way the bundle allows.

        Thresholds, keyterms, language hints and numerals go out as ``Configure`` when the
        bundle accepts it (``None`` keyterms or language hints clear them, as ``[]`` does).
        Anything else (the model, ``redact``, ``profanity_filter``, tags, ``extra_params``,
        resetting a threshold to ``None``), or any change on a bundle without ``Configure``,
        moves the session to a new stream opened with the new settings, replaying the audio
        since the last completed turn (a :class:`StreamRolledOver` says so).

        Raises:
            ValidationError: the new settings are invalid (nothing was changed); its subclass
                ConfigureRejected when Flux refused them, answering ``ConfigureFailure``.
            TimeoutError: Flux did not answer the ``Configure`` in time, or the stream it went
                out on was replaced first: the change is not in force (a late
                ``ConfigureSuccess`` still applies it).
            CapabilityError: the bundle refuses a parameter of the new settings.
            FluxError: the new stream could not be opened (a ``ModelError`` for settings the
                container refuses, for example); the session goes on with the settings in
                force, on its current stream.

        Cancelling the call does not cancel a stream switch it started: the switch finishes
        (or fails and changes nothing) in the background.
        """
        self._check_open("update settings")
        while self._switching:
            # One switch at a time, each from the settings the previous one left in force.
            await self._switch_finished.wait()
            self._check_open("update settings")
        new_settings = self._settings.with_changes(**changes)
        new_settings.check_capabilities(self._capabilities)
        if new_settings == self._settings == self._settings_after_pending_configures():
            return  # nothing to change, and no unanswered Configure will change it either
        # The validated values: keyterms or language_hints None mean no terms or hints, which
        # Configure says with [] (its None would keep them); a threshold None it cannot say.
        configured = {name: getattr(new_settings, name) for name in changes}
        configurable = all(
            name in commands.CONFIGURABLE_FIELDS and value is not None
            for name, value in configured.items()
        )
        if configurable and self._capabilities.configure:
            answer = await self.configure(**configured)
            if isinstance(answer, ConfigureFailure):
                raise ConfigureRejected(
                    answer.code, answer.description, request_id=answer.request_id
                )
            if answer is None:
                # Unanswered: the change is not in force (a stream that replaced the one it
                # went out on was opened without it), so the call must not look successful.
                self._check_open("update settings")
                raise TimeoutError(
                    f"Flux did not answer the Configure within {_CONFIGURE_ACK_TIMEOUT} s or "
                    "before its stream was replaced; the settings in force are unchanged"
                )
            return
        if AudioFormat.from_settings(new_settings) != self._format:
            raise ValidationError(
                "encoding and sample_rate cannot change within a session; open a new FluxClient"
            )
        outcome: list[FluxSettings | FluxError] = []
        finished = self._begin_switch()
        # In the session's task group, not the caller's task: a caller cancelled mid-switch
        # (its own timeout) must not leave the old stream retired and the new one not installed.
        self._task_group_start(self._switch_stream, "settings changed", changes, outcome)
        await finished.wait()
        if not outcome:
            # The session failed or closed while the switch waited for a reconnect to finish.
            self._check_open("update settings")
        elif isinstance(outcome[0], FluxError):
            raise outcome[0]

    async def force_end_turn(self) -> None:
        """Ask Flux to end the current turn now (``EndOfTurn`` with trigger ``manual``).

        Raises:
            CapabilityError: the endpoint's bundle does not accept ``ForceEndTurn``.
            UsageError: the session is not open.

        While a failed stream is being replaced, the message waits for the new stream and goes
        out there after the replay, which brings the open turn back first.
        """
        self._check_open("force the end of the turn")
        if not self._capabilities.force_end_turn:
            raise CapabilityError(
                "this endpoint's Flux bundle does not accept ForceEndTurn (it would end the stream)"
            )
        await self._send_control(commands.force_end_turn(), ends_turn=True)

    async def _send_control(
        self, message: bytes, waiter: _Ack | None = None, *, ends_turn: bool = False
    ) -> None:
        """Write a control message after the pending audio; a Configure's ``waiter`` waits for
        its answer from then on (even if the caller is cancelled while it is written).

        While a failed stream is being replaced, the message waits for the next stream and
        goes out there after the replay, as it would have after the audio on the old one.
        """
        while True:
            self._check_open("send a control message")  # close() may have overtaken us
            if self._live_stream() is None:
                await self._stream_installed.wait()
                continue
            async with self._send_lock:
                current = self._live_stream()
                if current is None:
                    continue  # replaced again while we waited for the lock
                self._check_open("send a control message")
                if waiter is not None:
                    # Flux applies it after the Configures still unanswered, to the settings of
                    # this stream: an answer the settings cannot take would end the session.
                    waiter.message.apply_to(self._settings_after_pending_configures())
                    self._pending_configures.append(waiter)
                if await self._uncancelled(self._write_control, current, message, ends_turn):
                    return
                # The stream failed during the flush: no answer will come from it.
                if waiter is not None and waiter in self._pending_configures:
                    self._pending_configures.remove(waiter)
            # Not written: the stream failed and its reader has yet to retire it. Let the
            # reader run rather than spin (on trio, a loop without a checkpoint freezes all).
            await anyio.lowlevel.checkpoint()

    async def _write_control(self, stream: LiveStream, message: bytes, ends_turn: bool) -> bool:
        """Write ``message`` after the pending audio; ``False`` if ``stream`` failed first."""
        if not await self._flush_audio(stream):
            return False  # the caller waits for the stream that replaces it
        if ends_turn and self._format.bytes_per_second:
            # Audio accepted during the flush is in the replay buffer, and goes out after this.
            sent = self._replay.total_bytes - self._coalescer.pending_bytes
            self._unanswered_force_ends.append(sent)
        await self._write(stream, stream.proto.send_json(message))
        return True

    # -- events -------------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> FluxEvent:
        if self._state == "new":
            # Nothing would ever deliver an event or close the queue: the loop would hang.
            self._check_open("iterate the events")
        try:
            # No checkpoint when an event is ready: one task switch less per event. The
            # buffer is bounded, so a consumer cannot hog the loop for long.
            item = await self._events.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        if isinstance(item, FluxError):
            raise item
        return item

    def _deliver_now(self, item: FluxEvent) -> None:
        """Queue ``item`` past the queue's bound (after the puts already waiting): for a task
        that must not wait for the consumer, which may be the very task it would hold up."""
        with contextlib.suppress(anyio.ClosedResourceError):
            self._events.put_nowait(item, force=True)

    async def _deliver(self, item: FluxEvent | FluxError) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):
            # With room, no task switch; with the consumer behind, back-pressure.
            await self._events.put(item)

    # -- streams ------------------------------------------------------------------------------

    def _request_for(self, settings: FluxSettings) -> InvokeRequest:
        return InvokeRequest(
            endpoint=self._config.endpoint,
            endpoint_name=self._endpoint_name,
            query_string=settings.query_string(),
            invocation_path=INVOCATION_PATH,
            target_variant=self._target_variant,
        )

    async def _open_stream(self, settings: FluxSettings | None = None) -> LiveStream:
        """Open one stream (with the settings in force by default); wait for ``Connected``."""
        assert self._pool is not None
        self._stats.streams_opened += 1
        stream, early = await open_stream(
            self._pool,
            self._config,
            self._request_for(settings if settings is not None else self._settings),
            self._timeouts,
        )
        self._log.request_id = stream.request_id
        self._streams.append(stream)
        self._timers.on_server_data(stream.opened_at)
        for event in early:
            await self._handle_event(stream, event)
        return stream

    async def _open_with_retry(
        self,
        first_error: FluxError | None,
        settings: FluxSettings | None = None,
        backoff: Backoff | None = None,
    ) -> LiveStream:
        """Open a stream, retrying retryable failures under the retry policy.

        ``backoff`` continues a run of failures; by default one starts. ``self._attempts``
        counts the streams tried, for the ``Reconnected`` event.
        """
        backoff = backoff if backoff is not None else Backoff(self._retry, random.random)
        error = first_error
        self._attempts = 0
        while True:
            if error is not None:
                if not (self._retry.enabled and error.retryable):
                    raise error
                delay = backoff.next_delay(_now())
                if delay is None:
                    raise error
                self._log.info("Flux stream failed (%s); retrying in %.2f s", error, delay)
                await anyio.sleep(delay)
            self._attempts += 1
            try:
                return await self._open_stream(settings)
            except FluxError as exc:
                error = exc

    def _live_stream(self) -> LiveStream | None:
        """The current stream, or ``None`` while there is none or it is being replaced."""
        current = self._current
        return None if current is None or current.retired else current

    def _install(self, stream: LiveStream) -> None:
        self._current = stream
        self._stream_installed.set()
        assert self._task_group is not None
        stream.h2.set_data_hook(functools.partial(self._take_data, stream))
        self._task_group.start_soon(self._guarded, self._read_stream, stream)

    def _take_data(self, stream: LiveStream, chunk: bytes) -> bool:
        """Handle a chunk in the connection's reader task when nothing has to wait for it.

        The usual case: the stream's reader is idle and the consumer keeps up. This saves the
        switch to the stream's reader task on every server message. Otherwise (a consumer
        behind, a retired stream) the chunk goes to that task, which waits as needed. The
        events of one chunk may fill the queue past ``max_buffered_events``; later chunks
        then wait for the consumer.
        """
        if stream.retired or self._events.full:
            return False
        try:
            self._timers.on_server_data(_now())
            for event in stream.proto.receive_data(chunk):
                if isinstance(event, StreamFailed):
                    self._on_failure(stream, event.error)
                    if stream.retired or self._state == "closed":
                        # Its reader task waits for data; retire the stream as it would.
                        self._task_group_start(self._retire, stream)
                    break
                assert not isinstance(event, StreamEnded)  # only receive_eof() ends a stream
                item = self._observe(stream, event)
                if item is not None:
                    self._deliver_now(item)
        except Exception as exc:  # the connection's reader must not die of our bug
            self._log.exception("a Flux event handler failed")
            self._finish(LocalProtocolError(f"internal error in the Flux client: {exc!r}"))
        return True

    async def _read_stream(self, stream: LiveStream) -> None:
        """Reader task of one stream: feed the protocol until the stream ends or fails."""
        try:
            while True:
                try:
                    chunk = await stream.h2.receive()
                except FluxError as exc:
                    self._on_failure(stream, exc)
                    return
                self._timers.on_server_data(_now())
                proto = stream.proto
                events = proto.receive_eof() if chunk is None else proto.receive_data(chunk)
                # The protocol knows of a failure from now on, and writers see the stream
                # failed: it must reach _on_failure without waiting for the consumer (perhaps
                # the very task waiting in force_end_turn() for the stream that replaces it).
                # The events before it are queued forced, as _take_data does.
                failing = bool(events) and isinstance(events[-1], StreamFailed)
                for event in events:
                    if isinstance(event, StreamFailed):
                        self._on_failure(stream, event.error)
                        return
                    if isinstance(event, StreamEnded):
                        await self._on_stream_ended(stream)
                        return
                    if failing:
                        item = self._observe(stream, event)
                        if item is not None:
                            self._deliver_now(item)
                        continue
                    await self._handle_event(stream, event)
                if chunk is None:
                    return
        finally:
            if stream.retired or self._state == "closed":
                with anyio.CancelScope(shield=True):
                    await self._retire(stream)

    async def _handle_event(self, stream: LiveStream, event: ServerMessage) -> None:
        item = self._observe(stream, event)
        if item is not None:
            stream.behind = self._events.full
            try:
                await self._deliver(item)
            finally:
                stream.behind = False

    def _observe(self, stream: LiveStream, event: ServerMessage) -> FluxEvent | None:
        """Account for a server message; return what the application gets, if anything."""
        if stream.retired:
            return None  # a newer stream replays this audio; its events are the ones that count
        self._stats.events_received += 1
        if isinstance(event, Connected):
            if self._connected_delivered:
                return None
            self._connected_delivered = True
            return event
        stream.answered = True
        if isinstance(event, ConfigureSuccess | ConfigureFailure):
            # Answers match Configures in order (Flux has no correlation id).
            if self._pending_configures:
                waiter = self._pending_configures.popleft()
                if isinstance(event, ConfigureSuccess):
                    self._settings = waiter.message.apply_to(self._settings)
                waiter.answer = event
                waiter.done.set()
        elif isinstance(event, ServerWarning):
            if event.code == "FORCE_END_TURN_NO_ACTIVE_TURN" and self._unanswered_force_ends:
                self._unanswered_force_ends.popleft()
        elif isinstance(event, TurnInfo):
            if (
                isinstance(event, EndOfTurn)
                and event.trigger == Trigger.MANUAL
                and self._unanswered_force_ends
            ):
                self._unanswered_force_ends.popleft()  # Flux answers them in order
            observed = self._tracker.observe(event)
            if observed is None:
                return None
            event = observed
            if isinstance(event, EndOfTurn) and self._format.bytes_per_second:
                # Within the audio accepted: a time out of that range is the server's mistake.
                accepted = self._seconds(self._replay.total_bytes)
                end = min(max(event.audio_window_end, 0.0), accepted)
                self._replay.trim_to(self._format.byte_offset(end))
                self._wake_supervisor()  # a turn boundary: the moment for a due rollover
            elif not self._tracker.turn_open and self._format.bytes_per_second:
                self._trim_idle_replay()
        return event

    def _trim_idle_replay(self) -> None:
        """Between turns, forget the audio no replay would send: all but the last
        ``_IDLE_REPLAY_S`` of what the server confirmed hearing (``_prepare_replay``'s rule).

        Otherwise a long quiet (an agent talking, a caller on hold) filled the buffer up to
        its bound, megabytes per session, and a failure in the next turn replayed all of it.
        """
        sent = self._stream_start + self._stats.audio_bytes_sent - self._sent_at_stream_start
        heard = min(self._tracker.audio_heard_until, self._seconds(sent))
        if heard > _IDLE_REPLAY_S:
            self._replay.trim_to(self._format.byte_offset(heard - _IDLE_REPLAY_S))

    async def _on_stream_ended(self, stream: LiveStream) -> None:
        if stream.retired:
            return
        if self._state == "closing":
            synthetic = self._tracker.stream_ended()
            if synthetic is not None:
                await self._deliver(synthetic)
            await self._end_input(stream)
            self._finish(None)
            return
        # The server ended the stream without being asked: recover like from a failure.
        self._on_failure(
            stream,
            TransportError(
                "the server ended the stream unexpectedly", request_id=stream.request_id
            ),
        )

    def _on_failure(self, stream: LiveStream, error: FluxError) -> None:
        """A stream failed: recover in the background, or end the session with ``error``."""
        if stream.retired or self._state == "closed" or stream is not self._current:
            return
        self._stop_using(stream, failed=True)
        if error.request_id is None:
            # The transport's errors (a reset, a lost connection, a GOAWAY) know no request:
            # the log line, the Reconnected event and the raised error name the stream's.
            error.request_id = stream.request_id
        # Also while closing: the new stream replays the open turn and drains it.
        if not (self._retry.enabled and error.retryable):
            self._task_group_start(self._fail, error)
            return
        self._log.warning("Flux stream failed (%s); recovering", error)
        self._task_group_start(self._recover, stream, error)

    def _task_group_start(self, func: Any, *args: Any) -> None:
        if self._task_group is not None:
            self._task_group.start_soon(self._guarded, func, *args)

    async def _guarded(self, func: Any, *args: Any) -> None:
        """Run a background task; if it fails, end the session with an error, never silently.

        An exception escaping a task would cancel our task group, whose scope encloses the
        application's ``async with`` body: the session would stop without any error.
        """
        try:
            await func(*args)
        except Exception as exc:
            self._log.exception("a Flux background task failed")
            self._finish(
                exc
                if isinstance(exc, FluxError)
                else LocalProtocolError(f"internal error in the Flux client: {exc!r}")
            )

    async def _fail(self, error: FluxError) -> None:
        synthetic = self._tracker.stream_ended()
        if synthetic is not None:
            # Forced, as close() does: the consumer may be the task waiting in configure() or
            # force_end_turn() for a stream, until this ends.
            self._deliver_now(synthetic)
        self._finish(error)

    def _finish(self, error: FluxError | None) -> None:
        """End the session: the iterator drains what was delivered, then raises or stops."""
        self._release_configures()  # no answer will come: configure() returns None now
        if error is not None and self._error is None:
            self._error = error
            try:
                self._events.put_nowait(error)
            except anyio.WouldBlock:
                # A full queue: deliver the error once the consumer has made room.
                self._task_group_start(self._deliver_then_close, error)
                self._mark_closed()
                return
            except anyio.ClosedResourceError:
                pass
        self._mark_closed()
        self._events.close()
        self._wake_supervisor()

    def _mark_closed(self) -> None:
        """The session is over: wake close() callers and control messages waiting for a
        stream (they find the session closed), and end the writes waiting for our consumer
        within ``Timeouts.write``."""
        self._state = "closed"
        self._closed_event.set()
        self._stream_installed.set()
        self._hold_writes_to_limit()  # a write waiting for our consumer would wait for ever

    async def _deliver_then_close(self, error: FluxError) -> None:
        await self._deliver(error)
        self._events.close()

    async def _recover(self, failed: LiveStream, error: FluxError) -> None:
        if isinstance(error, StreamStalled | TimeoutError):
            # A silent peer (no FIN, no RST) looks like this: open the next stream on a fresh
            # connection rather than behind this one's PING timeout.
            failed.h2.connection.stop_new_streams()
        async with self._stream_change:
            if self._current is not failed:
                # A switch that was under way replaced the stream (and replayed its audio).
                await self._retire(failed, end_input=False)
                return
            self._current = None
            await self._retire(failed, end_input=False)
            await self._reconnect(failed, error)

    async def _reconnect(self, failed: LiveStream, error: FluxError) -> None:
        backoff = Backoff(self._retry, random.random)
        if self._recovered is not None and self._recovered[0] is failed and not failed.answered:
            # The stream this recovery opened broke before Flux answered anything (an endpoint
            # that accepts each stream and breaks it at once): the failures go on, under the
            # backoff and limits of their run while its budget lasts, or the session would
            # reconnect at the first backoff, with a warning each time, for ever.
            started = self._recovered[1].started
            if started is not None and _now() - started < self._retry.budget:
                backoff = self._recovered[1]
        self._recovered = None
        try:
            stream = await self._open_with_retry(first_error=error, backoff=backoff)
        except FluxError as final:
            await self._fail(final)
            return
        if self._state == "closed":
            # The session ended while the stream opened (close() ran out of time): no replay
            # to a stream nobody reads, left open with no CloseStream until the block ends.
            await self._retire(stream, end_input=False)
            return
        self._stats.reconnects += 1
        self._recovered = (stream, backoff)
        attempts = self._attempts
        await self._take_over(
            stream,
            lambda replay: Reconnected(
                reason=str(error), error=error, attempts=attempts, **replay._asdict()
            ),
        )

    def _begin_switch(self) -> anyio.Event:
        """Mark a stream switch under way; return the event set when it is over."""
        self._switching = True
        self._switch_finished = anyio.Event()
        return self._switch_finished

    async def _switch_stream(
        self,
        reason: str,
        changes: dict[str, Any] | None = None,
        outcome: list[FluxSettings | FluxError] | None = None,
    ) -> None:
        """Move the session to a fresh stream while the current one still works.

        With ``changes``, the new stream is opened with them applied to the settings in force,
        which they are once it is (``outcome`` gets those settings); if it cannot be opened, the
        error goes to ``outcome`` and nothing changes.
        """
        try:
            # No Configure goes out while the next stream opens: answered on the old stream, it
            # would be in force there and not on the new one, opened with the settings from
            # before it. One under way is answered first; one made meanwhile waits for the new
            # stream. The Configure lock comes first: a Configure holding it may wait for a
            # recovery's new stream, and the recovery for the stream-change lock.
            async with self._configure_lock, self._stream_change:
                await self._switch_to_new_stream(reason, changes, outcome)
        finally:
            self._switching = False
            self._switch_finished.set()

    async def _switch_to_new_stream(
        self,
        reason: str,
        changes: dict[str, Any] | None,
        outcome: list[FluxSettings | FluxError] | None,
    ) -> None:
        if self._state not in ("open", "closing"):
            return
        old = self._current
        try:
            while True:
                # From the settings in force now: a Configure answered while the switch waited
                # for its turn is kept.
                before = self._settings
                settings = None if changes is None else before.with_changes(**changes)
                stream = await self._open_with_retry(first_error=None, settings=settings)
                if self._settings == before or self._state not in ("open", "closing"):
                    break
                # The old stream answered an earlier Configure late, while this one opened
                # without it: that change is in force (a late ConfigureSuccess applies), so
                # this stream would run without it. Open one with it instead.
                await self._retire(stream, end_input=False)
        except FluxError as exc:
            if outcome is not None:
                outcome.append(exc)
            elif old is not None:
                old.switch_failures += 1
                pause = self._rollover.retry_after(old.switch_failures)
                old.switch_held_until = _now() + pause
                self._log.warning(
                    "could not open the next Flux stream (%s); keeping the current one, "
                    "next try in %.0f s",
                    exc,
                    pause,
                )
            return
        if self._state not in ("open", "closing"):
            # The session ended while the stream opened (the one in use failed for good): no
            # replay to a stream nobody reads, and update_settings() finds the session over.
            await self._retire(stream, end_input=False)
            return
        if settings is not None:
            self._settings = settings
            if outcome is not None:
                outcome.append(settings)
        if old is not None and not old.retired:
            self._stop_using(old, failed=False)
        self._stats.rollovers += 1
        await self._take_over(
            stream, lambda replay: StreamRolledOver(reason=reason, **replay._asdict()), old=old
        )

    def _settings_after_pending_configures(self) -> FluxSettings:
        """The settings in force once every unanswered Configure is answered with success."""
        settings = self._settings
        for pending in self._pending_configures:
            # Checked against what came before it when it went out: any failure is Flux's.
            with contextlib.suppress(ValidationError):
                settings = pending.message.apply_to(settings)
        return settings

    def _release_configures(self) -> None:
        """Stop every configure() waiting for an answer (it returns ``None``)."""
        for waiter in self._pending_configures:
            waiter.done.set()
        self._pending_configures.clear()

    def _stop_using(self, stream: LiveStream, *, failed: bool) -> None:
        """Retire the current ``stream``: from now on, audio waits in the replay buffer."""
        stream.retired = True
        if self._stream_installed.is_set():
            self._stream_installed = anyio.Event()
        # A stream ended with CloseStream hears all it was sent; not the audio accepted but not
        # written to it yet (a partial event, the rest of a sender's events), which the new
        # stream must get.
        heard = self._stream_start + self._stats.audio_bytes_sent - self._sent_at_stream_start
        if failed and self._byte_rate:
            # A failed stream heard only what the server's events confirm: the audio after
            # that may never have reached it (a connection that went silent, a stall).
            confirmed = self._tracker.audio_heard_until
            if confirmed < self._seconds(heard):
                heard = self._format.byte_offset(max(0.0, confirmed))
        self._heard_until = heard
        # Events it received that the turn tracker has not seen (a consumer behind) may hold
        # whole turns: its replay then keeps all the audio since the last EndOfTurn seen.
        self._tracker_lags = stream.behind or stream.h2.buffered > 0

    def _seconds(self, n_bytes: int) -> float:
        rate = self._byte_rate
        return n_bytes / rate if rate else 0.0

    def _prepare_replay(self) -> _ReplayFigures:
        """Settle the replay for the next stream and return its figures; count what it misses.

        The caller has just moved to a new epoch: every byte accepted before is in the replay,
        was sent, or is lost. With replay, what is lost is what the buffer's bound dropped of
        the audio since the last completed turn (or the last replay). Without replay (Opus,
        containers), it is everything accepted that no stream was sent.

        With no turn open, the audio the old stream heard is replayed from its last
        ``_IDLE_REPLAY_S`` only; what came after is all replayed (no stream heard it yet). Not
        when the old stream had events the turn tracker had not seen: they may hold turns. A
        stream ended with CloseStream heard all it was sent; a failed one, only what the
        server's events confirmed (see ``_stop_using``).
        """
        replay, stats = self._replay, self._stats
        if self._format.bytes_per_second:
            if not (self._tracker.turn_open or self._tracker_lags):
                tail = self._format.byte_offset(_IDLE_REPLAY_S)
                replay.trim_to(max(0, self._heard_until - tail))
            missed = replay.take_gap()
        else:
            missed = stats.audio_bytes_accepted - stats.audio_bytes_sent - stats.dropped_bytes
        stats.dropped_bytes += missed
        if missed:
            self._log.warning(
                "%d bytes of accepted audio will not reach the new stream (%s)",
                missed,
                "the replay buffer was full" if replay.capacity else "this audio has no replay",
            )
        return _ReplayFigures(
            resumed_at_s=self._seconds(replay.start_offset),
            replayed_audio_s=self._seconds(replay.held_bytes),
            dropped_audio_s=self._seconds(missed),
            dropped_audio_bytes=missed,
        )

    async def _take_over(
        self,
        stream: LiveStream,
        announce: Callable[[_ReplayFigures], ClientEvent],
        old: LiveStream | None = None,
    ) -> None:
        """Make ``stream`` current, announce it with the event ``announce`` builds from the
        replay's figures, and replay the audio since the last completed turn."""
        async with self._send_lock:
            if old is not None and not old.proto.input_ended:
                with contextlib.suppress(FluxError):
                    await old.h2.send(old.proto.send_close_stream())
            # Configures sent on the old stream will not be answered; the new stream is opened
            # with the settings in force.
            self._release_configures()
            self._coalescer.flush()  # the replay buffer holds that audio too
            self._outbox.clear()
            self._timers.on_flushed()
            self._epoch += 1  # audio coalesced before now is in the replay
            figures = self._prepare_replay()
            replay = self._replay.replay()
            start = self._replay.start_offset
            # Forced, with no await since the epoch moved: the figures are exact, the event
            # comes before the new stream's, and a consumer that is behind (perhaps the task
            # that sends the audio) cannot hold the send lock.
            self._deliver_now(announce(figures))
            # Without a byte rate (Opus, containers) nothing is replayed and times cannot be
            # mapped: None places the new stream after everything already delivered.
            self._tracker.start_stream(
                self._format.duration(start) if self._format.bytes_per_second else None
            )
            force_ends = self._force_ends_in_replay(start)
            self._stream_start, self._sent_at_stream_start = start, self._stats.audio_bytes_sent
            self._install(stream)
            written = 0
            for place in force_ends:
                await self._write_replay(stream, replay, written, place)
                if _writable(stream):
                    await self._write(stream, stream.proto.send_json(commands.force_end_turn()))
                written = place
            await self._write_replay(stream, replay, written, len(replay))
            self._stats.replayed_bytes += len(replay)
            # close() was called while the stream was being replaced: the audio it accepted
            # meanwhile (a partial event) goes before CloseStream.
            if self._state == "closing" and _writable(stream) and await self._flush_audio(stream):
                await self._write(stream, stream.proto.send_close_stream())

    def _force_ends_in_replay(self, start: int) -> list[int]:
        """The unanswered ForceEndTurns' places in a replay from ``start``, in order.

        One before ``start`` went out before the last completed turn ended (the replay starts
        after it), or the buffer's bound dropped its turn's audio: it is not sent again.
        """
        unanswered = self._unanswered_force_ends
        while unanswered and unanswered[0] < start:
            unanswered.popleft()
        return [sent - start for sent in unanswered]

    async def _write_replay(self, stream: LiveStream, replay: bytes, start: int, end: int) -> None:
        """Write ``replay[start:end]`` in events of the coalescing size."""
        step = self._coalescer.target_bytes or (end - start) or 1
        for offset in range(start, end, step):
            await self._write_audio(stream, replay[offset : min(offset + step, end)])

    async def _end_input(self, stream: LiveStream) -> None:
        if stream.proto.input_ended:
            return
        try:
            with anyio.move_on_after(self._timeouts.close):
                await stream.h2.send(stream.proto.end_input())
                await stream.h2.end_input()
        except FluxError:
            pass

    async def _retire(self, stream: LiveStream, *, end_input: bool = True) -> None:
        """Release a stream the session no longer uses.

        A failed stream (``end_input=False``) is reset at once: its peer may have stopped
        reading (a hung Flux), and ending its input would wait for a window that never opens,
        up to ``Timeouts.close``, before the recovery could open the next stream.
        """
        if end_input:
            await self._end_input(stream)
        await aclose_quietly(stream.h2, self._timeouts.close)
        if stream in self._streams:
            self._streams.remove(stream)

    # -- timers -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """The session's timers: coalescing flush, keepalive silence, stall watchdog, rollover."""
        while self._state in ("open", "closing"):
            self._supervisor_rounds += 1
            now = _now()
            look_at = now + 1.0
            current = self._live_stream()
            if current is not None:
                if self._state == "open":
                    look_at = await self._tick(current, now)
                elif self._state == "closing":
                    look_at = await self._watch_drain(current, now)
            if self._look_again:
                self._look_again = False
                continue
            self._look_at = look_at
            self._clock_offset = anyio.current_time() - _now()
            with anyio.CancelScope(deadline=self._alarm_deadline()) as alarm:
                self._alarm = alarm
                await anyio.sleep_forever()
            self._alarm = None

    def _alarm_deadline(self) -> float:
        """The supervisor's next look, on anyio's clock: its own timers, the flush or the
        open turn's silence (the last two as of the latest chunk).

        Only an open session with a live stream has a flush to send or a turn to keep alive.
        Otherwise (closing, or between streams) those deadlines wait for the next stream, and
        kept in the alarm after they passed, they would ring again on every look.
        """
        if self._state != "open" or self._live_stream() is None:
            return self._look_at + self._clock_offset
        return min(self._look_at, self._timers.audio_alarm_at) + self._clock_offset

    def _set_alarm(self) -> None:
        """The flush deadline moved: move the sleeping supervisor's alarm (no task switch).

        The silence deadline moves with every chunk but only comes along here. Between two
        moves it only gets later, so the alarm may ring early (the supervisor looks and sleeps
        again), never late.
        """
        alarm = self._alarm
        if alarm is not None:
            deadline = self._alarm_deadline()
            if alarm.deadline != deadline:
                alarm.deadline = deadline

    def _wake_supervisor(self) -> None:
        """Have the supervisor look at its timers now (if awake: once more, right after)."""
        if self._alarm is not None:
            self._alarm.cancel()
        else:
            self._look_again = True

    async def _tick(self, stream: LiveStream, now: float) -> float:
        """Do what the timers say is due; return when they next need a look (flush aside)."""
        timers = self._timers
        actions, _ = timers.due(
            now, turn_open=self._tracker.turn_open, consumer_blocked=self._events.full
        )
        next_at = timers.checks_due_at
        for action in actions:
            if isinstance(action, FlushAudio):
                async with self._send_lock:
                    if self._current is stream:
                        await self._flush_audio(stream)
            elif isinstance(action, SendSilence):
                await self._send_silence(stream, action.duration)
            elif isinstance(action, Stalled):
                self._on_failure(
                    stream,
                    StreamStalled(
                        f"no server event for {action.quiet_for:.1f} s while audio was flowing",
                        request_id=stream.request_id,
                    ),
                )
                return now
        reason = self._rollover.due(
            now - stream.opened_at,
            credentials_expire_in=stream.credentials_expire_in,
            at_boundary=not self._tracker.turn_open,
        )
        if reason is not None and not self._switching and now >= stream.switch_held_until:
            # In its own task: the timers keep running while the next stream opens.
            self._begin_switch()
            self._task_group_start(self._switch_stream, reason)
        return next_at

    async def _watch_drain(self, stream: LiveStream, now: float) -> float:
        """While closing, the server owes the last events: a quiet drain probes the connection.

        Audio no longer flows, so the stall watchdog cannot tell a finished server from a
        silent connection; the periodic PING would notice too late for the close budget. A
        probe that is not answered fails the connection, and recovery replays the open turn.
        """
        quiet_since = max(self._timers.last_server_data, self._drain_started)
        probe_at = quiet_since + _DRAIN_QUIET
        if now < probe_at:
            return probe_at
        if self._probed is not stream:
            self._probed = stream
            await stream.h2.connection.probe(_DRAIN_PROBE_TIMEOUT)
        return now + 1.0

    async def _send_silence(self, stream: LiveStream, duration: float | None) -> None:
        """Keepalive audio: ``duration`` seconds, or one sample when ``None``."""
        width = self._format.sample_width
        if width is None:
            return  # compressed audio: silence cannot be synthesised
        if self._sends_waiting:
            # The application's audio is held back (a slow server, or one a slow consumer
            # holds back): silence would go in between its chunks, inside the user's speech.
            return
        silence = self._format.silence(duration) if duration else self._format.silence(1.0)[:width]
        async with self._send_lock:
            if self._current is not stream or self._state != "open" or self._sends_waiting:
                return  # replaced, closing, or audio came while we waited for the lock
            if not await self._flush_audio(stream):
                return  # it failed meanwhile
            self._replay.append(silence)
            self._stats.silence_bytes_sent += len(silence)
            self._stats.audio_bytes_sent += len(silence)
            self._stats.audio_events_sent += 1
            if duration is not None:
                self._timers.on_audio_sent(_now())
            await self._write(stream, stream.proto.send_audio(silence))


def _writable(stream: LiveStream) -> bool:
    """Whether events may go on ``stream``: still in use, input open, not failed.

    A stream's failure can be known to its protocol (an exception event parsed) before the
    reader hands it to the client, while the reader delivers the events that came before it.
    """
    return not stream.retired and stream.proto.can_send


def _check_types(**arguments: tuple[object, type]) -> None:
    """Refuse an argument of the wrong type here, not with an AttributeError mid-session (or,
    for ``use_fips="false"``, a truthy string that would turn FIPS on)."""
    for name, (value, expected) in arguments.items():
        if value is not None and not isinstance(value, expected):
            raise ValidationError(
                f"{name} must be {_type_name(expected)} or None, got {_type_name(type(value))}"
            )


def _type_name(kind: type) -> str:
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _replaced(stream: LiveStream) -> bool:
    """Whether ``stream`` was retired (read afresh after an ``await``)."""
    return stream.retired
