"""Where the client's CPU goes: buckets of py-spy samples (``py-spy record -f raw``).

Each sample is a stack. Samples of start-up and shutdown (``FluxClient.__init__``,
``__aenter__``, ``close``, imports) are dropped, so the buckets describe streaming. A sample is
charged to the innermost frame that names a known layer, so ``hmac.digest`` called from
``core/signing.py`` counts as signing, and ``asyncio``'s ``transport.write`` as the event loop.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

# (bucket, substrings of a frame's "function (path:line)" text), innermost match wins.
_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("signing (core/signing.py, hashlib, hmac)", ("core/signing.py",)),
    (
        "event-stream framing (core/eventstream.py, core/protocol.py)",
        ("core/eventstream.py", "core/protocol.py"),
    ),
    ("parsing server messages (core/events.py, json)", ("core/events.py", "json/")),
    ("h2 state machine (h2, hpack, hyperframe)", ("(h2/", "(hpack/", "(hyperframe/")),
    (
        "our HTTP/2 shell (transport, h2core, h2stream, h2inbound, pool, asyncio_stream)",
        (
            "flux_sagemaker/transport.py",
            "flux_sagemaker/asyncio_stream.py",
            "flux_sagemaker/h2core.py",
            "flux_sagemaker/h2stream.py",
            "flux_sagemaker/h2inbound.py",
            "flux_sagemaker/pool.py",
        ),
    ),
    (
        "client logic (client.py, core: audio, timers, turns, recovery)",
        (
            "flux_sagemaker/client.py",
            "core/audio.py",
            "core/timers.py",
            "core/turns.py",
            "core/recovery.py",
        ),
    ),
    ("benchmark harness (pacer, consumer)", ("benchmarks/stream_client.py",)),
    (
        "TLS (ssl, asyncio sslproto, anyio TLSStream)",
        ("(ssl.py", "asyncio/sslproto.py", "anyio/streams/tls.py"),
    ),
    (
        "event loop, sockets, anyio (asyncio, anyio, selectors)",
        ("asyncio/", "anyio/", "selectors.py", "socket.py", "sniffio"),
    ),
)
_STARTUP_MARKERS = (
    "FluxClient.__init__",
    "__aenter__",
    "__aexit__",
    "_shutdown",
    "_find_and_load",
    "FluxClient.close",
    "_open_stream",
    "_close_quietly",
    "Workload.run (",
)
_PACE_MARKER = "Workload.pace"


def py_spy_path(hint: str | None = None) -> str | None:
    """The py-spy executable: ``hint``, then ``PATH``."""
    if hint and Path(hint).exists():
        return hint
    return shutil.which("py-spy")


def record(
    py_spy: str, out: Path, command: list[str], rate: int = 250
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` under ``py-spy record -f raw``; return the finished process."""
    return subprocess.run(
        [
            py_spy,
            "record",
            "--gil",
            "--nonblocking",
            "-o",
            str(out),
            "-f",
            "raw",
            "-r",
            str(rate),
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


_IDLE_LEAVES = ("select (selectors.py", "poll (", "epoll")


def _keep(frames: list[str]) -> bool:
    leaf = frames[-1]
    if not leaf.strip() or any(idle in leaf for idle in _IDLE_LEAVES):
        return False  # waiting in epoll (py-spy samples idle threads too): not CPU
    joined = ";".join(frames)
    if _PACE_MARKER in joined:  # the pacer's send_audio calls are streaming, whatever they hold
        return "_find_and_load" not in joined
    return not any(marker in joined for marker in _STARTUP_MARKERS)


def analyze(raw: Path, top: int = 15) -> dict[str, object]:
    """Bucket the streaming samples of a raw py-spy profile; also the top leaf functions."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    kept = total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if not _keep(frames):
            continue
        kept += n
        leaves[frames[-1]] += n
        for frame in reversed(frames):
            bucket = next((name for name, keys in _LAYERS if any(k in frame for k in keys)), None)
            if bucket is not None:
                buckets[bucket] += n
                break
        else:
            buckets["other"] += n
    share = {k: round(100 * v / kept, 1) for k, v in buckets.most_common()} if kept else {}
    hot = [[round(100 * v / kept, 1), k] for k, v in leaves.most_common(top)] if kept else []
    return {
        "samples": total,
        "streaming_samples": kept,
        "buckets_pct": share,
        "top_leaves_pct": hot,
    }
