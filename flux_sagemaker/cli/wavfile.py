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

__all__ = ["WavAudio", "read_wav"]

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
class WavAudio:
    """The samples of a WAV file, ready to stream, and how Flux must be told about them."""

    encoding: str
    """The Flux ``encoding``: ``linear16``, ``linear32``, ``mulaw`` or ``alaw``."""
    sample_rate: int
    """Samples per second."""
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    """The raw samples (no header), little-endian."""
    description: str
    """What the file holds, in words (``mono 16-bit PCM, 16000 Hz``)."""
    converted: bool = False
    """The samples were widened from 8-bit unsigned PCM to linear16."""

    @property
    def sample_width(self) -> int:
        """Bytes per sample of :attr:`data`."""
        return {"linear16": 2, "linear32": 4}.get(self.encoding, 1)

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
    chunks = _chunks(blob, name)
    fmt_chunk = chunks.get(b"fmt ")
    if fmt_chunk is None or len(fmt_chunk) < 16 or b"data" not in chunks:
        raise ValidationError(f"{name} is a damaged WAV file (no fmt or data chunk). {_NEEDED}")
    fmt, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt_chunk)
    if fmt == _EXTENSIBLE and len(fmt_chunk) >= 26:
        fmt = struct.unpack_from("<H", fmt_chunk, 24)[0]  # the sub-format GUID's first field
    description = _describe(fmt, channels, bits, rate)
    encoding = _ENCODINGS.get((fmt, bits))
    if channels != 1 or encoding is None or rate not in SAMPLE_RATES:
        raise ValidationError(f"{name} has {description}: not supported. {_NEEDED}")
    data = chunks[b"data"]
    width = bits // 8
    data = data[: len(data) - len(data) % width]
    converted = fmt == _PCM and bits == 8
    if converted:
        widened = bytearray(2 * len(data))
        widened[1::2] = data.translate(_FLIP_SIGN)
        data = bytes(widened)
    return WavAudio(
        encoding=encoding,
        sample_rate=rate,
        data=data,
        description=description,
        converted=converted,
    )
