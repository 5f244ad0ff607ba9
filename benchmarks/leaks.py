"""Leak check: open and close 10,000 Flux sessions; RSS, tracemalloc, tasks and descriptors.

``python -m benchmarks.leaks [--streams 10000] [--concurrency 100] [--backend asyncio|trio]``
runs rounds of ``--concurrency`` concurrent :class:`~flux_sagemaker.FluxClient` sessions
against one in-process :class:`~flux_sagemaker.testing.MockFluxEndpoint`. Each session sends
``--audio-ms`` of the bundled sample and closes cleanly, except every ``--abort-every``-th one,
which leaves its ``async with`` by an exception half-way through the audio. After every round
the mock's records are checked (every clean session's audio arrived, its input was ended) and
then forgotten, so that they do not count as growth.

After ``--warmup`` rounds (caches, pools and allocator arenas filled) the script takes a
baseline: RSS (``VmRSS`` of ``/proc/self/status``), open file descriptors (``/proc/self/fd``)
and live tasks. At the end it prints RSS growth per 1000 sessions and the task and descriptor
counts; then ``--trace-rounds`` more rounds run under tracemalloc (which would distort RSS),
and the lines whose live allocations grew most are printed. Exit status 1 if RSS grew by more
than ``--max-growth-kib`` per 1000 sessions, if a task or descriptor was left behind, or if a
session's audio did not arrive.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from typing import NoReturn

import anyio
import attrs

from flux_sagemaker import ConnectionPool, FluxClient, FluxError, FluxSettings
from flux_sagemaker.samples import load_sample
from flux_sagemaker.testing import MockFluxEndpoint

FRAME_BYTES = 640  # 20 ms of 16 kHz linear16

#: Default failure threshold, in KiB of RSS per 1000 sessions after warm-up. Without a leak the
#: allocator's noise is about +1 MiB over the first few thousand sessions and flattens out
#: (docs/reliability_figures.md); keeping one session's client state alive (its tasks, h2
#: connection and stream state, buffers: several KiB) would add thousands of KiB per 1000.
MAX_GROWTH_KIB_PER_1000 = 512


class _Abort(Exception):
    """Raised inside a session to leave ``async with`` mid-stream."""


def _leave_mid_stream() -> NoReturn:
    raise _Abort


@attrs.define
class Counts:
    """What the rounds did and what went wrong."""

    clean: int = 0
    aborted: int = 0
    failed: int = 0
    audio_mismatches: int = 0
    errors: list[str] = attrs.field(factory=list)


def rss_kib() -> int:
    """Resident set size of this process, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def live_tasks(backend: str) -> int:
    """Tasks alive in the event loop, the caller included."""
    if backend == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(
                count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
            )

        return count(trio.lowlevel.current_root_task())  # type: ignore[arg-type]
    import asyncio

    return len(asyncio.all_tasks())


async def one_session(
    endpoint: MockFluxEndpoint,
    pool: ConnectionPool | None,
    audio: bytes,
    abort: bool,
    counts: Counts,
) -> None:
    """Stream ``audio`` and close, or abort half-way by raising inside ``async with``."""
    try:
        async with (
            FluxClient(
                "leaks", settings=FluxSettings(), pool=pool, **endpoint.client_kwargs()
            ) as flux,
            anyio.create_task_group() as tg,
        ):

            async def drain() -> None:
                async for _ in flux:
                    pass

            tg.start_soon(drain)
            cut = len(audio) // 2 // FRAME_BYTES * FRAME_BYTES if abort else len(audio)
            for offset in range(0, cut, FRAME_BYTES):
                await flux.send_audio(audio[offset : offset + FRAME_BYTES])
            if abort:
                _leave_mid_stream()
            await flux.close()
        counts.clean += 1
    except* _Abort:
        counts.aborted += 1
    except* FluxError as group:
        counts.failed += 1
        counts.errors.append(repr(group.exceptions[0]))


def check_round(endpoint: MockFluxEndpoint, audio: bytes, clean: int, counts: Counts) -> None:
    """Every stream whose input ended received all the audio, one per clean session; forget them."""
    ended = [r for r in endpoint.streams if r.input_ended]
    counts.audio_mismatches += sum(1 for r in ended if bytes(r.audio) != audio)
    counts.audio_mismatches += max(0, clean - len(ended))
    endpoint.streams.clear()


async def one_round(
    endpoint: MockFluxEndpoint,
    pool: ConnectionPool | None,
    audio: bytes,
    index: int,
    args: argparse.Namespace,
    counts: Counts,
) -> None:
    """``--concurrency`` sessions at once; then check and forget the mock's records."""
    clean_before = counts.clean
    async with anyio.create_task_group() as tg:
        for slot in range(args.concurrency):
            session = index * args.concurrency + slot
            abort = args.abort_every > 0 and session % args.abort_every == args.abort_every - 1
            tg.start_soon(one_session, endpoint, pool, audio, abort, counts)
    check_round(endpoint, audio, counts.clean - clean_before, counts)


