"""Stream audio to a SageMaker bidi endpoint with the official AWS SDK client (a benchmark peer).

Runs on Python 3.12+ in its own environment (see README.md in this directory); it does not import
flux_sagemaker. It opens N concurrent InvokeEndpointWithBidirectionalStream sessions with
``aws-sdk-sagemaker-runtime-http2`` on the awscrt HTTP/2 transport, streams PCM in real time,
sends ``CloseStream``, reads every output event until the stream ends, closes the input and prints
one JSON summary: events by type, errors, per-stream timings and the process CPU cost.

The measurement harness (audio, pacing, timings, CPU windows, summary) lives here and is reused
by ``deepgram_stream.py`` so that both peers are measured the same way.

    python aws_sdk_stream.py --endpoint-url https://127.0.0.1:8443 --ca-file ca.pem --streams 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from copy import deepcopy
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

DEFAULT_QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000"
CLOSE_STREAM = b'{"type":"CloseStream"}'
CLOSE_GRACE_S = 0.05

# ---------------------------------------------------------------------------------------------
# Harness shared by both peers
# ---------------------------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    """Command-line options common to both peers."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--endpoint-url", required=True, help="e.g. https://127.0.0.1:8443")
    p.add_argument("--endpoint-name", default="flux-ep")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--query-string", default=DEFAULT_QUERY, help="Flux query string")
    p.add_argument("--ca-file", help="PEM CA bundle that replaces the system trust store")
    p.add_argument("--streams", type=int, default=1, help="concurrent sessions")
    p.add_argument("--frame-ms", type=int, default=20, help="audio per send call (20 or 80)")
    p.add_argument("--audio", help="raw PCM s16le mono file (default: generated tone)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of generated audio")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--stagger-ms", type=float, default=0.0, help="delay between stream starts")
    p.add_argument(
        "--pacer",
        choices=("shared", "per-stream"),
        default="shared",
        help="shared: one task hands every stream its frame each tick, as flux_sagemaker's "
        "benchmark client does (the streams start in groups over --spread-ticks ticks); "
        "per-stream: a pacing task per stream, from its own start",
    )
    p.add_argument("--spread-ticks", type=int, default=12, help="see --pacer shared")
    p.add_argument("--timeout", type=float, default=60.0, help="extra seconds allowed per stream")
    p.add_argument("--event-times", action="store_true", help="per-event receive timestamps")
    p.add_argument("--output", help="write the JSON summary here instead of stdout")
    return p


def load_frames(args: argparse.Namespace) -> list[bytes]:
    """Cut the audio into send-sized frames (done before any timing starts)."""
    if args.audio:
        with open(args.audio, "rb") as f:
            pcm = f.read()
    else:
        n = int(args.duration * args.sample_rate)
        tone = (int(3000 * math.sin(2 * math.pi * 440 * i / args.sample_rate)) for i in range(n))
        pcm = array("h", tone).tobytes()
    size = args.sample_rate * 2 * args.frame_ms // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


