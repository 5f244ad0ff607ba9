"""MockFluxEndpoint: a SageMaker bidirectional-stream endpoint running a scripted Flux, in process.

A real HTTP/2 server (:mod:`.h2server`) that checks what SageMaker checks (:mod:`.verifier`:
path, headers, the request's SigV4, every event's chained signature and CRC; the query string
against Flux's parameter rules for the simulated bundle), plays Flux (:mod:`.engine`, clocked by
the audio it receives), injects faults (:mod:`.faults`) and records what each stream received.
This module accepts or refuses each request; :mod:`.session` serves the streams it accepts.
"""

from __future__ import annotations

import itertools
import ssl
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import attrs
import h2.events
from botocore.credentials import Credentials

from ..core.request import DEFAULT_INVOCATION_PATH
from ..core.settings import FluxSettings
from ..core.validators import check_number
from ..errors import UsageError, ValidationError
from ..h2core import DEFAULT_RECEIVE_WINDOW, MAX_WINDOW, header_fields
from .bundle import NEWEST, BundleProfile
from .certs import TestCA
from .engine import ENGINE_ENCODINGS, EngineParams, FluxEngine, ScriptedTurn
from .faults import Fault, RequestFailure
from .h2server import H2Server, ServerStream
from .session import StreamSession
from .session import payload_part as _payload_part  # noqa: F401 - benchmarks/codec.py uses it
from .verifier import RequestVerifier, VerificationFailure

__all__ = ["MockFluxEndpoint", "RecordedStream"]

#: The credentials a MockFluxEndpoint accepts unless told otherwise (AWS's documented example).
DEFAULT_ACCESS_KEY = "AKIDEXAMPLE"
DEFAULT_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # noqa: S105 - public example key


@attrs.define(eq=False)
class RecordedStream:
    """What one stream of the endpoint received and sent."""

    index: int
    """Order in which the endpoint accepted the stream (0 = first)."""
    headers: list[tuple[str, str]] = attrs.field(repr=False)
    """The request headers."""
    status: int = 0
    """The HTTP status answered."""
    settings: FluxSettings | None = None
    """The Flux parameters of the query string, when valid."""
    audio: bytearray = attrs.field(factory=bytearray, repr=lambda a: f"<{len(a)} bytes>")
    """Every audio byte received, in order."""
    audio_events: int = 0
    """BINARY payload parts received."""
    audio_event_sizes: list[int] = attrs.field(factory=list, repr=False)
    """The size of each BINARY payload part, in order."""
    texts: list[str] = attrs.field(factory=list)
    """Every control message received (a UTF8 payload part, or ``PARTIAL`` parts joined)."""
    inputs: list[str] = attrs.field(factory=list, repr=False)
    """The kind of every input event in arrival order: ``BINARY``, ``UTF8``, or ``END`` for the
    final empty signed envelope (to check what came before what)."""
    sent: list[dict[str, Any]] = attrs.field(factory=list, repr=False)
    """The Flux messages sent back."""
    input_ended: bool = False
    """The final empty signed envelope arrived."""
    error: str | None = None
    """Why the endpoint refused the request or broke off the stream."""
    fault: Fault | None = None
    """The fault that struck this stream, if any (the last one, if several did)."""

    @property
    def event_types(self) -> list[str]:
        """``type`` (and ``event`` for TurnInfo) of every message sent, for assertions."""
        return [
            m.get("event", m["type"]) if m["type"] == "TurnInfo" else m["type"] for m in self.sent
        ]


