"""Stream audio through a FluxClient, paced like a microphone or as fast as it goes.

One task sends 20 ms chunks (against a monotonic schedule when paced in real time) and records
when each chunk was handed to the client; the calling task iterates the events and renders
them. Recording the send times maps audio time onto the wall clock, which is how the
end-of-turn latency is measured: from the moment the turn's last spoken word had been sent to
the moment its ``EndOfTurn`` arrived.
"""

from __future__ import annotations

import bisect
import os
import select
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator
from typing import TextIO

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from ..client import FluxClient
from ..core.events import EndOfTurn
from ..errors import FluxError
from .render import CLEAR_LINE, EventTiming, Renderer
from .wavfile import WavFormat, WavStreamParser

__all__ = [
    "PipedWav",
    "Progress",
    "SendLog",
    "SessionResult",
    "file_chunks",
    "speech_end",
    "stream_audio",
]

#: Chunk length when paced in real time: a typical capture buffer.
REALTIME_CHUNK_S = 0.02
#: Chunk length with ``--fast``: fewer calls, still well under the client's 80 ms coalescing.
FAST_CHUNK_S = 0.08


@attrs.define(eq=False)
class SendLog:
    """When audio was handed to the client: maps audio seconds to monotonic wall-clock time.

    Audio seconds are on the session's timeline, the one Flux's times are on: the application's
    audio and the keepalive silence the client added while the source was quiet.
    """

    _audio_starts: list[float] = attrs.field(factory=list)
    _audio_ends: list[float] = attrs.field(factory=list)
    _walls: list[float] = attrs.field(factory=list)

    def record(self, audio_end: float, wall: float, *, duration: float = 0.0) -> None:
        """Audio from ``audio_end - duration`` to ``audio_end`` seconds was sent by ``wall``."""
        self._audio_starts.append(audio_end - duration)
        self._audio_ends.append(audio_end)
        self._walls.append(wall)

    def wall_time_of(self, audio_time: float) -> float | None:
        """When the audio at ``audio_time`` had been sent, or ``None`` if none was.

        A time in the client's silence (which only follows the application's audio) maps to
        the audio before it: speech that ends there was all in that audio.
        """
        if not self._walls:
            return None
        index = bisect.bisect_left(self._audio_ends, audio_time - 1e-9)
        if index == len(self._walls) or (
            index > 0 and audio_time < self._audio_starts[index] - 1e-9
        ):
            index -= 1
        return self._walls[index]


def speech_end(event: EndOfTurn) -> float:
    """Where the turn's speech ended, in audio seconds.

    The end of the last word when Flux gives word timings; otherwise ``audio_window_end``, the
    audio position at which Flux decided (which includes the trailing silence it waited for).
    """
    if event.words and event.words[-1].end is not None:
        return event.words[-1].end
    return event.audio_window_end


@attrs.define(eq=False)
class Progress:
    """A progress line on a terminal's stderr, redrawn at most every ``interval`` seconds."""

    out: TextIO
    total: float
    interval: float = 0.25
    _last: float = attrs.field(default=-1.0, init=False)

    def update(self, sent: float, now: float, *, force: bool = False) -> None:
        """``sent`` of ``total`` audio seconds have gone out."""
        if not force and now - self._last < self.interval:
            return
        self._last = now
        percent = 100 * sent / self.total if self.total else 100.0
        self.out.write(f"{CLEAR_LINE}sent {sent:.1f} / {self.total:.1f} s ({percent:.0f}%)")
        self.out.flush()

    def finish(self) -> None:
        """Erase the progress line."""
        self.out.write(CLEAR_LINE)
        self.out.flush()


@attrs.define
class SessionResult:
    """What a streamed session produced."""

    turns: list[str] = attrs.field(factory=list)
    """The final transcript of each turn, in order."""
    latencies: list[float] = attrs.field(factory=list)
    """End-of-turn latencies (real-time pacing only)."""
    audio_seconds: float = 0.0
    """Audio sent."""
    elapsed: float = 0.0
    """Seconds from the first audio sent to the end of the session."""


async def file_chunks(
    audio: bytes, *, sample_width: int, sample_rate: int, realtime: bool
) -> AsyncIterator[bytes]:
    """``audio`` in chunks: 20 ms each spoken in real time, like a microphone, or 80 ms chunks
    as fast as they are taken."""
    chunk_s = REALTIME_CHUNK_S if realtime else FAST_CHUNK_S
    step = max(sample_width, int(sample_rate * chunk_s) * sample_width)
    bytes_per_second = sample_width * sample_rate
    start = anyio.current_time()
    for offset in range(0, len(audio), step):
        end = min(len(audio), offset + step)
        if realtime:
            # A microphone delivers this chunk once its last sample has been spoken.
            due = start + end / bytes_per_second
            await anyio.sleep(max(0.0, due - anyio.current_time()))
        else:
            await anyio.lowlevel.checkpoint()
        yield audio[offset:end]


