"""Soak: many concurrent Flux sessions in real time, with random faults, and an audio audit.

``python -m benchmarks.soak [--streams 100] [--duration 60] [--seed 1] [--processes P]`` (or
``nox -s soak -- ...``) runs that many :class:`~flux_sagemaker.FluxClient` sessions against an
in-process :class:`~flux_sagemaker.testing.MockFluxEndpoint`. Each session streams the bundled
sample, looped, as 20 ms frames in real time, then closes cleanly. Meanwhile seeded random faults
strike:

* in-stream faults (the mock's :class:`~flux_sagemaker.testing.Fault`, planned for the streams
  as the endpoint numbers them): reset, stall, ``ModelStreamError``, ``InternalStreamFailure``,
  and, when each session has a pool of its own, dropped connection, GOAWAY, silent connection;
* connection faults from outside, on a random live connection, at ``--conn-fault-rate``: drop,
  GOAWAY then drop, pause;
* refused reconnects: throttling (400), 503 and 500 answers to the next request(s).

No fault is started in the last ``--quiet-tail`` seconds, so every session can close cleanly.

With ``--processes P`` (default: the cores this process may use) the sessions are split among P
child processes, each with a mock of its own, its own fault RNG (derived from ``--seed``) and its
own audit; the parent adds up their summaries. A session meets the same faults as in one process:
stream faults per stream as before, connection faults as often per connection pool (so on the
default pool every process keeps the full ``--conn-fault-rate``), refusals split by the sessions,
whose reconnects they refuse. ``--processes 1`` runs everything in this process.

The audit does not trust the client's own offsets. The first 8 samples of every frame are a
marker (magic, session, frame number) at most 255 in amplitude, far below the mock VAD's
-40 dBFS, so every byte of application audio is unique and the mock's per-stream records say
which session and which frame they hold. Every stream's audio is matched against what its session
sent; the bytes no stream received are **lost**, except the end of a session that failed: from
the last byte any stream got, that audio never left the client, and the session's error says
so. Received bytes that match nothing must be the client's keepalive silence (zeros); anything
else is reported as corrupt.

Exit status: 1 if any byte was lost or corrupt, or any session failed. Every fault injected is
one the client recovers from, so a session that ends with a non-retryable error has met a bug
(``LocalProtocolError``, say); one that ends with a retryable error ran out of retries, which
``--allow-retryable-failures`` reports without failing (a slow machine spends retry budgets
faster, which says nothing about the audio).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import random
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import attrs

from flux_sagemaker import (
    ConnectionPool,
    EndOfTurn,
    FluxClient,
    FluxError,
    FluxSettings,
    KeepalivePolicy,
    Reconnected,
    Timeouts,
)
from flux_sagemaker.samples import load_sample
from flux_sagemaker.testing import (
    Fault,
    FaultKind,
    MockFluxEndpoint,
    RecordedStream,
    RequestFailure,
)

FRAME_S = 0.02
FRAME_BYTES = 640  # 20 ms of 16 kHz linear16
_MAGIC_SAMPLES = (-77, 91, -53)
_MARKER = struct.Struct("<8h")
MARKER_BYTES = _MARKER.size
MAGIC = struct.pack("<3h", *_MAGIC_SAMPLES)

STREAM_FAULTS = (
    FaultKind.RESET_STREAM,
    FaultKind.STALL,
    FaultKind.MODEL_STREAM_ERROR,
    FaultKind.INTERNAL_STREAM_FAILURE,
)
# Planned per stream, these strike every session on the stream's connection. When sessions share
# connections they come only from outside, at a fixed rate: planned per stream, their rate would
# grow with the reconnects they cause (each one opens a stream per session, and each new stream
# may carry another), until a connection died every fraction of a second.
CONNECTION_FAULTS = (FaultKind.DROP_CONNECTION, FaultKind.GOAWAY, FaultKind.SILENT_CONNECTION)
REFUSALS = (
    RequestFailure.throttling,
    RequestFailure.service_unavailable,
    RequestFailure.internal_error,
)


def marker(session: int, frame: int) -> bytes:
    """The 16 bytes that open frame ``frame`` of session ``session``."""
    return _MARKER.pack(
        *_MAGIC_SAMPLES, session >> 8, session & 255, frame >> 16, (frame >> 8) & 255, frame & 255
    )


def find_markers(audio: bytes) -> Iterator[tuple[int, int, int]]:
    """``(position, session, frame)`` of every marker in ``audio``, in order."""
    pos = audio.find(MAGIC)
    while pos >= 0:
        if pos % 2 == 0 and pos + MARKER_BYTES <= len(audio):
            values = _MARKER.unpack_from(audio, pos)
            if all(0 <= v < 256 for v in values[3:]):
                yield pos, values[3] << 8 | values[4], values[5] << 16 | values[6] << 8 | values[7]
        pos = audio.find(MAGIC, pos + 2)


class SessionAudio:
    """The application audio of one session: the sample looped, a marker on every frame."""

    def __init__(self, session: int, pcm: bytes) -> None:
        self.session = session
        self._pcm = pcm
        self._twice = pcm + pcm[:FRAME_BYTES]

    def frame(self, index: int) -> bytes:
        """Frame ``index`` (20 ms)."""
        start = index * FRAME_BYTES % len(self._pcm)
        return marker(self.session, index) + self._twice[start + MARKER_BYTES : start + FRAME_BYTES]

    def first_frames(self, count: int) -> bytes:
        """The first ``count`` frames, concatenated: what the application sent."""
        return b"".join(self.frame(i) for i in range(count))


def _common_prefix(a: bytes, a0: int, b: bytes, b0: int, limit: int) -> int:
    limit = max(0, min(limit, len(a) - a0, len(b) - b0))
    if a[a0 : a0 + limit] == b[b0 : b0 + limit]:
        return limit
    low, high = 0, limit  # a[a0:a0+low] matches, a[a0:a0+high] does not
    while high - low > 1:
        mid = (low + high) // 2
        if a[a0 : a0 + mid] == b[b0 : b0 + mid]:
            low = mid
        else:
            high = mid
    return low


def _common_suffix(a: bytes, a1: int, b: bytes, b1: int, limit: int) -> int:
    limit = max(0, min(limit, a1, b1))
    if a[a1 - limit : a1] == b[b1 - limit : b1]:
        return limit
    low, high = 0, limit
    while high - low > 1:
        mid = (low + high) // 2
        if a[a1 - mid : a1] == b[b1 - mid : b1]:
            low = mid
        else:
            high = mid
    return low


@attrs.define
class Audit:
    """Where every application byte went, from the mock's records alone."""

    sent_bytes: int = 0
    received_bytes: int = 0
    matched_bytes: int = 0
    lost_bytes: int = 0
    lost_in_failed_sessions: int = 0
    silence_bytes: int = 0
    corrupt_bytes: int = 0
    mixed_streams: int = 0
    out_of_order: int = 0
    sessions_with_loss: list[int] = attrs.field(factory=list)


