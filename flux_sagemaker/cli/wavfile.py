"""WAV files for the CLI: the audio Flux can take, and a clear message for the audio it cannot.

The stdlib ``wave`` module reads only integer PCM (and, before Python 3.12, not even
``WAVE_FORMAT_EXTENSIBLE``), while Flux also takes mu-law and A-law. So this reads the RIFF
``fmt `` and ``data`` chunks itself: that also lets an error say exactly what a file holds.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Final

import attrs

from ..core.settings import SAMPLE_RATES
from ..errors import ValidationError

__all__ = [
    "MAX_PIPED_HEADER",
    "WavAudio",
    "WavFormat",
    "WavStreamParser",
    "parse_wav",
    "read_wav",
]

_PCM: Final = 0x0001
_FLOAT: Final = 0x0003
_ALAW: Final = 0x0006
_MULAW: Final = 0x0007
_EXTENSIBLE: Final = 0xFFFE
_FORMAT_NAMES: Final = {
    _PCM: "PCM",
    0x0002: "MS ADPCM",
    _FLOAT: "IEEE float",
    _ALAW: "A-law",
    _MULAW: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}
# (format, bits per sample) -> Flux encoding. 8-bit PCM is unsigned; it is widened to linear16.
_ENCODINGS: Final = {
    (_PCM, 8): "linear16",
    (_PCM, 16): "linear16",
    (_PCM, 32): "linear32",
    (_MULAW, 8): "mulaw",
    (_ALAW, 8): "alaw",
}
_NEEDED: Final = (
    "Flux needs a mono WAV with PCM samples of 8, 16 or 32 bits, or 8-bit mu-law or A-law, at "
    + ", ".join(str(rate) for rate in SAMPLE_RATES)
    + " Hz. Convert it with, for example: ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le OUT.wav"
)
# Unsigned 8-bit sample u becomes the high byte of the signed 16-bit sample (u - 128) << 8.
_FLIP_SIGN: Final = bytes(b ^ 0x80 for b in range(256))


@attrs.frozen
class WavFormat:
    """What a WAV file's samples are, and how Flux must be told about them."""

    encoding: str
    """The Flux ``encoding``: ``linear16``, ``linear32``, ``mulaw`` or ``alaw``."""
    sample_rate: int
    """Samples per second."""
    description: str
    """What the file holds, in words (``mono 16-bit PCM, 16000 Hz``)."""
    converted: bool = False
    """The samples are 8-bit unsigned PCM, widened to linear16 by :meth:`samples`."""

    @property
    def sample_width(self) -> int:
        """Bytes per sample sent (after any widening)."""
        return {"linear16": 2, "linear32": 4}.get(self.encoding, 1)

    @property
    def file_sample_width(self) -> int:
        """Bytes per sample in the file."""
        return 1 if self.converted else self.sample_width

    def samples(self, data: bytes) -> bytes:
        """The samples to send for the file's ``data`` (whole samples)."""
        if not self.converted:
            return data
        widened = bytearray(2 * len(data))
        widened[1::2] = data.translate(_FLIP_SIGN)
        return bytes(widened)


@attrs.frozen
class WavAudio(WavFormat):
    """The samples of a WAV file, ready to stream, and their format."""

    data: bytes = attrs.field(kw_only=True, repr=lambda data: f"<{len(data)} bytes>")
    """The samples to send (no header), little-endian."""

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.data) / (self.sample_width * self.sample_rate)


def _chunks(blob: bytes, name: str) -> dict[bytes, bytes]:
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValidationError(f"{name} is not a WAV file (no RIFF/WAVE header). {_NEEDED}")
    chunks: dict[bytes, bytes] = {}
    riff_end = 8 + struct.unpack_from("<I", blob, 4)[0]
    offset = 12
    while offset + 8 <= len(blob):
        chunk_id, size = struct.unpack_from("<4sI", blob, offset)
        if chunk_id == b"data" and size == 0 and riff_end <= offset + 8:
            # A writer that never went back to fill in the sizes (killed while recording, or
            # writing to a pipe) leaves 0 there, and a RIFF size that ends with this chunk:
            # the samples run to the end of the file (as ffmpeg reads it).
            size = len(blob) - offset - 8
        body = blob[offset + 8 : offset + 8 + size]  # a truncated data chunk keeps what is there
        chunks.setdefault(chunk_id, body)
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return chunks


def _describe(fmt: int, channels: int, bits: int, rate: int) -> str:
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}-channel")
    name = _FORMAT_NAMES.get(fmt, f"format 0x{fmt:04x}")
    return f"{layout} {bits}-bit {name}, {rate} Hz"


