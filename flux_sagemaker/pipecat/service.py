"""``DeepgramFluxSageMakerSTTService``: sessions, audio hand-over and settings updates.

Audio path: ``run_stt`` appends to a bounded queue that one sender task drains into the client,
so audio that arrives before ``Connected`` (or while a new session opens) is sent, not dropped.
A close marker in the same queue ends a session only after the audio queued before it.
"""

# Pipecat leaves some methods it expects subclasses to call unannotated.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any, Final

import anyio
from loguru import logger
from pipecat.frames.frames import CancelFrame, EndFrame, Frame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.services.deepgram.flux.stt_base import (
    DeepgramFluxSTTSettings,
    language_to_deepgram_flux_language,
)
from pipecat.services.settings import STTSettings
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory

from ..client import FluxClient
from ..core.audio import AudioFormat
from ..core.commands import CONFIGURABLE_FIELDS
from ..core.settings import BundleCapabilities, FluxSettings
from ..core.timers import MAX_TURN_SILENCE, MIN_TURN_SILENCE, KeepalivePolicy
from ..errors import (
    AccessDeniedError,
    CapabilityError,
    ConfigureRejected,
    FluxError,
    FluxServerError,
    ModelError,
    ThrottlingError,
    TransportError,
    UsageError,
    ValidationError,
)
from ..errors import TimeoutError as FluxTimeoutError
from ..transport import Timeouts
from .pending import CLOSE, Close, PendingAudio, max_pending_bytes
from .turns import FluxTurnFrames

__all__ = ["DeepgramFluxSageMakerSTTService", "DeepgramFluxSageMakerSTTSettings"]

_MULTILINGUAL_MODEL: Final = "flux-general-multi"
# Keyword arguments that configure the FluxClient rather than Pipecat's STTService.
_CLIENT_OPTIONS: Final = frozenset(
    {
        "endpoint_url", "use_fips", "use_dualstack", "target_variant", "session", "profile",
        "credentials", "ssl_context", "timeouts", "retry", "keepalive", "rollover",
        "capabilities", "coalesce_ms", "replay_buffer_bytes", "max_buffered_events", "pool",
        "proxy", "log_extra",
    }
)  # fmt: skip
# Settings the running session takes (FluxClient.update_settings: Configure, or a new stream of
# the same session, with the audio replayed, for what Configure cannot carry), and their
# FluxClient names. As in Pipecat, profanity_filter is one of them: Pipecat sends it in Configure.
_UPDATABLE: Final = {
    "eot_threshold": "eot_threshold",
    "eager_eot_threshold": "eager_eot_threshold",
    "eot_timeout_ms": "eot_timeout_ms",
    "keyterm": "keyterms",
    "language_hints": "language_hints",
    "numerals": "numerals",
    "profanity_filter": "profanity_filter",
}
# Settings that open a new session, at the end of the turn (Pipecat reconnects for these).
_CONNECTION_FIELDS: Final = frozenset({"model", "redact"})
_LOCAL_FIELDS: Final = frozenset({"min_confidence"})
# Settings Flux never sees: changing only these needs no check against the bundle.
_NOT_SENT: Final = _LOCAL_FIELDS | {"language"}
# Audio held while no session accepts it (connecting, reconnecting): beyond this the oldest
# audio goes, since a live conversation cannot use speech older than that anyway.
_MAX_PENDING_AUDIO_SECONDS: Final = 10.0
# Longest a settings update holds the frames behind it: Flux's answer to a Configure (5 s),
# plus a reconnect under way, which the Configure waits for. Past it, a new session takes the
# settings at the end of the turn.
_UPDATE_WAIT: Final = 10.0
# How long stop() waits for the last turns after CloseStream before giving up on them, at
# least: a longer Timeouts.close given to the client gets its whole time, and a little more.
_STOP_TIMEOUT: Final = 15.0
_STOP_MARGIN: Final = 5.0
_ERROR_CATEGORIES: Final = (
    (ValidationError, ErrorCategory.INVALID_REQUEST),
    (ModelError, ErrorCategory.INVALID_REQUEST),  # the container refused the parameters
    (CapabilityError, ErrorCategory.INVALID_REQUEST),  # the bundle refuses a parameter
    (ThrottlingError, ErrorCategory.RATE_LIMIT),
    (AccessDeniedError, ErrorCategory.AUTHORIZATION),
    (TransportError, ErrorCategory.CONNECTIVITY),
)