def audit(
    records: list[RecordedStream], sent_frames: dict[int, int], failed: set[int], pcm: bytes
) -> Audit:
    """Match every stream's audio against what its session sent; count what no stream got."""
    result = Audit()
    by_session: dict[int, list[tuple[bytes, list[tuple[int, int, int]]]]] = collections.defaultdict(
        list
    )
    for record in records:
        audio = bytes(record.audio)
        result.received_bytes += len(audio)
        found = list(find_markers(audio))
        sessions = {s for _, s, _ in found}
        if len(sessions) > 1:
            result.mixed_streams += 1
        if not found:
            result.silence_bytes += audio.count(0)
            result.corrupt_bytes += len(audio) - audio.count(0)
            continue
        by_session[found[0][1]].append((audio, found))
    for session, frames in sent_frames.items():
        sent = SessionAudio(session, pcm).first_frames(frames)
        result.sent_bytes += len(sent)
        covered = bytearray(len(sent))
        for audio, found in by_session.pop(session, []):
            explained = _match_stream(audio, found, sent, covered, session, result)
            unexplained, zeros = _unexplained(audio, explained)
            result.silence_bytes += zeros
            result.corrupt_bytes += unexplained - zeros
        lost = covered.count(0)
        result.matched_bytes += len(sent) - lost
        if lost:
            result.sessions_with_loss.append(session)
        # A failed session's audio after the last byte a stream got never left the client, and
        # its error said so; a hole before that byte is lost all the same.
        tail = len(sent) - covered.rfind(1) - 1 if session in failed else 0
        result.lost_in_failed_sessions += tail
        result.lost_bytes += lost - tail
    for streams in by_session.values():  # audio of sessions that sent nothing: cannot be
        for audio, _ in streams:
            result.corrupt_bytes += len(audio)
    return result


