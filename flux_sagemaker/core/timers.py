"""What a session does on its own as time passes, decided without reading a clock.

Flux is clocked by audio: after ``StartOfTurn`` no ``EndOfTurn`` comes unless audio keeps
arriving, SageMaker has no event-level ping, and a stream lives at most 30 minutes. So a
session flushes partial audio events, sends silence, watches for a silent server and moves to
a fresh stream in time. :class:`SessionTimers` keeps the timestamps the shell reports and says,
for a given ``now``, what is due and when to look again; the shell sleeps until then.
"""

from __future__ import annotations

import math

import attrs

from .validators import number_in_range

__all__ = [
    "FLUSH_SLACK",
    "MAX_TURN_SILENCE",
    "MIN_TURN_SILENCE",
    "SAGEMAKER_MAX_STREAM_SECONDS",
    "SILENCE_STEP",
    "FlushAudio",
    "KeepalivePolicy",
    "RolloverPolicy",
    "SendSilence",
    "SessionTimers",
    "Stalled",
    "TimerAction",
]

#: SageMaker ends a bidirectional stream after 30 minutes.
SAGEMAKER_MAX_STREAM_SECONDS = 30 * 60
#: While a turn is open and the application is quiet, silence goes out in steps this long.
SILENCE_STEP = 0.08
# Look again at least this often, so policy changes and stray wake-ups stay cheap.
_MAX_SLEEP = 1.0
# Those looks fall on a grid of this step: sessions fed by independent calls then wake the
# event loop for them at most 50 times a second, not once a second each (an idle wake-up costs
# about 0.2 ms of CPU on a small VM: 500 sessions, 0.1 s of CPU a second). Not coarser: each
# session keeps its slot, and sessions started together would all look in one loop iteration.
_LOOK_GRID = 0.02
# After a planned switch could not open its stream: wait this long before the next try,
# doubling with each failure up to the cap.
_SWITCH_RETRY_FIRST = 5.0
_SWITCH_RETRY_CAP = 60.0
#: The flush alarm rings this much after :attr:`SessionTimers.flush_at` (at most half a chunk):
#: in steady audio the next chunk is due just then, and it should start the next partial event
#: (moving the alarm on) before the alarm rings, not race it and lose when the loop wakes late.
FLUSH_SLACK = 0.01
#: A stall is acted on only if it is still there this long after it was first seen: after the
#: event loop was blocked, the timers may run before the readers took in what had arrived.
STALL_CONFIRM = 0.25


#: The range of :attr:`KeepalivePolicy.turn_silence_after`, in seconds.
MIN_TURN_SILENCE = 0.05
MAX_TURN_SILENCE = 60.0


@attrs.frozen(kw_only=True)
class KeepalivePolicy:
    """What the client sends on its own so that Flux keeps producing events."""

    turn_silence_after: float | None = attrs.field(
        default=0.5,
        validator=number_in_range(
            MIN_TURN_SILENCE, MAX_TURN_SILENCE, optional=True, unit="seconds"
        ),
    )
    """While a turn is open and the application sends nothing for this long (or twice its
    last chunk, if longer), send silence in real time so that ``EndOfTurn`` still arrives.
    A ``send_audio()`` call waiting for flow control counts as sending. ``None`` disables it."""
    idle_interval: float | None = attrs.field(
        default=10.0, validator=number_in_range(0.1, 3600, optional=True, unit="seconds")
    )
    """While no audio flows, send one silent sample this often so the stream stays alive
    (Deepgram's own harness uses 10 s): between turns, and within a turn too when
    ``turn_silence_after`` is ``None``. ``None`` disables it."""
    stall_timeout: float | None = attrs.field(
        default=10.0, validator=number_in_range(0.1, 3600, optional=True, unit="seconds")
    )
    """Audio flows but no server event arrived for this long since audio was sent (counted
    from the first audio after the server's last event, so a pause in the audio does not
    count): the stream is stalled (:class:`~flux_sagemaker.errors.StreamStalled`) and is
    recovered. ``None`` disables it."""

    @classmethod
    def disabled(cls) -> KeepalivePolicy:
        """Send nothing on our own and never declare a stall."""
        return cls(turn_silence_after=None, idle_interval=None, stall_timeout=None)


