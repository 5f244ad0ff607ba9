"""SessionTimers and the policies: what is due when, with a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.core.timers import (
    _LOOK_GRID,
    FLUSH_SLACK,
    SILENCE_STEP,
    STALL_CONFIRM,
    FlushAudio,
    KeepalivePolicy,
    RolloverPolicy,
    SendSilence,
    SessionTimers,
    Stalled,
)
from flux_sagemaker.errors import ValidationError


def timers(**policy: float | None) -> SessionTimers:
    t = SessionTimers(KeepalivePolicy(**policy), coalesce_s=0.08)  # type: ignore[arg-type]
    t.start(100.0)
    return t


def test_nothing_is_due_right_after_start() -> None:
    t = timers()
    actions, next_at = t.due(100.0, turn_open=False)
    assert actions == []
    assert 100.0 < next_at <= 101.0


def _grid_steps(seconds: float) -> float:
    return seconds / _LOOK_GRID


@given(now=st.floats(0, 1e6), later=st.floats(0, 0.25))
def test_sessions_look_on_a_shared_grid_within_a_second(now: float, later: float) -> None:
    """With nothing else due, a session looks again within a second, at a time on a grid that
    sessions started at other moments share: their looks fall in one event-loop iteration."""
    looks = []
    for start in (now, now + later):
        t = SessionTimers(KeepalivePolicy(), coalesce_s=0.08)
        t.start(start)
        _, next_at = t.due(start, turn_open=False)
        assert start + 1.0 - _LOOK_GRID - 1e-6 < next_at <= start + 1.0 + 1e-6
        assert next_at == t.checks_due_at
        steps = _grid_steps(next_at)
        assert steps == pytest.approx(round(steps), abs=1e-6)  # on the grid
        looks.append(next_at)
    apart = _grid_steps(looks[1] - looks[0])
    assert apart == pytest.approx(round(apart), abs=1e-6)


def test_pending_audio_is_flushed_one_window_later() -> None:
    t = timers()
    assert t.on_app_audio(100.0, 0.02, pending=True) is True
    assert t.on_app_audio(100.02, 0.02, pending=True) is False  # the first chunk's timer runs
    actions, next_at = t.due(100.05, turn_open=False)
    assert actions == []
    assert next_at == pytest.approx(100.08)
    actions, _ = t.due(100.08, turn_open=False)
    assert actions == [FlushAudio()]
    assert t.pending_since is None


def test_a_full_event_cancels_the_flush_timer() -> None:
    t = timers()
    t.on_app_audio(100.0, 0.02, pending=True)
    t.on_app_audio(100.06, 0.02, pending=False)
    assert t.due(100.2, turn_open=False)[0] == []


def test_flush_at_moves_as_partial_events_come_and_go() -> None:
    t = timers()
    _, next_at = t.due(100.0, turn_open=False)
    assert t.flush_at == math.inf
    assert t.checks_due_at == next_at
    assert t.on_app_audio(100.01, 0.02, pending=True) is True  # a partial event starts
    assert t.flush_at == pytest.approx(100.09)
    assert t.on_app_audio(100.03, 0.02, pending=True) is False  # the same one grows
    assert t.on_app_audio(100.05, 0.02, pending=False) is True  # a full event took it away
    assert t.flush_at == math.inf
    assert t.on_app_audio(100.07, 0.02, pending=False) is False
    # due() returns the earlier of the two; checks_due_at leaves the flush out.
    t.on_app_audio(100.1, 0.02, pending=True)
    _, next_at = t.due(100.1, turn_open=False)
    assert next_at == pytest.approx(100.18)
    assert t.checks_due_at > next_at


def test_the_flush_alarm_rings_a_little_after_the_flush_time() -> None:
    """Steady audio's next chunk, due at the flush time, gets there before the alarm."""
    t = timers()
    assert t.flush_alarm_at == math.inf
    t.on_app_audio(100.0, 0.02, pending=True)
    assert t.flush_alarm_at == pytest.approx(100.08 + FLUSH_SLACK)
    t.on_app_audio(100.02, 0.005, pending=True)  # 5 ms chunks: half a chunk of slack
    assert t.flush_alarm_at == pytest.approx(100.0825)
    assert t.due(100.08, turn_open=False)[0] == [FlushAudio()]  # the flush time stays