def _match_stream(
    audio: bytes,
    found: list[tuple[int, int, int]],
    sent: bytes,
    covered: bytearray,
    session: int,
    result: Audit,
) -> bytearray:
    """Mark the session bytes this stream carries; return which stream bytes were matched."""
    explained = bytearray(len(audio))
    done = 0  # stream bytes before this are settled
    last_frame = -1
    for n, (pos, owner, frame) in enumerate(found):
        offset = frame * FRAME_BYTES
        if owner != session or offset >= len(sent) or pos < done:
            continue
        if frame <= last_frame:
            result.out_of_order += 1
        last_frame = frame
        back = _common_suffix(audio, pos, sent, offset, pos - done)
        end = found[n + 1][0] if n + 1 < len(found) else len(audio)
        ahead = _common_prefix(audio, pos, sent, offset, end - pos)
        explained[pos - back : pos + ahead] = b"\x01" * (back + ahead)
        covered[offset - back : offset + ahead] = b"\x01" * (back + ahead)
        done = pos + ahead
    return explained


def _unexplained(audio: bytes, explained: bytearray) -> tuple[int, int]:
    """How many stream bytes matched nothing, and how many of those are zeros (silence)."""
    total = zeros = 0
    start = explained.find(0)
    while start >= 0:
        end = explained.find(1, start)
        end = len(audio) if end < 0 else end
        total += end - start
        zeros += audio.count(0, start, end)
        start = explained.find(0, end)
    return total, zeros


@attrs.define
class SessionResult:
    """What one session saw."""

    session: int
    frames_sent: int = 0
    turns: int = 0
    reconnects: list[Reconnected] = attrs.field(factory=list)
    error: FluxError | None = None
    closing: bool = False
    """close() had been called when the session failed."""
    max_lag: float = 0.0
    streams_opened: int = 0
    replayed_bytes: int = 0
    accepted_bytes: int = 0


@attrs.define
class Injected:
    """Faults started from outside the mock's stream handler."""

    connection: collections.Counter[str] = attrs.field(factory=collections.Counter)
    refusals_queued: int = 0


async def run_session(
    result: SessionResult,
    endpoint: MockFluxEndpoint,
    pool: ConnectionPool | None,
    audio: SessionAudio,
    frames: int,
    start_delay: float,
) -> None:
    """One application: stream ``frames`` frames in real time, read every event, close."""
    await anyio.sleep(start_delay)
    client = FluxClient(
        "soak-endpoint",
        settings=FluxSettings(),
        timeouts=Timeouts(ping_interval=5.0, ping_timeout=3.0),
        keepalive=KeepalivePolicy(stall_timeout=3.0),
        pool=pool,
        **endpoint.client_kwargs(),
    )

    async def sender() -> None:
        start = anyio.current_time()
        try:
            for index in range(frames):
                due = start + index * FRAME_S
                now = anyio.current_time()
                result.max_lag = max(result.max_lag, now - due)
                if due > now:
                    await anyio.sleep(due - now)
                await client.send_audio(audio.frame(index))
                result.frames_sent += 1
            result.closing = True
            await client.close()
        except FluxError:
            pass  # the iterator raises the session's error

    try:
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(sender)
            try:
                async for event in client:
                    if isinstance(event, Reconnected):
                        result.reconnects.append(event)
                    elif isinstance(event, EndOfTurn):
                        result.turns += 1
            except FluxError as exc:
                result.error = exc
                tg.cancel_scope.cancel()
    except FluxError as exc:
        result.error = result.error or exc
    finally:
        result.streams_opened = client.stats.streams_opened
        result.replayed_bytes = client.stats.replayed_bytes
        result.accepted_bytes = client.stats.audio_bytes_accepted


