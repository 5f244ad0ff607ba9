"""The benchmark endpoint: the mock's parts, in a process of its own, with timing hooks.

``python -m benchmarks.bench_server [--tls] [--engine stub|flux] [--verify full|off]`` serves
SageMaker's bidirectional stream exactly as :class:`~flux_sagemaker.testing.MockFluxEndpoint`
does (its :class:`~flux_sagemaker.testing.h2server.H2Server`, its SigV4 and chained-signature
:mod:`~flux_sagemaker.testing.verifier` and, with ``--engine flux``, its
:class:`~flux_sagemaker.testing.engine.FluxEngine`), plus what a benchmark needs:

* **receipt times**: an audio frame may begin with :data:`STAMP_MAGIC` and a ``time.monotonic()``
  stamp (the benchmark client writes one into every 20 ms frame just before ``send_audio``).
  The server finds every stamped frame inside each event it receives and records
  ``receipt - stamp`` for the frame that completed the event (transport latency) and
  ``last stamp - stamp`` for each frame (the time it waited in the client's coalescer).
  ``CLOCK_MONOTONIC`` is system-wide on Linux, so the clocks of two processes compare.
* **send times**: every message sent carries ``"bench_sent": time.monotonic()``; the client's
  parser keeps unknown fields in ``event.raw``.
* ``--engine stub``: Flux at a fraction of the cost (``StartOfTurn``, then an ``Update`` every
  240 ms of audio as Flux does, an ``EndOfTurn`` on ``CloseStream``). The mock's real engine
  costs about 0.84 ms of CPU per audio-second, which makes the server, not the client, the
  bottleneck at 1000 streams on a small machine.

Control protocol (JSON lines): the first line on stdout is ``{"url", "port", "ca_pem_path"}``.
Then stdin takes ``{"cmd": "reset"}`` (forget the records), ``{"cmd": "report", "from": t0,
"to": t1}`` (answer latency percentiles for frames stamped in ``[t0, t1]``, CPU samples, counts)
and ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import sys
import time
import uuid
from array import array
from collections.abc import Sequence
from typing import Any

import anyio

from flux_sagemaker.core.eventstream import encode_headers, encode_message_raw
from flux_sagemaker.core.settings import FluxSettings
from flux_sagemaker.errors import FluxError, ValidationError
from flux_sagemaker.testing.certs import TestCA
from flux_sagemaker.testing.engine import EngineParams, FluxEngine
from flux_sagemaker.testing.h2server import H2Server, ServerStream
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY
from flux_sagemaker.testing.verifier import (
    InputEnded,
    RequestVerifier,
    VerificationFailure,
)

from .stats import percentiles

STAMP_MAGIC = b"FLXB"
"""A stamped frame starts with these 4 bytes and a big-endian double (``time.monotonic()``)."""
STAMP = struct.Struct("!4sd")
FRAME_BYTES = 640
"""Stamps sit at every multiple of this offset (20 ms of 16 kHz linear16)."""
UPDATE_EVERY_BYTES = 7680
"""The stub engine's Update interval: 240 ms of 16 kHz linear16, as Flux."""
CPU_SAMPLE_S = 0.25

_RESPONSE_HEADERS = encode_headers(
    {
        ":message-type": "event",
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        "DataType": "UTF8",
        "CompletionState": "COMPLETE",
    }
)


def payload_part(message: dict[str, Any]) -> bytes:
    """One Flux message as SageMaker frames it: a UTF8 ``PayloadPart`` event."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return encode_message_raw(_RESPONSE_HEADERS, body)


class StubEngine:
    """Flux's message cadence without its VAD: an ``Update`` per 240 ms of audio."""

    def __init__(self) -> None:
        self.request_id = str(uuid.uuid4())
        self.closed = False
        self._received = 0
        self._next_update = UPDATE_EVERY_BYTES
        self._sequence = 0
        self._started = False

    def _turn_info(self, event: str) -> dict[str, Any]:
        end = round(self._received / 32000, 3)
        message = {
            "type": "TurnInfo",
            "request_id": self.request_id,
            "sequence_id": self._sequence,
            "event": event,
            "turn_index": 0,
            "audio_window_start": 0.0,
            "audio_window_end": end,
            "transcript": "benchmark speech",
            "words": [
                {"word": "benchmark", "confidence": 0.98, "start": 0.1, "end": 0.5},
                {"word": "speech", "confidence": 0.97, "start": 0.5, "end": 0.9},
            ],
            "end_of_turn_confidence": 0.05,
        }
        self._sequence += 1
        return message

    def connected(self) -> list[dict[str, Any]]:
        """The opening ``Connected``."""
        self._sequence = 1
        return [{"type": "Connected", "request_id": self.request_id, "sequence_id": 0}]

    def receive_audio(self, data: bytes) -> list[dict[str, Any]]:
        """Count audio; emit StartOfTurn once, then an Update per 240 ms."""
        self._received += len(data)
        out = []
        if not self._started:
            self._started = True
            out.append(self._turn_info("StartOfTurn"))
        while self._received >= self._next_update:
            self._next_update += UPDATE_EVERY_BYTES
            out.append(self._turn_info("Update"))
        return out

    def receive_text(self, text: bytes) -> list[dict[str, Any]]:
        """``CloseStream`` ends the turn and the stream; anything else is ignored."""
        if b"CloseStream" in text:
            self.closed = True
            return [self._turn_info("EndOfTurn")] if self._started else []
        return []