class MockFluxEndpoint:
    """A local SageMaker endpoint that plays Deepgram Flux; use it with ``async with``.

    Args:
        script: The transcripts of the turns to reveal, in order (a list of strings or
            :class:`~flux_sagemaker.testing.ScriptedTurn`).
        tls: Serve HTTPS with a per-run CA (needs ``trustme``); default plaintext HTTP/2.
        bundle: Which Flux bundle to simulate (what it accepts, how it closes).
        credentials: Accepted ``access key -> (secret key, session token or None)``.
        region: The region the request must be signed for.
        endpoint_name: Accept only this endpoint name (default: any).
        faults: In-stream faults to inject, each into the stream it names.
        script_scope: ``"endpoint"``: a stream opened after another one continues the script
            where the completed turns left it (for reconnect tests); ``"stream"``: every
            stream starts the script from the beginning (for concurrent sessions).
        max_stream_duration: End a stream with ``ModelStreamError``
            (``ModelInvocationTimeExceeded``) after this many seconds, like SageMaker's limit.
        receive_window: The HTTP/2 flow-control window each request body gets, in bytes; a
            small one makes the client wait for ``WINDOW_UPDATE`` (back-pressure tests).
        keep_streams: Keep the records (:attr:`streams`) of at most this many streams, the
            newest; ``None`` (tests) keeps every one. A record holds all of its stream's audio,
            so a long-running endpoint (``serve``) bounds its memory with this.
    """

    def __init__(
        self,
        *,
        script: Sequence[str | ScriptedTurn] = (),
        tls: bool = False,
        bundle: BundleProfile = NEWEST,
        credentials: Mapping[str, tuple[str, str | None]] | None = None,
        region: str = "us-east-1",
        endpoint_name: str | None = None,
        faults: Sequence[Fault] = (),
        script_scope: str = "endpoint",
        max_stream_duration: float | None = None,
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
        keep_streams: int | None = None,
    ) -> None:
        if script_scope not in ("endpoint", "stream"):
            raise ValidationError(
                f"script_scope must be 'endpoint' or 'stream', got {script_scope!r}"
            )
        if isinstance(script, str | ScriptedTurn):
            # A str is a sequence too: it would be played as one turn per character.
            raise ValidationError(
                f"script must be a list of turns (strings or ScriptedTurn), got a "
                f"{type(script).__name__}: write script=[{script!r}]"
            )
        self.script = tuple(ScriptedTurn(t) if isinstance(t, str) else t for t in script)
        for turn in self.script:
            if not isinstance(turn, ScriptedTurn):
                raise ValidationError(
                    f"script turns must be strings or ScriptedTurn, got {type(turn).__name__}"
                )
        # Checked here, not where they are used: tls="no" would be true, and a fault or
        # bundle of the wrong type would fail, or never strike, in the middle of a stream.
        if not isinstance(tls, bool):
            raise ValidationError(f"tls must be True or False, got {tls!r}")
        if not isinstance(bundle, BundleProfile):
            raise ValidationError(
                f"bundle must be a BundleProfile (see flux_sagemaker.testing), got {bundle!r}"
            )
        for fault in faults:
            _check_fault(fault)
        if not (isinstance(region, str) and region):
            raise ValidationError(f"region must be a non-empty string, got {region!r}")
        if max_stream_duration is not None:
            check_number("max_stream_duration", max_stream_duration, 0, above_low=True)
        # 0 would let the client send no audio at all; over 2**31 - 1 is not HTTP/2.
        check_number("receive_window", receive_window, 1, MAX_WINDOW, integer=True)
        if keep_streams is not None:
            check_number("keep_streams", keep_streams, 0, integer=True)
        self._keep_streams = keep_streams
        self.bundle = bundle
        self.region = region
        self.endpoint_name = endpoint_name
        self.script_scope = script_scope
        self.max_stream_duration = max_stream_duration
        self._credentials = dict(
            credentials
            if credentials is not None
            else {DEFAULT_ACCESS_KEY: (DEFAULT_SECRET_KEY, None)}
        )
        self._verifier = RequestVerifier(self._credentials, region=region)
        # Per stream index, the faults that have not struck yet.
        self._faults: dict[int, list[Fault]] = {}
        for fault in faults:
            self._faults.setdefault(fault.stream_index, []).append(fault)
        self._request_failures: deque[RequestFailure] = deque()
        self._goaway_requests = 0
        self._ca = TestCA() if tls else None
        self._server = H2Server(
            self._handle,
            ssl_context=self._ca.server_context if self._ca else None,
            receive_window=receive_window,
            admit=self._admit,
        )
        self._stream_counter = itertools.count()
        self._turns_done = 0
        self._entered = False
        self.streams: list[RecordedStream] = []
        """Every stream the endpoint accepted or refused, in order (the newest ``keep_streams``
        of them, when that is set)."""

    # -- configuration ------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Add an in-stream fault (it strikes the stream ``fault.stream_index``, even one
        already open, once that stream has received ``fault.after_audio_s`` of audio)."""
        _check_fault(fault)
        self._faults.setdefault(fault.stream_index, []).append(fault)

    def fail_requests(self, failure: RequestFailure, count: int = 1) -> None:
        """Answer the next ``count`` requests with ``failure`` instead of opening a stream."""
        if not isinstance(failure, RequestFailure):
            raise ValidationError(f"failure must be a RequestFailure, got {failure!r}")
        self._request_failures.extend([failure] * _check_count(count))

    def goaway_requests(self, count: int = 1) -> None:
        """Answer the next ``count`` requests with a GOAWAY that leaves them unprocessed.

        As a server going away between receiving a request and handling it: the GOAWAY's last
        stream id is below the request's, and the connection takes no new streams.
        """
        self._goaway_requests += _check_count(count)

    def rotate_credentials(
        self, access_key: str, secret_key: str, token: str | None = None
    ) -> None:
        """Accept only these credentials from now on (tests of credential refresh)."""
        self._credentials.clear()
        self._credentials[access_key] = (secret_key, token)

    # -- what clients need --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` or ``https://127.0.0.1:PORT``.

        Raises:
            UsageError: the endpoint was not entered yet (it listens from ``async with``).
        """
        self._check_listening()
        return self._server.url

    @property
    def port(self) -> int:
        """The listening port.

        Raises:
            UsageError: the endpoint was not entered yet (it listens from ``async with``).
        """
        self._check_listening()
        return self._server.port

    def _check_listening(self) -> None:
        # Port 0 until entered: a client pointed there would fail with a connection error.
        if not self._entered:
            raise UsageError(
                "the endpoint listens once entered: use its url and client_kwargs() inside "
                "`async with MockFluxEndpoint(...)`"
            )

    @property
    def ca_pem_path(self) -> str | None:
        """The per-run CA certificate as a PEM file (TLS only), e.g. for ``AWS_CA_BUNDLE``."""
        return str(self._ca.ca_pem_path) if self._ca else None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context that trusts the per-run CA (TLS only)."""
        return self._ca.client_context if self._ca else None

    @property
    def credentials(self) -> Credentials:
        """botocore credentials the endpoint accepts."""
        access_key, (secret, token) = next(iter(self._credentials.items()))
        return Credentials(access_key, secret, token)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that point a ``FluxClient`` at this endpoint."""
        return {
            "endpoint_url": self.url,
            "region": self.region,
            "credentials": self.credentials,
            "ssl_context": self.ssl_context,
        }

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far."""
        return self._server.stats.connections_accepted

    @property
    def handler_errors(self) -> list[Exception]:
        """Exceptions the mock's own request handling raised: bugs in the mock, not in the
        client (each reset its stream with ``INTERNAL_ERROR``, which a client retries). The
        ``flux_endpoint`` fixture fails a test that leaves any."""
        return list(self._server.handler_errors)

    def received_audio(self) -> list[bytes]:
        """The audio each stream received, in stream order."""
        return [bytes(s.audio) for s in self.streams]

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> MockFluxEndpoint:
        # Again while running, it would start a second server whose exit breaks anyio's task
        # groups; after it stopped, the TLS CA file is gone.
        if self._entered:
            raise UsageError("a MockFluxEndpoint can be entered only once: make a new one")
        self._entered = True
        await self._server.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._server.__aexit__(exc_type, exc, tb)
        finally:
            if self._ca is not None:
                self._ca.cleanup()

    # -- the handler --------------------------------------------------------------------------

    def _admit(self, stream_id: int, event: h2.events.RequestReceived) -> bool:
        """Whether to serve a request; False for those :meth:`goaway_requests` leaves unprocessed.

        Called by the connection's reader as requests arrive, so the GOAWAY goes out below the
        first of them whatever order their handlers would have run in.
        """
        if not self._goaway_requests:
            return True
        self._goaway_requests -= 1
        headers = [(k, v) for k, v in header_fields(event.headers) if not k.startswith(":")]
        record = RecordedStream(index=next(self._stream_counter), headers=headers)
        record.error = "GOAWAY before handling the request"
        self._record(record)
        return False

    async def _handle(self, stream: ServerStream) -> None:
        record = RecordedStream(index=next(self._stream_counter), headers=list(stream.headers))
        self._record(record)
        request_id = str(uuid.uuid4())
        try:
            verified = self._verifier.verify(
                stream.method, stream.path, [(":authority", stream.authority), *stream.headers]
            )
            self._check_endpoint_name(verified.endpoint_name)
            if self._request_failures:
                failure = self._request_failures.popleft()
                await self._refuse(stream, record, request_id, failure)
                return
            self._check_invocation_path(verified.invocation_path)
            settings = self._parse_settings(verified.query_string)
        except VerificationFailure as exc:
            await self._refuse(
                stream,
                record,
                request_id,
                RequestFailure(status=exc.status, error_type=exc.error_type, message=exc.message),
            )
            return
        except ValidationError as exc:
            # SageMaker does not pass on the container's reason: a generic 424.
            record.error = str(exc)
            await self._refuse(stream, record, request_id, RequestFailure.model_error())
            return
        record.settings = settings
        events = self._verifier.event_verifier(verified)
        script = self.script[self._turns_done :] if self.script_scope == "endpoint" else self.script
        engine = FluxEngine(params=_engine_params(settings), script=script, bundle=self.bundle)
        await stream.send_headers(
            200,
            [
                ("content-type", "application/vnd.amazon.eventstream"),
                ("x-amzn-requestid", request_id),
                # The variant asked for, if any, is the one SageMaker invoked.
                ("x-amzn-invoked-production-variant", verified.target_variant or "AllTraffic"),
            ],
        )
        record.status = 200
        await StreamSession(self, stream, record, events, engine).run()

    def _record(self, record: RecordedStream) -> None:
        """Add ``record`` to :attr:`streams`, dropping the oldest past ``keep_streams`` (a live
        stream's handler still holds its own)."""
        self.streams.append(record)
        if self._keep_streams is not None:
            excess = len(self.streams) - self._keep_streams
            if excess > 0:
                del self.streams[:excess]

    def _check_endpoint_name(self, name: str) -> None:
        if self.endpoint_name is not None and name != self.endpoint_name:
            # ValidationError is modelled with status 400, and that is what SageMaker answers.
            raise VerificationFailure(400, "ValidationError", f"Endpoint {name} not found.")

    def _check_invocation_path(self, path: str | None) -> None:
        # SageMaker opens the container's WebSocket at this path; Flux serves only v2/listen
        # (without the header, at "/"), and answers any other path 404: a generic 424.
        if path != DEFAULT_INVOCATION_PATH:
            raise ValidationError(f"the container has no route for the invocation path {path!r}")

    def _parse_settings(self, query_string: str | None) -> FluxSettings:
        if not query_string:
            raise ValidationError("the model query string is missing")
        settings = FluxSettings.from_query_string(query_string, allow_extra_params=False)
        rejected = self.bundle.rejected_params & set(_param_names(query_string))
        if rejected:
            raise ValidationError(f"unsupported_parameter: {', '.join(sorted(rejected))}")
        if settings.encoding not in ENGINE_ENCODINGS:
            raise ValidationError(f"the mock cannot take {settings.encoding or 'containers'}")
        if (
            settings.eot_threshold is not None
            and settings.eot_threshold > self.bundle.max_eot_threshold
        ):
            raise ValidationError("eot_threshold out of range for this bundle")
        if (
            settings.eot_timeout_ms is not None
            and settings.eot_timeout_ms > self.bundle.max_eot_timeout_ms
        ):
            raise ValidationError("eot_timeout_ms out of range for this bundle")
        return settings

    async def _refuse(
        self, stream: ServerStream, record: RecordedStream, request_id: str, failure: RequestFailure
    ) -> None:
        record.status = failure.status
        record.error = record.error or f"{failure.error_type}: {failure.message}"
        await stream.send_headers(
            failure.status,
            [
                ("content-type", "application/json"),
                ("x-amzn-errortype", f"{failure.error_type}:http://internal.amazon.com/coral/"),
                ("x-amzn-requestid", request_id),
            ],
        )
        await stream.send_data(failure.body(), end_stream=True)

    def _pending_faults(self, index: int) -> list[Fault]:
        """The faults still to strike stream ``index``; its session removes those that strike."""
        return self._faults.get(index, [])


def _param_names(query_string: str) -> list[str]:
    return [pair.partition("=")[0] for pair in query_string.split("&") if pair]


def _engine_params(settings: FluxSettings) -> EngineParams:
    params = EngineParams(
        model=settings.model,
        encoding=settings.encoding or "linear16",
        sample_rate=settings.sample_rate or 16000,
        eot_threshold=settings.eot_threshold if settings.eot_threshold is not None else 0.7,
        eager_eot_threshold=settings.eager_eot_threshold,
        eot_timeout_ms=settings.eot_timeout_ms if settings.eot_timeout_ms is not None else 5000,
        numerals=bool(settings.numerals),
    )
    # Set apart: mypy's attrs plugin cannot type the generic ``converter=tuple`` fields.
    lists: dict[str, Any] = {
        "keyterms": settings.keyterms,
        "language_hints": settings.language_hints,
    }
    return attrs.evolve(params, **lists)


def _check_count(count: object) -> int:
    # A negative count would make goaway_requests refuse every later request.
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValidationError(f"count must be an int >= 0, got {count!r}")
    return count


def _check_fault(fault: object) -> None:
    if not isinstance(fault, Fault):
        raise ValidationError(f"faults must be Fault instances, got {fault!r}")