def _format(fmt_chunk: bytes | None, name: str) -> WavFormat:
    if fmt_chunk is None or len(fmt_chunk) < 16:
        raise ValidationError(f"{name} is a damaged WAV file (no fmt or data chunk). {_NEEDED}")
    fmt, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt_chunk)
    if fmt == _EXTENSIBLE and len(fmt_chunk) >= 26:
        fmt = struct.unpack_from("<H", fmt_chunk, 24)[0]  # the sub-format GUID's first field
    description = _describe(fmt, channels, bits, rate)
    encoding = _ENCODINGS.get((fmt, bits))
    if channels != 1 or encoding is None or rate not in SAMPLE_RATES:
        raise ValidationError(f"{name} has {description}: not supported. {_NEEDED}")
    return WavFormat(encoding, rate, description, converted=fmt == _PCM and bits == 8)


def read_wav(path: str | Path) -> WavAudio:
    """Read a WAV file that Flux can take as raw audio.

    Raises:
        ValidationError: The file cannot be read, is not a WAV file, or holds audio Flux does
            not take (the message says what it holds and what is needed).
    """
    name = str(path)
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {name}: {exc.strerror or exc}") from exc
    return parse_wav(blob, name)


def parse_wav(blob: bytes, name: str) -> WavAudio:
    """A whole WAV file's bytes, as :func:`read_wav` takes them (``name`` for messages).

    Raises:
        ValidationError: Not a WAV file, or audio Flux does not take.
    """
    chunks = _chunks(blob, name)
    fmt = _format(chunks.get(b"fmt ") if b"data" in chunks else None, name)
    data = chunks[b"data"]
    data = data[: len(data) - len(data) % fmt.file_sample_width]
    return WavAudio(
        fmt.encoding, fmt.sample_rate, fmt.description, fmt.converted, data=fmt.samples(data)
    )


#: Bytes of header (the chunks before ``data``) a piped WAV may have: more is not a WAV stream.
MAX_PIPED_HEADER = 1 << 20


class WavStreamParser:
    """A WAV file that arrives in pieces (from a pipe): its header, then its samples as they come.

    A writer to a pipe cannot go back to fill in the sizes, so a ``data`` size of 0 or
    0xFFFFFFFF means "until the end"; any other size ends the samples there. The ``fmt ``
    chunk must come before ``data``, as every writer puts it.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._header = bytearray()
        self._next_chunk = 12  # where the next chunk header starts in _header
        self._in_data = False
        self._remaining: int | None = None  # data bytes still to come; None: until the end
        self._partial = b""  # the start of a sample cut by a read
        self.format: WavFormat | None = None
        """The samples' format, once the header has been read."""

    @property
    def header_read(self) -> bool:
        """Whether the samples have begun (the format is known)."""
        return self._in_data

    @property
    def finished(self) -> bool:
        """Whether the ``data`` chunk has ended (nothing more to read)."""
        return self._remaining == 0

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the pipe; return the whole samples they complete (maybe none).

        Raises:
            ValidationError: Not a WAV stream, or audio Flux does not take.
        """
        if not self._in_data:
            self._header += data
            if not self._read_header():
                return b""
            data = bytes(self._header)
            self._header.clear()
        assert self.format is not None
        if self._remaining is not None:
            data = data[: self._remaining]
            self._remaining -= len(data)
        data = self._partial + data
        whole = len(data) - len(data) % self.format.file_sample_width
        self._partial = data[whole:]
        return self.format.samples(data[:whole])

    def end(self) -> None:
        """The pipe closed.

        Raises:
            ValidationError: It closed before the samples began.
        """
        if not self._in_data:
            if len(self._header) < 12:
                raise ValidationError(f"{self._name} is not a WAV file (no RIFF/WAVE header).")
            raise ValidationError(f"{self._name} ended inside its WAV header. {_NEEDED}")

    def _read_header(self) -> bool:
        """Parse what has come of the header; return whether the samples have begun."""
        header = self._header
        if len(header) >= 12 and (header[:4] != b"RIFF" or header[8:12] != b"WAVE"):
            raise ValidationError(
                f"{self._name} is not a WAV file (no RIFF/WAVE header). {_NEEDED}"
            )
        offset = self._next_chunk
        while len(header) >= offset + 8:
            chunk_id, size = struct.unpack_from("<4sI", header, offset)
            if chunk_id == b"data":
                if self.format is None:
                    raise ValidationError(
                        f"{self._name}: the WAV stream's data comes before its fmt chunk"
                    )
                self._in_data = True
                self._remaining = None if size in (0, 0xFFFFFFFF) else size
                del header[: offset + 8]
                return True
            end = offset + 8 + size + (size & 1)  # chunks are padded to an even size
            if end > MAX_PIPED_HEADER:
                raise ValidationError(f"{self._name}: no WAV data in its first 1 MiB. {_NEEDED}")
            if len(header) < end:
                return False
            if chunk_id == b"fmt ":
                self.format = _format(bytes(header[offset + 8 : offset + 8 + size]), self._name)
            offset = self._next_chunk = end
        return False
