"""The benchmark harness's own arithmetic: stamps, percentiles, the stub engine, the report."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks import profiling, report, soak
from benchmarks.bench_server import (
    FRAME_BYTES,
    STAMP,
    STAMP_MAGIC,
    Recorder,
    StubEngine,
    _record_stamps,
    payload_part,
)
from benchmarks.stats import cpu_between, median_run, percentile, percentiles
from benchmarks.stream_client import GcPauses, Workload, parse_args
from flux_sagemaker.core.eventstream import decode_message
from flux_sagemaker.testing import Fault, RecordedStream


def _frame(stamp: float | None) -> bytes:
    body = bytes(FRAME_BYTES)
    if stamp is None:
        return body
    return STAMP.pack(STAMP_MAGIC, stamp) + body[STAMP.size :]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    summary = percentiles(list(reversed(values)))
    assert (summary["n"], summary["p50"], summary["max"], summary["mean"]) == (
        100,
        50.0,
        100.0,
        50.5,
    )


def test_cpu_between_interpolates_samples() -> None:
    samples = [[0.0, 1.0], [1.0, 2.0], [2.0, 4.0]]
    assert cpu_between(samples, 0.5, 1.5) == pytest.approx(1.5)
    assert cpu_between(samples[:1], 0.0, 1.0) is None


def test_a_coalesced_event_times_its_last_frame_and_each_frame_wait() -> None:
    recorder = Recorder()
    event = _frame(10.00) + _frame(10.02) + _frame(10.04) + _frame(10.06)
    _record_stamps(recorder, event, offset=0, now=10.07)
    assert list(recorder.transport) == pytest.approx([0.01])
    assert list(recorder.coalesce_wait) == pytest.approx([0.06, 0.04, 0.02, 0.0])


def test_stamps_are_found_at_frame_boundaries_of_the_stream_not_of_the_event() -> None:
    recorder = Recorder()
    # The event starts mid-frame: half a frame, then a stamped frame.
    event = bytes(FRAME_BYTES // 2) + _frame(5.0)
    _record_stamps(recorder, event, offset=FRAME_BYTES // 2, now=5.5)
    assert list(recorder.stamps) == [5.0]
    unstamped = Recorder()
    _record_stamps(unstamped, _frame(None) * 2, offset=0, now=1.0)  # a peer's plain audio
    assert len(unstamped.stamps) == 0


def test_stub_engine_speaks_at_flux_cadence() -> None:
    engine = StubEngine()
    assert [m["type"] for m in engine.connected()] == ["Connected"]
    out = []
    for _ in range(50):  # one second of 20 ms frames
        out += engine.receive_audio(bytes(FRAME_BYTES))
    assert [m["event"] for m in out] == ["StartOfTurn"] + ["Update"] * 4
    assert [m["sequence_id"] for m in out] == [1, 2, 3, 4, 5]
    assert out[-1]["audio_window_end"] == 0.96
    assert [m["event"] for m in engine.receive_text(b'{"type":"CloseStream"}')] == ["EndOfTurn"]
    assert engine.closed


def test_payload_part_is_a_utf8_payload_part_event() -> None:
    message = decode_message(payload_part({"type": "Connected", "bench_sent": 1.5}))
    assert message.headers[":event-type"] == "PayloadPart"
    assert message.headers["DataType"] == "UTF8"
    assert json.loads(message.payload) == {"type": "Connected", "bench_sent": 1.5}


def test_profile_buckets_skip_idle_and_start_up(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (x.py:1);Workload.pace (benchmarks/stream_client.py:9);"
        "next_signature (flux_sagemaker/core/signing.py:3);digest (hmac.py:1) 3\n"
        "main (x.py:1);_run_once (asyncio/base_events.py:1);select (selectors.py:468) 50\n"
        "main (x.py:1);FluxClient.__init__ (flux_sagemaker/client.py:2) 7\n"
        "main (x.py:1);Handle._run (asyncio/events.py:80) 1\n"
    )
    result = profiling.analyze(raw)
    assert result["streaming_samples"] == 4
    buckets = result["buckets_pct"]
    assert isinstance(buckets, dict)
    assert buckets["signing (core/signing.py, hashlib, hmac)"] == 75.0


def test_report_renders_sections_and_ratios() -> None:
    row = {"events_per_s": 1e5, "mb_per_s": 64.0, "us_per_event": 10.0}
    slow = {"events_per_s": 2e4, "mb_per_s": 12.8, "us_per_event": 50.0}
    results = {
        "command": "python -m benchmarks --sections codec",
        "elapsed_s": 1.0,
        "machine": {
            "date": "today",
            "git_revision": "abc",
            "cpu": "CPU",
            "cores": 2,
            "memory_gb": 1.0,
            "os": "Linux",
            "implementation": "CPython",
            "python": "3.11",
            "packages": {},
        },
        "codec": {
            "events": 10,
            "repeats": 1,
            "response_wire_bytes": 500,
            "ours": {
                "encode_sign": {640: row, 2560: row},
                "decode": {
                    "frames + json.loads": row,
                    "typed events (StreamProtocol.receive_data)": row,
                },
            },
            "botocore": {"decode": slow},
            "sdk": {"encode_sign": {"640": slow, "2560": slow}, "decode": slow},
        },
    }
    text = report.render(results)
    assert "## 1. Codec and signing" in text
    assert "| encode + sign audio event, 640 B (20 ms) | AWS SDK: AWSEventPublisher.send " in text
    assert "| 50.0 | 5.0 |" in text  # 50 µs against our 10 µs
    assert "## 2." not in text


def test_the_median_run_is_reported_with_every_round() -> None:
    runs = [{"cpu": 3.0, "id": "a"}, {"cpu": None, "id": "failed"}, {"cpu": 1.0, "id": "b"}]
    runs.append({"cpu": 2.0, "id": "c"})
    chosen = median_run(runs, lambda r: r["cpu"])
    assert chosen["id"] == "c"  # of 1, 2, 3: the failed round has no figure
    assert chosen["cpu_runs"] == [3.0, None, 1.0, 2.0]
    assert report._spread(chosen) == "1.00 / 2.00 / 3.00"
    assert median_run([{"cpu": None}], lambda r: r["cpu"])["cpu_runs"] == [None]
    assert report._spread({"cpu_runs": [1.0]}) == ""


def test_gc_pauses_are_recorded_only_in_the_window() -> None:
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
        assert pauses.summary()["count"] == 0  # not recording yet: warm-up
        pauses.recording = True
        gc.collect(0)
        gc.collect()
        pauses.recording = False
        gc.collect()
    finally:
        gc.callbacks.remove(pauses)
    summary = pauses.summary()
    assert summary["count"] == 2
    assert summary["full"] == 1
    assert 0 < summary["max_ms"] <= summary["total_ms"]


class _CountingClient:
    def __init__(self) -> None:
        self.frames = 0

    async def send_audio(self, audio: bytes) -> None:
        self.frames += 1


@pytest.mark.anyio
async def test_the_pacer_starts_the_streams_out_of_step_then_feeds_all_of_them() -> None:
    args = parse_args(["--streams", "5", "--duration", "0.2", "--warmup", "0.1"])
    args.spread_ticks = 3  # groups of two streams start on ticks 0, 1 and 2
    workload = Workload(args)
    workload.clients = [_CountingClient() for _ in range(5)]
    with anyio.fail_after(10):
        await workload.pace()
    assert [c.frames for c in workload.clients] == [10, 10, 9, 9, 8]


def _run_record(n: int, **fields: Any) -> dict[str, Any]:
    """One configuration's reported run, as the report reads it: 80 ms, in real time, no
    errors, 0.8 ms per stream-second (the endpoint 0.7); ``fields`` add or override."""
    record: dict[str, Any] = {
        "n": n,
        "coalesce_ms": 80,
        "cpu_ms_per_stream_second": 0.8,
        "saturated": False,
        "realtime_factor": 1.0,
        "error_count": 0,
        "server": {"cpu_ms_per_stream_second": 0.7},
    }
    return record | fields


def _target_rows(results: dict[str, Any], marker: str) -> list[str]:
    """The rows of the targets table that mention ``marker``."""
    return [line for line in report._targets(results).splitlines() if marker in line]


class _RecordingClient:
    def __init__(self, index: int, log: list[int]) -> None:
        self.index, self.log = index, log

    async def send_audio(self, audio: bytes) -> None:
        self.log.append(self.index)


@pytest.mark.anyio
async def test_the_pacer_hands_a_ticks_frames_in_phases() -> None:
    args = parse_args(["--streams", "5", "--duration", "0.1", "--phases", "2"])
    args.spread_ticks = 1  # every stream from the first tick
    workload = Workload(args)
    log: list[int] = []
    workload.clients = [_RecordingClient(i, log) for i in range(5)]
    with anyio.fail_after(10):
        await workload.pace()
    assert log == [0, 2, 4, 1, 3] * 5  # even streams half a tick before the odd ones
    assert workload.ticks_sent == 5


def test_the_phases_option_is_bounded() -> None:
    assert parse_args([]).phases == 1
    with pytest.raises(SystemExit):
        parse_args(["--phases", "0"])


def test_a_phased_run_is_its_own_row_with_its_own_harness_figure() -> None:
    def run(phases: int) -> dict[str, Any]:
        return _run_record(
            500,
            gc_freeze=True,
            phases=phases,
            cpu_ms_per_stream_second=0.9,
            audio_events_sent=500 * 100 // 4,
            window={"ticks_sent": 100, "audio_s_per_stream": 2.0, "wall_s": 2.0},
            rss_per_stream=600 * 1024,
            consumer_ms={"p50": 0.6, "p99": 3.0 * phases},
            server={"transport_ms": {"p50": 0.9, "p99": 3.1}, "error_count": 0},
        )

    phased, at_once = run(10), run(1)
    results: dict[str, Any] = {
        "options": {"duration": 2.0},
        "streams": {
            "server": {"tls": True, "engine": "stub", "verify": "full"},
            "ours": [at_once, phased],
            "harness": [
                {"n": 500, "cpu_ms_per_stream_second": 0.035},
                {"n": 500, "phases": 10, "cpu_ms_per_stream_second": 0.15},
            ],
        },
    }
    assert report._ours(results, 500, 80, gc_freeze=True) is at_once
    assert report._ours(results, 500, 80, gc_freeze=True, phases=10) is phased
    assert report.run_label(phased) == "500, gc.freeze(), 10 phases"
    assert report._harness_cpu(results) == {(500, 1): 0.035, (500, 10): 0.15}
    rows = _target_rows(results, "at 500 streams")
    assert len(rows) == 2
    assert "gc.freeze() after start-up, every frame at once)" in rows[0]
    assert "frames in 10 phases)" in rows[1]
    assert "server→consumer 3.00 ms" in rows[0]
    assert rows[0].endswith("| met |")
    assert "server→consumer 30.00 ms" in rows[1]
    assert rows[1].endswith("| **missed** |")
    table = report._streams(results)
    assert "| 500, gc.freeze() | 80 | 0.900 (0.035) |" in table
    assert "| 500, gc.freeze(), 10 phases | 80 | 0.900 (0.150) |" in table


def test_a_gc_freeze_run_is_kept_apart_from_the_default_run() -> None:
    frozen = {"n": 500, "coalesce_ms": 80, "gc_freeze": True}
    default = {"n": 500, "coalesce_ms": 80}  # results from before the option: not frozen
    results = {"streams": {"ours": [frozen, default]}}
    assert report._ours(results, 500, 80) is default
    assert report._ours(results, 500, 80, gc_freeze=True) is frozen
    assert report.run_label(frozen) == "500, gc.freeze()"
    assert report.run_label(default) == "500"


def _peer_harness() -> Any:
    """The peers' harness module (it imports no SDK at module level)."""
    path = Path(__file__).parents[1] / "benchmarks" / "peers" / "aws_sdk_stream.py"
    spec = importlib.util.spec_from_file_location("aws_sdk_stream", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_peers_shared_pacer_feeds_streams_like_ours() -> None:
    """One task, streams starting in groups, a failing stream dropped alone."""
    harness = _peer_harness()
    argv = ["--endpoint-url", "http://peer", "--streams", "5", "--spread-ticks", "3"]
    # Frame j: 0.1 s of 16 kHz linear16, its first byte j.
    frames = [bytes([j]) * 3200 for j in range(6)]
    run = harness.Run(harness.base_parser("test").parse_args(argv), frames)
    sent: list[tuple[int, int]] = []

    async def session(st: Any) -> None:
        async def send(frame: bytes) -> None:
            if st.index == 4 and frame[0] == 2:
                raise ValueError("the stream broke")
            sent.append((st.index, frame[0]))

        await run.pace(st, send)
        st.t_end = time.monotonic()

    summary = asyncio.run(run.run(session))
    tick_0 = [(0, 0), (1, 0)]  # two streams per start group: ticks 0, 1 and 2
    tick_1 = [(0, 1), (1, 1), (2, 0), (3, 0)]
    tick_2 = [(0, 2), (1, 2), (2, 1), (3, 1), (4, 0)]
    assert sent[:11] == [*tick_0, *tick_1, *tick_2]
    assert [sum(1 for i, _ in sent if i == k) for k in range(5)] == [6, 6, 6, 6, 2]
    assert summary["totals"]["streams_ok"] == 4
    assert summary["totals"]["errors"] == ["ValueError: the stream broke"]
    # The steady window runs from stream 4's first frame (10 frames sent before it) to stream
    # 4's failure on tick 4 (20 frames sent): CPU is per second of audio handed over in it.
    assert summary["cpu"]["steady"]["stream_seconds"] == 1.0


def test_a_peer_behind_real_time_is_marked_saturated() -> None:
    def peer(n: int, factor: float) -> dict[str, Any]:
        steady = {"cpu_ms_per_stream_second": 22.0, "realtime_factor": factor}
        return {"which": "aws", "n": n, "cpu": {"steady": steady}, "max_send_lag_ms": 0.0}

    results = {"streams": {"peers": [peer(10, 1.0), peer(100, 2.26)]}}
    rows = [line for line in report._peers(results).splitlines() if line.startswith("| AWS")]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == ["no", "yes, x2.26"]


def test_the_stall_column_names_lag_and_gc_pauses() -> None:
    run = {
        "pacer": {"lag_max_ms": 80.0, "window_lag_max_ms": 12.34, "late_ticks": 0},
        "gc": {"count": 40, "total_ms": 100.0, "max_ms": 61.5, "full": 1},
    }
    assert report._stalls(run) == "12.3 / 40 (1) / 61.5"
    assert report._stalls({"pacer": {"lag_max_ms": 1.0}}) == ""  # a run before this column


def test_stamp_layout_is_magic_then_big_endian_double() -> None:
    assert STAMP.size == 12
    assert STAMP.pack(STAMP_MAGIC, 1.0) == b"FLXB" + struct.pack("!d", 1.0)


class _PlanningEndpoint:
    """What plan_stream_faults uses of the mock: its stream list and inject()."""

    def __init__(self, streams: int) -> None:
        self.streams = [object()] * streams
        self.faults: list[Fault] = []

    def inject(self, fault: Fault) -> None:
        self.faults.append(fault)


@pytest.mark.parametrize("sessions_per_pool", [0, 1, 10])
def test_soak_plans_connection_faults_per_stream_only_for_a_pool_per_session(
    sessions_per_pool: int,
) -> None:
    # Shared connections: a connection fault planned per stream strikes every session, and the
    # reconnects it causes open streams that may carry another; those come from outside instead.
    endpoint = _planned(streams_open=0, sessions_per_pool=sessions_per_pool)
    kinds = {fault.kind for fault in endpoint.faults}
    # Every session's first stream at once (100), and the next few ahead.
    assert [fault.stream_index for fault in endpoint.faults] == list(range(105))
    assert kinds >= set(soak.STREAM_FAULTS)
    assert bool(kinds & set(soak.CONNECTION_FAULTS)) is (sessions_per_pool == 1)


def test_soak_plans_no_fault_for_a_stream_already_open() -> None:
    # Injected into an open stream, a fault strikes at once, on audio already received.
    endpoint = _planned(streams_open=200, sessions_per_pool=0)
    assert [fault.stream_index for fault in endpoint.faults] == list(range(200, 205))


def _planned(*, streams_open: int, sessions_per_pool: int) -> _PlanningEndpoint:
    """One round of the soak's fault planner (a fault for every stream it plans for)."""
    args = soak.parse_args(["--streams", "100", "--sessions-per-pool", str(sessions_per_pool)])
    args.fault_ratio = args.refault_ratio = 1.0
    endpoint = _PlanningEndpoint(streams=streams_open)

    async def plan() -> None:
        until = anyio.current_time() + 0.01
        await soak.plan_stream_faults(endpoint, random.Random(3), args, until)  # type: ignore[arg-type]

    anyio.run(plan)
    return endpoint


def test_soak_plans_the_first_stream_of_each_session_of_its_process() -> None:
    # A process of a run in processes: its mock sees only its own sessions' streams.
    args = soak.parse_args(["--streams", "100"])
    args.fault_ratio = args.refault_ratio = 1.0
    endpoint = _PlanningEndpoint(streams=0)

    async def plan() -> None:
        until = anyio.current_time() + 0.01
        await soak.plan_stream_faults(endpoint, random.Random(3), args, until, 50)  # type: ignore[arg-type]

    anyio.run(plan)
    assert [fault.stream_index for fault in endpoint.faults] == list(range(55))


@pytest.mark.parametrize(
    ("streams", "processes", "sessions_per_pool", "starts"),
    [
        (100, 1, 0, [0]),
        (100, 2, 0, [0, 50]),
        (100, 3, 0, [0, 33, 66]),
        (100, 3, 10, [0, 30, 60]),  # a pool's sessions stay in one process
        (100, 2, 30, [0, 60]),  # 4 pools, the last one short
        (5, 8, 0, [0, 1, 2, 3, 4]),  # no process without a session
        (10, 4, 10, [0]),  # one pool: one process
    ],
)
def test_soak_splits_the_sessions_among_processes(
    streams: int, processes: int, sessions_per_pool: int, starts: list[int]
) -> None:
    shares = soak.split_sessions(streams, processes, sessions_per_pool)
    assert [share.start for share in shares] == starts
    # Contiguous, every session once: the session numbers (and markers) stay unique in the run.
    assert [n for share in shares for n in share] == list(range(streams))


def test_soak_processes_give_each_session_the_faults_of_a_single_process() -> None:
    def rates(*argv: str) -> list[tuple[float, float]]:
        args = soak.parse_args(["--streams", "100", "--processes", "2", *argv])
        shares = soak.split_sessions(args.streams, args.processes, args.sessions_per_pool)
        return [soak.process_rates(args, share) for share in shares]

    # The default pool: each process's sessions share a connection, struck as often as the one
    # connection of a single process; refusals follow the reconnects, half in each.
    assert rates() == [(0.5, 0.15), (0.5, 0.15)]
    # Pools: connection faults follow the pools (10 and 10 of 20).
    assert rates("--sessions-per-pool", "5") == [(0.25, 0.15), (0.25, 0.15)]
    args = soak.parse_args(["--streams", "100", "--processes", "1"])
    assert soak.process_rates(args, range(100)) == (0.5, 0.3)
    # One process keeps the seed itself (its run is the same as before processes); children
    # get seeds of their own, the same on every run.
    assert soak.process_seed(7, 0, 1) == 7
    seeds = [random.Random(soak.process_seed(7, k, 2)).random() for k in (0, 1, 0)]
    assert seeds[0] != seeds[1]
    assert seeds[0] == seeds[2]


def _process_summary(**figures: Any) -> soak.Summary:
    """A process's summary as the parent reads it: through JSON."""
    summary = soak.Summary(streams=50, wall_s=60.0, **figures)
    return soak.Summary(**json.loads(json.dumps(soak.attrs.asdict(summary))))


def test_soak_adds_up_the_summaries_of_its_processes() -> None:
    first = _process_summary(
        max_lag_s=0.5,
        loop_lag_max_s=0.4,
        loop_lag_total_s=2.0,
        struck={"stall": 2, "reset_stream": 1},
        refused={"400": 3},
        reconnects=10,
        replayed_s=20.0,
        max_replay_s=4.0,
        failures={"ConnectionLost (retryable=True): lost": 1},
        retryable_failures=1,
        sessions_with_loss=[7],
        lost_in_failed_sessions=640,
        cpu_s=30.0,
    )
    second = _process_summary(
        max_lag_s=1.5,
        loop_lag_max_s=0.2,
        loop_lag_total_s=1.0,
        struck={"stall": 1},
        refused={"400": 1, "503": 2},
        reconnects=5,
        replayed_s=5.0,
        max_replay_s=2.0,
        failures={"ConnectionLost (retryable=True): lost": 2},
        retryable_failures=2,
        sessions_with_loss=[60, 52],
        lost_in_failed_sessions=1280,
        cpu_s=40.0,
    )
    merged = soak.merge([first, second])
    assert (merged.processes, merged.streams, merged.wall_s, merged.max_lag_s) == (
        2,
        100,
        60.0,
        1.5,
    )
    assert (merged.loop_lag_max_s, merged.loop_lag_total_s) == (0.4, 3.0)
    assert merged.struck == {"reset_stream": 1, "stall": 3}
    assert merged.refused == {"400": 4, "503": 2}
    assert (merged.reconnects, merged.replayed_s, merged.max_replay_s) == (15, 25.0, 4.0)
    assert merged.failures == {"ConnectionLost (retryable=True): lost": 3}
    assert (merged.retryable_failures, merged.lost_in_failed_sessions) == (3, 1920)
    assert merged.sessions_with_loss == [7, 52, 60]
    assert merged.cpu_s == 70.0
    assert not soak.is_bad(merged, allow_retryable_failures=True)
    text = soak.format_summary(soak.parse_args(["--processes", "2"]), merged)
    assert "{400: 4, 503: 2}" in text
    assert "in 2 processes" in text


@pytest.mark.parametrize(
    ("outputs", "status", "note"),
    [
        ([(0, "pass"), (0, "pass")], 0, ""),
        ([(0, "pass"), (1, "lost")], 1, "process 1 (sessions 50-99): FAIL, exit status 1"),
        # A process that crashed: its sessions were never audited.
        ([(0, "pass"), (1, "Traceback (most recent call last):")], 1, "and no summary"),
        ([(0, "pass"), (0, "")], 1, "process 1 (sessions 50-99): exited with status 0 and no"),
        # A process whose exit status says it failed, whatever its summary says.
        ([(-9, "pass"), (0, "pass")], 1, "process 0 (sessions 0-49): PASS, exit status -9"),
    ],
)
def test_soak_in_processes_fails_if_any_process_failed_or_gave_no_summary(
    outputs: list[tuple[int, str]], status: int, note: str
) -> None:
    args = soak.parse_args(["--streams", "100", "--processes", "2"])
    shares = soak.split_sessions(100, 2, 0)
    summaries = {
        "pass": json.dumps(soak.attrs.asdict(_process_summary())),
        "lost": json.dumps(soak.attrs.asdict(_process_summary(lost_bytes=640))),
    }
    lines = [(code, "some output\n" + summaries.get(out, out)) for code, out in outputs]
    text, got = soak.combine(args, shares, lines)
    assert got == status
    assert text.endswith("RESULT: FAIL" if status else "RESULT: PASS")
    assert note in text


def test_soak_audit_tells_a_failed_sessions_undelivered_tail_from_a_gap() -> None:
    """A failed session never delivers the audio after its last stream (its error says so); a
    hole before that is audio lost all the same."""
    pcm = bytes(range(256)) * 100
    audio = soak.SessionAudio(0, pcm)
    sent = audio.first_frames(10)
    frame = soak.FRAME_BYTES
    # Frames 0-3 and 6-7 arrived; 4-5 never did, nor 8-9 (the session failed).
    record = RecordedStream(index=0, headers=[], status=200)
    record.audio += sent[: 4 * frame] + sent[6 * frame : 8 * frame]
    report = soak.audit([record], {0: 10}, {0}, pcm)
    assert (report.lost_bytes, report.lost_in_failed_sessions) == (2 * frame, 2 * frame)
    assert report.sessions_with_loss == [0]
    # Without the hole: only the tail, which a run allowing retryable failures may end with.
    record.audio[:] = sent[: 8 * frame]
    report = soak.audit([record], {0: 10}, {0}, pcm)
    assert (report.lost_bytes, report.lost_in_failed_sessions) == (0, 2 * frame)
    out_of_retries = soak.Summary(retryable_failures=1, lost_in_failed_sessions=2 * frame)
    assert soak.is_bad(out_of_retries, allow_retryable_failures=False)
    assert not soak.is_bad(out_of_retries, allow_retryable_failures=True)
    # A session that did not fail: every missing byte is lost.
    report = soak.audit([record], {0: 10}, set(), pcm)
    assert (report.lost_bytes, report.lost_in_failed_sessions) == (2 * frame, 0)


def test_a_target_below_the_harness_floor_is_called_out_of_reach() -> None:
    # The AWS SDK at 50 ms/stream-s; the harness alone at 12.5 (1/4 of it), so a 5x or 10x
    # ratio cannot show at N=1, while at N=10 (harness 1/20 of the SDK) it could.
    results = {
        "streams": {
            "ours": [
                {"n": n, "coalesce_ms": c, "cpu_ms_per_stream_second": cpu}
                for n, c, cpu in ((1, 0, 25.0), (1, 80, 20.0), (10, 0, 5.0), (10, 80, 4.0))
            ],
            "harness": [
                {"n": 1, "cpu_ms_per_stream_second": 12.5},
                {"n": 10, "cpu_ms_per_stream_second": 2.5},
            ],
            "peers": [
                {"which": "aws", "n": n, "cpu": {"steady": {"cpu_ms_per_stream_second": 50.0}}}
                for n in (1, 10)
            ],
        }
    }
    rows = _target_rows(results, "(N=")
    assert len(rows) == 4
    n1 = [row for row in rows if "(N=1)" in row]
    n10 = [row for row in rows if "(N=10)" in row]
    assert all("out of reach here" in row and "1/4.0 of the AWS SDK" in row for row in n1)
    assert not any("out of reach" in row for row in n10)
    assert "| 12.5x vs AWS SDK" in n10[1]  # 50 / 4 ms per stream-second


def test_our_median_round_keeps_every_rounds_late_ticks() -> None:
    from benchmarks.__main__ import _ours_median

    runs = [
        {"cpu_ms_per_stream_second": 0.8, "pacer": {"late_ticks": 4}},
        {"cpu_ms_per_stream_second": 0.7, "pacer": {"late_ticks": 0}},
        {"cpu_ms_per_stream_second": None},
    ]
    chosen = _ours_median(runs)
    assert chosen["cpu_ms_per_stream_second"] == 0.7
    assert chosen["late_ticks_runs"] == [4, 0, None]


def test_the_ratio_targets_give_each_rounds_ratio() -> None:
    """Ours and the AWS SDK run back to back in each round: the ratio of each round, in order."""

    def ours(coalesce: float, cpu_runs: list[float | None]) -> dict[str, Any]:
        return {
            "n": 100,
            "coalesce_ms": coalesce,
            "cpu_ms_per_stream_second": sorted(v for v in cpu_runs if v)[1],
            "cpu_runs": cpu_runs,
            "audio_events_sent": 100 * 100 * (1 if coalesce else 4) // 4,
            "window": {"ticks_sent": 100},
        }

    aws = {
        "which": "aws",
        "n": 100,
        "cpu": {"steady": {"cpu_ms_per_stream_second": 8.0}},
        "cpu_runs": [8.0, 6.0, 9.0],
    }
    results = {
        "streams": {"ours": [ours(0, [2.0, 1.5, 1.6]), ours(80, [1.0, 1.2, 1.5])], "peers": [aws]}
    }
    off, on = _target_rows(results, "(N=100)")
    assert "| 5.0x (round by round: 4.0x / 4.0x / 5.6x) |" in off
    assert "| 6.7x vs AWS SDK (round by round: 8.0x / 5.0x / 6.0x); Deepgram: n/a |" in on
    # A round that measured nothing leaves the pairing out.
    results["streams"]["ours"][1]["cpu_runs"] = [1.0, None, 1.5]
    on = _target_rows(results, "(N=100)")[1]
    assert "round by round" not in on


@pytest.mark.parametrize(
    ("cpu", "factor", "late", "verdict", "pace"),
    [
        (0.98, 1.03, 40, "**missed**", "x1.03 behind real time"),  # CPU under 1 ms, yet behind
        (
            0.83,
            1.0,
            168,
            "**missed**",
            "real time on average (x1.00), but 168 pacer ticks were over 20 ms late "
            "(the longest by 209 ms)",
        ),
        (0.98, 1.0, 0, "met", "real time"),
        (1.05, 1.0, 0, "**missed**", "real time"),
    ],
)
def test_the_1000_stream_target_needs_real_time_and_names_the_endpoints_share(
    cpu: float, factor: float, late: int, verdict: str, pace: str
) -> None:
    run = {
        "n": 1000,
        "coalesce_ms": 80,
        "cpu_ms_per_stream_second": cpu,
        "saturated": factor > 1.02 or late > 0,
        "realtime_factor": factor,
        "pacer": {"late_ticks": late, "window_lag_max_ms": 209.1},
        "error_count": 0,
        "server": {"cpu_ms_per_stream_second": 0.94},
    }
    results = {"machine": {"cores": 2}, "streams": {"ours": [run], "harness": [], "peers": []}}
    (row,) = _target_rows(results, "1000 real-time")
    assert f"{cpu:.3f} ms / stream-s, {pace}, errors: 0" in row
    assert "the endpoint, on the same 2 cores, used 0.94 ms / stream-s" in row
    assert row.endswith(f"| {verdict} |")


def test_the_1000_stream_target_lists_the_gc_freeze_run_after_the_default_one() -> None:
    def run(freeze: bool, late: int, longest_gc: float) -> dict[str, Any]:
        return _run_record(
            1000,
            gc_freeze=freeze,
            saturated=late > 0,
            pacer={"late_ticks": late, "window_lag_max_ms": 45.0},
            gc={"count": 200, "total_ms": 500.0, "max_ms": longest_gc, "full": 1},
        )

    runs = [run(True, 0, 11.3), run(False, 118, 118.8)]
    results = {"machine": {"cores": 2}, "streams": {"ours": runs, "harness": [], "peers": []}}
    rows = _target_rows(results, "1000 real-time")
    assert len(rows) == 2
    assert "(< 1 ms / stream-s) |" in rows[0]
    assert "118 pacer ticks were over 20 ms late" in rows[0]
    assert "longest GC ms): 45.0 / 200 (1) / 118.8" in rows[0]
    assert rows[0].endswith("| **missed** |")
    assert "(< 1 ms / stream-s, gc.freeze() after start-up) |" in rows[1]
    assert "0.800 ms / stream-s, real time, errors: 0" in rows[1]
    assert "longest GC ms): 45.0 / 200 (1) / 11.3" in rows[1]
    assert rows[1].endswith("| met |")
    # Every round must keep real time, not only the median one that the row reports.
    runs[0]["late_ticks_runs"] = [3, 0, 0]
    rows = _target_rows(results, "1000 real-time")
    assert "pacer ticks over 20 ms late, round by round: 3 / 0 / 0" in rows[1]
    assert rows[1].endswith("| **missed** |")
    runs[0]["late_ticks_runs"] = [0, 0, 0]
    rows = _target_rows(results, "1000 real-time")
    assert rows[1].endswith("| met |")
