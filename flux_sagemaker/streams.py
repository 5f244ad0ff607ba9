"""Opening one SageMaker bidirectional stream, up to Flux's ``Connected``.

The I/O half of a stream's start: freeze credentials (off the event loop when a refresh may hit
the network), sign the request with botocore, open the HTTP/2 stream from the pool, turn an
error response into its typed error, and read until Flux says ``Connected``. Everything after
that belongs to :class:`~flux_sagemaker.client.FluxClient`.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import attrs
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from .config import CredentialSource, ResolvedConfig
from .core.error_mapping import operation_error
from .core.events import ServerMessage
from .core.protocol import StreamEnded, StreamFailed, StreamProtocol
from .core.request import InvokeRequest
from .core.signing import EventSigner, RedactedHeaders, sign_request
from .errors import (
    ConnectError,
    ExpiredTokenError,
    FluxError,
    GoAway,
    StreamReset,
    TimeoutError,
    TransportError,
    ValidationError,
)
from .pool import ConnectionPool
from .transport import H2Stream, Timeouts

__all__ = ["UNPROCESSED_RETRIES", "LiveStream", "aclose_quietly", "open_stream"]

# A refused stream's body is read for its error message; SageMaker's are small JSON documents.
_MAX_ERROR_BODY = 64 * 1024
#: Times a request the server did not process is sent again before its error counts.
UNPROCESSED_RETRIES = 3


@attrs.define(eq=False)
class LiveStream:
    """One open stream of a session, past ``Connected``."""

    h2: H2Stream
    """The HTTP/2 stream."""
    proto: StreamProtocol
    """Its protocol state: signer, decoder, parser."""
    opened_at: float
    """``time.monotonic()`` at which ``Connected`` arrived."""
    credentials_expire_in: float | None
    """Seconds from ``opened_at`` until the signing credentials expire, or ``None``."""
    retired: bool = False
    """Replaced by a newer stream: it drains, and its events are dropped."""
    behind: bool = False
    """Its reader waits for room in the event queue: the events after the one it holds are
    not yet seen by the session's turn tracker."""
    answered: bool = False
    """Flux sent something past ``Connected`` on it."""
    switch_failures: int = 0
    """Planned switches away from it in a row that could not open the next stream."""
    switch_held_until: float = -math.inf
    """``time.monotonic()`` before which no planned switch away from it is tried again."""

    @property
    def request_id(self) -> str | None:
        """SageMaker's request id of this stream."""
        return self.proto.request_id


async def frozen_credentials(
    source: CredentialSource,
) -> tuple[ReadOnlyCredentials, Credentials]:
    """Credentials that cannot change halfway through a signature, and where they came from.

    Raises:
        ValidationError: botocore's chain found no credentials at all, or could not get them
            (an expired SSO login, a role that may not be assumed, a refresh that gave back
            expired ones, ...).
        ConnectError: the credentials' source (STS, SSO, instance metadata) was unreachable.
    """
    try:
        credentials = await source.get()
        if credentials is None:
            raise ValidationError(
                "no AWS credentials found: set AWS_PROFILE, run 'aws sso login', set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, use an instance or task role, "
                "or pass credentials explicitly"
            )
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            # A refresh can block on the network (STS, SSO, IMDS): keep it off the loop.
            frozen = await anyio.to_thread.run_sync(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
    except (BotoConnectionError, HTTPClientError) as exc:
        raise ConnectError(f"could not fetch AWS credentials: {exc}") from exc
    except (BotoCoreError, ClientError) as exc:
        raise ValidationError(f"could not get AWS credentials: {exc}") from exc
    except ValidationError:
        raise
    except Exception as exc:
        # botocore raises RuntimeError when a mandatory refresh hands back credentials that
        # are already expired, and a RefreshableCredentials' refresh function is anyone's code.
        raise ValidationError(f"could not get AWS credentials: {exc!r}") from exc
    assert isinstance(frozen, ReadOnlyCredentials)
    return frozen, credentials


def seconds_until_expiry(credentials: Credentials | None) -> float | None:
    """How long refreshable credentials stay valid, or ``None`` when they do not expire."""
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime):
        return None
    return (expiry - datetime.now(UTC)).total_seconds()