def _language_codes(hints: Iterable[Language]) -> list[str]:
    """Pipecat languages as Flux codes, first occurrence kept.

    Pipecat maps a language it has no Flux code for to its base code (``Language.ZH`` to
    ``zh``), which FluxSettings then refuses before connecting, where Pipecat's service would
    fail at the handshake; only an empty mapping is dropped."""
    codes: list[str] = []
    for hint in hints:
        code = language_to_deepgram_flux_language(hint)
        if code and code not in codes:
            codes.append(code)
    return codes


def _turn_silence_after(watchdog_min_timeout: float) -> float | None:
    """Pipecat's ``watchdog_min_timeout`` as ``KeepalivePolicy.turn_silence_after``.

    Both send silence after max(2 x the last chunk, the value) without audio in an open turn.
    Pipecat takes any float. Below the policy's 50 ms (0, negative), 50 ms: Pipecat's watchdog
    looks every 100 ms, so it sends no sooner. Infinity never sends, as ``None``. Above the
    policy's 60 s, 60 s: the one value that acts sooner than Pipecat would, with a warning.
    """
    if not watchdog_min_timeout > MIN_TURN_SILENCE:  # NaN too: max(chunk, nan) is chunk
        return MIN_TURN_SILENCE
    if watchdog_min_timeout == math.inf:
        return None
    if watchdog_min_timeout > MAX_TURN_SILENCE:
        logger.warning(
            f"watchdog_min_timeout={watchdog_min_timeout} s: silence is sent after"
            f" {MAX_TURN_SILENCE:.0f} s, the longest the client waits"
        )
        return MAX_TURN_SILENCE
    return watchdog_min_timeout


@dataclass
class DeepgramFluxSageMakerSTTSettings(DeepgramFluxSTTSettings):
    """Settings for the Deepgram Flux SageMaker STT service (all of ``DeepgramFluxSTTSettings``)."""


