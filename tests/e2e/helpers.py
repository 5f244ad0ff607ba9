"""Helpers of the end-to-end suite: FluxClient over real sockets against MockFluxEndpoint.

Every test talks HTTP/2 on 127.0.0.1 (port 0) and runs on asyncio and trio. Timeouts are short
so a hang fails fast instead of stalling the suite, and the client's own keepalive silence is
off unless a test asks for it, so the audio the mock records is exactly the audio sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
from anyio.abc import SocketAttribute
from botocore.credentials import RefreshableCredentials

from flux_sagemaker import (
    FluxClient,
    FluxError,
    FluxEvent,
    KeepalivePolicy,
    RetryPolicy,
    Timeouts,
)
from flux_sagemaker.samples import Sample, load_sample
from flux_sagemaker.testing import MockFluxEndpoint
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

#: The bundled two-turn sample: 16 kHz mono linear16.
SAMPLE: Sample = load_sample()
#: Bytes per second of the sample's audio.
BYTES_PER_SECOND = SAMPLE.sample_rate * 2
#: Short limits: a test that hangs fails within seconds.
FAST_TIMEOUTS = Timeouts(connect=3.0, connected=3.0, close=3.0, write=5.0, ping_interval=None)
#: Fail at once, so error tests see the typed error.
NO_RETRY = RetryPolicy(enabled=False)
#: Quick retries for the tests that want one.
QUICK_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter="none", budget=5.0)
#: A generous per-test bound for fail_after (the suite's tests take well under a second each).
TEST_TIMEOUT = 20.0


def ms(milliseconds: float) -> int:
    """Bytes of sample audio in ``milliseconds`` (sample aligned)."""
    return int(SAMPLE.sample_rate * milliseconds / 1000) * 2


T = TypeVar("T")

EndpointFactory = Callable[..., MockFluxEndpoint]
"""The type of the ``endpoint`` fixture."""


def client_for(ep: MockFluxEndpoint, **kwargs: Any) -> FluxClient:
    """A FluxClient pointed at ``ep`` with the suite's short timeouts, no retries, no keepalive."""
    options: dict[str, Any] = {
        **ep.client_kwargs(),
        "timeouts": FAST_TIMEOUTS,
        "retry": NO_RETRY,
        "keepalive": KeepalivePolicy.disabled(),
    }
    options.update(kwargs)
    return FluxClient("flux-e2e", **options)


async def send_audio(
    flux: FluxClient,
    pcm: bytes,
    chunk_bytes: int = 640,
    *,
    realtime_factor: float | None = None,
) -> None:
    """Send ``pcm`` in chunks, as fast as allowed or paced at ``realtime_factor`` x real time.

    Pacing (e.g. ``realtime_factor=10``: ten times faster than real time) sleeps between chunks
    the way a microphone delivers them; it never waits for a condition.
    """
    for offset in range(0, len(pcm), chunk_bytes):
        chunk = pcm[offset : offset + chunk_bytes]
        await flux.send_audio(chunk)
        if realtime_factor is not None:
            await anyio.sleep(len(chunk) / BYTES_PER_SECOND / realtime_factor)


async def collect(flux: FluxClient, into: list[FluxEvent] | None = None) -> list[FluxEvent]:
    """Iterate ``flux`` to the end; events land in ``into`` as they arrive (also on error)."""
    events = into if into is not None else []
    async for event in flux:
        events.append(event)
    return events


async def run_session(
    flux: FluxClient,
    pcm: bytes,
    chunk_bytes: int = 640,
    *,
    realtime_factor: float | None = None,
    close: bool = True,
) -> list[FluxEvent]:
    """Send ``pcm`` (then close) in one task while collecting every event in this one."""
    events: list[FluxEvent] = []

    async def sender() -> None:
        await send_audio(flux, pcm, chunk_bytes, realtime_factor=realtime_factor)
        if close:
            await flux.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        await collect(flux, events)
    return events


async def events_until_error(flux: FluxClient, events: list[FluxEvent]) -> FluxError:
    """Collect events until the iterator raises; return the error (fail if it ends cleanly)."""
    try:
        await collect(flux, events)
    except FluxError as exc:
        return exc
    raise AssertionError(f"the iterator ended without an error after {len(events)} events")


