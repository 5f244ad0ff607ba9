"""The mock endpoint's Flux turn engine: sans-I/O, clocked only by the audio it receives.

:class:`FluxEngine` plays one Flux session (one ``/v2/listen`` stream). The server feeds it the
payload parts of the request stream (``receive_audio`` for ``BINARY``, ``receive_text`` for
``UTF8``) and sends back the JSON messages it returns, in order. Nothing reads a clock: time is
the number of audio samples processed, so the same bytes always give the same messages.

How turns are played (the guarantees of flux.md section 4.2 hold for every input):

- An energy VAD (:mod:`.vad`) flags 20 ms frames. ``start_speech_ms`` of speech opens a turn
  with ``StartOfTurn``, whose transcript is the first word of the scripted turn.
- Words of the scripted turn appear in proportion to speech heard (one per ``word_ms``); word
  ``start``/``end`` are seconds on the stream's audio timeline. Every remaining word is revealed
  by ``EagerEndOfTurn``/``EndOfTurn`` (and by the final ``Update`` at ``CloseStream``), so the
  end-of-turn transcript is the scripted text and never changes after ``EagerEndOfTurn``.
- ``end_of_turn_confidence`` ramps linearly with trailing silence (``eot_ramp_ms``, capped at
  0.99 so ``eot_threshold=1.0`` turns natural end-of-turn off). Crossing ``eager_eot_threshold``
  sends ``EagerEndOfTurn``; speech before ``EndOfTurn`` sends ``TurnResumed``; crossing
  ``eot_threshold`` sends ``EndOfTurn`` (trigger ``model``); ``eot_timeout_ms`` of silence sends
  it with trigger ``timeout``; ``ForceEndTurn`` with trigger ``manual``.
- ``Update`` every 240 ms of audio (Flux's observed cadence: 3 x 80 ms), between turns too with
  an empty transcript, skipped on a tick where a state-change event was sent.
- When the script runs out, turns reveal :data:`PLACEHOLDER_TRANSCRIPT`.
"""

from __future__ import annotations

import enum
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from flux_sagemaker.errors import LocalProtocolError, ValidationError
from flux_sagemaker.testing.bundle import (
    FLUX_ENGLISH_20260311,
    FLUX_MULTI_20260417,
    NEWEST,
    ActiveConfig,
    BundleProfile,
    ConfigureRejected,
    FatalMessage,
    apply_configure,
    parse_client_message,
)
from flux_sagemaker.testing.vad import ENCODINGS as VAD_ENCODINGS
from flux_sagemaker.testing.vad import EnergyVad, VadParams

#: The encodings the engine takes: those its detector decodes, and Opus (counted, not decoded).
ENGINE_ENCODINGS = VAD_ENCODINGS | {"opus", "ogg-opus"}

__all__ = [
    "FLUX_ENGLISH_20260311",
    "FLUX_MULTI_20260417",
    "NEWEST",
    "PLACEHOLDER_TRANSCRIPT",
    "ActiveConfig",
    "BundleProfile",
    "EngineParams",
    "FluxEngine",
    "ScriptedTurn",
]

#: The transcript of every turn spoken after the script ran out.
PLACEHOLDER_TRANSCRIPT = "[unscripted speech]"
UPDATE_INTERVAL_MS = 240
_TIMEOUT_CONFIDENCE_CAP = 0.2  # below every valid eager (>= 0.3) and eot (>= 0.5) threshold

Message = dict[str, Any]


def _word_confidence(word: str) -> float:
    # Stable across runs and processes (unlike hash()): 0.85..0.99.
    return round(0.85 + (zlib.crc32(word.encode()) % 15) / 100, 2)


