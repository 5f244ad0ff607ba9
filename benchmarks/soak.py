"""Soak: many concurrent Flux sessions in real time, with random faults, and an audio audit.

``python -m benchmarks.soak [--streams 100] [--duration 60] [--seed 1]`` (or ``nox -s soak -- ...``)
runs that many :class:`~flux_sagemaker.FluxClient` sessions against one in-process
:class:`~flux_sagemaker.testing.MockFluxEndpoint`. Each session streams the bundled sample, looped,
as 20 ms frames in real time, then closes cleanly. Meanwhile seeded random faults strike:

* in-stream faults (the mock's :class:`~flux_sagemaker.testing.Fault`, planned for the streams
  as the endpoint numbers them): reset, stall, ``ModelStreamError``, ``InternalStreamFailure``,
  and, when each session has a pool of its own, dropped connection, GOAWAY, silent connection;
* connection faults from outside, on a random live connection, at ``--conn-fault-rate``: drop,
  GOAWAY then drop, pause;
* refused reconnects: throttling (400), 503 and 500 answers to the next request(s).

No fault is started in the last ``--quiet-tail`` seconds, so every session can close cleanly.

The audit does not trust the client's own offsets. The first 8 samples of every frame are a
marker (magic, session, frame number) at most 255 in amplitude, far below the mock VAD's
-40 dBFS, so every byte of application audio is unique and the mock's per-stream records say
which session and which frame they hold. Every stream's audio is matched against what its session
sent; the bytes no stream received are **lost**. Received bytes that match nothing must be the
client's keepalive silence (zeros); anything else is reported as corrupt.

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
import math
import random
import resource
import struct
import sys
import time
from collections.abc import Iterator
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
            if session in failed:
                result.lost_in_failed_sessions += lost
            else:
                result.lost_bytes += lost
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
    endpoint: MockFluxEndpoint, rng: random.Random, args: argparse.Namespace, until: float
) -> None:
    """Give streams a random fault as the endpoint numbers them, while faults are allowed."""
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
        end = max(opened, args.streams) + 5
        for index in range(max(planned, opened), end):
            first = index < args.streams
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


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def soak(args: argparse.Namespace) -> int:
    """Run the soak; print the summary; return the exit status."""
    rng = random.Random(args.seed)
    pcm = load_sample().pcm
    frames = round(args.duration / FRAME_S)
    results = [SessionResult(i) for i in range(args.streams)]
    injected = Injected()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    async with MockFluxEndpoint(script=load_sample().turns, script_scope="stream") as endpoint:
        shared = args.sessions_per_pool > 0  # 0: the event loop's default pool, for all
        fault_deadline = anyio.current_time() + args.ramp + args.duration - args.quiet_tail
        async with contextlib.AsyncExitStack() as stack:
            pools = [
                await stack.enter_async_context(ConnectionPool())
                for _ in range(math.ceil(args.streams / args.sessions_per_pool) if shared else 0)
            ]
            faults = await stack.enter_async_context(anyio.create_task_group())
            faults.start_soon(plan_stream_faults, endpoint, rng, args, fault_deadline)
            faults.start_soon(
                inject_connection_faults,
                endpoint,
                rng,
                args.conn_fault_rate,
                fault_deadline,
                injected,
            )
            faults.start_soon(
                refuse_requests, endpoint, rng, args.refusal_rate, fault_deadline, injected
            )
            async with anyio.create_task_group() as sessions:
                for result in results:
                    sessions.start_soon(
                        run_session,
                        result,
                        endpoint,
                        pools[result.session // args.sessions_per_pool] if shared else None,
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
    return print_summary(
        args, results, records, injected, report, wall, cpu0, cpu1, rss_before_audit
    )


def print_summary(
    args: argparse.Namespace,
    results: list[SessionResult],
    records: list[RecordedStream],
    injected: Injected,
    report: Audit,
    wall: float,
    cpu0: Any,
    cpu1: Any,
    rss_before_audit: int,
) -> int:
    """Print the figures; return 1 if audio was lost or corrupt, or a session failed (with a
    retryable error: unless ``--allow-retryable-failures``)."""
    struck = collections.Counter(
        r.error.removeprefix("fault: ")
        for r in records
        if r.error and r.error.startswith("fault: ")
    )
    refused = collections.Counter(r.status for r in records if r.status not in (0, 200))
    replays = [e.replayed_audio_s for r in results for e in r.reconnects]
    failures = collections.Counter(
        f"{type(r.error).__name__} (retryable={r.error.retryable}"
        f"{', in close()' if r.closing else ''}): {str(r.error)[:80]}"
        for r in results
        if r.error is not None
    )
    retryable_failures = sum(1 for r in results if r.error is not None and r.error.retryable)
    other_failures = sum(1 for r in results if r.error is not None and not r.error.retryable)
    # A session cut short without an error: an internal task crashed and cancelled it.
    frames = round(args.duration / FRAME_S)
    cut_short = sum(1 for r in results if r.error is None and r.frames_sent < frames)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    app_bytes = sum(r.frames_sent for r in results) * FRAME_BYTES
    lag_ms = max(r.max_lag for r in results) * 1000
    connection_faults = dict(sorted(injected.connection.items()))
    rows = [
        ("wall time", f"{wall:.1f} s (max lag of a frame behind real time {lag_ms:.0f} ms)"),
        (
            "HTTP/2 streams opened",
            f"{sum(r.streams_opened for r in results)} by the clients, "
            f"{len(records)} seen by the mock",
        ),
        ("faults in streams (struck)", f"{sum(struck.values())} {dict(sorted(struck.items()))}"),
        ("faults on connections", f"{sum(connection_faults.values())} {connection_faults}"),
        (
            "requests refused",
            f"{sum(refused.values())} by status {dict(sorted(refused.items()))} "
            f"({injected.refusals_queued} queued)",
        ),
        (
            "reconnects",
            f"{len(replays)} (in {sum(1 for r in results if r.reconnects)} sessions)",
        ),
        (
            "replayed audio per reconnect",
            f"max {max(replays, default=0):.2f} s, "
            f"mean {sum(replays) / len(replays) if replays else 0:.2f} s",
        ),
        ("turns completed (EndOfTurn)", f"{sum(r.turns for r in results)}"),
        (
            "sessions failed",
            f"{sum(failures.values())} ({retryable_failures} with a retryable error); "
            f"{cut_short} more ended early without an error",
        ),
        *(("", f"{count} x {why}") for why, count in failures.most_common()),
        (
            "audio sent by the application",
            f"{app_bytes} bytes (client accepted {sum(r.accepted_bytes for r in results)})",
        ),
        (
            "audio received by the mock",
            f"{report.received_bytes} bytes (client replayed "
            f"{sum(r.replayed_bytes for r in results)}, keepalive silence {report.silence_bytes})",
        ),
        (
            "audio bytes lost",
            f"{report.lost_bytes} (+{report.lost_in_failed_sessions} in failed sessions; "
            f"sessions with loss: {report.sessions_with_loss[:10]})",
        ),
        (
            "corrupt audio bytes",
            f"{report.corrupt_bytes} (streams mixing sessions: {report.mixed_streams})",
        ),
        ("frames repeated out of order", f"{report.out_of_order} (after the replay, in a stream)"),
        (
            "CPU",
            f"{cpu:.1f} s ({cpu / wall * 100:.0f}% of one core; client and mock in one process)",
        ),
        (
            "RSS",
            f"{rss_before_audit / 1024:.0f} MiB at the end (with the mock's records), "
            f"peak {peak:.0f} MiB",
        ),
    ]
    lines = [
        f"soak: {args.streams} sessions x {args.duration:g} s, seed {args.seed}, "
        + (
            f"{args.sessions_per_pool} session(s) per connection pool"
            if args.sessions_per_pool
            else "all sessions on the default connection pool"
        ),
        *(f"  {label:<30}{text}" for label, text in rows),
    ]
    print("\n".join(lines))
    bad = report.lost_bytes or report.lost_in_failed_sessions or report.corrupt_bytes
    bad = bad or report.mixed_streams or report.out_of_order or other_failures or cut_short
    bad = bad or (retryable_failures and not args.allow_retryable_failures)
    print("RESULT:", "FAIL" if bad else "PASS")
    return 1 if bad else 0


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
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 5000 or not 1 <= args.duration <= 3600:
        parser.error("--streams must be 1..5000 and --duration 1..3600 (bounded run)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.soak``."""
    args = parse_args(argv)
    return anyio.run(soak, args, backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
