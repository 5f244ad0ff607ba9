"""Section 3, the client side: time from ``FluxClient`` entry to ``Connected``; prints JSON.

``python -m benchmarks.startup_client --url URL [--ca PEM] --repeats R``

* cold: a new :class:`~flux_sagemaker.ConnectionPool` each time, so TCP (and TLS) connect,
  HTTP/2 preface and SETTINGS, then the signed request and Flux's ``Connected``. Timed with a
  shared botocore session and, separately, with the default (a botocore session built by the
  client, as a single-session application pays it).
* warm: one pool whose connection stays open; each entry sends HEADERS on it and waits for the
  response headers and ``Connected``, which the server sends in one flight.
* reference: a bare TCP connect to the same port (one SYN/SYN-ACK round trip on loopback).
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
from typing import Any

import anyio
import botocore.session
from botocore.credentials import Credentials

from flux_sagemaker import FluxClient, FluxSettings
from flux_sagemaker.pool import ConnectionPool
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

from .stats import percentiles


async def _enter(pool: ConnectionPool, kwargs: dict[str, Any], cpu: list[float]) -> float:
    await anyio.sleep(0.02)  # let the previous stream's teardown finish on both sides
    start, cpu0 = time.perf_counter(), time.process_time()
    async with FluxClient("flux-ep", pool=pool, **kwargs):
        elapsed = time.perf_counter() - start
        cpu.append(time.process_time() - cpu0)
    return elapsed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, as a JSON-ready dict."""
    ssl_context = None
    if args.ca:
        ssl_context = ssl.create_default_context(cafile=args.ca)
        ssl_context.set_alpn_protocols(["h2"])
    base: dict[str, Any] = {
        "endpoint_url": args.url,
        "region": "us-east-1",
        "credentials": Credentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY),
        "ssl_context": ssl_context,
        "settings": FluxSettings(),
    }
    shared = {**base, "session": botocore.session.Session()}
    cold, cold_default, warm, tcp = [], [], [], []
    cold_cpu: list[float] = []
    default_cpu: list[float] = []
    warm_cpu: list[float] = []
    for _ in range(args.repeats):
        async with ConnectionPool() as pool:
            cold.append(await _enter(pool, shared, cold_cpu))
        async with ConnectionPool() as pool:
            cold_default.append(await _enter(pool, base, default_cpu))
    async with ConnectionPool() as pool:
        await _enter(pool, shared, [])  # opens the connection the warm entries reuse
        for _ in range(args.repeats):
            warm.append(await _enter(pool, shared, warm_cpu))  # noqa: PERF401 - sequential awaits
        connections = pool.stats.connections_opened
    host, _, port = args.url.rpartition("//")[2].partition(":")
    for _ in range(args.repeats):
        start = time.perf_counter()
        sock = await anyio.connect_tcp(host, int(port))
        tcp.append(time.perf_counter() - start)
        await sock.aclose()

    def ms(values: list[float]) -> dict[str, float | int]:
        return percentiles([v * 1000 for v in values])

    return {
        "tls": bool(args.ca),
        "repeats": args.repeats,
        "cold_ms": ms(cold),
        "cold_cpu_ms": ms(cold_cpu),
        "cold_default_session_ms": ms(cold_default),
        "cold_default_session_cpu_ms": ms(default_cpu),
        "warm_ms": ms(warm),
        "warm_cpu_ms": ms(warm_cpu),
        "warm_connections_opened": connections,
        "tcp_connect_ms": ms(tcp),
    }


def main() -> None:
    """Parse the options, measure, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--ca")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    print(json.dumps(anyio.run(run, args)))


if __name__ == "__main__":
    main()