#: Bytes asked of a pipe per read: whatever has arrived, up to this.
PIPE_READ_BYTES = 64 * 1024
#: Seconds a read waits on an idle pipe before it looks whether it was abandoned (Ctrl-C).
PIPE_POLL_S = 0.1


class PipedWav:
    """A WAV stream read from a pipe's file descriptor (stdin's) as it arrives, in worker
    threads."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._parser = WavStreamParser(name)
        self._first = b""

    async def _read(self) -> bytes:
        # Abandoned on cancellation (Ctrl-C). A thread blocked in read() on an idle pipe cannot
        # be woken, and the interpreter joins anyio's asyncio worker threads at exit: the CLI
        # would hang until the producer wrote or closed. So the thread waits in short polls
        # and gives up once its read was abandoned.
        abandoned = threading.Event()
        try:
            return await anyio.to_thread.run_sync(
                self._read_when_ready, abandoned, abandon_on_cancel=True
            )
        finally:
            abandoned.set()

    def _read_when_ready(self, abandoned: threading.Event) -> bytes:
        while not abandoned.is_set():
            # Windows' select() takes sockets only: there the read blocks as before.
            if sys.platform == "win32" or select.select([self._fd], [], [], PIPE_POLL_S)[0]:
                return os.read(self._fd, PIPE_READ_BYTES)
        return b""

    async def read_format(self) -> WavFormat:
        """Read up to the start of the samples; return their format.

        Raises:
            ValidationError: Not a WAV stream, or audio Flux does not take.
        """
        parser = self._parser
        while not parser.header_read:
            data = await self._read()
            if not data:
                parser.end()
            self._first = parser.feed(data)
        assert parser.format is not None
        return parser.format

    async def chunks(self) -> AsyncIterator[bytes]:
        """The samples as they arrive, until the pipe closes or the data chunk ends."""
        if self._first:
            yield self._first
        parser = self._parser
        while not parser.finished:
            data = await self._read()
            if not data:
                return
            samples = parser.feed(data)
            if samples:
                yield samples


async def stream_audio(
    client: FluxClient,
    chunks: AsyncIterable[bytes],
    *,
    bytes_per_second: int,
    live: bool,
    renderer: Renderer,
    progress: Progress | None = None,
) -> SessionResult:
    """Send ``chunks`` through an open ``client`` as they come, close it, and render every event.

    ``live``: the chunks come at the speed they were spoken (a microphone, a paced file, a
    pipe), so end-of-turn latencies are measured.

    Raises:
        FluxError: The session failed (raised from the client's event iterator).
    """
    log = SendLog()
    result = SessionResult()
    start = anyio.current_time()

    async def send() -> None:
        sent = 0
        try:
            async for chunk in chunks:
                await client.send_audio(chunk)
                sent += len(chunk)
                now = anyio.current_time()
                # Flux's times count the silence the client added while the source was quiet (a
                # stalled pipe): all of it went out before this chunk.
                timeline = sent + client.stats.silence_bytes_sent
                log.record(timeline / bytes_per_second, now, duration=len(chunk) / bytes_per_second)
                if progress is not None:
                    progress.update(sent / bytes_per_second, now)
            if progress is not None:
                progress.update(sent / bytes_per_second, anyio.current_time(), force=True)
            await client.close()
        except FluxError:
            if not client.is_closed:
                raise
            # The session failed: the event iterator raises the reason.
        finally:
            result.audio_seconds = sent / bytes_per_second
            if progress is not None:
                progress.finish()

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        async for event in client:
            now = anyio.current_time()
            latency = None
            if isinstance(event, EndOfTurn):
                result.turns.append(event.transcript)
                sent_at = log.wall_time_of(speech_end(event))
                if live and sent_at is not None and not event.synthetic:
                    latency = max(0.0, now - sent_at)
                    result.latencies.append(latency)
            renderer.event(event, EventTiming(received=now - start, latency=latency))
    renderer.finish()
    result.elapsed = anyio.current_time() - start
    return result


def stderr_progress(total: float, *, minimum: float = 10.0) -> Progress | None:
    """A progress line for long files when stderr is a terminal that stdout does not share."""
    if total < minimum or not sys.stderr.isatty() or sys.stdout.isatty():
        return None
    return Progress(sys.stderr, total)
