"""``python -m benchmarks``: run the benchmarks and rewrite docs/benchmarks.md.

Sections (``--sections``, default all): ``codec`` (encode/sign/decode, ours against botocore and
the AWS SDK), ``streams`` (N concurrent real-time streams against the benchmark endpoint in its
own process, ours with coalescing off and on, the AWS SDK client and Deepgram's route),
``startup`` (FluxClient entry to ``Connected``, cold and warm). ``--quick`` is a 1-2 minute
smoke version. Raw results go to ``--json`` as well.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import codec, machine, profiling, report, streams
from .stats import median_run, peer_cpu

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("codec", "streams", "startup")
PHASES = 10
"""``--phased-streams`` runs hand each tick's frames in this many groups, 2 ms apart."""


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--quick`` changes the defaults of the unset options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1-2 minute smoke run")
    p.add_argument("--sections", default=",".join(SECTIONS), help="codec,streams,startup")
    p.add_argument("--streams", type=_ints, help="N values (default 1,10,100,500,1000)")
    p.add_argument("--peer-streams", type=_ints, help="N values for the peers (default 1,10,100)")
    p.add_argument("--duration", type=float, help="seconds of audio per stream (default 15)")
    p.add_argument("--coalesce", type=_floats, default=[0, 80], help="coalesce_ms values")
    p.add_argument(
        "--gc-freeze-streams",
        type=_ints,
        help="N values run once more with gc.freeze() after connecting, at the largest "
        "coalescing value (default 500 and 1000 where among --streams)",
    )
    p.add_argument(
        "--phased-streams",
        type=_ints,
        help=f"N values run once more with gc.freeze() and each tick's frames in {PHASES} "
        "groups spread over the 20 ms, at the largest coalescing value (default 500 if it is "
        "among --streams)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="rounds of the stream runs, ours and the peers interleaved; the median CPU run of "
        "each configuration is reported (default 3)",
    )
    p.add_argument("--engine", choices=("stub", "flux"), default="stub")
    p.add_argument("--verify", choices=("full", "off"), default="full")
    p.add_argument("--plaintext", action="store_true", help="our streams over h2c, not TLS")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument(
        "--py312", default=os.environ.get("FLUX_BENCH_PY312", "/work/venv312/bin/python")
    )
    p.add_argument(
        "--py312-deepgram",
        default=os.environ.get("FLUX_BENCH_PY312_DEEPGRAM", "/work/venv312-deepgram/bin/python"),
    )
    p.add_argument(
        "--py-spy",
        default=os.environ.get("FLUX_BENCH_PY_SPY"),
        help="py-spy executable (default: on PATH); profiles our client if found",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument("--profile-streams", type=int, help="profile our client at this N (default 500)")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite --output from --json (re-bucketing saved py-spy profiles) without running",
    )
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = p.parse_args(argv)
    quick = args.quick
    if args.streams is None:
        args.streams = [1, 10, 100] if quick else [1, 10, 100, 500, 1000]
    if args.peer_streams is None:
        args.peer_streams = [1, 10] if quick else [1, 10, 100]
    if args.gc_freeze_streams is None:
        args.gc_freeze_streams = [n for n in args.streams if n in (500, 1000)]
    if args.phased_streams is None:
        args.phased_streams = [n for n in args.streams if n == 500]
    if args.duration is None:
        args.duration = 4.0 if quick else 15.0
    if args.repeats is None:
        args.repeats = 1 if quick else 3
    if args.profile_streams is None:
        args.profile_streams = 100 if quick else 500
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _peer_failed(result: dict[str, Any]) -> bool:
    return "error" in result or result.get("totals", {}).get("streams_ok", 0) == 0


def _ours_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median-CPU round of one configuration, with every round's late pacer ticks."""
    chosen = median_run(runs, lambda r: r.get("cpu_ms_per_stream_second"))
    chosen["late_ticks_runs"] = [(r.get("pacer") or {}).get("late_ticks") for r in runs]
    return chosen


