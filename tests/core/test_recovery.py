"""RetryPolicy, Backoff and ReplayBuffer."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker import errors
from flux_sagemaker.core.recovery import DEFAULT_REPLAY_BYTES, Backoff, ReplayBuffer, RetryPolicy


def constant(value: float) -> Callable[[], float]:
    return lambda: value


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 5
    assert policy.initial_backoff == 0.1
    assert policy.max_backoff == 5.0
    assert policy.multiplier == 2.0
    assert policy.jitter == "full"
    assert policy.budget == 30.0
    assert policy.enabled
    assert [policy.ceiling(n) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.ceiling(10_000) == 5.0  # no overflow


def test_policy_ceiling_edges() -> None:
    assert RetryPolicy(initial_backoff=0, max_backoff=0).ceiling(3) == 0.0
    assert RetryPolicy(multiplier=1).ceiling(50) == 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial_backoff": -0.1}, "initial_backoff"),
        ({"initial_backoff": float("nan")}, "initial_backoff"),
        ({"max_backoff": "5"}, "max_backoff"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": "decorrelated"}, "jitter"),
        ({"budget": float("inf")}, "budget"),
        ({"enabled": 1}, "enabled"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "max_backoff"),
    ],
)
def test_policy_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(errors.ValidationError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_full_jitter_sequence() -> None:
    draws = iter([0.5, 0.25, 1.0, 0.0, 0.5, 0.9])
    backoff = Backoff(RetryPolicy(), random=lambda: next(draws))
    delays = [backoff.next_delay(now=100.0) for _ in range(6)]
    assert delays == [0.05, 0.05, 0.4, 0.0, 0.8, None]
    assert backoff.attempts == 5


def test_equal_and_no_jitter() -> None:
    equal = Backoff(RetryPolicy(jitter="equal"), random=constant(0.5))
    assert [equal.next_delay(0.0) for _ in range(3)] == pytest.approx([0.075, 0.15, 0.3])
    none = Backoff(RetryPolicy(jitter="none"), random=constant(0.123))
    assert [none.next_delay(0.0) for _ in range(3)] == [0.1, 0.2, 0.4]


def test_budget_caps_and_stops() -> None:
    policy = RetryPolicy(
        jitter="none", max_attempts=100, initial_backoff=4, max_backoff=4, budget=10
    )
    backoff = Backoff(policy, random=constant(0.0))
    assert backoff.started is None
    assert backoff.next_delay(now=50.0) == 4  # the run starts at 50
    assert backoff.started == 50.0
    assert backoff.next_delay(now=54.5) == 4
    assert backoff.next_delay(now=58.0) == 2.0  # shortened to end on the budget (60)
    assert backoff.next_delay(now=60.0) is None
    backoff.reset()
    assert (backoff.attempts, backoff.started) == (0, None)
    assert backoff.next_delay(now=60.0) == 4  # a new run, a new budget


def test_reset_after_success() -> None:
    backoff = Backoff(RetryPolicy(max_attempts=2, jitter="none"), random=constant(0.0))
    assert backoff.next_delay(0.0) == 0.1
    assert backoff.next_delay(0.1) == 0.2
    assert backoff.next_delay(0.3) is None
    backoff.reset()
    assert backoff.next_delay(100.0) == 0.1


def test_disabled_and_zero_attempts() -> None:
    assert Backoff(RetryPolicy(enabled=False), random=constant(0.5)).next_delay(0.0) is None
    assert Backoff(RetryPolicy(max_attempts=0), random=constant(0.5)).next_delay(0.0) is None


@pytest.mark.parametrize("value", [-3.0, 7.0, float("nan"), float("inf")])
def test_misbehaving_random_is_clamped(value: float) -> None:
    delay = Backoff(RetryPolicy(), random=constant(value)).next_delay(0.0)
    assert delay is not None
    assert 0.0 <= delay <= 0.1


@given(
    draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=20),
    steps=st.lists(st.floats(0, 10), min_size=1, max_size=20),
)
def test_backoff_properties(draws: list[float], steps: list[float]) -> None:
    policy = RetryPolicy()
    backoff = Backoff(policy, random=itertools.cycle(draws).__next__)
    now, start, given_out = 1000.0, 1000.0, 0
    for step in steps:
        delay = backoff.next_delay(now)
        if delay is None:
            assert given_out == policy.max_attempts or now >= start + policy.budget
            break
        assert 0 <= delay <= policy.ceiling(given_out)
        assert now + delay <= start + policy.budget + 1e-9
        given_out += 1
        now += delay + step
    assert given_out <= policy.max_attempts


def test_replay_basics() -> None:
    buf = ReplayBuffer(1000, alignment=2)
    assert buf.replay() == b""
    assert buf.max_bytes == 1000
    buf.append(b"\x01\x00" * 100)
    buf.append(bytearray(b"\x02\x00" * 100))
    buf.append(memoryview(b"\x03\x00" * 100))
    assert buf.total_bytes == 600
    assert buf.held_bytes == 600
    assert buf.start_offset == 0
    assert buf.replay() == b"\x01\x00" * 100 + b"\x02\x00" * 100 + b"\x03\x00" * 100
    buf.trim_to(250)
    assert buf.start_offset == 250
    assert buf.replay() == b"\x02\x00" * 75 + b"\x03\x00" * 100
    assert buf.dropped_bytes == 0


def test_replay_bound_drops_oldest_and_reports() -> None:
    buf = ReplayBuffer(1001, alignment=2)
    assert buf.capacity == 1000
    buf.append(bytes(range(200)) * 3)
    buf.append(bytes(range(100, 200)) * 5)
    assert buf.held_bytes == 1000
    assert buf.total_bytes == 1100
    assert buf.start_offset == 100
    assert buf.dropped_bytes == 100
    assert buf.replay() == (bytes(range(200)) * 3 + bytes(range(100, 200)) * 5)[100:]
    huge = bytes(i % 256 for i in range(5000))
    buf.append(huge)
    assert buf.replay() == huge[-1000:]
    assert buf.dropped_bytes == 100 + 1000 + 4000
    assert buf.start_offset == 6100 - 1000


def test_the_gap_counts_only_drops_a_replay_still_needs() -> None:
    buf = ReplayBuffer(100)
    buf.append(bytes(250))  # a long turn: 150 bytes dropped
    buf.trim_to(250)  # ...which ended: nothing of it is needed any more
    assert buf.dropped_bytes == 150
    assert buf.take_gap() == 0
    buf.append(bytes(130))  # the next turn overflows by 30
    assert buf.take_gap() == 30
    assert buf.take_gap() == 0  # taken once
    buf.append(bytes(20))  # 20 more dropped after that replay
    assert buf.take_gap() == 20


def test_trim_edges() -> None:
    buf = ReplayBuffer(alignment=2)
    assert buf.max_bytes == DEFAULT_REPLAY_BYTES
    buf.append(b"\x00\x01" * 10)
    buf.trim_to(0)
    assert buf.start_offset == 0
    buf.trim_to(7)  # rounded down to a sample
    assert buf.start_offset == 6
    buf.trim_to(3)  # before the start: nothing
    assert buf.start_offset == 6
    buf.trim_to(10_000)  # past the end: clamped
    assert buf.start_offset == 20
    assert buf.held_bytes == 0
    assert buf.replay() == b""
    buf.append(b"\x09\x09")
    assert buf.start_offset == 20
    assert buf.replay() == b"\x09\x09"
    for bad in (-1, 1.5, True):
        with pytest.raises(errors.ValidationError, match="byte_offset"):
            buf.trim_to(bad)  # type: ignore[arg-type]


def test_audio_after_a_replay_does_not_copy_the_buffer_again() -> None:
    """A turn longer than the bound after a reconnect: each chunk appended drops as much from
    the front, which must cost about one chunk, not a copy of what the buffer holds (at 8 MiB
    and a chunk per 20 ms, 400 MB/s of copying per session)."""
    chunk = bytes(640)
    buffer = ReplayBuffer(1 << 20)
    for _ in range((1 << 20) // len(chunk)):
        buffer.append(chunk)
    assert len(buffer.replay()) == buffer.held_bytes
    tracemalloc.start()
    try:
        for _ in range(100):
            buffer.append(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # the new chunks, not another copy of the megabyte held
    assert buffer.held_bytes == buffer.capacity


def test_replay_validation() -> None:
    with pytest.raises(errors.ValidationError, match="max_bytes"):
        ReplayBuffer(-1)
    with pytest.raises(errors.ValidationError, match="alignment"):
        ReplayBuffer(alignment=0)
    buf = ReplayBuffer(100, alignment=2)
    with pytest.raises(errors.ValidationError, match="3 bytes"):
        buf.append(b"abc")
    buf.append(b"")
    assert buf.total_bytes == 0


def test_zero_capacity_keeps_nothing() -> None:
    buf = ReplayBuffer(0)
    buf.append(b"abc")
    assert buf.replay() == b""
    assert buf.dropped_bytes == 3
    assert buf.start_offset == 3


@given(
    capacity=st.integers(0, 300),
    alignment=st.sampled_from([1, 2, 4]),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 120)),
            st.tuples(st.just("trim"), st.integers(0, 2000)),
            st.tuples(st.just("gap"), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_replay_properties(capacity: int, alignment: int, ops: list[tuple[str, int]]) -> None:
    buf = ReplayBuffer(capacity, alignment=alignment)
    timeline = bytearray()  # every byte ever appended, at its session offset
    trimmed_to = 0
    needed_from = 0  # what a replay must hold from, unless the bound dropped it
    for op, n in ops:
        if op == "append":
            chunk = bytes((len(timeline) + i) % 251 for i in range(n * alignment))
            timeline += chunk
            buf.append(chunk)
        elif op == "trim":
            buf.trim_to(n)
            trimmed_to = max(trimmed_to, min(n, len(timeline)) // alignment * alignment)
            needed_from = max(needed_from, trimmed_to)
        else:
            assert buf.take_gap() == max(0, buf.start_offset - needed_from)
            needed_from = max(needed_from, buf.start_offset)
        held = buf.replay()
        assert buf.total_bytes == len(timeline)
        assert buf.held_bytes == len(held) <= buf.capacity
        assert buf.start_offset % alignment == 0
        assert held == bytes(timeline[buf.start_offset :])
        # Everything before start_offset was either trimmed or dropped (and reported).
        assert buf.start_offset >= trimmed_to
        assert buf.start_offset <= trimmed_to + buf.dropped_bytes
        if buf.dropped_bytes == 0:
            assert buf.start_offset == trimmed_to
        assert buf.dropped_bytes <= len(timeline)
