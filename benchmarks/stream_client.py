"""N concurrent real-time FluxClient sessions, in a process of their own; prints one JSON summary.

``python -m benchmarks.stream_client --url URL [--ca PEM] --streams N --duration S
[--coalesce-ms 80] [--phases 1] [--gc-freeze] [--client flux|none] [--profile out.prof]``

The workload: a 16 kHz linear16 tone handed over in 20 ms frames, as Pipecat does. Each frame
starts with a :data:`~benchmarks.bench_server.STAMP_MAGIC` stamp written just before
``send_audio`` so that the server can time its receipt. One pacer task hands every stream its
frame each 20 ms (the harness's own cost stays small and is measured by ``--client none``),
every frame at the same instant or, with ``--phases P``, in P groups spread over the 20 ms; one
task per stream iterates its events, as an application does.

Measured in the steady window (every stream connected and sending; the first ``--warmup``
seconds of audio excluded): process CPU (``time.process_time``), RSS, for each event the
consumer's receipt time minus the server's ``bench_sent`` stamp, and what stalls the event loop:
the pacer's longest lag and the garbage collector's pauses.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from array import array
from typing import Any

import anyio
import botocore.session
from botocore.credentials import Credentials

from flux_sagemaker import FluxClient, FluxSettings
from flux_sagemaker.pool import ConnectionPool
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

from .bench_server import FRAME_BYTES, STAMP, STAMP_MAGIC
from .stats import SATURATED_FACTOR, percentiles

FRAME_S = 0.02
SAMPLE_RATE = 16000


def tone_frames(seconds: float = 1.0) -> list[bytes]:
    """A 440 Hz tone cut into 20 ms frames (the same tone as the peer scripts)."""
    n = int(seconds * SAMPLE_RATE)
    pcm = array("h", (int(3000 * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE)) for i in range(n)))
    if sys.byteorder != "little":
        pcm.byteswap()
    data = pcm.tobytes()
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


class GcPauses:
    """This process's garbage-collection pauses while recording (a ``gc.callbacks`` hook).

    A collection stops the event loop: at hundreds of sessions a full one takes tens of
    milliseconds, which shows in the latency tail.
    """

    def __init__(self) -> None:
        self.pauses = array("d")
        self.full = 0
        self.recording = False
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        """The ``gc.callbacks`` signature."""
        if phase == "start":
            self._started = time.perf_counter()
        elif self.recording:
            self.pauses.append(time.perf_counter() - self._started)
            self.full += info["generation"] == 2

    def summary(self) -> dict[str, float]:
        """Count, total and longest pause (ms), and how many were full collections."""
        return {
            "count": len(self.pauses),
            "total_ms": sum(self.pauses) * 1000,
            "max_ms": max(self.pauses, default=0.0) * 1000,
            "full": self.full,
        }


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _NullClient:
    """``--client none``: the harness alone (pacing, stamping, no library)."""

    async def send_audio(self, audio: bytes) -> None:
        """Drop the frame."""

    async def close(self) -> None:
        """Nothing to close."""


class Workload:
    """The sessions, the pacer and the measurements of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.frames = tone_frames()
        self.n_frames = round(args.duration / FRAME_S)
        self.clients: list[Any] = []
        self.connect_s: list[float] = []
        self.all_connected = anyio.Event()
        self.all_done = anyio.Event()
        self.window = (math.inf, math.inf)
        self.consumer = array("d")
        self.events_received = 0
        self.errors: list[str] = []
        self.lag_max = 0.0
        self.window_lag_max = 0.0  # the steady window's, like the GC pauses
        self.late_ticks = 0
        self.sessions_done = 0
        self.mark = (0.0, 0.0, 0)
        self.ticks_sent = 0
        self.warm_ticks = 0
        self.gc_pauses = GcPauses()

    def _kwargs(self) -> dict[str, Any]:
        args = self.args
        ssl_context = None
        if args.ca:
            import ssl

            ssl_context = ssl.create_default_context(cafile=args.ca)
            ssl_context.set_alpn_protocols(["h2"])
        # One botocore session for every client, as a server with many sessions would hold:
        # building one per client costs ~15 ms of CPU (see the start-up section).
        return {
            "session": botocore.session.Session(),
            "endpoint_url": args.url,
            "region": "us-east-1",
            "credentials": Credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY),
            "ssl_context": ssl_context,
            "settings": FluxSettings(
                model="flux-general-en", encoding="linear16", sample_rate=16000
            ),
            "coalesce_ms": args.coalesce_ms,
        }

    async def session(self, pool: ConnectionPool, kwargs: dict[str, Any]) -> None:
        """One client: connect, then consume its events until the session ends."""
        start = time.monotonic()
        try:
            async with FluxClient("flux-ep", pool=pool, **kwargs) as flux:
                self.connect_s.append(time.monotonic() - start)
                self.clients.append(flux)
                if len(self.clients) == self.args.streams:
                    self.all_connected.set()
                async for event in flux:
                    now = time.monotonic()
                    self.events_received += 1
                    sent = event.raw.get("bench_sent") if hasattr(event, "raw") else None
                    if sent is not None and self.window[0] <= sent <= self.window[1]:
                        self.consumer.append(now - sent)
                self.reconnects = getattr(self, "reconnects", 0) + flux.stats.reconnects
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            if len(self.clients) + len(self.errors) >= self.args.streams:
                self.all_connected.set()
        finally:
            self.sessions_done += 1
            if self.sessions_done == self.args.streams:
                self.all_done.set()

    async def pace(self) -> None:
        """Hand every client one stamped 20 ms frame per tick; record the CPU/RSS window."""
        frames, clients = self.frames, list(self.clients)
        warmup_ticks = round(self.args.warmup / FRAME_S)
        spread = max(1, min(self.args.spread_ticks, warmup_ticks))
        per_tick = math.ceil(len(clients) / spread)
        t0 = time.monotonic() + 0.05
        self.window = (t0 + warmup_ticks * FRAME_S, math.inf)
        self.mark = (t0, time.process_time(), rss_bytes())
        pack = STAMP.pack
        give_up = t0 + self.args.max_wall_factor * self.n_frames * FRAME_S
        phases = self.args.phases
        for k in range(self.n_frames):
            if k > warmup_ticks and time.monotonic() > give_up:
                break  # hopelessly behind real time: stop, the run is reported as saturated
            tail = frames[k % len(frames)][STAMP.size :]
            # The streams start in groups over the first `spread` ticks: independent calls are
            # not in step, so their coalesced events and the server's Updates (every 240 ms)
            # do not all fall on the same tick.
            active = clients if k >= spread else clients[: (k + 1) * per_tick]
            # With `--phases P`, stream i's frame is due i % P / P of a tick later: the frames
            # of independent calls do not all arrive at the same instant either.
            for phase in range(phases):
                due = t0 + (k + phase / phases) * FRAME_S
                delay = due - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                else:
                    lag = -delay
                    self.lag_max = max(self.lag_max, lag)
                    if k > warmup_ticks:
                        self.window_lag_max = max(self.window_lag_max, lag)
                    if lag > FRAME_S:
                        self.late_ticks += 1
                if k == warmup_ticks and phase == 0:
                    self.mark = (time.monotonic(), time.process_time(), rss_bytes())
                    self.warm_ticks = k
                    self.gc_pauses.recording = True
                for client in active[phase::phases]:
                    await client.send_audio(pack(STAMP_MAGIC, time.monotonic()) + tail)
            self.ticks_sent = k + 1

    def window_summary(self) -> dict[str, Any]:
        """The steady window: from the end of the warm-up to the last tick sent."""
        t_cpu1, cpu1, rss1 = time.monotonic(), time.process_time(), rss_bytes()
        self.gc_pauses.recording = False
        t_cpu0, cpu0, rss0 = self.mark
        self.window = (self.window[0], t_cpu1)
        return {
            "audio_s_per_stream": max(0, self.ticks_sent - self.warm_ticks) * FRAME_S,
            "ticks_sent": self.ticks_sent,
            "ticks_planned": self.n_frames,
            "t0": t_cpu0,
            "t1": t_cpu1,
            "wall_s": t_cpu1 - t_cpu0,
            "cpu_s": cpu1 - cpu0,
            "rss_start": rss0,
            "rss_end": rss1,
        }

    async def paced_window(self) -> dict[str, Any]:
        """:meth:`pace` within a wall-clock bound (a tick can block on a drowning server)."""
        limit = self.args.max_wall_factor * self.n_frames * FRAME_S + 10
        with anyio.move_on_after(limit) as scope:
            await self.pace()
        window = self.window_summary()
        window["aborted"] = scope.cancelled_caught
        return window

    async def run(self) -> dict[str, Any]:
        """Connect every stream, stream, close; return the summary."""
        args = self.args
        rss_base = rss_bytes()
        close_s = 0.0
        if args.client == "none":
            self.clients = [_NullClient() for _ in range(args.streams)]
            window = await self.paced_window()
            pool_stats = None
        else:
            kwargs = self._kwargs()
            async with ConnectionPool() as pool, anyio.create_task_group() as tg:
                t_open = time.monotonic()
                for _ in range(args.streams):
                    tg.start_soon(self.session, pool, kwargs)
                with anyio.move_on_after(args.connect_timeout):
                    await self.all_connected.wait()
                open_all_s = time.monotonic() - t_open
                rss_connected = rss_bytes()
                if args.gc_freeze:
                    gc.collect()
                    gc.freeze()
                window = await self.paced_window()
                t_close = time.monotonic()
                with anyio.move_on_after(30):
                    async with anyio.create_task_group() as closers:
                        for client in self.clients:
                            closers.start_soon(_close_quietly, client, self.errors)
                    await self.all_done.wait()
                close_s = time.monotonic() - t_close
                pool_stats = pool.stats
                tg.cancel_scope.cancel()
            window["open_all_s"] = open_all_s
            window["rss_connected"] = rss_connected
        # Audio-seconds handed over in the window: when the pacer falls behind, the wall time
        # stretches but the work per second of audio is what a deployment pays.
        stream_seconds = args.streams * window["audio_s_per_stream"]
        saturated = (
            window["wall_s"] > SATURATED_FACTOR * window["audio_s_per_stream"]
            or self.late_ticks > 0
            or window["ticks_sent"] < window["ticks_planned"]
            or window["aborted"]
        )
        sent_events = sum(c.stats.audio_events_sent for c in self.clients if hasattr(c, "stats"))
        return {
            "config": {
                "streams": args.streams,
                "duration_s": args.duration,
                "coalesce_ms": args.coalesce_ms,
                "client": args.client,
                "tls": bool(args.ca),
            },
            "window": window,
            "cpu_ms_per_stream_second": window["cpu_s"] * 1000 / stream_seconds
            if stream_seconds
            else None,
            "saturated": saturated,
            "realtime_factor": window["wall_s"] / window["audio_s_per_stream"],
            "rss_base": rss_base,
            "rss_per_stream": (window["rss_end"] - rss_base) / args.streams,
            "connected": len(self.clients),
            "connect_ms": percentiles([s * 1000 for s in self.connect_s]),
            "close_s": close_s,
            "audio_events_sent": sent_events,
            "events_received": self.events_received,
            "consumer_ms": percentiles([v * 1000 for v in self.consumer]),
            "pacer": {
                "lag_max_ms": self.lag_max * 1000,
                "window_lag_max_ms": self.window_lag_max * 1000,
                "late_ticks": self.late_ticks,
            },
            "gc": self.gc_pauses.summary(),
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "reconnects": getattr(self, "reconnects", 0),
            "pool": None
            if pool_stats is None
            else {
                "connections_opened": pool_stats.connections_opened,
                "streams_opened": pool_stats.streams_opened,
            },
        }


