"""Flux turn events to Pipecat frames: ``DeepgramFluxSTTBase``'s mapping, on typed events.

Pipecat 1.14 maps Flux's JSON in ``DeepgramFluxSTTBase._handle_message``; this base class does the
same from the client's typed events, frame for frame (``tests/pipecat/test_against_pipecat.py``
feeds both the same messages), with two fixes: ``ConfigureFailure`` reports Flux's ``code``, and
a synthetic ``EndOfTurn`` (the stream ended inside a turn) ends the turn like Pipecat's
``_end_turn_cut_short``.
"""

# Pipecat leaves some methods it expects subclasses to call unannotated.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    STTMetadataFrame,
    TranscriptionFrame,
)
from pipecat.services.deepgram.flux.stt_base import DeepgramFluxSTTSettings
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.turns.eager_end_of_turn_mixin import EagerEndOfTurnSTTServiceMixin
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt

from ..core.events import (
    ConfigureFailure,
    ConfigureSuccess,
    EagerEndOfTurn,
    EndOfTurn,
    ServerWarning,
    StartOfTurn,
    TurnInfo,
    TurnResumed,
    Update,
)

__all__ = ["FluxTurnFrames"]


class FluxTurnFrames(EagerEndOfTurnSTTServiceMixin, STTService):
    """An STT service base that turns Flux events into Pipecat frames and event handlers.

    Subclasses feed :meth:`_handle_event` with every event of the session. Event handlers:
    ``on_start_of_turn``, ``on_turn_resumed``, ``on_end_of_turn``, ``on_eager_end_of_turn``,
    ``on_update`` (plus ``STTService``'s connection events).
    """

    _settings: DeepgramFluxSTTSettings

    def __init__(self, *, should_interrupt: bool = True, **kwargs: Any) -> None:
        """Initialize turn state and register the Flux event handlers.

        Args:
            should_interrupt: Whether a user turn interrupts the bot (passed to the turn
                strategies the service recommends).
            **kwargs: For the eager end-of-turn mixin and ``STTService``.
        """
        super().__init__(**kwargs)
        self._should_interrupt = should_interrupt
        self._user_is_speaking = False
        # The turn so far, from its latest Update, for a turn the stream ends inside of.
        self._turn_transcript = ""
        self._turn_language: Language | None = None
        for name in ("start_of_turn", "turn_resumed", "end_of_turn", "eager_end_of_turn", "update"):
            self._register_event_handler(f"on_{name}")

    def can_generate_metrics(self) -> bool:
        """Whether the service generates metrics: it does (usage, TTFB)."""
        return True

    def service_metadata_frame(self) -> STTMetadataFrame:
        """Recommend turn strategies that leave turn detection to Flux."""
        frame = super().service_metadata_frame()
        frame.user_turn_strategies = self.recommended_user_turn_strategies(
            enable_interruptions=self._should_interrupt
        )
        return frame

    async def _handle_event(self, event: object) -> None:
        """Push the frames and call the handlers for one event of the session."""
        match event:
            case StartOfTurn():
                await self._handle_start_of_turn(event)
            case Update():
                await self._handle_update(event)
            case EagerEndOfTurn():
                await self._push_eager_end_of_turn(
                    event.transcript,
                    user_id=self._user_id,
                    language=self._detected_language(event),
                    result=event.raw,
                )
                await self._call_event_handler("on_eager_end_of_turn", event.transcript)
            case TurnResumed():
                await self._cancel_eager_end_of_turn()
                await self._call_event_handler("on_turn_resumed")
            case EndOfTurn(synthetic=True):
                # The stream ended inside the turn: the transcript so far, not finalized.
                await self._end_turn_cut_short(event)
                await self._call_event_handler("on_end_of_turn", event.transcript)
            case EndOfTurn():
                await self._handle_end_of_turn(event)
            case ConfigureSuccess():
                logger.info(f"{self}: Configure accepted: {event.raw}")
            case ConfigureFailure():
                # The settings given were refused, not the service: the session goes on.
                await self.push_error(
                    f"Configure rejected: [{event.code}] {event.description}",
                    category=ErrorCategory.APPLICATION,
                )
            case ServerWarning():
                logger.warning(f"{self}: Flux warning [{event.code}] {event.description}")
            case _:
                logger.debug(f"{self}: {event!r}")

    def _detected_language(self, event: TurnInfo) -> Language | None:
        if event.languages:
            try:
                return Language(event.languages[0])
            except ValueError:
                logger.debug(f"Unmapped Deepgram Flux language code: {event.languages[0]}")
                return None
        return Language.EN if self._settings.model == "flux-general-en" else None

    async def _handle_start_of_turn(self, event: StartOfTurn) -> None:
        self._user_is_speaking = True
        self._turn_transcript = event.transcript
        self._turn_language = None
        await self.broadcast_frame(ProposedUserStartedSpeakingFrame)
        await self._call_event_handler("on_start_of_turn", event.transcript)

    async def _handle_update(self, event: Update) -> None:
        if not event.transcript:
            return
        language = self._detected_language(event)
        self._turn_transcript = event.transcript
        self._turn_language = language
        await self.push_frame(
            InterimTranscriptionFrame(
                event.transcript, self._user_id, time_now_iso8601(), language, result=event.raw
            )
        )
        await self._call_event_handler("on_update", event.transcript)

    async def _handle_end_of_turn(self, event: EndOfTurn) -> None:
        self._user_is_speaking = False
        self._turn_transcript = ""
        self._clear_eager_end_of_turn()
        confidence = event.average_confidence
        language = self._detected_language(event)
        min_confidence = self._settings.min_confidence
        # No threshold (None or 0.0) accepts; otherwise a turn without word confidences drops.
        if not min_confidence or (confidence is not None and confidence > min_confidence):
            await self.emit_stt_usage_metrics()  # before the frame, whose span it belongs to
            await self.push_frame(
                TranscriptionFrame(
                    event.transcript,
                    self._user_id,
                    time_now_iso8601(),
                    language,
                    result=event.raw,
                    finalized=True,
                )
            )
        else:
            logger.warning(f"Transcription confidence below min_confidence threshold: {confidence}")
        await self._handle_transcription(event.transcript, True, language)
        await self.broadcast_frame(ProposedUserStoppedSpeakingFrame)
        await self._call_event_handler("on_end_of_turn", event.transcript)

    async def _end_turn_cut_short(self, event: EndOfTurn | None = None) -> None:
        """End a turn the stream closed inside of, with the transcript so far (unfinalized).

        With the client's synthetic ``event``, the turn was open even if no ``StartOfTurn``
        came (the client also opens one on an ``Update`` with text): its text still counts.
        """
        if not self._user_is_speaking and event is None:
            return
        self._user_is_speaking = False
        self._clear_eager_end_of_turn()
        transcript, language = self._turn_transcript, self._turn_language
        if event is not None:
            transcript, language = event.transcript, self._detected_language(event)
        self._turn_transcript = ""
        if transcript:
            await self.emit_stt_usage_metrics()
            await self.push_frame(
                TranscriptionFrame(transcript, self._user_id, time_now_iso8601(), language)
            )
        await self.broadcast_frame(ProposedUserStoppedSpeakingFrame)

    @traced_stt
    async def _handle_transcription(
        self, transcript: str, is_final: bool, language: Language | None = None
    ) -> None:
        """Mark a transcription for tracing (the decorator records the span)."""