async def open_stream(
    pool: ConnectionPool,
    config: ResolvedConfig,
    request: InvokeRequest,
    timeouts: Timeouts,
) -> tuple[LiveStream, list[ServerMessage]]:
    """Open a stream and read until Flux says ``Connected``.

    A request the server provably did not process (a GOAWAY below its stream, or
    ``REFUSED_STREAM``: a server going away) is sent again at once, on another connection, up
    to :data:`UNPROCESSED_RETRIES` times: it is not a failure of the endpoint.

    Returns:
        The stream and the messages read so far (``Connected`` and anything before it).

    Raises:
        OperationError: SageMaker refused the request (status, error type, request id).
        TimeoutError: no response or no ``Connected`` within ``timeouts.connected``.
        FluxError: any other failure, already typed.
    """
    for attempt in range(UNPROCESSED_RETRIES + 1):
        try:
            return await _open_once(pool, config, request, timeouts)
        except (GoAway, StreamReset) as exc:
            if not exc.unprocessed or attempt == UNPROCESSED_RETRIES:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _open_once(
    pool: ConnectionPool,
    config: ResolvedConfig,
    request: InvokeRequest,
    timeouts: Timeouts,
) -> tuple[LiveStream, list[ServerMessage]]:
    frozen, credentials = await frozen_credentials(config.credentials)
    expires_in = seconds_until_expiry(credentials)
    signed = sign_request(request, frozen, config.region)
    signer = EventSigner(credentials=frozen, region=config.region, seed_signature=signed.signature)
    # Error trackers record a failed frame's locals by their repr, which for botocore's frozen
    # credentials shows the secret key; the signer's and the signed request's repr hide it, and
    # the pool's frames get the headers in a wrapper that hides the token and the signature.
    del frozen
    h2 = await pool.open_stream(
        config.endpoint,
        method=signed.method,
        authority=signed.authority,
        path=signed.path,
        headers=RedactedHeaders(signed.headers),
        ssl_context=config.ssl_context,
        timeouts=timeouts,
        proxy=config.proxy,
    )
    request_id: str | None = None
    try:
        with anyio.fail_after(timeouts.connected):
            status, headers = await h2.response()
            request_id = _header(headers, "x-amzn-requestid")
            if status != 200:
                error = operation_error(status, headers, await _read_body(h2, _MAX_ERROR_BODY))
                if isinstance(error, ExpiredTokenError) and not isinstance(
                    credentials, RefreshableCredentials
                ):
                    # Fixed credentials come back the same on every attempt: nothing to retry.
                    error.retryable = False
                raise error
            proto = StreamProtocol(signer, request_id=request_id)
            early: list[ServerMessage] = []
            while proto.flux_request_id is None:
                chunk = await h2.receive()
                for event in proto.receive_eof() if chunk is None else proto.receive_data(chunk):
                    if isinstance(event, StreamFailed):
                        raise event.error
                    if isinstance(event, StreamEnded):
                        raise TransportError(
                            "the server ended the stream before Flux said Connected",
                            request_id=request_id,
                        )
                    early.append(event)
    except FluxError:
        await aclose_quietly(h2, timeouts.close)
        raise
    except builtins.TimeoutError:
        # A connection that went silent (no FIN, no RST) looks like this until its PING
        # timeout: the next attempt opens a fresh one rather than waiting here again.
        h2.connection.stop_new_streams()
        await aclose_quietly(h2, timeouts.close)
        raise TimeoutError(
            f"Flux did not say Connected within {timeouts.connected} s", request_id=request_id
        ) from None
    except BaseException:
        await aclose_quietly(h2, timeouts.close)
        raise
    stream = LiveStream(
        h2=h2, proto=proto, opened_at=time.monotonic(), credentials_expire_in=expires_in
    )
    return stream, early


async def aclose_quietly(stream: H2Stream, grace: float) -> None:
    """Release a stream whatever state it is in, within ``grace`` seconds, even when cancelled."""
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(grace),
        contextlib.suppress(FluxError),
    ):
        await stream.aclose()


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


async def _read_body(stream: H2Stream, limit: int) -> bytes:
    body = bytearray()
    while len(body) < limit:
        chunk = await stream.receive()
        if chunk is None:
            break
        body += chunk
    return bytes(body[:limit])