@attrs.frozen(kw_only=True)
class RolloverPolicy:
    """When a long session moves to a fresh stream, before SageMaker's 30-minute limit."""

    max_stream_duration: float = attrs.field(
        default=SAGEMAKER_MAX_STREAM_SECONDS - 30,
        validator=number_in_range(1, 24 * 3600, unit="seconds"),
    )
    """A stream is switched over at the latest this long after it opened."""
    margin: float = attrs.field(default=120.0, validator=number_in_range(0, 3600, unit="seconds"))
    """From ``max_stream_duration - margin`` on, switch at the first turn boundary."""
    credential_margin: float = attrs.field(
        default=300.0, validator=number_in_range(0, 3600, unit="seconds")
    )
    """Switch to a stream signed with fresh credentials this long before they expire."""

    def due(
        self, age: float, *, credentials_expire_in: float | None, at_boundary: bool
    ) -> str | None:
        """Why a stream of this ``age`` should be replaced now, or ``None``.

        Args:
            age: Seconds since the stream opened.
            credentials_expire_in: Seconds from the stream's opening until its credentials
                expire, or ``None`` when they do not. No switch for them when they were within
                ``credential_margin`` already: a new stream would get the same ones. Nor an
                early one, at a boundary, for a stream opened within ``margin`` of that switch.
            at_boundary: Whether no turn is open, so a switch now replays almost nothing.
        """
        limits = [(self.max_stream_duration, self.margin, "maximum stream duration")]
        # Credentials already within the margin when the stream opened are the freshest the
        # source had (botocore refreshes from 15 minutes before expiry, and keeps the old ones
        # when that fails): a new stream would be signed with them again, and switch again.
        if credentials_expire_in is not None and credentials_expire_in > self.credential_margin:
            limit = credentials_expire_in - self.credential_margin
            # Likewise a stream opened inside the early window: the next one, signed with
            # the same credentials, would open inside it too and be due at its first boundary,
            # again and again until they are within the margin. It waits for the limit.
            early = self.margin if limit > self.margin else 0.0
            limits.append((limit, early, "credentials expire"))
        for limit, early, reason in limits:
            if age >= limit or (at_boundary and age >= limit - early):
                return reason
        return None

    def retry_after(self, failures: int) -> float:
        """Seconds to keep the current stream after ``failures`` (1 or more) planned switches
        in a row could not open the next one, before trying again.

        The current stream still works, and the switch is due again at every look: without a
        pause, an endpoint that refuses (access denied, throttling) got a request a second
        until the stream's end. Doubling from 5 s up to 60 s still tries five times within the
        default ``margin`` before ``max_stream_duration``.
        """
        return min(_SWITCH_RETRY_CAP, _SWITCH_RETRY_FIRST * 2.0 ** max(0, failures - 1))


@attrs.frozen
class FlushAudio:
    """The pending partial audio event has waited one coalescing window: send it."""


@attrs.frozen
class SendSilence:
    """Send silence: ``duration`` seconds, or one sample when ``None`` (idle keepalive)."""

    duration: float | None


@attrs.frozen
class Stalled:
    """Audio flows but the server said nothing for ``quiet_for`` seconds since audio went out."""

    quiet_for: float


TimerAction = FlushAudio | SendSilence | Stalled