class DeepgramFluxSageMakerSTTService(FluxTurnFrames):
    """Deepgram Flux speech-to-text on a SageMaker endpoint, on :class:`FluxClient`.

    Same surface and frames as Pipecat's ``DeepgramFluxSageMakerSTTService``: Flux detects
    turns itself, and the service recommends ``ExternalUserTurnStrategies`` (or the eager ones
    with ``enable_eager_end_of_turn``) through its ``STTMetadataFrame``.

    Event handlers: ``on_connected``, ``on_disconnected``, ``on_connection_error``,
    ``on_start_of_turn``, ``on_end_of_turn``, ``on_eager_end_of_turn``, ``on_turn_resumed``,
    ``on_update``.

    Example::

        stt = DeepgramFluxSageMakerSTTService(
            endpoint_name="my-deepgram-flux-endpoint",
            region="us-east-2",
            settings=DeepgramFluxSageMakerSTTService.Settings(eot_threshold=0.7),
        )
    """

    Settings = DeepgramFluxSageMakerSTTSettings
    _settings: DeepgramFluxSageMakerSTTSettings
    # Threshold used when eager end of turn is on and the settings leave it unset (Pipecat's).
    _DEFAULT_EAGER_EOT_THRESHOLD = 0.5

    def __init__(
        self,
        *,
        endpoint_name: str,
        region: str,
        encoding: str = "linear16",
        sample_rate: int | None = None,
        mip_opt_out: bool | None = None,
        tag: list[str] | None = None,
        should_interrupt: bool = True,
        watchdog_min_timeout: float = 0.5,
        enable_eager_end_of_turn: bool = False,
        settings: DeepgramFluxSageMakerSTTSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialize the service.

        Args:
            endpoint_name: The SageMaker endpoint serving Flux.
            region: The endpoint's AWS region.
            encoding: Audio encoding. Defaults to "linear16".
            sample_rate: Audio sample rate in Hz; ``None`` uses the pipeline's input rate.
            mip_opt_out: Opt out of the Deepgram Model Improvement Program.
            tag: Usage-reporting tags.
            should_interrupt: Whether a user turn interrupts the bot (passed to the turn
                strategies the service recommends).
            watchdog_min_timeout: Seconds without audio during an open turn after which
                silence is sent so the turn can end (the client's
                ``KeepalivePolicy.turn_silence_after``, which takes 0.05-60 s: values
                outside are brought to the nearest, infinity to ``None``).
            enable_eager_end_of_turn: Answer Flux's predicted end of turn; sets
                ``eager_eot_threshold`` to 0.5 when the settings leave it unset.
            settings: A settings delta applied over the defaults.
            **kwargs: FluxClient options (``endpoint_url``, ``ssl_context``, ``session``,
                ``profile``, ``credentials``, ``timeouts``, ``retry``, ``keepalive``,
                ``rollover``, ``capabilities``, ``coalesce_ms``, ``pool``, ``proxy``,
                ``log_extra``, ...); the rest go to Pipecat's ``STTService``.
        """
        self._client_options: dict[str, Any] = {
            name: kwargs.pop(name) for name in _CLIENT_OPTIONS & kwargs.keys()
        }
        if "keepalive" not in self._client_options:  # a policy given replaces the watchdog
            silence_after = _turn_silence_after(watchdog_min_timeout)
            self._client_options["keepalive"] = KeepalivePolicy(turn_silence_after=silence_after)
        store = self.Settings(
            model="flux-general-en",
            language=None,
            eager_eot_threshold=None,
            eot_threshold=None,
            eot_timeout_ms=None,
            keyterm=[],
            min_confidence=None,
            language_hints=None,
            numerals=None,
            profanity_filter=None,
            redact=None,
        )
        if settings is not None:
            store.apply_update(settings)
        super().__init__(
            settings=store,
            sample_rate=sample_rate,
            should_interrupt=should_interrupt,
            enable_eager_end_of_turn=enable_eager_end_of_turn,
            **kwargs,
        )
        # Flux predicts no end of turn without a threshold, which would leave the feature inert.
        if self.eager_end_of_turn_enabled and self._settings.eager_eot_threshold is None:
            self._settings.eager_eot_threshold = self._DEFAULT_EAGER_EOT_THRESHOLD
        self._endpoint_name = endpoint_name
        self._region = region
        self._encoding = encoding
        self._mip_opt_out = mip_opt_out
        self._tag = list(tag or [])
        self._pending = PendingAudio()
        self._session_task: asyncio.Task[None] | None = None
        self._flux: FluxClient | None = None  # while a session is connected
        self._silence_recorded = 0  # of self._flux's keepalive silence, bytes counted as usage
        self._usage_byte_rate: int | None = None  # the session's, once the sample rate is known
        self._set_up = False
        self._accepting = True  # False once stopping: later audio is not sent
        self._reconnect_after_turn = False
        # A close for a reconnect is queued: the session after it opens with the latest settings.
        self._reopen_pending = False
        capabilities = self._client_options.get("capabilities")
        self._capabilities = capabilities if capabilities is not None else BundleCapabilities()

    # -- lifecycle ----------------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        """Resolve the sample rate and start connecting in the background."""
        await super().setup(setup)
        self._set_up = True
        self._usage_byte_rate = AudioFormat(self._encoding, self.sample_rate).bytes_per_second
        self._pending.set_limit(
            max_pending_bytes(self._encoding, self.sample_rate, _MAX_PENDING_AUDIO_SECONDS)
        )
        self._start_session()

    async def stop(self, frame: EndFrame) -> None:
        """Send the queued audio, close the stream and deliver every remaining turn."""
        await self._finish(drain=True)
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Abandon the session at once."""
        await self._finish(drain=False)
        await super().cancel(frame)

    async def cleanup(self) -> None:
        """Release the session if it is still open."""
        await super().cleanup()
        await self._finish(drain=False)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Queue audio for Flux; transcripts arrive as frames from the event task.

        Args:
            audio: Raw audio bytes to transcribe.

        Yields:
            Frame: None (transcription results come from the session's event task).
        """
        # With no session running (the last one failed), nothing would send the audio: it is
        # dropped, as Pipecat's service drops audio while not connected.
        if self._accepting and self._session_running():
            dropped = self._pending.put(bytes(audio))
            if dropped and dropped == self._pending.dropped_since_empty:
                # Once per backlog, not per frame: the total comes when the session catches up.
                logger.warning(
                    f"{self}: the Flux session is not taking audio; dropping the oldest "
                    f"(more than {_MAX_PENDING_AUDIO_SECONDS:g} s queued)"
                )
        yield None

    def _session_running(self) -> bool:
        return self._session_task is not None and not self._session_task.done()

    def _start_session(self) -> None:
        if not self._session_running():
            self._session_task = self.create_task(self._run_sessions(), name="flux_session")

    async def _finish(self, *, drain: bool) -> None:
        self._accepting = False
        task, self._session_task = self._session_task, None
        if task is None or task.done():
            return
        if drain:
            self._pending.put(CLOSE)
            await asyncio.wait({task}, timeout=self._stop_timeout())
        if not task.done():
            await self.cancel_task(task)

    def _stop_timeout(self) -> float:
        """How long stop() waits for the session to end by itself (see ``_STOP_TIMEOUT``)."""
        timeouts = self._client_options.get("timeouts")
        close = timeouts.close if isinstance(timeouts, Timeouts) else None
        return _STOP_TIMEOUT if close is None else max(_STOP_TIMEOUT, close + _STOP_MARGIN)

    async def _run_sessions(self) -> None:
        """Open sessions one after another while closes we asked for end them."""
        while await self._run_session() and (self._accepting or len(self._pending)):
            pass
        # No session takes the audio left over; a later one must not start with it.
        self._pending.clear()

    async def _run_session(self) -> bool:
        """One FluxClient session; True if it ended because we closed it."""
        connected = False
        failure: Exception | None = None
        self._reopen_pending = False  # the settings are read now: a later change needs a close
        try:
            client = FluxClient(
                self._endpoint_name,
                region=self._region,
                settings=self._flux_settings(),
                **self._client_options,
            )
            async with client as flux:
                connected = True
                self._flux, self._silence_recorded = flux, 0
                await self._call_event_handler("on_connected")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._send_audio, flux)
                    try:
                        async for event in flux:
                            await self._handle_event(event)
                    except FluxError as exc:
                        failure = exc
                    tg.cancel_scope.cancel()
        except Exception as exc:  # a session must not die unreported, whatever ended it
            failure = exc
        finally:
            self._record_keepalive_silence()
            self._flux = None
            if connected:  # also when cancelled (CancelFrame), as Pipecat's _disconnect does
                await self._call_event_handler("on_disconnected")
        if not connected:
            assert failure is not None
            msg = f"Flux connection failed: {failure}"
            await self.push_error(msg, exception=failure, force_treat_as_permanent=True)
            await self._call_event_handler("on_connection_error", str(failure))
            return False
        if failure is not None:
            # The client already retried what was retryable: nothing will bring it back.
            msg = f"Flux session failed: {failure}"
            await self.push_error(msg, exception=failure, force_treat_as_permanent=True)
            await self._end_turn_cut_short()
            return False
        return True

    async def _send_audio(self, flux: FluxClient) -> None:
        while True:
            item = await self._pending.get()
            dropped = self._pending.caught_up()
            if dropped:
                logger.warning(f"{self}: caught up; {dropped} bytes of audio had been dropped")
            try:
                if isinstance(item, Close):
                    await flux.close()
                    return
                await flux.send_audio(item)
            except ValidationError as exc:
                # This chunk only (not a whole number of samples, say): the session goes on,
                # as in Pipecat's service, which yields an ErrorFrame for the chunk.
                await self.push_error(
                    f"Flux refused an audio chunk: {exc}",
                    exception=exc,
                    category=ErrorCategory.APPLICATION,  # the audio given, not the service
                )
            except FluxError as exc:
                logger.debug(f"{self}: stopped sending audio: {exc}")  # the iterator says why
                return

    def _flux_settings(
        self, s: DeepgramFluxSageMakerSTTSettings | None = None, *, warn: bool = True
    ) -> FluxSettings:
        """``s`` (default: the settings in force) as FluxClient settings; validates them."""
        s = self._settings if s is None else s
        hints: list[str] = []
        if s.language_hints:
            if s.model == _MULTILINGUAL_MODEL:
                hints = _language_codes(s.language_hints)
            elif warn:
                logger.warning(f"language_hints only supported on {_MULTILINGUAL_MODEL}; ignored")
        # Pipecat types its fields loosely (NotGiven, a None model): FluxSettings checks them.
        pipecat_fields: dict[str, Any] = {
            "model": s.model,
            "eot_threshold": s.eot_threshold,
            "eager_eot_threshold": s.eager_eot_threshold,
            "eot_timeout_ms": s.eot_timeout_ms,
            "keyterms": s.keyterm,
            "numerals": s.numerals,
            "profanity_filter": s.profanity_filter,
            "redact": s.redact,
        }
        return FluxSettings(
            **pipecat_fields,
            encoding=self._encoding,
            sample_rate=self.sample_rate,
            language_hints=hints,
            mip_opt_out=self._mip_opt_out,
            tags=self._tag,
            extra_params=dict(s.extra),
            allow_unknown_model=True,  # Pipecat passes any model name through
        )

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        if isinstance(exception, FluxServerError):
            if exception.code == "UNPARSABLE_CLIENT_MESSAGE":
                return ErrorCategory.INVALID_REQUEST
            return None
        for cls, category in _ERROR_CATEGORIES:
            if isinstance(exception, cls):
                return category
        return None

    # -- settings -----------------------------------------------------------------------------

    async def _update_settings(self, delta: STTSettings) -> dict[str, Any]:  # type: ignore[override]
        """Apply a settings delta: mid-stream where Flux allows it, else with a new session.

        Settings FluxClient would refuse are refused here, before anything is closed: an
        ``ErrorFrame`` says why, and the settings and the session stay as they were.
        """
        refusal = self._check_update(delta)
        if refusal is not None:
            await self._report_refused_settings(refusal)
            return {}
        changed: dict[str, Any] = await super()._update_settings(delta)
        if not changed:
            return changed
        updatable = changed.keys() & _UPDATABLE.keys()
        reconnect = bool(changed.keys() & (_CONNECTION_FIELDS | self._settings.extra.keys()))
        if updatable and not reconnect:
            reconnect = not await self._update_session(updatable, changed)
        if reconnect:
            await self._reconnect_when_idle()
        self._warn_unhandled_updated_settings(
            changed.keys() - _UPDATABLE.keys() - _CONNECTION_FIELDS - _LOCAL_FIELDS
            - self._settings.extra.keys()
        )  # fmt: skip
        return changed

    def _check_update(self, delta: STTSettings) -> FluxError | None:
        """Why FluxClient would refuse the settings after ``delta``, or None if it would not.

        The checks FluxClient makes when it is built (values, query string, what the bundle
        accepts), without I/O and without changing anything.
        """
        candidate = copy.deepcopy(self._settings)
        changed = candidate.apply_update(delta)  # type: ignore[arg-type]
        if not self._set_up or not changed.keys() - _NOT_SENT:
            return None
        try:
            # FluxSettings checks values and the query string's length as it is built.
            self._flux_settings(candidate, warn=False).check_capabilities(self._capabilities)
        except (ValidationError, CapabilityError) as exc:
            return exc
        return None

    async def _report_refused_settings(self, error: FluxError) -> None:
        """A settings update refused with nothing changed: the service goes on as it was."""
        await self.push_error(
            f"Flux settings refused, nothing was changed: {error}",
            exception=error,
            category=ErrorCategory.APPLICATION,  # the settings given, not the service's health
        )

    async def _update_session(self, fields: set[str], changed: dict[str, Any]) -> bool:
        """Apply ``fields`` to the live session; False if only a new session can.

        If the session refuses them, they go back to their values in ``changed`` (the ones in
        force) and the refusal is reported.
        """
        flux = self._flux
        if flux is None:
            return False
        changes: dict[str, Any] = {}
        for name in fields:
            value = getattr(self._settings, name)
            if name == "language_hints":
                if self._settings.model != _MULTILINGUAL_MODEL:
                    logger.warning(f"language_hints only supported on {_MULTILINGUAL_MODEL}")
                    continue
                # None clears the hints, as in Pipecat's service: Configure's [] says that.
                value = _language_codes(value or ())
            elif value is None:
                return False  # back to the server default: only the query string can say that
            changes[_UPDATABLE[name]] = value
        if not changes:
            return True
        try:
            with anyio.move_on_after(_UPDATE_WAIT) as waited:
                await flux.update_settings(**changes)
            if waited.cancelled_caught:
                logger.warning(
                    f"{self}: the session did not take the settings within {_UPDATE_WAIT} s "
                    "(a reconnect under way); a new session will take them"
                )
                return False
        except UsageError:
            return False  # the session closed or failed meanwhile
        except FluxError as exc:
            if (
                isinstance(exc, FluxTimeoutError)
                and flux.capabilities.configure
                and changes.keys() <= CONFIGURABLE_FIELDS
            ):
                # The Configure went unanswered (a stalled stream, or one replaced before it
                # answered): nothing refused the settings, so a new session opens with them.
                logger.warning(f"{self}: {exc}; a new session will take the settings")
                return False
            # Nothing changed in the session (Flux answered ConfigureFailure, or the endpoint
            # refused the new stream, say): a later session must not open with what was refused.
            for name in fields:
                setattr(self._settings, name, changed[name])
            if not isinstance(exc, ConfigureRejected):
                # A ConfigureFailure was reported as its event came, as Pipecat does.
                await self._report_refused_settings(exc)
        return True

    async def _reconnect_when_idle(self) -> None:
        # A new session mid-turn would cut the turn in two; wait for its end.
        if self._user_is_speaking:
            self._reconnect_after_turn = True
        else:
            await self._request_reconnect()

    async def _do_reconnect(self) -> None:
        """Start a new session with the current settings (Pipecat's reconnect hook)."""
        if not (self._set_up and self._accepting):
            return
        if self._session_running():
            # Closes after the queued audio; the loop reopens. One close is enough for changes
            # in a row: the session opened after it reads the settings in force then.
            if not self._reopen_pending:
                self._reopen_pending = True
                self._pending.put(CLOSE)
        else:
            self._start_session()

    def _record_keepalive_silence(self) -> None:
        """Count the silence the client sent on its own as usage, as Pipecat's watchdog does:
        Flux receives (and bills) it like the application's audio."""
        flux = self._flux
        if flux is None:
            return
        sent = flux.stats.silence_bytes_sent
        if sent > self._silence_recorded:
            self._record_stt_audio_usage(bytes(sent - self._silence_recorded))
            self._silence_recorded = sent

    def _record_stt_audio_usage(self, audio: bytes | bytearray) -> None:
        """Count ``audio``, in the session's encoding, toward the usage metrics (seconds).

        Pipecat's STTService takes every chunk for 16-bit PCM: a phone call's mu-law or A-law
        (one byte a sample) counted half the seconds Flux receives, linear32 twice. Audio with
        no fixed byte rate (Opus) is counted as Pipecat counts it.
        """
        rate = self._usage_byte_rate
        if rate is None:
            super()._record_stt_audio_usage(audio)
        else:
            self._stt_usage_pending_seconds += len(audio) / rate

    async def _handle_event(self, event: object) -> None:
        self._record_keepalive_silence()  # before an EndOfTurn reports the usage
        await super()._handle_event(event)
        if self._reconnect_after_turn and not self._user_is_speaking:
            self._reconnect_after_turn = False
            await self._request_reconnect()
