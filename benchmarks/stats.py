"""Small statistics helpers shared by the benchmark sections."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

QUANTILES = (50, 90, 99, 99.9)

#: Behind real time: the window's wall time over the audio handed over in it is above this.
SATURATED_FACTOR = 1.1


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    """``{"n", "p50", "p90", "p99", "p99.9", "max", "mean"}`` of ``values`` (rounded)."""
    ordered = sorted(values)
    out: dict[str, float | int] = {"n": len(ordered)}
    for q in QUANTILES:
        out[f"p{q:g}"] = round(percentile(ordered, q), 3)
    out["max"] = round(ordered[-1], 3) if ordered else math.nan
    out["mean"] = round(sum(ordered) / len(ordered), 3) if ordered else math.nan
    return out


def cpu_between(samples: Sequence[Sequence[float]], start: float, end: float) -> float | None:
    """CPU seconds used between two monotonic times, interpolated from ``[time, cpu]`` samples."""
    if len(samples) < 2:
        return None

    def at(t: float) -> float:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if t0 <= t <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
        return samples[0][1] if t < samples[0][0] else samples[-1][1]

    return at(end) - at(start)


def peer_cpu(run: dict[str, Any] | None) -> float | None:
    """A peer run's CPU ms per stream-second over its own steady window, if it measured one."""
    value = (((run or {}).get("cpu") or {}).get("steady") or {}).get("cpu_ms_per_stream_second")
    return float(value) if isinstance(value, int | float) else None


def median_run(
    runs: list[dict[str, Any]], cpu: Callable[[dict[str, Any]], float | None]
) -> dict[str, Any]:
    """The run with the median CPU among those that measured one, with every run's CPU.

    This machine's CPU figures wander by +-20 % from run to run; rounds that interleave our
    client and the peers, and the median of them, keep that noise out of the ratios.
    """
    measured = sorted((r for r in runs if cpu(r) is not None), key=lambda r: cpu(r) or 0.0)
    chosen = dict(measured[(len(measured) - 1) // 2] if measured else runs[-1])
    chosen["cpu_runs"] = [cpu(r) for r in runs]
    return chosen