@attrs.define(eq=False)
class SessionTimers:
    """The timestamps of one session and what they make due.

    The shell reports events with the ``on_*`` methods (monotonic seconds) and calls
    :meth:`due` when it wakes up.
    """

    policy: KeepalivePolicy
    """The keepalive and watchdog policy."""
    coalesce_s: float
    """The coalescing window, in seconds (0: no partial events are ever pending)."""
    last_app_audio: float = 0.0
    """When the application last handed over audio (moved on by keepalive silence)."""
    last_audio_sent: float = 0.0
    """When audio last went out on a stream."""
    last_server_data: float = 0.0
    """When bytes last arrived from the server."""
    unanswered_since: float | None = None
    """When the first audio event went out that no server data has followed yet, or ``None``.

    The stall watchdog counts the server's silence from here, not from
    :attr:`last_server_data`: after a pause in the audio (an agent muting its STT while it
    speaks), a server that said nothing meanwhile has had nothing to answer."""
    pending_since: float | None = None
    """Since when a partial audio event has been waiting, or ``None``."""
    last_chunk_s: float = 0.0
    """Duration of the application's last chunk: a turn is not quiet before two of them."""
    last_idle_ping: float = 0.0
    """When the idle keepalive last sent its one sample (too little audio to expect events)."""
    silence_held_at: float | None = None
    """When :meth:`due` held back the first step of an open turn's silence because it looked
    late (see :meth:`due`), or ``None``."""
    silence_running: bool = False
    """Keepalive silence is being sent: no application audio since its last step."""
    stall_seen_at: float | None = None
    """When :meth:`due` first saw a stall that it has not yet reported, or ``None``."""
    checks_due_at: float = 0.0
    """When the timers other than the audio-driven ones (the coalescing flush, the open turn's
    silence) need a look, as of the last :meth:`due`.

    With :attr:`audio_alarm_at`, this lets the shell move its single alarm as audio comes and
    goes, without waking up: ``min(checks_due_at, audio_alarm_at)``."""
    silence_gap: float = math.inf
    """The quiet after which an open turn gets silence, as of the last :meth:`due` (``inf``
    while no turn is open, while silence is being sent, or with the keepalive off)."""

    @property
    def flush_at(self) -> float:
        """When the pending partial audio event is due (``inf`` when nothing is pending)."""
        since = self.pending_since
        return math.inf if since is None else since + self.coalesce_s

    @property
    def flush_alarm_at(self) -> float:
        """When to wake up for the flush: :attr:`flush_at` plus :data:`FLUSH_SLACK`.

        The slack is at most half the last chunk. It keeps steady audio from racing the alarm:
        a partial event that left full leaves the alarm at its flush time (moving it back would
        cost a timer reschedule per event), which is when the next chunk is due.
        """
        return self.flush_at + min(FLUSH_SLACK, self.last_chunk_s / 2)

    @property
    def silence_at(self) -> float:
        """When an open turn gets silence: :attr:`last_app_audio` plus :attr:`silence_gap`."""
        return self.last_app_audio + self.silence_gap

    @property
    def audio_alarm_at(self) -> float:
        """When the timers that audio moves on need a look: the flush alarm, or the open turn's
        silence deadline (:attr:`silence_at`).

        Both move with every chunk without waking the shell: in steady audio an open turn's
        silence check never rings, where a deadline fixed at the last look would ring about
        every :attr:`KeepalivePolicy.turn_silence_after` only to find audio still flowing.
        """
        return min(self.flush_alarm_at, self.silence_at)

    def start(self, now: float) -> None:
        """A stream opened: every clock starts now."""
        self.last_app_audio = self.last_audio_sent = self.last_server_data = now
        self.last_idle_ping = now
        self.unanswered_since = None

    def on_app_audio(self, now: float, chunk_s: float, *, pending: bool) -> bool:
        """The application handed over a chunk; return whether :attr:`flush_at` moved.

        It moves when a partial event starts waiting, and when a full event takes it away.
        """
        self.last_app_audio = now
        self.last_chunk_s = chunk_s
        self.silence_held_at = None
        self.silence_running = False
        if not pending:
            moved = self.pending_since is not None
            self.pending_since = None
            return moved
        if self.pending_since is None:
            self.pending_since = now
            return True
        return False

    def on_audio_sent(self, now: float) -> None:
        """An audio event went out (not the idle keepalive's single sample)."""
        self.last_audio_sent = now
        if self.unanswered_since is None:
            self.unanswered_since = now

    def on_flushed(self) -> None:
        """Nothing is pending any more."""
        self.pending_since = None

    def on_server_data(self, now: float) -> None:
        """Bytes arrived from the server."""
        self.last_server_data = now
        self.unanswered_since = None

    def due(
        self, now: float, *, turn_open: bool, consumer_blocked: bool = False
    ) -> tuple[list[TimerAction], float]:
        """What to do now, and when to look again.

        Args:
            now: The current monotonic time.
            turn_open: Whether Flux is inside a turn (then silence keeps it going).
            consumer_blocked: Whether the event consumer is not keeping up; a quiet stream
                is then our own back-pressure, not a stall.
        """
        actions: list[TimerAction] = []
        next_at = math.floor((now + _MAX_SLEEP) / _LOOK_GRID) * _LOOK_GRID
        self.silence_gap = math.inf  # audio moves this deadline: in the answer, not the checks
        if now >= self.flush_at:
            actions.append(FlushAudio())
            self.pending_since = None
        policy = self.policy
        if policy.turn_silence_after is not None and turn_open:
            gap = max(policy.turn_silence_after, 2 * self.last_chunk_s)
            quiet = now - self.last_app_audio
            if (
                quiet >= gap + SILENCE_STEP
                and not self.silence_running
                and self.silence_held_at is None
            ):
                # A step late for the first step: the event loop may have been blocked (a
                # consumer's synchronous call), and the application's audio held up with it
                # may come now. Silence sent first would go in the middle of its speech.
                self.silence_held_at = now
                next_at = min(next_at, now + SILENCE_STEP)
            elif quiet >= gap:
                # Silence in real time: one step of audio per step of quiet.
                actions.append(SendSilence(SILENCE_STEP))
                self.last_app_audio += SILENCE_STEP
                self.silence_held_at = None
                self.silence_running = True
                next_at = min(next_at, now + SILENCE_STEP)
            else:
                self.silence_gap = gap
        elif policy.idle_interval is not None:
            idle_since = max(self.last_app_audio, self.last_audio_sent, self.last_idle_ping)
            if now - idle_since >= policy.idle_interval:
                actions.append(SendSilence(None))
                self.last_idle_ping = now
                idle_since = now
            next_at = min(next_at, idle_since + policy.idle_interval)
        if policy.stall_timeout is not None:
            unanswered = self.unanswered_since
            quiet_for = 0.0 if unanswered is None else now - unanswered
            audio_flowing = now - self.last_audio_sent < policy.stall_timeout
            if quiet_for < policy.stall_timeout or not audio_flowing or consumer_blocked:
                self.stall_seen_at = None
                if unanswered is not None and quiet_for < policy.stall_timeout:
                    next_at = min(next_at, unanswered + policy.stall_timeout)
                # Otherwise nothing to answer, or excused: looked at again within _MAX_SLEEP.
            elif self.stall_seen_at is None:
                self.stall_seen_at = now  # confirm it once the readers had their turn
                next_at = min(next_at, now + STALL_CONFIRM)
            elif now >= self.stall_seen_at + STALL_CONFIRM:
                actions.append(Stalled(quiet_for))
                self.stall_seen_at = None
            else:
                next_at = min(next_at, self.stall_seen_at + STALL_CONFIRM)
        self.checks_due_at = max(next_at, now)
        return actions, max(min(next_at, self.silence_at, self.flush_at), now)