@dataclass
class StreamStats:
    """Timings (monotonic seconds) and counters for one session."""

    index: int
    t_start: float = 0.0
    t_connected: float | None = None
    t_first_audio: float | None = None
    t_first_output: float | None = None
    t_close_sent: float | None = None
    t_output_end: float | None = None
    t_end: float | None = None
    events_sent: int = 0
    audio_bytes: int = 0
    max_send_lag: float = 0.0
    received: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    events: list[list[Any]] = field(default_factory=list)

    def on_output(self, kind: str, message: dict[str, Any] | None, keep_times: bool) -> None:
        """Record one received event (``kind`` is the Flux type or the AWS event class)."""
        now = time.monotonic()
        if self.t_first_output is None:
            self.t_first_output = now
        self.received[kind] += 1
        if keep_times:
            origin = self.t_first_audio if self.t_first_audio is not None else self.t_start
            row: list[Any] = [round((now - origin) * 1000, 2), kind]
            if message is not None and kind == "TurnInfo":
                row += [message.get("event"), message.get("audio_window_end")]
            self.events.append(row)

    def summary(self, sample_rate: int, keep_times: bool) -> dict[str, Any]:
        """JSON-ready per-stream record; times in ms relative to the stream's start."""

        def rel(t: float | None, origin: float | None = None) -> float | None:
            base = self.t_start if origin is None else origin
            return None if t is None else round((t - base) * 1000, 2)

        out: dict[str, Any] = {
            "index": self.index,
            "ok": not self.errors and self.t_end is not None,
            "connect_ms": rel(self.t_connected),
            "first_output_ms": rel(self.t_first_output),
            "first_audio_ms": rel(self.t_first_audio),
            "close_sent_ms": rel(self.t_close_sent),
            "output_end_ms": rel(self.t_output_end),
            "end_ms": rel(self.t_end),
            # CloseStream sent -> output ended (server ended the response) -> input closed.
            "close_to_output_end_ms": rel(self.t_output_end, self.t_close_sent)
            if self.t_close_sent
            else None,
            "input_close_ms": rel(self.t_end, self.t_output_end) if self.t_output_end else None,
            "audio_s": round(self.audio_bytes / (2 * sample_rate), 3),
            "events_sent": self.events_sent,
            "max_send_lag_ms": round(self.max_send_lag * 1000, 2),
            "received_by_type": dict(self.received),
            "errors": self.errors,
        }
        if keep_times:
            # [ms since first audio, type] (+ [event, audio_window_end] for TurnInfo)
            out["events"] = self.events
        return out


