"""Sections 2 and 3: N real-time streams, and start-up, each client in its own process.

The benchmark endpoint (:mod:`benchmarks.bench_server`) runs in one process for the whole
section, with TLS, because the AWS SDK's CRT transport speaks HTTP/2 only over TLS. Each client
run is a separate process: ours (:mod:`benchmarks.stream_client`), the harness alone
(``--client none``), and the peers of ``benchmarks/peers/`` under their Python 3.12
environments. A psutil thread samples every client's RSS, so peak RSS is measured the same way
for all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import profiling
from .stats import cpu_between

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
PEER_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
}


class ServerProcess:
    """The benchmark endpoint in a child process, driven over stdin/stdout JSON lines."""

    def __init__(self, *, tls: bool = True, engine: str = "stub", verify: str = "full") -> None:
        command = [sys.executable, "-m", "benchmarks.bench_server", "--engine", engine]
        command += ["--verify", verify] + (["--tls"] if tls else [])
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.url: str = hello["url"]
        self.ca: str | None = hello["ca_pem_path"]
        self.engine, self.verify = engine, verify

    def command(self, **message: Any) -> dict[str, Any]:
        """Send one command; return the answer."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        """Ask the server to quit; kill it if it does not."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _run_sampled(
    command: list[str], *, cwd: Path, env: dict[str, str] | None, timeout: float
) -> tuple[str, str, int, int]:
    """Run ``command``; return stdout, stderr, exit code and peak RSS (bytes, psutil samples)."""
    import psutil  # type: ignore[import-untyped]

    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            handle = psutil.Process(proc.pid)
            while not stop.is_set():
                peak = max(peak, handle.memory_info().rss)
                stop.wait(0.2)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    stop.set()
    sampler.join()
    return out, err, proc.returncode, peak


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                value: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            return value
    return None


def run_ours(
    server: ServerProcess,
    *,
    streams: int,
    duration: float,
    coalesce_ms: float,
    client: str = "flux",
    py_spy: str | None = None,
    profile_out: Path | None = None,
    gc_freeze: bool = False,
    phases: int = 1,
) -> dict[str, Any]:
    """One run of our client (or of the harness alone); adds the server's view of it."""
    command = [sys.executable, "-m", "benchmarks.stream_client", "--url", server.url]
    command += ["--streams", str(streams), "--duration", str(duration)]
    command += ["--coalesce-ms", str(coalesce_ms), "--client", client]
    command += ["--gc-freeze"] if gc_freeze else []
    command += ["--phases", str(phases)]
    if server.ca:
        command += ["--ca", server.ca]
    server.command(cmd="reset")
    if py_spy and profile_out:
        done = profiling.record(py_spy, profile_out, command)
        out, err, code, peak = done.stdout, done.stderr, done.returncode, 0
    else:
        out, err, code, peak = _run_sampled(command, cwd=ROOT, env=None, timeout=duration + 240)
    summary = _last_json(out)
    if summary is None:
        return {"error": f"exit {code}: {err.strip()[-800:]}"}
    summary["peak_rss"] = peak
    window = summary["window"]
    view = server.command(cmd="report", **{"from": window["t0"], "to": window["t1"]})
    cpu = cpu_between(view.pop("cpu_samples"), window["t0"], window["t1"])
    stream_seconds = streams * window["audio_s_per_stream"]
    view["cpu_ms_per_stream_second"] = cpu * 1000 / stream_seconds if cpu is not None else None
    summary["server"] = view
    return summary


def run_peer(
    which: str,
    python: str,
    server: ServerProcess,
    *,
    streams: int,
    duration: float,
    frame_ms: int = 20,
) -> dict[str, Any]:
    """One run of a peer script (``aws`` or ``deepgram``); its own JSON plus peak RSS."""
    script = {"aws": "aws_sdk_stream.py", "deepgram": "deepgram_stream.py"}[which]
    if not Path(python).exists():
        return {"error": f"{python} not found"}
    command = [python, script, "--endpoint-url", server.url, "--streams", str(streams)]
    command += ["--duration", str(duration), "--frame-ms", str(frame_ms)]
    if server.ca:
        command += ["--ca-file", server.ca]
    env = {**os.environ, **PEER_ENV}
    server.command(cmd="reset")
    start = time.monotonic()
    # A peer that hangs is killed (a safety net): its sessions take ~duration + 10 s.
    out, err, code, peak = _run_sampled(command, cwd=PEERS, env=env, timeout=duration + 90)
    try:
        summary = json.loads(out)  # the peers print one indented JSON document
    except ValueError:
        why = "killed after a timeout (hung)" if code == -9 else f"exit {code}"
        return {"error": f"{why}: {err.strip()[-600:]}"}
    per_stream = summary.pop("streams", None) or []  # per-stream detail: too long to keep
    summary["max_send_lag_ms"] = max(
        (st.get("max_send_lag_ms", 0) for st in per_stream), default=None
    )
    summary["peak_rss"] = peak
    summary["exit_code"] = code
    view = server.command(cmd="report", **{"from": start, "to": time.monotonic()})
    view.pop("cpu_samples", None)
    summary["server"] = view
    peer: dict[str, Any] = summary
    return peer


def run_startup(server: ServerProcess, repeats: int) -> dict[str, Any]:
    """Section 3 against ``server``."""
    command = [sys.executable, "-m", "benchmarks.startup_client", "--url", server.url]
    command += ["--repeats", str(repeats)] + (["--ca", server.ca] if server.ca else [])
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    return _last_json(done.stdout) or {"error": done.stderr.strip()[-800:]}