def test_open_turn_gets_real_time_silence_after_the_gap() -> None:
    t = timers(turn_silence_after=0.5)
    t.on_app_audio(100.0, 0.02, pending=False)
    t.on_audio_sent(100.0)
    t.on_server_data(100.0)
    actions, next_at = t.due(100.3, turn_open=True)
    assert actions == []
    assert next_at == pytest.approx(100.5)
    actions, next_at = t.due(100.5, turn_open=True)
    assert actions == [SendSilence(SILENCE_STEP)]
    assert next_at == pytest.approx(100.5 + SILENCE_STEP)
    # One step of silence per step of quiet: not a burst.
    assert t.due(100.5 + SILENCE_STEP / 2, turn_open=True)[0] == []


def test_a_late_look_holds_the_first_step_of_silence_back_for_audio_held_up() -> None:
    """The event loop was blocked (a consumer's synchronous LLM call): the timers look long
    past the gap, before the application's audio held up meanwhile was taken in. Silence sent
    then went in the middle of the user's speech; it waits one step for that audio."""
    t = timers(turn_silence_after=0.5)
    t.on_app_audio(100.0, 0.02, pending=False)
    actions, next_at = t.due(103.0, turn_open=True)  # blocked for 3 s
    assert actions == []
    assert next_at == pytest.approx(103.0 + SILENCE_STEP)
    t.on_app_audio(103.01, 0.02, pending=False)  # the audio held up comes
    assert t.due(103.0 + SILENCE_STEP, turn_open=True)[0] == []
    # Really quiet: the late look's silence comes one step later, then in real time.
    t.on_app_audio(110.0, 0.02, pending=False)
    assert t.due(113.0, turn_open=True)[0] == []
    assert t.due(113.0 + SILENCE_STEP, turn_open=True)[0] == [SendSilence(SILENCE_STEP)]
    # Later steps are not held back, even when looked at late (a loaded machine).
    assert t.due(113.0 + 3 * SILENCE_STEP, turn_open=True)[0] == [SendSilence(SILENCE_STEP)]


def test_the_gap_is_at_least_two_chunks() -> None:
    t = timers(turn_silence_after=0.1)
    t.on_app_audio(100.0, 0.25, pending=False)
    assert t.due(100.3, turn_open=True)[0] == []
    assert t.due(100.5, turn_open=True)[0] == [SendSilence(SILENCE_STEP)]


def test_idle_keepalive_sends_one_sample_per_interval() -> None:
    t = timers(idle_interval=10.0)
    actions, next_at = t.due(105.0, turn_open=False)
    assert actions == []
    assert next_at == pytest.approx(106.0)  # capped sleep
    actions, next_at = t.due(110.0, turn_open=False)
    assert actions == [SendSilence(None)]
    assert t.due(115.0, turn_open=False)[0] == []
    assert t.due(120.0, turn_open=False)[0] == [SendSilence(None)]


def test_idle_keepalive_covers_an_open_turn_only_without_turn_silence() -> None:
    """Within a turn, turn silence keeps the stream going; without it, the idle sample does."""
    plain = timers(turn_silence_after=None, idle_interval=10.0)
    assert plain.due(110.0, turn_open=True)[0] == [SendSilence(None)]
    with_silence = timers(turn_silence_after=0.5, idle_interval=10.0)
    assert SendSilence(None) not in with_silence.due(110.0, turn_open=True)[0]


