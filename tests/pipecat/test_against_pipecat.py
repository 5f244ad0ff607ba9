"""The adapter's event handling against Pipecat 1.14's own, message for message.

The same Flux messages go to Pipecat's ``DeepgramFluxSTTBase._handle_message`` (driven without a
transport) and, parsed by :func:`parse_server_message`, to the adapter's event handling. The
frames each pushes (transcripts, turn proposals, eager frames, usage metrics) must be the same.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import ErrorFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.deepgram.flux.stt_base import DeepgramFluxSTTBase, DeepgramFluxSTTSettings
from pipecat.services.stt_service import STTService
from pipecat.utils.asyncio.task_manager import TaskManager
from pipecat.utils.errors import ErrorCategory

from flux_sagemaker.core.events import parse_server_message
from flux_sagemaker.pipecat import DeepgramFluxSageMakerSTTService

from .helpers import Recorder


class PipecatFlux(DeepgramFluxSTTBase):
    """Pipecat's own Flux logic with the transport left out."""

    async def _transport_send_audio(self, audio: bytes) -> None:
        pass

    async def _transport_send_json(self, message: dict[str, Any]) -> None:
        pass

    def _transport_is_active(self) -> bool:
        return False

    async def _connect(self) -> None:
        pass

    async def _disconnect(self) -> None:
        pass

    async def run_stt(self, audio: bytes):  # type: ignore[no-untyped-def]
        yield None


def store_settings(cls: type[DeepgramFluxSTTSettings], **given: Any) -> Any:
    """A complete settings object, as Pipecat's SageMaker service builds it."""
    store = cls(
        model="flux-general-en", language=None, eager_eot_threshold=None, eot_threshold=None,
        eot_timeout_ms=None, keyterm=[], min_confidence=None, language_hints=None, numerals=None,
        profanity_filter=None, redact=None,
    )  # fmt: skip
    store.apply_update(cls(**given))
    return store


async def _set_up(service: STTService) -> Recorder:
    # STTService.setup only (not the services' own): sample rate, metrics, no connection.
    setup = FrameProcessorSetup(
        clock=SystemClock(),
        task_manager=TaskManager(),
        pipeline_worker=None,  # type: ignore[arg-type]
        enable_metrics=True,
        enable_usage_metrics=True,
    )
    await STTService.setup(service, setup)
    recorder = Recorder()
    service.push_frame = recorder  # type: ignore[method-assign]
    return recorder


async def frames_for(
    messages: list[dict[str, Any]], *, eager: bool, **given: Any
) -> tuple[list[Any], list[Any]]:
    """Feed ``messages`` to both; return (Pipecat's frames, the adapter's)."""
    theirs = PipecatFlux(
        settings=store_settings(DeepgramFluxSTTSettings, **given), enable_eager_end_of_turn=eager
    )
    ours = DeepgramFluxSageMakerSTTService(
        endpoint_name="unused",
        region="us-east-1",
        enable_eager_end_of_turn=eager,
        settings=DeepgramFluxSageMakerSTTService.Settings(**given),
    )
    rec_theirs, rec_ours = await _set_up(theirs), await _set_up(ours)
    for message in messages:
        audio = b"\x00" * 640  # 20 ms of usage before each message, on both sides
        theirs._record_stt_audio_usage(audio)
        ours._record_stt_audio_usage(audio)
        await theirs._handle_message(message)
        await ours._handle_event(parse_server_message(json.dumps(message)))
    return rec_theirs.summaries(), rec_ours.summaries()


def turn(event: str, transcript: str, index: int = 0, **extra: Any) -> dict[str, Any]:
    words = [{"word": w, "confidence": 0.9} for w in transcript.split()]
    return {
        "type": "TurnInfo", "event": event, "turn_index": index, "transcript": transcript,
        "words": words, "audio_window_start": 0.0, "audio_window_end": 1.0,
        "end_of_turn_confidence": 0.5, "sequence_id": 1, "request_id": "r", **extra,
    }  # fmt: skip


CONVERSATION = [
    {"type": "Connected", "request_id": "r", "sequence_id": 0},
    turn("Update", ""),
    turn("StartOfTurn", "Hi"),
    turn("Update", "Hi I'd"),
    turn("Update", "Hi I'd like a table"),
    turn("EagerEndOfTurn", "Hi I'd like a table for two."),
    turn("TurnResumed", "Hi I'd like a table for two."),
    turn("EagerEndOfTurn", "Hi I'd like a table for two please."),
    turn("EndOfTurn", "Hi I'd like a table for two please.", trigger="model"),
    turn("Update", "", 1),
    turn("StartOfTurn", "Tomorrow", 1),
    turn("EndOfTurn", "Tomorrow at seven.", 1, languages=["es"]),
    {"type": "ConfigureSuccess", "thresholds": {"eot_threshold": 0.8}, "keyterms": []},
    {"type": "Warning", "code": "FORCE_END_TURN_NO_ACTIVE_TURN", "description": "none"},
    {"type": "SomethingNew", "x": 1},
    turn("SomethingNewer", "x", 2),
]


