"""Facts about the machine and the software a benchmark ran on."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

PACKAGES = ("flux-sagemaker", "anyio", "h2", "hpack", "attrs", "botocore", "psutil", "trustme")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` in this interpreter."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def wake_cost_us(wakes: int = 50, period: float = 0.02) -> float:
    """CPU microseconds one idle event loop spends per ``asyncio.sleep(period)`` wake-up.

    On virtual machines an idle-to-busy transition can cost far more than the Python code that
    runs; every real-time client pays it per wake-up, so it explains the figures at small N.
    """

    async def probe() -> float:
        start = time.process_time()
        for _ in range(wakes):
            await asyncio.sleep(period)
        return (time.process_time() - start) / wakes * 1e6

    return round(asyncio.run(probe()), 1)


def facts() -> dict[str, Any]:
    """CPU, cores, memory, OS, Python, package versions, date and git revision."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        memory_gb = None
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": versions(),
        "git_revision": revision,
        "loop_wake_cpu_us": wake_cost_us(),
    }