async def plan_stream_faults(
    endpoint: MockFluxEndpoint,
    rng: random.Random,
    args: argparse.Namespace,
    until: float,
    sessions: int | None = None,
) -> None:
    """Give streams a random fault as the endpoint numbers them, while faults are allowed.

    ``sessions`` is how many sessions use ``endpoint`` (default ``args.streams``): the first
    stream of each is planned at once."""
    sessions = args.streams if sessions is None else sessions
    planned = 0
    kinds = STREAM_FAULTS + (CONNECTION_FAULTS if args.sessions_per_pool == 1 else ())
    while anyio.current_time() < until:
        # Plan only a few streams ahead, so that a stream's fault time is drawn from the time
        # left when it opens; ``after_audio_s`` counts the replayed audio too, so it strikes
        # no later than planned.
        left = until - anyio.current_time()
        # The sessions' first streams are planned at once. A later stream that opened before
        # its turn came (a reconnect storm opens many within one round) gets none: injected
        # now, its fault would strike at once, on audio already received, above the ratio.
        opened = len(endpoint.streams)
        end = max(opened, sessions) + 5
        for index in range(max(planned, opened), end):
            first = index < sessions
            if rng.random() < (args.fault_ratio if first else args.refault_ratio):
                low = 1.0 if first else 0.5
                endpoint.inject(
                    Fault(
                        kind=rng.choice(kinds),
                        after_audio_s=rng.uniform(low, max(low, left - 1.0)),
                        stream_index=index,
                    )
                )
        planned = max(planned, end)
        await anyio.sleep(0.05)


async def inject_connection_faults(
    endpoint: MockFluxEndpoint, rng: random.Random, rate: float, until: float, injected: Injected
) -> None:
    """Strike random live connections from outside, at Poisson times."""
    while rate > 0:
        await anyio.sleep(rng.expovariate(rate))
        if anyio.current_time() >= until:
            return
        # The mock has no public list of its connections; its H2Server's is the one to use.
        live = [c for c in endpoint._server.connections if not c._closing]
        if not live:
            continue
        connection = rng.choice(live)
        kind = rng.choice(("drop_connection", "goaway", "silent_connection"))
        injected.connection[kind] += 1
        if kind == "silent_connection":
            connection.pause()
            continue
        if kind == "goaway":
            await connection.goaway(error_code=0, last_stream_id=0)
        await connection.abort()


async def refuse_requests(
    endpoint: MockFluxEndpoint, rng: random.Random, rate: float, until: float, injected: Injected
) -> None:
    """Queue refusals (throttling, 503, 500) for the next requests, at Poisson times."""
    while rate > 0:
        await anyio.sleep(rng.expovariate(rate))
        if anyio.current_time() >= until:
            return
        count = rng.randint(1, 2)
        endpoint.fail_requests(rng.choice(REFUSALS)(), count)
        injected.refusals_queued += count


@attrs.define
class LoopLag:
    """How late the event loop woke a sleeper: a loop busy with long steps, or a process short of
    CPU, wakes it late, while a session held back by the client (flow control, a reconnect) does
    not."""

    max_s: float = 0.0
    total_s: float = 0.0