def of_type(events: Sequence[object], *kinds: type[T]) -> list[T]:
    """The events that are instances of ``kinds``, in order."""
    return [e for e in events if isinstance(e, kinds)]


async def next_of(flux: FluxClient, kind: type[T]) -> T:
    """Iterate until an event of ``kind`` arrives and return it."""
    async for event in flux:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the session ended before a {kind.__name__} arrived")


def hold_the_second_request(ep: MockFluxEndpoint) -> tuple[anyio.Event, anyio.Event]:
    """Have ``ep`` hold its second request: the first event returned is set when it arrives,
    and the request is answered once the second is set."""
    handle = ep._server._handler
    held, release = anyio.Event(), anyio.Event()

    async def handler(stream: Any) -> None:
        if len(ep.streams) == 1:  # the endpoint records a request once it handles it
            held.set()
            await release.wait()
        await handle(stream)

    ep._server._handler = handler
    return held, release


def refreshable_credentials(
    issue: Callable[[int], tuple[str, str, datetime]],
) -> tuple[RefreshableCredentials, list[None]]:
    """botocore refreshable credentials whose source hands out ``issue(n)`` (access key, secret
    key, expiry) as its n-th set (0: the first); and the list that grows by one per set."""
    issued: list[None] = []

    def refresh() -> dict[str, str]:
        access, secret, expiry = issue(len(issued))
        issued.append(None)
        return {
            "access_key": access,
            "secret_key": secret,
            "token": "",
            "expiry_time": expiry.isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(
        metadata=refresh(), refresh_using=refresh, method="test"
    )
    return credentials, issued


def credentials_going_stale(valid: int) -> tuple[RefreshableCredentials, list[None]]:
    """Refreshable credentials (the mock's keys) whose source hands out ``valid`` sets that
    expire in 500 s, then only sets that expired a minute ago (botocore then raises a
    RuntimeError); and the list that grows by one per set handed out."""

    def issue(n: int) -> tuple[str, str, datetime]:
        expires_in = 500 if n < valid else -60
        return (
            DEFAULT_ACCESS_KEY,
            DEFAULT_SECRET_KEY,
            datetime.now(UTC) + timedelta(seconds=expires_in),
        )

    return refreshable_credentials(issue)


@attrs.define(eq=False)
class TunnelProxy:
    """A forward proxy on 127.0.0.1 that tunnels ``CONNECT`` requests, as squid does.

    ``requests`` holds the head of every ``CONNECT`` it got. With ``answer`` set it sends
    that instead of tunnelling and closes the connection. ``hosts`` resolves names as the
    proxy's own DNS would.
    """

    port: int = 0
    answer: bytes | None = None
    hosts: dict[str, str] = attrs.field(factory=dict)
    requests: list[bytes] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        """The proxy's ``http://`` URL."""
        return f"http://127.0.0.1:{self.port}"


async def _pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        while True:
            await sink.send(await source.receive())


@contextlib.asynccontextmanager
async def tunnel_proxy(
    answer: bytes | None = None, hosts: dict[str, str] | None = None
) -> AsyncIterator[TunnelProxy]:
    """Run a :class:`TunnelProxy` for the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    proxy = TunnelProxy(listener.extra(SocketAttribute.local_port), answer, hosts or {})

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            received = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while b"\r\n\r\n" not in received:
                    received += await client.receive()
                head, _, early = received.partition(b"\r\n\r\n")
                proxy.requests.append(head)
                if proxy.answer is not None:
                    await client.send(proxy.answer)
                    return
                host, _, port = head.split()[1].decode().rpartition(":")
                host = proxy.hosts.get(host, host.strip("[]"))
                async with await anyio.connect_tcp(host, int(port)) as upstream:
                    await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    if early:
                        await upstream.send(early)
                    async with anyio.create_task_group() as pipes:
                        # Either side ending ends the tunnel.
                        async def one_way(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream) -> None:
                            await _pipe(a, b)
                            pipes.cancel_scope.cancel()

                        pipes.start_soon(one_way, client, upstream)
                        pipes.start_soon(one_way, upstream, client)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