def run_streams(args: argparse.Namespace) -> dict[str, Any]:
    """Section 2: ours (both coalescing modes), the harness alone, the peers; then a profile."""
    out: dict[str, Any] = {"ours": [], "harness": [], "peers": [], "profiles": []}
    server = streams.ServerProcess(tls=not args.plaintext, engine=args.engine, verify=args.verify)
    ours: dict[tuple[int, float, bool, int], list[dict[str, Any]]] = {}
    peers: dict[tuple[str, int], list[dict[str, Any]]] = {}
    peer_limit: dict[str, int] = {}  # a peer failed at this N: larger N are not run again
    try:
        out["server"] = {"tls": not args.plaintext, "engine": args.engine, "verify": args.verify}
        for round_ in range(1, args.repeats + 1):
            configs = [(n, c, False, 1) for n in args.streams for c in args.coalesce]
            configs += [(n, max(args.coalesce), True, 1) for n in args.gc_freeze_streams]
            configs += [(n, max(args.coalesce), True, PHASES) for n in args.phased_streams]
            for n, coalesce, freeze, phases in configs:
                label = report.run_label({"n": n, "gc_freeze": freeze, "phases": phases})
                _log(f"round {round_}: ours, N={label}, coalesce_ms={coalesce:g}")
                result = streams.run_ours(
                    server,
                    streams=n,
                    duration=args.duration,
                    coalesce_ms=coalesce,
                    gc_freeze=freeze,
                    phases=phases,
                )
                result["n"], result["coalesce_ms"], result["gc_freeze"] = n, coalesce, freeze
                result["phases"] = phases
                ours.setdefault((n, coalesce, freeze, phases), []).append(result)
            if args.no_peers:
                continue
            for which, python in (("aws", args.py312), ("deepgram", args.py312_deepgram)):
                for n in args.peer_streams:
                    if n >= peer_limit.get(which, math.inf):
                        break  # it failed at this N in an earlier round: once is enough
                    _log(f"round {round_}: peer {which}, {n} streams")
                    result = streams.run_peer(
                        which, python, server, streams=n, duration=args.duration
                    )
                    result["n"], result["which"] = n, which
                    peers.setdefault((which, n), []).append(result)
                    if _peer_failed(result):
                        _log(f"peer {which} failed at {n} streams; skipping larger N")
                        peer_limit[which] = n
                        break
        out["ours"] = [_ours_median(runs) for runs in ours.values()]
        out["peers"] = [median_run(runs, peer_cpu) for runs in peers.values()]
        harness_configs = [(n, 1) for n in args.streams]
        harness_configs += [(n, PHASES) for n in args.phased_streams]
        for n, phases in harness_configs:
            _log(f"harness alone: N={report.run_label({'n': n, 'phases': phases})}")
            harness = streams.run_ours(
                server,
                streams=n,
                duration=min(args.duration, 6.0),
                coalesce_ms=0,
                client="none",
                phases=phases,
            )
            harness["n"], harness["phases"] = n, phases
            out["harness"].append(harness)
        py_spy = None if args.no_profile else profiling.py_spy_path(args.py_spy)
        if py_spy is None:
            if not args.no_profile:
                _log("py-spy not found: no profile (pip install py-spy, or --py-spy PATH)")
        else:
            for coalesce in args.coalesce:
                _log(f"profile: {args.profile_streams} streams, coalesce_ms={coalesce:g}")
                raw = Path(tempfile.gettempdir()) / (
                    f"flux-bench-profile-{args.profile_streams}-{coalesce:g}.txt"
                )
                result = streams.run_ours(
                    server,
                    streams=args.profile_streams,
                    duration=args.duration,
                    coalesce_ms=coalesce,
                    py_spy=py_spy,
                    profile_out=raw,
                )
                analysis: dict[str, Any] = (
                    profiling.analyze(raw) if raw.exists() else {"error": "no profile"}
                )
                analysis.update(n=args.profile_streams, coalesce_ms=coalesce, raw=str(raw.name))
                analysis["cpu_ms_per_stream_second"] = result.get("cpu_ms_per_stream_second")
                out["profiles"].append(analysis)
    finally:
        server.close()
    return out


def run_startup(args: argparse.Namespace) -> dict[str, Any]:
    """Section 3 over TLS and over plaintext HTTP/2."""
    repeats = 5 if args.quick else 20
    out = {}
    for tls in (True, False):
        server = streams.ServerProcess(tls=tls)
        try:
            _log(f"start-up ({'TLS' if tls else 'h2c'})")
            out["tls" if tls else "h2c"] = streams.run_startup(server, repeats)
        finally:
            server.close()
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the selected sections, write the JSON and the Markdown report."""
    args = parse_args(argv)
    if args.render_only:
        saved: dict[str, Any] = json.loads(args.json.read_text())
        for entry in (saved.get("streams") or {}).get("profiles", []):
            raw = Path(tempfile.gettempdir()) / str(entry.get("raw", ""))
            if entry.get("raw") and raw.exists():
                entry.update(profiling.analyze(raw))
        args.json.write_text(json.dumps(saved, indent=1, default=str) + "\n")
        args.output.write_text(report.render(saved))
        _log(f"rewrote {args.output} from {args.json}")
        return
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine.facts(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    started = time.monotonic()
    if "codec" in args.sections:
        _log("codec and signing")
        events, repeats = (3000, 3) if args.quick else (20000, 5)
        results["codec"] = codec.run(py312=args.py312, events=events, repeats=repeats)
    if "streams" in args.sections:
        results["streams"] = run_streams(args)
    if "startup" in args.sections:
        results["startup"] = run_startup(args)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.output.write_text(report.render(results))
    _log(f"wrote {args.output} and {args.json} in {results['elapsed_s']} s")


if __name__ == "__main__":
    main()