def _cpu_sample() -> tuple[float, float, float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.monotonic(), time.process_time(), ru.ru_utime, ru.ru_stime


def _cpu_delta(
    a: tuple[float, float, float, float],
    b: tuple[float, float, float, float],
    stream_seconds: float | None = None,
) -> dict[str, Any]:
    """CPU used between two samples; ``stream_seconds`` defaults to one stream for the wall time."""
    wall, cpu = b[0] - a[0], b[1] - a[1]
    if stream_seconds is None:
        stream_seconds = wall
    per = round(cpu * 1000 / stream_seconds, 3) if stream_seconds else None
    return {
        "wall_s": round(wall, 3),
        "cpu_ms": round(cpu * 1000, 1),
        "user_ms": round((b[2] - a[2]) * 1000, 1),
        "sys_ms": round((b[3] - a[3]) * 1000, 1),
        "stream_seconds": round(stream_seconds, 2),
        "cpu_ms_per_stream_second": per,
    }


class Run:
    """Coordinates N sessions: pacing, the steady-state CPU window and the final summary.

    The session window spans everything after start-up (connect, stream, close). The steady
    window runs from the moment every stream is sending audio to the moment the first one stops,
    so it measures only the per-frame cost: CPU ms per stream-second while streaming.
    """

    def __init__(self, args: argparse.Namespace, frames: list[bytes]) -> None:
        self.args = args
        self.frames = frames
        self.stats = [StreamStats(i) for i in range(args.streams)]
        self._started = 0
        # (CPU sample, audio bytes handed over so far) where the steady window starts and ends.
        self._steady_start: tuple[tuple[float, float, float, float], int] | None = None
        self._steady_end: tuple[tuple[float, float, float, float], int] | None = None
        # The shared pacer: the streams that joined it, and those that never will (failed).
        self._members: list[tuple[StreamStats, Callable[[bytes], Awaitable[None]], Any]] = []
        self._gave_up = 0
        self._pacer: asyncio.Task[None] | None = None

    def audio_started(self) -> None:
        """A stream sent its first frame, or gave up before it could."""
        self._started += 1
        if self._started == len(self.stats):
            self._steady_start = _cpu_sample(), self._audio_bytes()

    def audio_finished(self) -> None:
        """A stream sent its last frame."""
        if self._steady_end is None and self._steady_start is not None:
            self._steady_end = _cpu_sample(), self._audio_bytes()

    def _audio_bytes(self) -> int:
        return sum(st.audio_bytes for st in self.stats)

    async def pace(self, st: StreamStats, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send every frame at its real-time instant (absolute schedule, so no drift).

        With ``--pacer shared`` the stream joins the shared pacer and waits until it has sent
        the stream's last frame (or raises the stream's send error).
        """
        if self.args.pacer == "shared":
            done = asyncio.get_running_loop().create_future()
            self._members.append((st, send, done))
            self._start_shared_pacer_when_all_joined()
            await done
            return
        step = self.args.frame_ms / 1000
        t0 = time.monotonic()
        st.t_first_audio = t0
        self.audio_started()
        try:
            for i, frame in enumerate(self.frames):
                delay = t0 + i * step - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    st.max_send_lag = max(st.max_send_lag, -delay)
                await send(frame)
                st.events_sent += 1
                st.audio_bytes += len(frame)
        finally:
            self.audio_finished()

    def _start_shared_pacer_when_all_joined(self) -> None:
        if self._pacer is None and len(self._members) + self._gave_up == len(self.stats):
            self._pacer = asyncio.create_task(self._shared_pacer(list(self._members)))

    async def _shared_pacer(self, members: list[Any]) -> None:
        """One task, one tick per frame: every joined stream gets its frame, in turn."""
        step = self.args.frame_ms / 1000
        spread = max(1, self.args.spread_ticks)
        per_tick = max(1, math.ceil(len(members) / spread))
        n = len(self.frames)
        t0 = time.monotonic() + 0.05
        try:
            for k in range(n + (len(members) - 1) // per_tick):
                delay = t0 + k * step - time.monotonic()
                lag = 0.0
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    lag = -delay
                for i, (st, send, done) in enumerate(members):
                    j = k - i // per_tick  # member i starts on tick i // per_tick
                    if not 0 <= j < n or done.done():
                        continue
                    if j == 0:
                        st.t_first_audio = time.monotonic()
                        self.audio_started()
                    frame = self.frames[j]
                    try:
                        await send(frame)
                    except Exception as exc:
                        self.audio_finished()
                        done.set_exception(exc)
                        continue
                    st.events_sent += 1
                    st.audio_bytes += len(frame)
                    st.max_send_lag = max(st.max_send_lag, lag)
                    if j == n - 1:
                        self.audio_finished()
                        done.set_result(None)
        finally:
            for _, _, done in members:  # a bug or a cancel here must not leave a session waiting
                if not done.done():
                    done.set_exception(RuntimeError("the shared pacer stopped"))

    async def _one(self, st: StreamStats, body: Callable[[StreamStats], Awaitable[None]]) -> None:
        await asyncio.sleep(st.index * self.args.stagger_ms / 1000)
        st.t_start = time.monotonic()
        budget = len(self.frames) * self.args.frame_ms / 1000 + self.args.timeout
        try:
            async with asyncio.timeout(budget):
                await body(st)
            if st.t_end is None:
                st.t_end = time.monotonic()
        except Exception as exc:
            st.errors.append(f"{type(exc).__name__}: {exc}"[:500])
        finally:
            if st.t_first_audio is None:
                self.audio_started()
            if not any(member[0] is st for member in self._members):
                self._gave_up += 1  # never joined the shared pacer: it must not wait for this one
                self._start_shared_pacer_when_all_joined()

    async def run(self, body: Callable[[StreamStats], Awaitable[None]]) -> dict[str, Any]:
        """Run every session concurrently and return the summary."""
        begin = _cpu_sample()
        await asyncio.gather(*(self._one(st, body) for st in self.stats))
        end = _cpu_sample()
        audio_s = sum(st.audio_bytes for st in self.stats) / (2 * self.args.sample_rate)
        session = _cpu_delta(begin, end, audio_s)
        steady = None
        if self._steady_start and self._steady_end and self._steady_end > self._steady_start:
            (start, audio_start), (end, audio_end) = self._steady_start, self._steady_end
            # Per second of audio handed over in the window, as for our client: a client that
            # falls behind real time stretches the wall time, not the work per audio-second.
            window_audio_s = (audio_end - audio_start) / (2 * self.args.sample_rate)
            steady = _cpu_delta(start, end, window_audio_s)
            wall = end[0] - start[0]
            steady["realtime_factor"] = (
                round(wall * len(self.stats) / window_audio_s, 3) if window_audio_s else None
            )
        received: Counter[str] = Counter()
        for st in self.stats:
            received.update(st.received)
        keep = self.args.event_times
        return {
            "config": {
                k: getattr(self.args, k)
                for k in ("endpoint_url", "endpoint_name", "region", "query_string", "streams")
            }
            | {"frame_ms": self.args.frame_ms, "frames_per_stream": len(self.frames)},
            "totals": {
                "streams_ok": sum(1 for st in self.stats if not st.errors and st.t_end),
                "streams_failed": sum(1 for st in self.stats if st.errors or not st.t_end),
                "events_sent": sum(st.events_sent for st in self.stats),
                "received_by_type": dict(received),
                "errors": sorted({e for st in self.stats for e in st.errors}),
            },
            # session: all post-start-up work, per second of audio sent.
            # steady: all streams mid-audio, per second of audio handed over in that window
            # (realtime_factor: stream-wall-seconds per audio-second, > 1 when behind).
            "cpu": {"session": session, "steady": steady},
            "streams": [st.summary(self.args.sample_rate, keep) for st in self.stats],
        }


def versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages that make up a peer."""
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def emit(summary: dict[str, Any], path: str | None) -> None:
    """Print (or write) the JSON summary."""
    text = json.dumps(summary, indent=2)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


async def close_client(client: Any) -> None:
    """Close an SDK client without cutting off the END_STREAM its last input stream still owes.

    ``input_stream.close()`` returns before awscrt's body-writer task has sent END_STREAM; closing
    the connection at once makes that write fail ("HTTP-stream has completed", logged as a task
    exception) and the server never sees the request end. A short grace avoids the race.
    """
    await asyncio.sleep(CLOSE_GRACE_S)
    await client.close()


def crt_client_class(ca_file: str | None) -> Any:
    """``AWSCRTHTTPClient``, or a subclass that trusts ``ca_file`` instead of the system store.

    The SDK has no public TLS option, so the subclass swaps awscrt's private ``_tls_ctx``. A class
    (not a patched instance) is what deepgram-sagemaker needs: it calls ``AWSCRTHTTPClient()``.
    The SDK config shares its transport when copied, but the stock ``__deepcopy__`` would quietly
    fall back to the system trust store, so the subclass keeps its own.
    """
    from awscrt import io as crt_io
    from smithy_http.aio.crt import AWSCRTHTTPClient

    if ca_file is None:
        return AWSCRTHTTPClient
    opts = crt_io.TlsContextOptions()
    opts.override_default_trust_store_from_path(ca_filepath=ca_file)
    tls_ctx = crt_io.ClientTlsContext(opts)

    class TrustingCRTHTTPClient(AWSCRTHTTPClient):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self._tls_ctx = tls_ctx

        def __deepcopy__(self, memo: Any) -> TrustingCRTHTTPClient:
            return TrustingCRTHTTPClient(
                eventloop=self._eventloop, client_config=deepcopy(self._config)
            )

    return TrustingCRTHTTPClient


# ---------------------------------------------------------------------------------------------
# The AWS SDK peer
# ---------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Open the sessions with the official SDK and return the summary."""
    from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
    from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
    from aws_sdk_sagemaker_runtime_http2.models import (
        InternalStreamFailure,
        InvokeEndpointWithBidirectionalStreamInput,
        ModelStreamError,
        RequestPayloadPart,
        RequestStreamEventPayloadPart,
        ResponseStreamEventPayloadPart,
    )
    from smithy_aws_core.identity import EnvironmentCredentialsResolver

    transport_class = crt_client_class(args.ca_file)

    async def new_client() -> AsyncSageMakerRuntimeHTTP2Client:
        cfg = await AsyncSageMakerRuntimeHTTP2Config.resolve(
            endpoint_uri=args.endpoint_url,
            region=args.region,
            transport=transport_class(),
            aws_credentials_identity_resolver=EnvironmentCredentialsResolver(),
        )
        return AsyncSageMakerRuntimeHTTP2Client(config=cfg)

    frames = load_frames(args)
    shared = None if args.client_per_stream else await new_client()
    request = InvokeEndpointWithBidirectionalStreamInput(
        endpoint_name=args.endpoint_name,
        model_invocation_path=args.invocation_path,
        model_query_string=args.query_string,
    )
    run = Run(args, frames)

    async def read_output(output: Any, st: StreamStats) -> None:
        partial = b""
        while True:
            try:
                event = await output.receive()
            except (ModelStreamError, InternalStreamFailure) as exc:
                # receive() raises modelled stream errors instead of returning them.
                st.on_output(type(exc).__name__, None, args.event_times)
                raise
            if event is None:
                st.t_output_end = time.monotonic()
                return
            if isinstance(event, ResponseStreamEventPayloadPart):
                partial += event.value.bytes_ or b""
                if event.value.completion_state == "PARTIAL":
                    continue
                try:
                    message = json.loads(partial)
                    kind = str(message.get("type", "untyped"))
                except ValueError:
                    message, kind = None, "non-json"
                partial = b""
                st.on_output(kind, message, args.event_times)
            else:
                st.on_output(type(event).__name__.removeprefix("ResponseStreamEvent"), None, False)

    async def session(st: StreamStats) -> None:
        client = shared or await new_client()
        try:
            stream = await client.invoke_endpoint_with_bidirectional_stream(request)
            _, output = await stream.await_output()  # response headers first, as the SDK expects
            st.t_connected = time.monotonic()
            reader = asyncio.create_task(read_output(output, st))
            send = stream.input_stream.send

            async def send_audio(frame: bytes) -> None:
                part = RequestPayloadPart(bytes_=frame, data_type="BINARY")
                await send(RequestStreamEventPayloadPart(value=part))

            try:
                await run.pace(st, send_audio)
                part = RequestPayloadPart(bytes_=CLOSE_STREAM, data_type="UTF8")
                await send(RequestStreamEventPayloadPart(value=part))
                st.t_close_sent = time.monotonic()
                await reader  # until the server ends the response
            finally:
                reader.cancel()
                await stream.input_stream.close()  # final empty envelope + END_STREAM
                st.t_end = time.monotonic()
        finally:
            if client is not shared:
                await close_client(client)

    try:
        summary = await run.run(session)
    finally:
        if shared is not None:
            await close_client(shared)
    summary["peer"] = "aws-sdk-sagemaker-runtime-http2"
    summary["config"] |= {"client_per_stream": args.client_per_stream}
    summary["versions"] = versions(
        "aws-sdk-sagemaker-runtime-http2", "smithy-http", "smithy-core", "awscrt", "aws-sdk-signers"
    )
    return summary


def cli() -> None:
    """Parse options and run."""
    p = base_parser("Stream audio with the official AWS SDK SageMaker HTTP/2 client.")
    p.add_argument("--invocation-path", default="v2/listen")
    p.add_argument(
        "--client-per-stream",
        action="store_true",
        help="one SDK client (and so one HTTP/2 connection) per session instead of one shared",
    )
    args = p.parse_args()
    emit(asyncio.run(main(args)), args.output)


if __name__ == "__main__":
    cli()