async def settle(backend: str, baseline: int) -> int:
    """Wait (bounded) for the server's per-connection tasks to finish; return the task count."""
    tasks = live_tasks(backend)
    for _ in range(100):
        if tasks <= baseline:
            break
        await anyio.sleep(0.01)
        tasks = live_tasks(backend)
    return tasks


async def leaks(args: argparse.Namespace) -> int:
    """Run the rounds; print the figures; return the exit status."""
    rounds = args.streams // args.concurrency
    sample = load_sample()
    audio = sample.pcm[: round(args.audio_ms / 20) * FRAME_BYTES]
    counts = Counts()
    checkpoints: list[tuple[int, int]] = []
    started = time.monotonic()
    async with MockFluxEndpoint(script=sample.turns, script_scope="stream") as endpoint:
        idle_tasks = live_tasks(args.backend)
        async with ConnectionPool() if args.shared_pool else _nothing() as pool:
            base = (0, 0, 0)
            for index in range(rounds):
                await one_round(endpoint, pool, audio, index, args, counts)
                tasks = await settle(args.backend, idle_tasks)
                if index + 1 == args.warmup:
                    gc.collect()
                    base = (rss_kib(), open_fds(), tasks)
                if (index + 1) % max(1, rounds // 10) == 0:
                    checkpoints.append(((index + 1) * args.concurrency, rss_kib()))
            gc.collect()
            end = (rss_kib(), open_fds(), await settle(args.backend, base[2]))
            # tracemalloc slows every allocation and its own tables count in RSS, so it runs
            # after the RSS figures, on a few more rounds.
            before = after = None
            if args.trace_rounds:
                tracemalloc.start()
                before = tracemalloc.take_snapshot()
                for index in range(rounds, rounds + args.trace_rounds):
                    await one_round(endpoint, pool, audio, index, args, counts)
                await settle(args.backend, base[2])
                gc.collect()
                after = tracemalloc.take_snapshot()
                tracemalloc.stop()
    wall = time.monotonic() - started
    measured = (rounds - args.warmup) * args.concurrency
    growth = (end[0] - base[0]) / measured * 1000 if measured else 0.0
    pools = "one shared pool" if args.shared_pool else "one pool per client"
    print(
        f"leaks: {rounds * args.concurrency} sessions ({args.concurrency} concurrent x {rounds} "
        f"rounds), {args.audio_ms} ms of audio each, {args.backend}, {pools}, {wall:.1f} s"
    )
    print(
        f"  sessions                clean {counts.clean}, aborted {counts.aborted}, "
        f"failed {counts.failed}"
    )
    for error in counts.errors[:5]:
        print(f"      {error}")
    print(f"  audio check             {counts.audio_mismatches} mismatching streams")
    print(
        f"  RSS                     {base[0]} KiB after {args.warmup} warm-up rounds, "
        f"{end[0]} KiB at the end: {growth:+.1f} KiB per 1000 sessions "
        f"(limit {args.max_growth_kib:g})"
    )
    print("  RSS curve (sessions: KiB) " + ", ".join(f"{n}: {kib}" for n, kib in checkpoints))
    print(f"  file descriptors        {base[1]} after warm-up, {end[1]} at the end")
    print(f"  live tasks              {idle_tasks} idle, {base[2]} after warm-up, {end[2]} at end")
    if before is not None and after is not None:
        print(
            f"  tracemalloc, top growth over {args.trace_rounds} more rounds "
            f"({args.trace_rounds * args.concurrency} sessions, live at the end):"
        )
        stats = after.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]).compare_to(
            before, "lineno"
        )
        for stat in stats[:10]:
            frame = stat.traceback[0]
            print(
                f"      {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+6d} blocks  "
                f"{frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno}"
            )
    bad = (
        growth > args.max_growth_kib
        or end[1] > base[1]
        or end[2] > base[2]
        or counts.failed
        or counts.audio_mismatches
    )
    print("RESULT:", "FAIL" if bad else "PASS")
    return 1 if bad else 0


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.leaks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--streams", type=int, default=10_000, help="sessions in all (default 10000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="sessions per round (default 100)"
    )
    parser.add_argument("--audio-ms", type=int, default=200, help="audio per session (default 200)")
    parser.add_argument(
        "--abort-every", type=int, default=10, help="every Nth session aborts (0: none)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="rounds before the baseline (default 10)"
    )
    parser.add_argument(
        "--max-growth-kib",
        type=float,
        default=MAX_GROWTH_KIB_PER_1000,
        help=f"RSS growth limit per 1000 sessions (default {MAX_GROWTH_KIB_PER_1000})",
    )
    parser.add_argument(
        "--shared-pool", action="store_true", help="all clients share one ConnectionPool"
    )
    parser.add_argument(
        "--trace-rounds",
        type=int,
        default=10,
        help="rounds traced by tracemalloc after the RSS figures (0: none)",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= args.streams <= 1_000_000:
        parser.error("need 1 <= --concurrency <= --streams <= 1000000")
    if args.streams // args.concurrency <= args.warmup:
        parser.error("--streams / --concurrency must exceed --warmup rounds")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.leaks``."""
    args = parse_args(argv)
    return anyio.run(leaks, args, backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