def test_stall_needs_flowing_audio_and_a_keeping_up_consumer() -> None:
    t = timers(stall_timeout=2.0, idle_interval=None)
    t.on_audio_sent(100.0)
    t.on_audio_sent(101.9)
    assert t.due(101.9, turn_open=False)[0] == []
    assert t.due(102.1, turn_open=False, consumer_blocked=True)[0] == []
    # Seen once, then confirmed after STALL_CONFIRM (the readers may have been starved).
    actions, next_at = t.due(102.1, turn_open=False)
    assert actions == []
    assert next_at == pytest.approx(102.1 + STALL_CONFIRM)
    actions, _ = t.due(102.1 + STALL_CONFIRM, turn_open=False)
    assert actions == [Stalled(pytest.approx(2.1 + STALL_CONFIRM))]  # type: ignore[list-item]
    # Quiet server but no audio: nothing to stall on, and no busy loop either.
    quiet = timers(stall_timeout=2.0, idle_interval=None)
    actions, next_at = quiet.due(110.0, turn_open=False)
    assert actions == []
    assert next_at > 110.0


def test_data_arriving_before_the_confirmation_clears_a_seen_stall() -> None:
    """After a blocked event loop, the timers may look before the readers did."""
    t = timers(stall_timeout=2.0, idle_interval=None)
    t.on_audio_sent(100.0)
    t.on_audio_sent(104.0)
    assert t.due(104.0, turn_open=False)[0] == []  # seen: 4 s quiet
    assert t.stall_seen_at == 104.0
    t.on_server_data(104.01)  # the reader catches up with what was waiting
    assert t.due(104.0 + STALL_CONFIRM, turn_open=False)[0] == []
    assert t.stall_seen_at is None


def test_a_pause_in_the_audio_does_not_count_as_the_servers_silence() -> None:
    """An agent that stops sending audio for longer than the stall timeout (its STT muted
    while it speaks) and then resumes: the server had nothing to answer during the pause. The
    watchdog took the whole pause as the server's silence and declared a stall
    ("no server event for 12.3 s while audio was flowing") unless Flux answered the resumed
    audio within STALL_CONFIRM, less than its 240 ms update cadence plus the round trip."""
    t = timers(stall_timeout=10.0, idle_interval=None, turn_silence_after=None)
    t.on_audio_sent(100.1)
    t.on_server_data(100.3)  # Flux's last Update before the pause
    resumed = 112.0
    t.on_audio_sent(resumed)
    assert t.due(resumed + 0.01, turn_open=False)[0] == []
    assert t.stall_seen_at is None
    assert t.due(resumed + 0.3, turn_open=False)[0] == []  # Flux's answer is still on its way
    t.on_server_data(resumed + 0.35)
    # A server that stays silent while the audio flows is still caught, its stall timed from
    # the first audio it left unanswered.
    now = resumed + 0.35
    t.on_audio_sent(now + 0.05)
    while now < resumed + 11.0 and not t.stall_seen_at:
        now += 0.08
        t.on_audio_sent(now)
        t.due(now, turn_open=False)
    assert t.stall_seen_at == pytest.approx(resumed + 0.4 + 10.0, abs=0.08)
    actions, _ = t.due(t.stall_seen_at + STALL_CONFIRM, turn_open=False)
    assert actions == [Stalled(pytest.approx(10.0 + STALL_CONFIRM, abs=0.08))]  # type: ignore[list-item]


def test_disabled_policy_never_acts() -> None:
    t = SessionTimers(KeepalivePolicy.disabled(), coalesce_s=0.0)
    t.start(0.0)
    for now in (1.0, 100.0, 10_000.0):
        assert t.due(now, turn_open=True)[0] == []


def test_an_open_turns_silence_deadline_moves_with_the_audio() -> None:
    """The shell's alarm follows the latest chunk: steady audio never rings it."""
    t = timers(turn_silence_after=0.5)
    t.on_app_audio(100.0, 0.02, pending=False)
    assert t.audio_alarm_at == math.inf  # no turn seen open yet
    _, next_at = t.due(100.0, turn_open=True)
    assert next_at == pytest.approx(100.5)
    assert t.checks_due_at == pytest.approx(101.0)  # the other timers' look leaves it out
    assert t.audio_alarm_at == pytest.approx(100.5)
    t.on_app_audio(100.3, 0.02, pending=False)
    assert t.audio_alarm_at == pytest.approx(100.8)
    t.on_app_audio(100.32, 0.02, pending=True)  # a partial event: the flush comes first
    assert t.audio_alarm_at == pytest.approx(100.32 + 0.08 + FLUSH_SLACK)
    t.on_app_audio(100.34, 0.02, pending=False)
    assert t.audio_alarm_at == pytest.approx(100.84)
    # Quiet for the gap: silence is due, and its steps go by checks_due_at.
    actions, next_at = t.due(100.84, turn_open=True)
    assert actions == [SendSilence(SILENCE_STEP)]
    assert t.audio_alarm_at == math.inf
    assert t.checks_due_at == next_at == pytest.approx(100.84 + SILENCE_STEP)
    # The turn ended: no silence deadline any more.
    t.on_app_audio(101.0, 0.02, pending=False)
    t.due(101.0, turn_open=False)
    assert t.audio_alarm_at == math.inf