async def watch_loop(lag: LoopLag, period: float = 0.05) -> None:
    """Sleep ``period`` again and again; add up how much later than that each sleep ended."""
    while True:
        start = anyio.current_time()
        await anyio.sleep(period)
        late = max(0.0, anyio.current_time() - start - period)
        lag.max_s = max(lag.max_s, late)
        lag.total_s += late


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def split_sessions(streams: int, processes: int, sessions_per_pool: int) -> list[range]:
    """The session numbers of each process: contiguous, as even as can be, and the sessions of
    one pool (``sessions_per_pool``) in one process. Fewer ranges than ``processes`` when there
    are fewer pools (or sessions) than that."""
    group = sessions_per_pool or 1
    groups = math.ceil(streams / group)
    count = min(processes, groups)
    bounds = [min(streams, group * (groups * k // count)) for k in range(count + 1)]
    return [range(start, end) for start, end in itertools.pairwise(bounds)]


def process_rates(args: argparse.Namespace, sessions: range) -> tuple[float, float]:
    """The connection-fault and refusal rates of the process that runs ``sessions``.

    Each session meets the faults it would meet with every session in one process. A connection
    fault strikes one connection: on the default pool (``--sessions-per-pool 0``) the sessions of a
    process share one, so each process keeps the full rate; with pools, the rate goes with the
    pools. A refusal answers the next request(s), which the sessions' reconnects make: it goes
    with the sessions."""
    share = len(sessions) / args.streams
    if args.sessions_per_pool:
        pools = math.ceil(len(sessions) / args.sessions_per_pool)
        conn_rate = args.conn_fault_rate * pools / math.ceil(args.streams / args.sessions_per_pool)
    else:
        conn_rate = args.conn_fault_rate
    return conn_rate, args.refusal_rate * share


def process_seed(seed: int, index: int, processes: int) -> int | str:
    """The fault RNG's seed in process ``index`` of ``processes``: ``seed`` itself in one process,
    else one of its own, derived from ``seed`` (a string seed is hashed the same on every run)."""
    return seed if processes == 1 else f"soak seed {seed}, process {index} of {processes}"


@attrs.define
class Summary:
    """The figures of a run, or of one process of it: plain numbers, so that they cross a pipe as
    JSON and add up (see :func:`merge`)."""

    processes: int = 1
    streams: int = 0
    wall_s: float = 0.0
    max_lag_s: float = 0.0
    loop_lag_max_s: float = 0.0
    loop_lag_total_s: float = 0.0
    cpu_s: float = 0.0
    rss_end_kib: int = 0
    rss_peak_kib: int = 0
    streams_opened: int = 0
    streams_seen: int = 0
    struck: dict[str, int] = attrs.field(factory=dict)
    connection_faults: dict[str, int] = attrs.field(factory=dict)
    refused: dict[str, int] = attrs.field(factory=dict)
    """By HTTP status (as a string: JSON keys are)."""
    refusals_queued: int = 0
    reconnects: int = 0
    sessions_reconnected: int = 0
    replayed_s: float = 0.0
    max_replay_s: float = 0.0
    turns: int = 0
    failures: dict[str, int] = attrs.field(factory=dict)
    retryable_failures: int = 0
    other_failures: int = 0
    cut_short: int = 0
    """Sessions that ended early without an error: an internal task crashed and cancelled them."""
    app_bytes: int = 0
    accepted_bytes: int = 0
    replayed_bytes: int = 0
    received_bytes: int = 0
    silence_bytes: int = 0
    lost_bytes: int = 0
    lost_in_failed_sessions: int = 0
    sessions_with_loss: list[int] = attrs.field(factory=list)
    corrupt_bytes: int = 0
    mixed_streams: int = 0
    out_of_order: int = 0


# The run's figure of these is the largest of its processes'; of the others, the sum.
_LARGEST = frozenset({"wall_s", "max_lag_s", "loop_lag_max_s", "max_replay_s"})


def merge(summaries: list[Summary]) -> Summary:
    """The summary of a run made of these processes' summaries."""
    merged = Summary(processes=0)
    for field in attrs.fields(Summary):
        values = [getattr(summary, field.name) for summary in summaries]
        value: Any
        if isinstance(getattr(merged, field.name), dict):
            value = dict(
                sorted(sum(map(collections.Counter, values), collections.Counter()).items())
            )
        elif isinstance(getattr(merged, field.name), list):
            value = sorted(item for items in values for item in items)
        elif field.name in _LARGEST:
            value = max(values, default=0.0)
        else:
            value = sum(values)
        setattr(merged, field.name, value)
    return merged


def is_bad(summary: Summary, allow_retryable_failures: bool) -> bool:
    """Whether the run fails: audio lost (short of a failed session's undelivered end), corrupt
    or repeated, or a session failed (with a retryable error: unless
    ``allow_retryable_failures``) or was cut short."""
    # Audio a failed session never delivered fails the run as the session's failure does.
    bad = summary.lost_bytes or summary.corrupt_bytes
    bad = bad or summary.mixed_streams or summary.out_of_order or summary.other_failures
    bad = bad or summary.cut_short
    return bool(bad or (summary.retryable_failures and not allow_retryable_failures))


async def soak(args: argparse.Namespace, index: int = 0) -> Summary:
    """Run process ``index``'s share of the soak (all of it with ``--processes 1``); return its
    figures."""
    sessions = split_sessions(args.streams, args.processes, args.sessions_per_pool)[index]
    conn_fault_rate, refusal_rate = process_rates(args, sessions)
    rng = random.Random(process_seed(args.seed, index, args.processes))
    pcm = load_sample().pcm
    frames = round(args.duration / FRAME_S)
    results = [SessionResult(i) for i in sessions]
    injected = Injected()
    loop_lag = LoopLag()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    async with MockFluxEndpoint(script=load_sample().turns, script_scope="stream") as endpoint:
        shared = args.sessions_per_pool > 0  # 0: the event loop's default pool, for all
        fault_deadline = anyio.current_time() + args.ramp + args.duration - args.quiet_tail
        async with contextlib.AsyncExitStack() as stack:
            pools = [
                await stack.enter_async_context(ConnectionPool())
                for _ in range(math.ceil(len(sessions) / args.sessions_per_pool) if shared else 0)
            ]
            faults = await stack.enter_async_context(anyio.create_task_group())
            faults.start_soon(watch_loop, loop_lag)
            faults.start_soon(
                plan_stream_faults, endpoint, rng, args, fault_deadline, len(sessions)
            )
            faults.start_soon(
                inject_connection_faults, endpoint, rng, conn_fault_rate, fault_deadline, injected
            )
            faults.start_soon(
                refuse_requests, endpoint, rng, refusal_rate, fault_deadline, injected
            )
            async with anyio.create_task_group() as tasks:
                for result in results:
                    pool_index = (result.session - sessions.start) // (args.sessions_per_pool or 1)
                    tasks.start_soon(
                        run_session,
                        result,
                        endpoint,
                        pools[pool_index] if shared else None,
                        SessionAudio(result.session, pcm),
                        frames,
                        args.ramp * result.session / args.streams,
                    )
            faults.cancel_scope.cancel()
        wall = time.monotonic() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        rss_before_audit = _rss_kib()
        records = list(endpoint.streams)
    failed = {r.session for r in results if r.error is not None}
    report = audit(records, {r.session: r.frames_sent for r in results}, failed, pcm)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    summary = summarize(results, records, injected, report, frames)
    summary.wall_s, summary.cpu_s, summary.rss_end_kib = wall, cpu, rss_before_audit
    summary.rss_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary.loop_lag_max_s, summary.loop_lag_total_s = loop_lag.max_s, loop_lag.total_s
    return summary


def summarize(
    results: list[SessionResult],
    records: list[RecordedStream],
    injected: Injected,
    report: Audit,
    frames: int,
) -> Summary:
    """The figures of one process's sessions, the mock's records and the audit (without the
    process's time and memory)."""
    replays = [e.replayed_audio_s for r in results for e in r.reconnects]
    return Summary(
        streams=len(results),
        max_lag_s=max((r.max_lag for r in results), default=0.0),
        streams_opened=sum(r.streams_opened for r in results),
        streams_seen=len(records),
        struck=dict(
            collections.Counter(
                r.error.removeprefix("fault: ")
                for r in records
                if r.error and r.error.startswith("fault: ")
            )
        ),
        connection_faults=dict(injected.connection),
        refused=dict(
            collections.Counter(str(r.status) for r in records if r.status not in (0, 200))
        ),
        refusals_queued=injected.refusals_queued,
        reconnects=len(replays),
        sessions_reconnected=sum(1 for r in results if r.reconnects),
        replayed_s=sum(replays),
        max_replay_s=max(replays, default=0.0),
        turns=sum(r.turns for r in results),
        failures=dict(
            collections.Counter(
                f"{type(r.error).__name__} (retryable={r.error.retryable}"
                f"{', in close()' if r.closing else ''}): {str(r.error)[:80]}"
                for r in results
                if r.error is not None
            )
        ),
        retryable_failures=sum(1 for r in results if r.error is not None and r.error.retryable),
        other_failures=sum(1 for r in results if r.error is not None and not r.error.retryable),
        cut_short=sum(1 for r in results if r.error is None and r.frames_sent < frames),
        app_bytes=sum(r.frames_sent for r in results) * FRAME_BYTES,
        accepted_bytes=sum(r.accepted_bytes for r in results),
        replayed_bytes=sum(r.replayed_bytes for r in results),
        received_bytes=report.received_bytes,
        silence_bytes=report.silence_bytes,
        lost_bytes=report.lost_bytes,
        lost_in_failed_sessions=report.lost_in_failed_sessions,
        sessions_with_loss=report.sessions_with_loss,
        corrupt_bytes=report.corrupt_bytes,
        mixed_streams=report.mixed_streams,
        out_of_order=report.out_of_order,
    )


def format_summary(args: argparse.Namespace, summary: Summary) -> str:
    """The figures, one per line, under a title line."""
    s = summary
    failures = collections.Counter(s.failures)
    refused = {int(status): count for status, count in sorted(s.refused.items())}
    where = (
        "client and mock in one process"
        if s.processes == 1
        else f"in {s.processes} processes, each with its sessions' mock"
    )
    rows = [
        (
            "wall time",
            f"{s.wall_s:.1f} s (max lag of a frame behind real time {s.max_lag_s * 1000:.0f} ms)",
        ),
        (
            "event loop woken late",
            f"max {s.loop_lag_max_s * 1000:.0f} ms, {s.loop_lag_total_s:.1f} s in all"
            + ("" if s.processes == 1 else " (added up over the processes)")
            + " (a busy loop, or one short of CPU)",
        ),
        (
            "HTTP/2 streams opened",
            f"{s.streams_opened} by the clients, {s.streams_seen} seen by the mock",
        ),
        (
            "faults in streams (struck)",
            f"{sum(s.struck.values())} {dict(sorted(s.struck.items()))}",
        ),
        (
            "faults on connections",
            f"{sum(s.connection_faults.values())} {dict(sorted(s.connection_faults.items()))}",
        ),
        (
            "requests refused",
            f"{sum(refused.values())} by status {refused} ({s.refusals_queued} queued)",
        ),
        ("reconnects", f"{s.reconnects} (in {s.sessions_reconnected} sessions)"),
        (
            "replayed audio per reconnect",
            f"max {s.max_replay_s:.2f} s, "
            f"mean {s.replayed_s / s.reconnects if s.reconnects else 0:.2f} s",
        ),
        ("turns completed (EndOfTurn)", f"{s.turns}"),
        (
            "sessions failed",
            f"{sum(failures.values())} ({s.retryable_failures} with a retryable error); "
            f"{s.cut_short} more ended early without an error",
        ),
        *(("", f"{count} x {why}") for why, count in failures.most_common()),
        (
            "audio sent by the application",
            f"{s.app_bytes} bytes (client accepted {s.accepted_bytes})",
        ),
        (
            "audio received by the mock",
            f"{s.received_bytes} bytes (client replayed {s.replayed_bytes}, "
            f"keepalive silence {s.silence_bytes})",
        ),
        (
            "audio bytes lost",
            f"{s.lost_bytes} (+{s.lost_in_failed_sessions} in failed sessions; "
            f"sessions with loss: {s.sessions_with_loss[:10]})",
        ),
        ("corrupt audio bytes", f"{s.corrupt_bytes} (streams mixing sessions: {s.mixed_streams})"),
        ("frames repeated out of order", f"{s.out_of_order} (after the replay, in a stream)"),
        ("CPU", f"{s.cpu_s:.1f} s ({s.cpu_s / s.wall_s * 100:.0f}% of one core; {where})"),
        (
            "RSS",
            f"{s.rss_end_kib / 1024:.0f} MiB at the end (with the mock's records), "
            f"peak {s.rss_peak_kib / 1024:.0f} MiB" + ("" if s.processes == 1 else " (summed)"),
        ),
    ]
    title = (
        f"soak: {args.streams} sessions x {args.duration:g} s, seed {args.seed}, "
        + (
            f"{args.sessions_per_pool} session(s) per connection pool"
            if args.sessions_per_pool
            else "all sessions on the default connection pool"
        )
        + ("" if s.processes == 1 else f", {s.processes} processes")
    )
    return "\n".join([title, *(f"  {label:<30}{text}" for label, text in rows)])


def combine(
    args: argparse.Namespace,
    shares: list[range],
    outputs: list[tuple[int, str]],
) -> tuple[str, int]:
    """The report and exit status of a run in processes, from each process's exit status and
    output (its summary as JSON on the last line): 1 if the run failed, if a process exited with
    an error or gave no summary (its sessions were not audited)."""
    lines: list[str] = []
    summaries: list[Summary] = []
    status = 0
    for index, (share, (returncode, output)) in enumerate(zip(shares, outputs, strict=True)):
        head = f"process {index} (sessions {share.start}-{share.stop - 1})"
        try:
            summary = Summary(**json.loads(output.splitlines()[-1]))
        except (IndexError, ValueError, TypeError):
            lines.append(f"{head}: exited with status {returncode} and no summary")
            status = 1
            continue
        summaries.append(summary)
        failed = sum(summary.failures.values())
        verdict = "FAIL" if is_bad(summary, args.allow_retryable_failures) else "PASS"
        lines.append(
            f"{head}: {verdict}, exit status {returncode}, wall {summary.wall_s:.1f} s, "
            f"max lag {summary.max_lag_s:.1f} s, loop late {summary.loop_lag_total_s:.1f} s, "
            f"{failed} session(s) failed, "
            f"{summary.lost_bytes} bytes lost"
        )
        status = status or int(returncode != 0)
    merged = merge(summaries)
    if summaries:
        lines.insert(0, format_summary(args, merged))
    bad = status or is_bad(merged, args.allow_retryable_failures)
    return "\n".join([*lines, f"RESULT: {'FAIL' if bad else 'PASS'}"]), int(bool(bad))


def load_note(before: float) -> str:
    """The machine's load average over a minute, at the start (``before``) and now: other work on
    the cores makes the soak's processes short of CPU (see "event loop woken late")."""
    return (
        f"  {'machine load (1 min average)':<30}{before:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (this run's processes included)"
    )


def run_processes(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the soak in ``args.processes`` child processes; print the combined report; return the
    exit status."""
    load = os.getloadavg()[0]
    shares = split_sessions(args.streams, args.processes, args.sessions_per_pool)
    # The same command line, last options winning: each child runs its share and prints JSON.
    command = [sys.executable, "-m", "benchmarks.soak", *argv, "--processes", str(len(shares))]
    children = [
        subprocess.Popen(
            [*command, "--process-index", str(index)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(len(shares))
    ]
    # Read every pipe at once, so that no child blocks on a full one.
    with ThreadPoolExecutor(len(children)) as readers:
        outputs = list(readers.map(lambda child: child.communicate()[0], children))
    text, status = combine(
        args, shares, [(c.returncode, out) for c, out in zip(children, outputs, strict=True)]
    )
    report, _, result = text.rpartition("\n")
    print(report, load_note(load), result, sep="\n")
    return status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=100,
        help="concurrent sessions (default 100: with the mock in this process, 200 on one shared "
        "connection overload a 2-core machine; see docs/reliability_figures.md)",
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of audio per session (default 60)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault RNG (default 1)")
    parser.add_argument(
        "--ramp", type=float, default=2.0, help="sessions start over this many seconds"
    )
    parser.add_argument(
        "--quiet-tail", type=float, default=5.0, help="no new fault in the last seconds"
    )
    parser.add_argument(
        "--fault-ratio", type=float, default=0.5, help="share of first streams given a fault"
    )
    parser.add_argument(
        "--refault-ratio", type=float, default=0.2, help="share of later streams given one"
    )
    parser.add_argument(
        "--conn-fault-rate", type=float, default=0.5, help="connection faults per second"
    )
    parser.add_argument("--refusal-rate", type=float, default=0.3, help="refusal bursts per second")
    parser.add_argument(
        "--sessions-per-pool",
        type=int,
        default=0,
        help="sessions sharing a ConnectionPool (0, the default: every session on the event "
        "loop's default pool, as FluxClient does without pool=)",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--allow-retryable-failures",
        action="store_true",
        help="report sessions that ran out of retries without failing the run (lost, corrupt "
        "or repeated audio and non-retryable errors still fail it)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="child processes that share the sessions, each with a mock of its own (default: "
        "the cores this process may use; 1: client and mock in this process, which falls "
        "seconds behind real time on 2 cores)",
    )
    # A child of a run in processes: run this share, print the summary as JSON.
    parser.add_argument("--process-index", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 5000 or not 1 <= args.duration <= 3600:
        parser.error("--streams must be 1..5000 and --duration 1..3600 (bounded run)")
    if not 1 <= args.processes <= 64:
        parser.error("--processes must be 1..64")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.soak``."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.process_index is not None:
        summary = anyio.run(soak, args, args.process_index, backend=args.backend)
        print(json.dumps(attrs.asdict(summary)))
        return int(is_bad(summary, args.allow_retryable_failures))
    if len(split_sessions(args.streams, args.processes, args.sessions_per_pool)) > 1:
        return run_processes(args, argv)
    args.processes = 1  # one share: the whole run, here
    load = os.getloadavg()[0]
    summary = anyio.run(soak, args, backend=args.backend)
    bad = is_bad(summary, args.allow_retryable_failures)
    print(format_summary(args, summary), load_note(load), sep="\n")
    print("RESULT:", "FAIL" if bad else "PASS")
    return int(bad)


if __name__ == "__main__":
    sys.exit(main())