@pytest.mark.anyio
@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("model", ["flux-general-en", "flux-general-multi"])
async def test_scripted_conversation_same_frames(eager: bool, model: str) -> None:
    theirs, ours = await frames_for(CONVERSATION, eager=eager, model=model)
    assert ours == theirs
    names = [s[1] for s in ours]
    assert names.count("TranscriptionFrame") == 2
    assert ("EagerTranscriptionFrame" in names) is eager
    assert ("EagerEndOfTurnCancelFrame" in names) is eager


@pytest.mark.anyio
@pytest.mark.parametrize("min_confidence", [None, 0.0, 0.85, 0.95])
async def test_min_confidence_same_frames(min_confidence: float | None) -> None:
    messages = [turn("StartOfTurn", "one"), turn("EndOfTurn", "one two three")]
    theirs, ours = await frames_for(messages, eager=False, min_confidence=min_confidence)
    assert ours == theirs
    kept = any(s[1] == "TranscriptionFrame" for s in ours)
    assert kept is (min_confidence is None or min_confidence < 0.9)


@pytest.mark.anyio
async def test_configure_failure_reports_code_and_description() -> None:
    # Pipecat 1.14 reads "error_code", which Flux never sends; the adapter reads "code".
    service = DeepgramFluxSageMakerSTTService(endpoint_name="unused", region="us-east-1")
    recorder = await _set_up(service)
    message = {"type": "ConfigureFailure", "code": "INVALID_THRESHOLD", "description": "too low"}
    await service._handle_event(parse_server_message(json.dumps(message)))
    [(direction, frame)] = recorder.pushed
    assert isinstance(frame, ErrorFrame)
    assert direction is FrameDirection.UPSTREAM
    assert frame.error == "Configure rejected: [INVALID_THRESHOLD] too low"
    assert frame.category is ErrorCategory.APPLICATION  # as a refusal before sending is


_words = st.lists(
    st.builds(
        lambda w, c: {"word": w, "confidence": c},
        st.sampled_from(["a", "b", "table", "two"]),
        st.floats(0, 1),
    ),
    max_size=4,
)


def _turn_message(
    event: str, text: str, words: list[Any], index: int, languages: list[str] | None
) -> dict[str, Any]:
    message = {"type": "TurnInfo", "event": event, "transcript": text, "words": words}
    message["turn_index"] = index
    if languages is not None:
        message["languages"] = languages
    return message


_turn_messages = st.builds(
    _turn_message,
    st.sampled_from(["StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed", "EndOfTurn", "X"]),
    st.sampled_from(["", "hi", "hi there", "table for two"]),
    _words,
    st.integers(0, 3),
    st.none() | st.lists(st.sampled_from(["en", "es", "zz"]), max_size=2),
)
_other_messages = st.sampled_from(
    [
        {"type": "Connected", "request_id": "r", "sequence_id": 0},
        {"type": "ConfigureSuccess", "thresholds": {}, "keyterms": ["a"]},
        {"type": "Warning", "code": "W", "description": "w"},
        {"type": "Unheard", "value": 1},
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(_turn_messages | _other_messages, max_size=12),
    eager=st.booleans(),
    model=st.sampled_from(["flux-general-en", "flux-general-multi"]),
    min_confidence=st.sampled_from([None, 0.0, 0.5, 0.9]),
)
def test_any_message_sequence_same_frames(
    messages: list[dict[str, Any]], eager: bool, model: str, min_confidence: float | None
) -> None:
    theirs, ours = asyncio.run(
        frames_for(messages, eager=eager, model=model, min_confidence=min_confidence)
    )
    assert ours == theirs


@pytest.mark.parametrize(
    ("watchdog_min_timeout", "turn_silence_after"),
    [
        (0.5, 0.5),
        (0.0, 0.05),  # Pipecat: 2 x the chunk, looked at every 100 ms
        (0.02, 0.05),
        (-1.0, 0.05),
        (120.0, 60.0),  # the client's longest
        (math.inf, None),  # never
    ],
)
def test_watchdog_min_timeout_takes_what_pipecat_takes(
    watchdog_min_timeout: float, turn_silence_after: float | None
) -> None:
    PipecatFlux(
        watchdog_min_timeout=watchdog_min_timeout, settings=store_settings(PipecatFlux.Settings)
    )
    ours = DeepgramFluxSageMakerSTTService(
        endpoint_name="x", region="us-east-1", watchdog_min_timeout=watchdog_min_timeout
    )
    assert ours._client_options["keepalive"].turn_silence_after == turn_silence_after
