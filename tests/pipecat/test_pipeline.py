"""The adapter in a real Pipecat pipeline (``run_test``), against the mock endpoint over sockets."""

from __future__ import annotations

import array
import bisect
from collections.abc import Sequence
from typing import Any

import pytest
from pipecat.frames.frames import (
    CancelWorkerFrame,
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection
from pipecat.tests.utils import run_test
from pipecat.transcriptions.language import Language

from flux_sagemaker.pipecat import DeepgramFluxSageMakerSTTService
from flux_sagemaker.samples import load_sample
from flux_sagemaker.testing import MockFluxEndpoint
from flux_sagemaker.testing.session import StreamSession
from flux_sagemaker.testing.vad import alaw_to_linear, mulaw_to_linear

from .helpers import (
    SAMPLE_RATE,
    audio_frames,
    flux_frames,
    run,
    service,
    spoken_turns,
    tone,
    transcripts,
    usage_seconds,
)

pytestmark = pytest.mark.timeout(30)


async def run_down(stt: DeepgramFluxSageMakerSTTService, frames: list[Frame]) -> list[Frame]:
    down, _up = await run(stt, frames)
    return down


@pytest.mark.anyio
async def test_scripted_conversation_frames() -> None:
    sample = load_sample()
    async with MockFluxEndpoint(script=list(sample.turns)) as endpoint:
        stt = service(endpoint)
        events: list[tuple[str, Any]] = []
        for name in ("on_connected", "on_start_of_turn", "on_end_of_turn", "on_disconnected"):

            async def record(_svc: Any, *args: Any, _name: str = name) -> None:
                events.append((_name, args))

            stt.add_event_handler(name, record)
        frames = flux_frames(await run_down(stt, audio_frames(sample.pcm)))

    assert transcripts(frames) == list(sample.turns)
    finals = [f for f in frames if isinstance(f, TranscriptionFrame)]
    assert all(f.language == Language.EN for f in finals)
    assert all(f.result["type"] == "TurnInfo" for f in finals)
    kinds = [type(f) for f in frames]
    assert kinds.count(ProposedUserStartedSpeakingFrame) == 2
    assert kinds.count(ProposedUserStoppedSpeakingFrame) == 2
    assert InterimTranscriptionFrame in kinds
    # Each turn: started, interims, then (usage, transcript, stopped), in that order.
    first_final = kinds.index(TranscriptionFrame)
    assert kinds.index(ProposedUserStartedSpeakingFrame) < first_final
    assert kinds[first_final + 1] is ProposedUserStoppedSpeakingFrame
    usage = usage_seconds(frames)
    assert usage
    assert sum(usage) == pytest.approx(len(sample.pcm) / (2 * SAMPLE_RATE))
    names = [n for n, _ in events]
    assert names[0] == "on_connected"
    assert ("on_end_of_turn", (sample.turns[0],)) in events
    assert names.count("on_start_of_turn") == 2


@pytest.mark.anyio
async def test_cancel_ends_the_session_with_on_disconnected() -> None:
    events: list[str] = []
    async with MockFluxEndpoint(script=["first turn", "second turn"]) as endpoint:
        stt = service(endpoint)
        for name in ("on_connected", "on_disconnected"):

            async def record(_svc: Any, _name: str = name) -> None:
                events.append(_name)

            stt.add_event_handler(name, record)

        @stt.event_handler("on_end_of_turn")
        async def cancel_once(_svc: Any, _transcript: str) -> None:
            if "cancel" not in events:  # mid-session: the second turn is still being sent
                events.append("cancel")
                await stt.push_frame(CancelWorkerFrame(), FrameDirection.UPSTREAM)

        await run_test(
            stt,
            frames_to_send=audio_frames(spoken_turns(2)),
            pipeline_params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE),
            send_end_frame=False,  # only the cancel ends the pipeline
            start_timeout=10.0,
        )
    assert events == ["on_connected", "cancel", "on_disconnected"]


@pytest.mark.anyio
async def test_audio_before_connected_is_sent_not_dropped() -> None:
    audio = spoken_turns(1)
    async with MockFluxEndpoint(script=["only turn"]) as endpoint:
        # Every frame is queued as soon as the pipeline starts, long before Connected.
        frames = flux_frames(await run_down(service(endpoint), audio_frames(audio)))
        received = endpoint.received_audio()
    assert received == [audio]
    assert transcripts(frames) == ["only turn"]


@pytest.mark.anyio
async def test_end_frame_right_after_audio_drains_every_turn() -> None:
    # The second turn has no trailing pause: only CloseStream (and the client's synthetic
    # EndOfTurn) can end it.
    audio = spoken_turns(1) + spoken_turns(1, pause_ms=40)
    async with MockFluxEndpoint(script=["first turn", "second turn"]) as endpoint:
        frames = flux_frames(await run_down(service(endpoint), audio_frames(audio)))
    assert transcripts(frames) == ["first turn", "second turn"]
    kinds = [type(f) for f in frames]
    assert kinds.count(ProposedUserStoppedSpeakingFrame) == 2