class _NoVerifier:
    """``--verify off``: frames are decoded but signatures are not recomputed."""

    def __init__(self) -> None:
        from flux_sagemaker.core.eventstream import EventStreamDecoder, decode_message

        self._decoder = EventStreamDecoder()
        self._decode = decode_message

    def receive_data(self, data: bytes) -> list[Any]:
        from flux_sagemaker.testing.verifier import InputEvent

        events: list[Any] = []
        for envelope in self._decoder.receive_data(data):
            if not envelope.payload:
                events.append(InputEnded(0))
                continue
            inner = self._decode(envelope.payload)
            events.append(
                InputEvent(
                    data_type=str(inner.headers.get("DataType")),
                    payload=inner.payload,
                    date_ms=0,
                    headers=inner.headers,
                )
            )
        return events

    def eof(self) -> None:
        """Nothing to check."""


class Recorder:
    """Per-run records: latencies by stamp time, errors, counters."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.stamps = array("d")  # the completing frame's stamp, per event
        self.transport = array("d")  # receipt - completing frame's stamp, per event
        self.frame_stamps = array("d")
        self.coalesce_wait = array("d")  # completing stamp - frame stamp, per frame
        self.streams = 0
        self.audio_bytes = 0
        self.audio_events = 0
        self.messages_sent = 0
        self.errors: list[str] = []

    def report(self, start: float, end: float) -> dict[str, Any]:
        """Percentiles of the records stamped within ``[start, end]``."""
        transport = [
            v for s, v in zip(self.stamps, self.transport, strict=True) if start <= s <= end
        ]
        wait = [
            v
            for s, v in zip(self.frame_stamps, self.coalesce_wait, strict=True)
            if start <= s <= end
        ]
        return {
            "transport_ms": percentiles([v * 1000 for v in transport]),
            "coalesce_wait_ms": percentiles([v * 1000 for v in wait]),
            "streams": self.streams,
            "audio_bytes": self.audio_bytes,
            "audio_events": self.audio_events,
            "messages_sent": self.messages_sent,
            "errors": self.errors[:20],
            "error_count": len(self.errors),
        }


class BenchEndpoint:
    """One request handler: verify, play the engine, record timings."""

    def __init__(self, *, engine: str, verify: str, recorder: Recorder) -> None:
        self.engine_kind = engine
        self.verify = verify
        self.recorder = recorder
        self.verifier = RequestVerifier({DEFAULT_ACCESS_KEY: (DEFAULT_SECRET_KEY, None)})

    def _engine(self, query: str | None) -> Any:
        settings = FluxSettings.from_query_string(query or "", allow_extra_params=False)
        if self.engine_kind == "stub":
            return StubEngine()
        return FluxEngine(
            params=EngineParams(
                model=settings.model,
                encoding=settings.encoding or "linear16",
                sample_rate=settings.sample_rate or 16000,
            ),
            script=["benchmark speech"] * 1000,
        )

    async def handle(self, stream: ServerStream) -> None:
        """Serve one stream until either side ends it."""
        rec = self.recorder
        rec.streams += 1
        try:
            verified = self.verifier.verify(
                stream.method, stream.path, [(":authority", stream.authority), *stream.headers]
            )
            engine = self._engine(verified.query_string)
        except (VerificationFailure, ValidationError) as exc:
            rec.errors.append(f"refused: {exc}")
            await stream.send_headers(400, [("content-type", "application/json")])
            await stream.send_data(b'{"message":"refused"}', end_stream=True)
            return
        events: Any = (
            self.verifier.event_verifier(verified) if self.verify == "full" else _NoVerifier()
        )
        await stream.send_headers(
            200,
            [
                ("content-type", "application/vnd.amazon.eventstream"),
                ("x-amzn-requestid", str(uuid.uuid4())),
                ("x-amzn-invoked-production-variant", "AllTraffic"),
            ],
        )
        try:
            await self._send(stream, engine.connected())
            await self._pump(stream, events, engine)
        except FluxError as exc:
            rec.errors.append(f"stream: {exc}")
        except VerificationFailure as exc:
            rec.errors.append(f"verification: {exc}")

    async def _pump(self, stream: ServerStream, events: Any, engine: Any) -> None:
        rec = self.recorder
        offset = 0
        ended = False
        while True:
            chunk = await stream.receive()
            now = time.monotonic()
            if chunk is None:
                events.eof()
                break
            for event in events.receive_data(chunk):
                if isinstance(event, InputEnded):
                    continue
                if event.data_type == "BINARY":
                    payload = event.payload
                    _record_stamps(rec, payload, offset, now)
                    offset += len(payload)
                    rec.audio_bytes += len(payload)
                    rec.audio_events += 1
                    out = engine.receive_audio(payload)
                else:
                    out = engine.receive_text(event.payload)
                if out and not ended:
                    await self._send(stream, out)
            if engine.closed and not ended:
                ended = True
                await stream.end()
        if not ended:
            await stream.end()

    async def _send(self, stream: ServerStream, messages: Sequence[dict[str, Any]]) -> None:
        parts = []
        for message in messages:
            message["bench_sent"] = time.monotonic()
            parts.append(payload_part(message))
        self.recorder.messages_sent += len(parts)
        await stream.send_data(b"".join(parts))


def _record_stamps(rec: Recorder, payload: bytes, offset: int, now: float) -> None:
    """Find the stamped frames in one audio event (``offset``: its position in the stream)."""
    first = -offset % FRAME_BYTES
    stamps = []
    for pos in range(first, len(payload) - STAMP.size + 1, FRAME_BYTES):
        magic, stamp = STAMP.unpack_from(payload, pos)
        if magic == STAMP_MAGIC:
            stamps.append(stamp)
    if not stamps:
        return
    last = max(stamps)
    rec.stamps.append(last)
    rec.transport.append(now - last)
    for stamp in stamps:
        rec.frame_stamps.append(stamp)
        rec.coalesce_wait.append(last - stamp)


async def _control(
    recorder: Recorder, cpu: array[float], cpu_times: array[float], done: anyio.Event
) -> None:
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "reset":
            recorder.reset()
            answer: dict[str, Any] = {"ok": True}
        elif command["cmd"] == "report":
            start, end = command["from"], command["to"]
            answer = recorder.report(start, end)
            answer["cpu_samples"] = [
                [t, c] for t, c in zip(cpu_times, cpu, strict=True) if start - 1 <= t <= end + 1
            ]
            answer["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        else:
            break
        print(json.dumps(answer), flush=True)
    done.set()


async def _sample_cpu(cpu: array[float], cpu_times: array[float]) -> None:
    while True:
        cpu_times.append(time.monotonic())
        cpu.append(time.process_time())
        await anyio.sleep(CPU_SAMPLE_S)


async def serve(args: argparse.Namespace) -> None:
    """Serve until ``quit`` or the end of stdin."""
    recorder = Recorder()
    handler = BenchEndpoint(engine=args.engine, verify=args.verify, recorder=recorder)
    ca = TestCA() if args.tls else None
    server = H2Server(handler.handle, ssl_context=ca.server_context if ca else None)
    cpu, cpu_times = array("d"), array("d")
    done = anyio.Event()
    try:
        async with server, anyio.create_task_group() as tg:
            tg.start_soon(_sample_cpu, cpu, cpu_times)
            tg.start_soon(_control, recorder, cpu, cpu_times, done)
            hello = {
                "url": server.url,
                "port": server.port,
                "ca_pem_path": str(ca.ca_pem_path) if ca else None,
            }
            print(json.dumps(hello), flush=True)
            await done.wait()
            tg.cancel_scope.cancel()
    finally:
        if ca is not None:
            ca.cleanup()


def main() -> None:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls", action="store_true", help="HTTPS with a per-run CA")
    parser.add_argument("--engine", choices=("stub", "flux"), default="stub")
    parser.add_argument("--verify", choices=("full", "off"), default="full")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    anyio.run(serve, args, backend=args.backend)


if __name__ == "__main__":
    main()
