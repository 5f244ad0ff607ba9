"""A small Pipecat bot that transcribes speech with Deepgram Flux on SageMaker.

It streams a WAV file (default: the bundled two-turn sample) through a Pipecat pipeline in
real time, as a transport would, and prints each turn as Flux ends it::

    # against the in-process mock endpoint (no AWS account needed)
    python examples/pipecat_bot.py --mock

    # against a real endpoint (credentials from the usual AWS chain)
    python examples/pipecat_bot.py --endpoint my-flux-endpoint --region us-east-2 [--wav in.wav]

In a voice bot, put the service between your transport's input and the user context
aggregator, exactly where Pipecat's own ``DeepgramFluxSageMakerSTTService`` goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import wave
from collections.abc import AsyncIterator
from typing import Any

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from flux_sagemaker.pipecat import DeepgramFluxSageMakerSTTService
from flux_sagemaker.samples import sample_path
from flux_sagemaker.testing import MockFluxEndpoint

FRAME_MS = 20


class TranscriptPrinter(FrameProcessor):
    """Prints interim and final transcripts; passes every frame on."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Print transcripts as they arrive."""
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            print(f"[turn] {frame.text}")
        elif isinstance(frame, InterimTranscriptionFrame):
            print(f"  ... {frame.text}")
        await self.push_frame(frame, direction)


def read_wav(path: str) -> tuple[bytes, int]:
    """Mono 16-bit PCM and its sample rate."""
    with wave.open(path, "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise SystemExit(f"{path}: need mono 16-bit PCM")
        return wav.readframes(wav.getnframes()), wav.getframerate()


@contextlib.asynccontextmanager
async def connection(args: argparse.Namespace) -> AsyncIterator[dict[str, Any]]:
    """Keyword arguments that point the service at the mock, or at the real endpoint."""
    if args.mock:
        script = ["Hi, I'd like a table for two.", "Tomorrow at seven, please."]
        async with MockFluxEndpoint(script=script) as endpoint:
            yield {"endpoint_name": "mock-flux", **endpoint.client_kwargs()}
    else:
        yield {"endpoint_name": args.endpoint, "region": args.region}


async def main(args: argparse.Namespace) -> None:
    """Build the pipeline, stream the file in real time, then end the pipeline."""
    pcm, rate = read_wav(args.wav)
    async with connection(args) as options:
        stt = DeepgramFluxSageMakerSTTService(
            settings=DeepgramFluxSageMakerSTTService.Settings(eot_threshold=0.7), **options
        )

        async def on_connected(_stt: DeepgramFluxSageMakerSTTService) -> None:
            print("connected to Flux")

        stt.add_event_handler("on_connected", on_connected)

        worker = PipelineWorker(
            Pipeline([stt, TranscriptPrinter()]),
            params=PipelineParams(audio_in_sample_rate=rate),
            cancel_on_idle_timeout=False,
        )
        started = asyncio.Event()

        async def on_started(_worker: PipelineWorker, _frame: Frame) -> None:
            started.set()

        worker.add_event_handler("on_pipeline_started", on_started)

        async def stream_audio() -> None:
            await started.wait()
            step = rate * 2 * FRAME_MS // 1000
            for offset in range(0, len(pcm), step):
                await worker.queue_frame(InputAudioRawFrame(pcm[offset : offset + step], rate, 1))
                await asyncio.sleep(FRAME_MS / 1000)  # real time, like a microphone
            await worker.queue_frame(EndFrame())  # the last turn is still delivered

        runner = WorkerRunner()
        await runner.add_workers(worker)
        await asyncio.gather(runner.run(), stream_audio())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mock", action="store_true", help="use the in-process mock endpoint")
    parser.add_argument("--endpoint", help="SageMaker endpoint name")
    parser.add_argument("--region", help="AWS region (default: from the AWS config)")
    parser.add_argument("--wav", default=str(sample_path()), help="mono 16-bit WAV to stream")
    arguments = parser.parse_args()
    if not arguments.mock and not arguments.endpoint:
        parser.error("give --endpoint NAME, or --mock")
    asyncio.run(main(arguments))
