"""Section 1: encode and sign audio events, decode response events; ours against the AWS stack.

Ours runs in this process: ``StreamProtocol.send_audio`` (inner ``PayloadPart`` encoding, then
the chained-signature envelope), and ``StreamProtocol.receive_data`` (frames, JSON, typed
events). botocore's ``EventStreamBuffer`` decodes in this process too. The AWS SDK's
``AWSEventPublisher``/``AsyncEventSigner``/``AWSEventReceiver`` need Python 3.12+, so
:mod:`benchmarks.codec_sdk` runs them under ``--py312``.

Each figure is the best of ``repeats`` timed loops (``time.perf_counter``) of ``events`` events,
as events per second, MB/s of payload (audio) or of wire bytes (responses), and microseconds
per event.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.credentials import ReadOnlyCredentials

from flux_sagemaker.core.eventstream import EventStreamDecoder
from flux_sagemaker.core.protocol import StreamProtocol
from flux_sagemaker.core.signing import EventSigner

from .bench_server import payload_part

FRAME_SIZES = (640, 2560)  # 20 ms and 80 ms of 16 kHz linear16
_CREDENTIALS = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
RESPONSE_MESSAGE: dict[str, Any] = {
    "type": "TurnInfo",
    "request_id": "9f0c1a52-2c1b-4c8e-9a57-0d5e3f1b6a21",
    "sequence_id": 12,
    "event": "Update",
    "turn_index": 0,
    "audio_window_start": 0.0,
    "audio_window_end": 2.4,
    "transcript": "benchmark speech",
    "words": [
        {"word": "benchmark", "confidence": 0.98, "start": 0.1, "end": 0.5},
        {"word": "speech", "confidence": 0.97, "start": 0.5, "end": 0.9},
    ],
    "end_of_turn_confidence": 0.05,
}


def _best(repeats: int, loop: Callable[[], None]) -> float:
    loop()  # warm-up: caches, the signing key, lazy imports
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        loop()
        best = min(best, time.perf_counter() - start)
    return best


def _row(seconds: float, events: int, nbytes: int) -> dict[str, float]:
    return {
        "events_per_s": events / seconds,
        "mb_per_s": nbytes / seconds / 1e6,
        "us_per_event": seconds / events * 1e6,
    }


def _signer() -> EventSigner:
    return EventSigner(credentials=_CREDENTIALS, region="us-east-1", seed_signature="0" * 64)


def ours_encode_sign(size: int, events: int, repeats: int) -> dict[str, float]:
    """``StreamProtocol.send_audio``: inner message plus signed envelope."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)

    def loop() -> None:
        proto = StreamProtocol(_signer())
        send = proto.send_audio
        for _ in range(events):
            send(payload)

    return _row(_best(repeats, loop), events, size * events)


def ours_decode(wire: bytes, events: int, repeats: int) -> dict[str, dict[str, float]]:
    """Frames only (``EventStreamDecoder``) and the whole path to typed events."""

    def frames() -> None:
        decoder = EventStreamDecoder()
        for _ in range(events):
            for message in decoder.receive_data(wire):
                json.loads(message.payload)

    def typed() -> None:
        proto = StreamProtocol(_signer())
        for _ in range(events):
            proto.receive_data(wire)

    nbytes = len(wire) * events
    return {
        "frames + json.loads": _row(_best(repeats, frames), events, nbytes),
        "typed events (StreamProtocol.receive_data)": _row(_best(repeats, typed), events, nbytes),
    }


def botocore_decode(wire: bytes, events: int, repeats: int) -> dict[str, float]:
    """botocore's ``EventStreamBuffer`` (what boto3 streams use), plus ``json.loads``."""
    from botocore.eventstream import EventStreamBuffer

    def loop() -> None:
        buffer = EventStreamBuffer()
        for _ in range(events):
            buffer.add_data(wire)
            for message in buffer:
                json.loads(message.payload)

    return _row(_best(repeats, loop), events, len(wire) * events)


def sdk(py312: str, events: int, repeats: int, wire: bytes) -> dict[str, Any]:
    """Run :mod:`benchmarks.codec_sdk` under the AWS SDK's Python; ``{"error"}`` if it fails."""
    job = {
        "frame_sizes": list(FRAME_SIZES),
        "events": events,
        "repeats": repeats,
        "response_hex": wire.hex(),
        "response_count": events,
    }
    script = Path(__file__).with_name("codec_sdk.py")
    try:
        done = subprocess.run(
            [py312, str(script)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{py312}: {exc}"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    raw = json.loads(done.stdout)
    out: dict[str, Any] = {"python": raw["python"], "versions": raw["versions"]}
    out["encode_sign"] = {
        int(size): _row(r["seconds"], r["events"], r["payload_bytes"])
        for size, r in raw["encode_sign"].items()
    }
    d = raw["decode"]
    out["decode"] = _row(d["seconds"], d["events"], d["wire_bytes"])
    return out


def run(*, py312: str, events: int = 20000, repeats: int = 5) -> dict[str, Any]:
    """The whole section, as a JSON-ready dict."""
    wire = payload_part(dict(RESPONSE_MESSAGE))
    result: dict[str, Any] = {
        "events": events,
        "repeats": repeats,
        "response_wire_bytes": len(wire),
        "ours": {
            "encode_sign": {size: ours_encode_sign(size, events, repeats) for size in FRAME_SIZES},
            "decode": ours_decode(wire, events, repeats),
        },
        "botocore": {"decode": botocore_decode(wire, events, repeats)},
        "sdk": sdk(py312, events, repeats, wire),
    }
    return result
