"""Turn tracking across the HTTP/2 streams of one logical Flux session, sans-I/O.

Every Flux stream starts its own ``turn_index`` at 0 and its own audio clock at 0 s. A session
that reconnects after a failure, or rolls over before SageMaker's 30-minute limit, is made of
several streams; :class:`TurnTracker` rewrites their ``TurnInfo`` events onto one session
timeline and keeps a lenient, ``turn_index``-keyed view of the open turn (Flux spec 4.3):

- ``StartOfTurn`` opens a turn; so does an ``Update``, ``EagerEndOfTurn`` or ``TurnResumed`` with
  a non-empty transcript when no ``StartOfTurn`` came (seen in the wild);
- ``EndOfTurn`` closes it, whatever its index (an event for a new index abandons an open turn
  whose ``EndOfTurn`` never came: nothing is invented for it);
- when the server ends a stream normally while a turn is open, :meth:`TurnTracker.stream_ended`
  promotes the last event of the turn to a synthetic ``EndOfTurn`` (Flux spec 4.5, step 4).

Replay rules. After a failure, the client opens a new stream and sends again the audio kept since
the last ``EndOfTurn`` (:class:`~flux_sagemaker.core.recovery.ReplayBuffer`), calling
:meth:`TurnTracker.start_stream` with the session time at which that audio begins. The server
then transcribes some audio a second time. On such a stream, with ``L`` the session
``audio_window_end`` of the last delivered ``EndOfTurn`` and ``H`` the largest
``audio_window_end`` delivered so far, both taken when the stream starts:

1. any ``TurnInfo`` whose ``audio_window_end`` is at most ``L + OVERLAP_TOLERANCE`` lies in audio
   already finalized and is dropped; when it is an ``EndOfTurn``, that stream turn is counted as
   a duplicate, so the stream's later turns keep consecutive session indexes;
2. an ``Update`` whose ``audio_window_end`` is at most ``H`` re-covers audio already reported and
   is dropped (the transcript the user sees never goes back); so is an ``EagerEndOfTurn`` there
   that comes before the prediction the application holds, or when it holds none (the earlier
   stream made it too, then withdrew it, or did not make it). One at the held prediction's place
   (within ``OVERLAP_TOLERANCE``) or after it goes on to rule 4;
3. a ``StartOfTurn`` for a turn whose ``StartOfTurn`` was already delivered is dropped;
4. an ``EagerEndOfTurn`` for the open turn is dropped when it repeats, with the same transcript,
   the prediction the application holds (delivered, no ``TurnResumed`` since): the replay makes
   Flux predict it again, and the application, perhaps already drafting a reply on the first
   prediction, gets one until ``TurnResumed`` withdraws it. A prediction with another
   transcript is delivered: the ``EndOfTurn`` that follows carries that transcript, and Flux
   promises the application that it matches the ``EagerEndOfTurn`` just before it;
5. a ``TurnResumed`` is dropped unless it withdraws the prediction the application holds (the
   stream's latest ``EagerEndOfTurn`` was that one: delivered, or dropped by rule 4): the
   withdrawal of a prediction the application never got, or saw withdrawn already, is a repeat.
   The place counts, not only the transcript: Flux may predict the same words twice in a turn
   (the user went on with a breath, a cough), and the withdrawal of the first prediction, heard
   again (dropped by rule 2), is not that of the second.

Other events pass: an ``EndOfTurn`` is never dropped outside rule 1, so a final is not lost. A
turn the new stream re-detects from the tail of already-finalized audio *and* extends past
``L + OVERLAP_TOLERANCE`` (for example merged with new speech) is delivered: repeating words is
preferred to losing them. Stale events (a session index below one already completed) are dropped.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

from flux_sagemaker.core.events import (
    EagerEndOfTurn,
    EndOfTurn,
    ServerMessage,
    StartOfTurn,
    TurnInfo,
    TurnResumed,
    Update,
)
from flux_sagemaker.errors import ValidationError

__all__ = ["OVERLAP_TOLERANCE", "TurnTracker"]

#: Seconds of slack in rule 1. An ``EndOfTurn`` the new stream re-detects on replayed audio can
#: land a frame (~80 ms) after the original; no real turn is that short. Flux's own floats
#: carry noise too (``0.47999996``).
OVERLAP_TOLERANCE: Final = 0.08


@attrs.define(eq=False)
class TurnTracker:
    """One turn timeline for a session of one or more streams.

    Call :meth:`observe` for every server message, :meth:`start_stream` when a new stream of the
    same session opens (not needed for the first one, which starts at 0 s), and
    :meth:`stream_ended` when the server ends a stream normally. After a failed stream, call
    :meth:`start_stream` for the next one without :meth:`stream_ended`: the open turn carries on.
    """

    # Session bookkeeping.
    _next_index: int = attrs.field(init=False, default=0)
    _last_end: float | None = attrs.field(init=False, default=None)
    _high_water: float = attrs.field(init=False, default=0.0)
    # The open turn, on the session timeline.
    _open_index: int | None = attrs.field(init=False, default=None)
    _open_start: float = attrs.field(init=False, default=0.0)
    _start_delivered: bool = attrs.field(init=False, default=False)
    _last: TurnInfo | None = attrs.field(init=False, default=None, repr=False)
    # The transcript of the EagerEndOfTurn of the open turn that was delivered and that no
    # TurnResumed withdrew (rules 4 and 5).
    _predicted: str | None = attrs.field(init=False, default=None)
    _predicted_at: float = attrs.field(init=False, default=0.0)
    # The current stream: where its clock and its turn 0 sit on the session timeline.
    _offset: float = attrs.field(init=False, default=0.0)
    _base: int = attrs.field(init=False, default=0)
    _skipped: int = attrs.field(init=False, default=0)
    _finalized_until: float | None = attrs.field(init=False, default=None)
    _reported_until: float | None = attrs.field(init=False, default=None)
    # Whether the current stream's latest EagerEndOfTurn not withdrawn is the prediction the
    # application holds, delivered or not (rule 5).
    _stream_holds: bool = attrs.field(init=False, default=False)

    @property
    def turn_open(self) -> bool:
        """Whether a turn has started and not yet ended."""
        return self._open_index is not None

    @property
    def turns_completed(self) -> int:
        """Turn indexes the session has used up: the session index of the next turn."""
        return self._next_index

    @property
    def last_end_of_turn_audio_end(self) -> float | None:
        """Session ``audio_window_end`` of the last delivered ``EndOfTurn``, or ``None``.

        Audio before it is final: the client may trim its replay buffer up to here.
        """
        return self._last_end

    @property
    def open_turn_audio_start(self) -> float | None:
        """Session ``audio_window_start`` of the open turn, or ``None`` when no turn is open.

        A replay must start at or before this point for the new stream to hear the whole turn.
        """
        return self._open_start if self._open_index is not None else None

    @property
    def audio_heard_until(self) -> float:
        """The largest session ``audio_window_end`` observed: audio the server reported
        processing (Flux reports about every 0.25 s of audio, between turns too)."""
        return self._high_water

    @property
    def audio_offset(self) -> float:
        """Session time, in seconds, at which the current stream's audio begins."""
        return self._offset

    def start_stream(self, audio_offset_s: float | None) -> None:
        """A new stream of this session starts; its audio begins at ``audio_offset_s``.

        ``audio_offset_s`` is the session time of the first byte the new stream receives: after
        a reconnect, where the replayed audio starts; after a rollover, where the audio sent so
        far ends. It may not go back before the previous stream's start.

        ``None`` means the offset is unknown (Opus or containerized audio, whose bytes do not
        map to seconds): the stream is placed after everything delivered so far, and the replay
        rules are off, since nothing says which audio is heard twice.

        Raises:
            ValidationError: ``audio_offset_s`` is negative, not finite, or before the current
                stream's offset.
        """
        if audio_offset_s is not None and not (
            math.isfinite(audio_offset_s) and audio_offset_s >= self._offset
        ):
            raise ValidationError(
                f"audio_offset_s must be a finite number >= {self._offset} (the previous "
                f"stream's start) or None, got {audio_offset_s!r}"
            )
        self._base = self._next_index
        self._skipped = 0
        self._stream_holds = False
        if audio_offset_s is None:
            self._offset = max(self._offset, self._high_water)
            self._finalized_until = self._reported_until = None
            return
        self._offset = float(audio_offset_s)
        overlaps_final = self._last_end is not None and audio_offset_s < self._last_end
        self._finalized_until = self._last_end if overlaps_final else None
        self._reported_until = self._high_water if audio_offset_s < self._high_water else None

    def observe(self, event: ServerMessage) -> ServerMessage | None:
        """Rewrite ``event`` onto the session timeline and update the turn state.

        Returns:
            The event to hand to the user (a ``TurnInfo`` with session ``turn_index`` and
            session audio times; ``raw`` is kept as received), the event itself when it is not
            a ``TurnInfo``, or ``None`` when it must be dropped (see the module's replay rules).
        """
        if not isinstance(event, TurnInfo):
            return event
        withdraws_held = self._stream_holds
        if isinstance(event, EagerEndOfTurn | TurnResumed | EndOfTurn):
            self._stream_holds = False
        end = event.audio_window_end + self._offset
        if self._finalized_until is not None and end <= self._finalized_until + OVERLAP_TOLERANCE:
            if isinstance(event, EndOfTurn):
                self._skipped = max(self._skipped, event.turn_index + 1)
            return None
        if self._reported_until is not None and end <= self._reported_until:
            if isinstance(event, Update):
                return None
            if isinstance(event, EagerEndOfTurn) and (
                self._predicted is None or end < self._predicted_at - OVERLAP_TOLERANCE
            ):
                return None
        index = self._base + event.turn_index - self._skipped
        if index < self._next_index:
            return None  # a turn already completed
        if isinstance(event, StartOfTurn) and index == self._open_index and self._start_delivered:
            return None
        if (
            isinstance(event, EagerEndOfTurn)
            and index == self._open_index
            and event.transcript == self._predicted
        ):
            self._stream_holds = True
            return None
        if isinstance(event, TurnResumed) and (self._predicted is None or not withdraws_held):
            return None
        session_event = self._rewrite(event, index)
        self._track(session_event)
        if isinstance(session_event, EagerEndOfTurn):
            self._stream_holds = self._predicted is not None
        return session_event

    def _rewrite(self, event: TurnInfo, index: int) -> TurnInfo:
        offset = self._offset
        if offset == 0.0 and index == event.turn_index:
            return event
        words = event.words
        if offset != 0.0:
            words = tuple(
                attrs.evolve(
                    w,
                    start=None if w.start is None else w.start + offset,
                    end=None if w.end is None else w.end + offset,
                )
                for w in words
            )
        return attrs.evolve(
            event,
            turn_index=index,
            audio_window_start=event.audio_window_start + offset,
            audio_window_end=event.audio_window_end + offset,
            words=words,
        )

    def _track(self, event: TurnInfo) -> None:
        index = event.turn_index
        self._high_water = max(self._high_water, event.audio_window_end)
        self._next_index = max(self._next_index, index)
        if isinstance(event, EndOfTurn):
            self._complete(event)
        elif type(event) is TurnInfo:
            pass  # an unknown event: delivered, but it says nothing about the turn state
        elif self._open_index == index:
            self._last = event
            self._start_delivered = self._start_delivered or isinstance(event, StartOfTurn)
            self._note_prediction(event)
        elif isinstance(event, StartOfTurn) or event.transcript:
            self._close()
            self._open_index = index
            self._open_start = event.audio_window_start
            self._start_delivered = isinstance(event, StartOfTurn)
            self._last = event
            self._note_prediction(event)
        else:
            # An empty event for another index: between turns. Abandon a turn left open.
            self._close()

    def _complete(self, event: EndOfTurn) -> None:
        self._next_index = max(self._next_index, event.turn_index + 1)
        end = event.audio_window_end
        self._last_end = end if self._last_end is None else max(self._last_end, end)
        self._close()

    def _note_prediction(self, event: TurnInfo) -> None:
        if isinstance(event, EagerEndOfTurn):
            self._predicted, self._predicted_at = event.transcript, event.audio_window_end
        elif isinstance(event, TurnResumed):
            self._predicted = None

    def _close(self) -> None:
        self._open_index = None
        self._start_delivered = False
        self._last = None
        self._predicted = None

    def stream_ended(self) -> EndOfTurn | None:
        """The server ended the current stream normally; finish the open turn, if any.

        Returns:
            A synthetic ``EndOfTurn`` (``synthetic=True``, ``trigger=None``) carrying the fields
            of the open turn's last event, on the session timeline, when a turn was open and its
            last transcript is non-empty; ``None`` otherwise (no open turn, or a turn whose
            words all vanished, which is no turn to finalize). Either way no turn is open after.
        """
        last = self._last
        if self._open_index is None or last is None or not last.transcript:
            self._close()
            return None
        final = EndOfTurn.promote(last)
        self._complete(final)
        return final