@pytest.mark.anyio
async def test_min_confidence_drops_low_confidence_turns() -> None:
    from flux_sagemaker.testing import ScriptedTurn

    script = [
        ScriptedTurn("sure thing", confidences=(0.5, 0.6)),
        ScriptedTurn("all good", confidences=(0.99, 0.98)),
    ]
    async with MockFluxEndpoint(script=script) as endpoint:
        settings = DeepgramFluxSageMakerSTTService.Settings(min_confidence=0.9)
        stt = service(endpoint, settings=settings)
        frames = flux_frames(await run_down(stt, audio_frames(spoken_turns(2))))
    assert transcripts(frames) == ["all good"]
    assert [type(f) for f in frames].count(ProposedUserStoppedSpeakingFrame) == 2


@pytest.mark.anyio
async def test_a_turn_cut_short_that_began_without_start_of_turn_keeps_its_transcript(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client opens a turn on an Update with text when no StartOfTurn came (the stream it
    was on failed, say): at stop, that turn's text still becomes a TranscriptionFrame."""
    send = StreamSession._send

    async def without_start_of_turn(self: StreamSession, messages: Sequence[Any]) -> None:
        await send(self, [m for m in messages if m.get("event") != "StartOfTurn"])

    monkeypatch.setattr(StreamSession, "_send", without_start_of_turn)
    audio = spoken_turns(1, pause_ms=40)  # no pause after it: only the stop ends the turn
    async with MockFluxEndpoint(script=["cut short"]) as endpoint:
        frames = flux_frames(await run_down(service(endpoint), audio_frames(audio)))
    assert transcripts(frames) == ["cut short"]


@pytest.mark.anyio
async def test_keepalive_silence_counts_toward_usage() -> None:
    """The silence sent to end a turn whose audio stopped is audio Flux receives (and bills):
    Pipecat's watchdog counts it toward the STT usage metrics, so the adapter does too."""
    async with MockFluxEndpoint(script=["held turn"]) as endpoint:
        stt = service(endpoint)

        @stt.event_handler("on_end_of_turn")
        async def end(_svc: Any, _transcript: str) -> None:
            # Only the keepalive silence can have ended the turn: the audio stopped mid-speech.
            await stt.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

        down, _up = await run_test(
            stt,
            frames_to_send=audio_frames(tone(1200)),
            pipeline_params=PipelineParams(
                audio_in_sample_rate=SAMPLE_RATE, enable_usage_metrics=True
            ),
            send_end_frame=False,
            start_timeout=10.0,
        )
        received = b"".join(endpoint.received_audio())
    frames = flux_frames(list(down))
    assert transcripts(frames) == ["held turn"]
    usage = usage_seconds(frames)
    assert len(received) > len(tone(1200))  # silence was sent
    assert sum(usage) == pytest.approx(len(received) / (2 * SAMPLE_RATE))


def _telephony(pcm: bytes, encoding: str) -> bytes:
    """16 kHz linear16 as 8 kHz audio in ``encoding`` (G.711: the code decoding nearest)."""
    samples = array.array("h", pcm)[::2]
    if encoding == "linear32":
        return array.array("i", (s << 16 for s in samples)).tobytes()
    decode = mulaw_to_linear if encoding == "mulaw" else alaw_to_linear
    table = sorted((decode(code), code) for code in range(256))
    values = [value for value, _ in table]
    codes = bytearray()
    for sample in samples:
        i = min(bisect.bisect_left(values, sample), len(values) - 1)
        nearest = min((j for j in (i - 1, i) if j >= 0), key=lambda j: abs(values[j] - sample))
        codes.append(table[nearest][1])
    return bytes(codes)


@pytest.mark.anyio
@pytest.mark.parametrize(("encoding", "width"), [("mulaw", 1), ("alaw", 1), ("linear32", 4)])
async def test_usage_counts_seconds_of_the_sessions_encoding(encoding: str, width: int) -> None:
    """A phone call's 8 kHz mu-law or A-law (one byte a sample), or linear32 (four): the usage
    metrics count the seconds Flux receives. Pipecat's STTService takes every chunk for 16-bit
    PCM, which counted G.711 at half its length and linear32 at twice."""
    rate = 8000
    audio = _telephony(spoken_turns(2), encoding)
    size = rate * width * 20 // 1000  # 20 ms transport frames
    frames = [InputAudioRawFrame(audio[i : i + size], rate, 1) for i in range(0, len(audio), size)]
    async with MockFluxEndpoint(script=["first turn", "second turn"]) as endpoint:
        down, _up = await run_test(
            service(endpoint, encoding=encoding),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_in_sample_rate=rate, enable_usage_metrics=True),
            start_timeout=10.0,
        )
        received = b"".join(endpoint.received_audio())
    found = flux_frames(list(down))
    assert transcripts(found) == ["first turn", "second turn"]
    assert received[: len(audio)] == audio
    usage = usage_seconds(found)
    assert sum(usage) == pytest.approx(len(received) / (width * rate))