async def _close_quietly(client: Any, errors: list[str]) -> None:
    try:
        await client.close()
    except Exception as exc:
        errors.append(f"close: {type(exc).__name__}: {exc}"[:300])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="")
    p.add_argument("--ca", help="PEM of the server's CA (https)")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio per stream")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds excluded from the window")
    p.add_argument("--coalesce-ms", type=float, default=80)
    p.add_argument(
        "--spread-ticks",
        type=int,
        default=12,
        help="start the streams over this many 20 ms ticks of the warm-up (1: all in step)",
    )
    p.add_argument(
        "--phases",
        type=int,
        default=1,
        choices=range(1, 51),
        metavar="P",
        help="hand each tick's frames in P groups spread over the 20 ms (1: all at once)",
    )
    p.add_argument("--client", choices=("flux", "none"), default="flux")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once connected")
    p.add_argument(
        "--max-wall-factor", type=float, default=2.5, help="stop pacing after this x real time"
    )
    p.add_argument("--connect-timeout", type=float, default=60)
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--profile", help="write cProfile stats of the whole run here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the workload and print its JSON summary."""
    args = parse_args(argv)
    workload = Workload(args)
    gc.callbacks.append(workload.gc_pauses)
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        summary: dict[str, Any] = profiler.runcall(
            lambda: anyio.run(workload.run, backend=args.backend)
        )
        profiler.dump_stats(args.profile)
    else:
        summary = anyio.run(workload.run, backend=args.backend)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