def _floats(values: Iterable[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(values)


@attrs.frozen
class ScriptedTurn:
    """One turn of the script: what the engine reveals while the caller speaks."""

    transcript: str
    confidences: tuple[float, ...] | None = attrs.field(default=None, converter=_floats)
    """One per whitespace-separated word; default: a stable pseudo-random 0.85..0.99."""
    language: str = "en"
    """Reported in ``languages`` on ``flux-general-multi``."""
    end_trigger: str = attrs.field(
        default="model", validator=attrs.validators.in_(("model", "timeout"))
    )
    """``model``: natural end of turn; ``timeout``: confidence stays low, so only
    ``eot_timeout_ms`` or ``ForceEndTurn`` end the turn."""

    def __attrs_post_init__(self) -> None:
        if not self.transcript.split():
            raise ValidationError("a scripted turn needs a non-empty transcript")
        if self.confidences is not None and len(self.confidences) != len(self.transcript.split()):
            raise ValidationError("confidences must have one value per word of the transcript")

    def words(self) -> list[tuple[str, float]]:
        """The words with their confidences."""
        words = self.transcript.split()
        confidences = self.confidences or [_word_confidence(w) for w in words]
        return list(zip(words, confidences, strict=True))


def _to_script(turns: Sequence[ScriptedTurn | str]) -> tuple[ScriptedTurn, ...]:
    return tuple(t if isinstance(t, ScriptedTurn) else ScriptedTurn(t) for t in turns)


_PLACEHOLDER = ScriptedTurn(PLACEHOLDER_TRANSCRIPT)


@attrs.frozen
class EngineParams:
    """The session's parameters, as parsed from the query string."""

    model: str = "flux-general-en"
    encoding: str = "linear16"
    sample_rate: int = 16000
    eot_threshold: float = 0.7
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int = 5000
    keyterms: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    language_hints: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    numerals: bool = False


class _Phase(enum.Enum):
    IDLE = "idle"  # between turns (maybe hearing the first speech of the next one)
    SPEAKING = "speaking"  # StartOfTurn sent (or TurnResumed)
    AWAITING = "awaiting"  # EagerEndOfTurn sent


@attrs.define(eq=False)
class _Turn:
    script: ScriptedTurn
    words: list[tuple[str, float]]
    boundaries: list[int]  # sample where each revealed word starts
    speech: int  # speech samples heard in the turn
    last_speech_end: int
    silence: int = 0  # trailing silence samples


@attrs.define(eq=False)
class FluxEngine:
    """One Flux session: audio and control messages in, server messages (dicts) out.

    Args:
        params: The session's query parameters.
        script: The turns to reveal, in order (strings or :class:`ScriptedTurn`).
        bundle: What the simulated container accepts.
        vad: Voice-activity and turn-timing tuning.
        request_id: Sent in every message; pass one for byte-identical runs.

    Opus (``opus``, ``ogg-opus``) is taken and counted but not decoded: the engine hears no
    speech in it, so it plays no turn.
    """

    params: EngineParams = attrs.field(factory=EngineParams)
    script: tuple[ScriptedTurn, ...] = attrs.field(default=(), converter=_to_script)
    bundle: BundleProfile = NEWEST
    vad: VadParams = attrs.field(factory=VadParams)
    request_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    config: ActiveConfig = attrs.field(init=False)
    """The configuration in force."""
    closed: bool = attrs.field(default=False, init=False)
    """The server should end the response (after CloseStream or a fatal Error)."""
    turn_index: int = attrs.field(default=0, init=False)
    """The current turn's index; also the number of turns completed."""
    messages_sent: int = attrs.field(default=0, init=False)
    """Messages returned so far (the next ``sequence_id``)."""
    _detector: EnergyVad | None = attrs.field(init=False, repr=False)
    _received: int = attrs.field(default=0, init=False)
    _now: int = attrs.field(default=0, init=False)  # samples processed
    _next_update: int = attrs.field(default=0, init=False)
    _window_start: int = attrs.field(default=0, init=False)
    _phase: _Phase = attrs.field(default=_Phase.IDLE, init=False)
    _turn: _Turn | None = attrs.field(default=None, init=False)
    _pending_start: int = attrs.field(default=0, init=False)
    _pending_speech: int = attrs.field(default=0, init=False)
    _pending_silence: int = attrs.field(default=0, init=False)
    # Durations in samples, computed once: _frame() runs for every 20 ms of every stream.
    _update_every: int = attrs.field(default=0, init=False, repr=False)
    _word_len: int = attrs.field(default=0, init=False, repr=False)
    _start_len: int = attrs.field(default=0, init=False, repr=False)
    _gap_len: int = attrs.field(default=0, init=False, repr=False)
    _ramp_len: int = attrs.field(default=0, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        p = self.params
        if p.encoding not in ENGINE_ENCODINGS:
            raise ValidationError(f"the mock cannot take {p.encoding!r} audio")
        decoded = p.encoding in VAD_ENCODINGS
        self._detector = EnergyVad(p.encoding, p.sample_rate, self.vad) if decoded else None
        self.config = ActiveConfig(
            p.eot_threshold,
            p.eager_eot_threshold,
            p.eot_timeout_ms,
            p.keyterms,
            p.language_hints,
            p.numerals,
        )
        self._update_every = self._next_update = self._samples(UPDATE_INTERVAL_MS)
        self._word_len = max(1, self._samples(self.vad.word_ms))
        self._start_len = self._samples(self.vad.start_speech_ms)
        self._gap_len = self._samples(self.vad.start_gap_ms)
        self._ramp_len = max(1, self._samples(self.vad.eot_ramp_ms))

    # -- public API ---------------------------------------------------------------------------

    @property
    def turns_completed(self) -> int:
        """Turns ended with ``EndOfTurn``."""
        return self.turn_index

    @property
    def audio_seconds_received(self) -> float:
        """Seconds of audio received (including a buffered partial frame)."""
        if self._detector is None:
            return 0.0  # Opus: not decoded
        return self._received / (self._detector.sample_width * self.params.sample_rate)

    def connected(self) -> list[Message]:
        """The ``Connected`` message that opens the stream (``sequence_id`` 0)."""
        if self.messages_sent:
            raise LocalProtocolError("connected() must be the engine's first message")
        return [self._emit({"type": "Connected", "request_id": self.request_id})]

    def receive_audio(self, data: bytes) -> list[Message]:
        """Process a ``BINARY`` payload part; return the messages the server sends after it."""
        if self.closed:
            return []
        self._received += len(data)
        out: list[Message] = []
        if self._detector is None:
            return out
        for speech, samples in self._detector.feed(data):
            self._frame(speech, samples, out)
        return out

    def receive_text(self, text: str | bytes) -> list[Message]:
        """Process a ``UTF8`` payload part (a JSON control message)."""
        if self.closed:
            return []
        try:
            kind, message = parse_client_message(text, self.bundle)
            if kind == "CloseStream":
                return self._close_stream()
            if kind == "ForceEndTurn":
                return self._force_end_turn()
            return self._configure(message)
        except FatalMessage as exc:
            return [self._fatal(exc.code, str(exc))]

    # -- messages -----------------------------------------------------------------------------

    def _emit(self, message: Message) -> Message:
        message["sequence_id"] = self.messages_sent
        self.messages_sent += 1
        return message

    def _fatal(self, code: str, description: str) -> Message:
        self.closed = True
        return self._emit({"type": "Error", "code": code, "description": description})

    def _seconds(self, samples: int) -> float:
        return round(samples / self.params.sample_rate, 3)

    def _samples(self, ms: float) -> int:
        return int(self.params.sample_rate * ms / 1000)

    def _confidence(self) -> float:
        turn = self._turn
        if turn is None or self._phase is _Phase.IDLE:
            return 0.0
        value = min(0.99, turn.silence / self._ramp_len)
        if turn.script.end_trigger == "timeout":
            value = min(value, _TIMEOUT_CONFIDENCE_CAP)
        return round(value, 4)

    def _turn_info(self, event: str, trigger: str | None = None) -> Message:
        turn = self._turn if self._phase is not _Phase.IDLE else None
        words: list[Message] = []
        if turn is not None:
            ends = [*turn.boundaries[1:], max(turn.last_speech_end, turn.boundaries[-1])]
            for (word, confidence), start, end in zip(
                turn.words, turn.boundaries, ends, strict=False
            ):
                words.append(
                    {
                        "word": word,
                        "confidence": confidence,
                        "start": self._seconds(start),
                        "end": self._seconds(end),
                    }
                )
        transcript = " ".join(w["word"] for w in words)
        message: Message = {
            "type": "TurnInfo",
            "request_id": self.request_id,
            "event": event,
            "turn_index": self.turn_index,
            "audio_window_start": self._seconds(self._window_start),
            "audio_window_end": self._seconds(self._now),
            "transcript": transcript,
            "words": words,
            "end_of_turn_confidence": self._confidence(),
        }
        if trigger is not None:
            message["trigger"] = trigger
        if self.params.model == "flux-general-multi":
            message["languages"] = [turn.script.language] if turn is not None else []
            message["languages_hinted"] = list(self.config.language_hints)
        return self._emit(message)

    # -- turns --------------------------------------------------------------------------------

    def _frame(self, speech: bool, samples: int, out: list[Message]) -> None:
        start = self._now
        self._now += samples
        before = len(out)
        turn = self._turn
        if self._phase is _Phase.IDLE or turn is None:
            self._idle_frame(speech, start, samples, out)
        elif speech:
            turn.silence = 0
            turn.last_speech_end = self._now
            turn.speech += samples
            word = self._word_len
            while (
                len(turn.boundaries) < len(turn.words)
                and turn.speech >= len(turn.boundaries) * word
            ):
                turn.boundaries.append(self._now - (turn.speech - len(turn.boundaries) * word))
            if self._phase is _Phase.AWAITING:
                self._phase = _Phase.SPEAKING
                out.append(self._turn_info("TurnResumed"))
        else:
            turn.silence += samples
            self._silence_frame(turn, out)
        if self._now >= self._next_update:
            if len(out) == before:
                out.append(self._turn_info("Update"))
            while self._next_update <= self._now:
                self._next_update += self._update_every

    def _idle_frame(self, speech: bool, start: int, samples: int, out: list[Message]) -> None:
        if not speech:
            if self._pending_speech:
                self._pending_silence += samples
                if self._pending_silence >= self._gap_len:
                    self._pending_speech = self._pending_silence = 0
            return
        if not self._pending_speech:
            self._pending_start = start
        self._pending_speech += samples
        self._pending_silence = 0
        if self._pending_speech < self._start_len:
            return
        index = self.turn_index
        script = self.script[index] if index < len(self.script) else _PLACEHOLDER
        self._turn = _Turn(
            script, script.words(), [self._pending_start], self._pending_speech, self._now
        )
        self._phase = _Phase.SPEAKING
        self._pending_speech = self._pending_silence = 0
        out.append(self._turn_info("StartOfTurn"))

    def _silence_frame(self, turn: _Turn, out: list[Message]) -> None:
        confidence = self._confidence()
        eager = self.config.eager_eot_threshold
        if self._phase is _Phase.SPEAKING and eager is not None and confidence >= eager:
            self._reveal_all(turn)
            self._phase = _Phase.AWAITING
            out.append(self._turn_info("EagerEndOfTurn"))
        if confidence >= self.config.eot_threshold:
            out.append(self._end_turn("model"))
        elif turn.silence >= self._samples(self.config.eot_timeout_ms):
            out.append(self._end_turn("timeout"))

    def _reveal_all(self, turn: _Turn) -> None:
        # Squeeze the unrevealed words into the last revealed word's span, evenly.
        missing = len(turn.words) - len(turn.boundaries)
        if missing <= 0:
            return
        first = turn.boundaries[-1]
        span = max(turn.last_speech_end, first) - first
        turn.boundaries += [first + span * k // (missing + 1) for k in range(1, missing + 1)]

    def _end_turn(self, trigger: str) -> Message:
        assert self._turn is not None
        self._reveal_all(self._turn)
        message = self._turn_info("EndOfTurn", trigger)
        self.turn_index += 1
        self._phase = _Phase.IDLE
        self._turn = None
        self._window_start = self._now
        self._pending_speech = self._pending_silence = 0
        return message

    # -- control messages ---------------------------------------------------------------------

    def _close_stream(self) -> list[Message]:
        out: list[Message] = []
        for speech, samples in self._detector.flush() if self._detector is not None else ():
            self._frame(speech, samples, out)
        if self._phase is not _Phase.IDLE and self._turn is not None:
            if self.bundle.finalize_on_close:
                out.append(self._end_turn("model"))
            else:
                # Newer Flux: no EndOfTurn; the last Update is the final transcript. All of the
                # audio was decoded, so it carries the whole scripted turn.
                self._reveal_all(self._turn)
                out.append(self._turn_info("Update"))
        self.closed = True
        return out

    def _force_end_turn(self) -> list[Message]:
        if self._phase is _Phase.IDLE:
            warning = {
                "type": "Warning",
                "request_id": self.request_id,
                "code": "FORCE_END_TURN_NO_ACTIVE_TURN",
                "description": "ForceEndTurn received with no active turn.",
            }
            return [self._emit(warning)]
        return [self._end_turn("manual")]

    def _configure(self, message: Message) -> list[Message]:
        try:
            config = apply_configure(self.config, message, self.params.model, self.bundle)
        except ConfigureRejected as exc:
            failure = {
                "type": "ConfigureFailure",
                "request_id": self.request_id,
                "code": exc.code,
                "description": exc.description,
            }
            return [self._emit(failure)]
        self.config = config
        thresholds: Message = {"eot_threshold": config.eot_threshold}
        if config.eager_eot_threshold is not None:
            thresholds["eager_eot_threshold"] = config.eager_eot_threshold
        thresholds["eot_timeout_ms"] = config.eot_timeout_ms
        success: Message = {
            "type": "ConfigureSuccess",
            "request_id": self.request_id,
            "thresholds": thresholds,
            "keyterms": list(config.keyterms),
            "language_hints": list(config.language_hints),
            "numerals": config.numerals,
        }
        return [self._emit(success)]
