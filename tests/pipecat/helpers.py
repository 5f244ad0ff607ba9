"""Shared helpers of the Pipecat adapter tests: audio, frame summaries, recorders."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.metrics.metrics import STTUsageMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection
from pipecat.tests.utils import run_test

from flux_sagemaker.pipecat import DeepgramFluxSageMakerSTTService
from flux_sagemaker.testing import MockFluxEndpoint

SAMPLE_RATE = 16000
FRAME_MS = 20

#: The frames a Flux service produces itself (audio passthrough and lifecycle frames aside).
FLUX_FRAMES = (
    TranscriptionFrame,
    InterimTranscriptionFrame,
    EagerTranscriptionFrame,
    EagerEndOfTurnCancelFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    MetricsFrame,
    ErrorFrame,
)


def tone(ms: int, *, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    """``ms`` of a sine tone, linear16 mono: speech to the mock's energy VAD."""
    n = SAMPLE_RATE * ms // 1000
    return b"".join(
        struct.pack("<h", int(amplitude * math.sin(2 * math.pi * freq * i / SAMPLE_RATE)))
        for i in range(n)
    )


def silence(ms: int) -> bytes:
    """``ms`` of digital silence, linear16 mono."""
    return b"\x00\x00" * (SAMPLE_RATE * ms // 1000)


def chunks(audio: bytes, ms: int = FRAME_MS) -> list[bytes]:
    """Split audio into transport-sized frames (20 ms by default)."""
    size = SAMPLE_RATE * 2 * ms // 1000
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def spoken_turns(count: int, *, speech_ms: int = 1200, pause_ms: int = 1500) -> bytes:
    """``count`` turns of speech, each followed by a pause long enough to end the turn."""
    return b"".join(tone(speech_ms) + silence(pause_ms) for _ in range(count))


def summary(frame: Frame) -> tuple[Any, ...]:
    """What a Flux frame says, without ids and timestamps."""
    if isinstance(frame, TranscriptionFrame):
        return (type(frame).__name__, frame.text, frame.user_id, frame.language, frame.finalized)
    if isinstance(frame, InterimTranscriptionFrame | EagerTranscriptionFrame):
        return (type(frame).__name__, frame.text, frame.user_id, frame.language)
    if isinstance(frame, MetricsFrame):
        return (type(frame).__name__, tuple(type(d).__name__ for d in frame.data))
    return (type(frame).__name__,)


def flux_frames(frames: Sequence[Frame]) -> list[Frame]:
    """The frames of ``frames`` that a Flux service produces."""
    return [f for f in frames if isinstance(f, FLUX_FRAMES)]


class Recorder:
    """Stands in for ``push_frame``: keeps (direction, frame) in order."""

    def __init__(self) -> None:
        self.pushed: list[tuple[FrameDirection, Frame]] = []

    async def __call__(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        self.pushed.append((direction, frame))

    def summaries(self) -> list[tuple[Any, ...]]:
        """``(direction, summary)`` of every pushed frame."""
        return [(d.name, *summary(f)) for d, f in self.pushed]


def audio_frames(audio: bytes) -> list[Frame]:
    """20 ms transport frames, as a Pipecat input transport pushes them."""
    return [InputAudioRawFrame(c, SAMPLE_RATE, 1) for c in chunks(audio)]


def service(endpoint: MockFluxEndpoint, **kwargs: Any) -> DeepgramFluxSageMakerSTTService:
    """The adapter pointed at the mock endpoint (FluxClient options among ``kwargs``)."""
    return DeepgramFluxSageMakerSTTService(
        endpoint_name="flux-test", **endpoint.client_kwargs(), **kwargs
    )


async def run(
    stt: DeepgramFluxSageMakerSTTService, frames: Sequence[Frame]
) -> tuple[list[Frame], list[Frame]]:
    """Run ``frames`` then an EndFrame through a real pipeline; (downstream, upstream) frames."""
    down, up = await run_test(
        stt,
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, enable_usage_metrics=True),
        start_timeout=10.0,
    )
    return list(down), list(up)


def usage_seconds(frames: Sequence[Frame]) -> list[float]:
    """The ``audio_seconds`` of every STT usage metric, in order."""
    return [
        d.value.audio_seconds
        for f in frames
        if isinstance(f, MetricsFrame)
        for d in f.data
        if isinstance(d, STTUsageMetricsData)
    ]


def transcripts(frames: Sequence[Frame]) -> list[str]:
    """The text of every TranscriptionFrame."""
    return [f.text for f in frames if isinstance(f, TranscriptionFrame)]