def test_the_silence_deadline_is_off_with_the_keepalive_off() -> None:
    t = timers(turn_silence_after=None)
    t.on_app_audio(100.0, 0.02, pending=False)
    t.due(100.0, turn_open=True)
    assert t.audio_alarm_at == math.inf


@given(
    st.lists(
        st.tuples(st.floats(0.001, 3.0), st.booleans(), st.booleans(), st.booleans()),
        max_size=60,
    )
)
def test_next_wakeup_is_always_in_the_future_and_soon(
    steps: list[tuple[float, bool, bool, bool]],
) -> None:
    t = timers(turn_silence_after=0.3, idle_interval=1.0, stall_timeout=0.5)
    now = 100.0
    for delta, audio, data, turn_open in steps:
        now += delta
        if audio:
            t.on_app_audio(now, 0.02, pending=True)
            t.on_audio_sent(now)
        if data:
            t.on_server_data(now)
        _, next_at = t.due(now, turn_open=turn_open)
        assert now <= next_at <= now + 1.0
        # The shell's alarm: the same look, bar the flush alarm's slack.
        assert next_at <= min(t.checks_due_at, t.audio_alarm_at) <= next_at + FLUSH_SLACK


@pytest.mark.parametrize(
    ("age", "expire", "boundary", "expected"),
    [
        (10.0, None, True, None),
        (1649.0, None, True, None),
        (1650.0, None, False, None),
        (1650.0, None, True, "maximum stream duration"),
        (1770.0, None, False, "maximum stream duration"),
        (100.0, 500.0, False, None),
        (100.0, 500.0, True, "credentials expire"),
        (200.0, 500.0, False, "credentials expire"),
        # Opened with credentials inside the margin: no fresher ones to switch to.
        (0.0, 200.0, True, None),
        (100.0, 300.0, True, None),
        (1650.0, 200.0, True, "maximum stream duration"),
        # Opened less than the margin before the switch: the next stream would get the same
        # credentials and be due at its first boundary too. The switch waits for the limit.
        (0.0, 350.0, True, None),
        (49.0, 350.0, True, None),
        (50.0, 350.0, False, "credentials expire"),
        (1.0, 421.0, True, "credentials expire"),
    ],
)
def test_rollover_reasons(
    age: float, expire: float | None, boundary: bool, expected: str | None
) -> None:
    policy = RolloverPolicy()
    assert policy.due(age, credentials_expire_in=expire, at_boundary=boundary) == expected


def test_a_refused_switch_is_tried_again_after_a_doubling_pause() -> None:
    policy = RolloverPolicy()
    pauses = [policy.retry_after(failures) for failures in range(1, 8)]
    assert pauses == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    # Five tries fit in the default margin before the stream's latest switch.
    assert sum(pauses[:4]) < policy.margin


@pytest.mark.parametrize(
    "kwargs",
    [
        {"turn_silence_after": 0.0},
        {"idle_interval": -1},
        {"stall_timeout": float("nan")},
        {"stall_timeout": True},
        {"turn_silence_after": "1"},
    ],
)
def test_keepalive_policy_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        KeepalivePolicy(**kwargs)  # type: ignore[arg-type]


def test_rollover_policy_validation() -> None:
    with pytest.raises(ValidationError, match="max_stream_duration"):
        RolloverPolicy(max_stream_duration=0)
