"""An energy voice-activity detector for the mock Flux engine: raw audio bytes -> speech flags.

Sans-I/O and clocked only by the audio it is given. Audio arrives in arbitrary chunks; the
detector cuts it into fixed frames (20 ms by default), decodes each frame just far enough to
compute its mean-square energy, and calls a frame speech when its RMS level is above a
threshold in dBFS. Decoding is cheap because it runs on every audio event of every stream of the
mock endpoint: linear PCM through a ``memoryview`` cast and ``math.sumprod``, G.711 through a
256-entry table of *squared* sample values (no per-sample decode at all).
"""

from __future__ import annotations

import array
import math
import operator
import sys
from collections.abc import Callable, Sequence

import attrs

from flux_sagemaker.errors import ValidationError

__all__ = [
    "ENCODINGS",
    "EnergyVad",
    "VadParams",
    "alaw_to_linear",
    "mulaw_to_linear",
]

_FULL_SCALE_16 = 32768.0
_FULL_SCALE_32 = 2147483648.0
_LITTLE_ENDIAN = sys.byteorder == "little"


def mulaw_to_linear(code: int) -> int:
    """Decode one G.711 mu-law byte to a signed 16-bit sample (ITU-T G.711, as in sox)."""
    code = ~code & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return -magnitude if code & 0x80 else magnitude


def alaw_to_linear(code: int) -> int:
    """Decode one G.711 A-law byte to a signed 16-bit sample (ITU-T G.711, as in sox)."""
    code ^= 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (
        (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    # In A-law a set sign bit means a positive sample.
    return magnitude if code & 0x80 else -magnitude


# Squared sample values, so a G.711 frame's energy is one sum over a table lookup.
_MULAW_SQUARES = tuple(mulaw_to_linear(i) ** 2 for i in range(256))
_ALAW_SQUARES = tuple(alaw_to_linear(i) ** 2 for i in range(256))

if sys.version_info >= (3, 12):
    _sumprod: Callable[[Sequence[int], Sequence[int]], int] = math.sumprod
else:  # pragma: no cover - Python 3.11

    def _sumprod(p: Sequence[int], q: Sequence[int]) -> int:
        return sum(map(operator.mul, p, q))


def _mean_square(samples: Sequence[int], full_scale: float) -> float:
    count = len(samples)
    return _sumprod(samples, samples) / (count * full_scale * full_scale) if count else 0.0


def _swapped(frame: memoryview, code: str) -> array.array[int]:
    # Big-endian hosts only: the wire format is little-endian.
    samples = array.array(code, frame.tobytes())
    samples.byteswap()
    return samples


def _linear16_energy(frame: memoryview) -> float:
    samples = frame.cast("h") if _LITTLE_ENDIAN else _swapped(frame, "h")
    return _mean_square(samples, _FULL_SCALE_16)


def _linear32_energy(frame: memoryview) -> float:
    samples = frame.cast("i") if _LITTLE_ENDIAN else _swapped(frame, "i")
    return _mean_square(samples, _FULL_SCALE_32)


def _g711_energy(squares: tuple[int, ...]) -> Callable[[memoryview], float]:
    lookup = squares.__getitem__

    def energy(frame: memoryview) -> float:
        count = len(frame)
        return sum(map(lookup, frame)) / (count * _FULL_SCALE_16 * _FULL_SCALE_16) if count else 0.0

    return energy


# encoding -> (bytes per sample, mean-square energy of a frame in [0, 1] of full scale)
_DECODERS: dict[str, tuple[int, Callable[[memoryview], float]]] = {
    "linear16": (2, _linear16_energy),
    "linear32": (4, _linear32_energy),
    "mulaw": (1, _g711_energy(_MULAW_SQUARES)),
    "alaw": (1, _g711_energy(_ALAW_SQUARES)),
}

#: The raw encodings the detector decodes (Flux's opus and ogg-opus are not decoded).
ENCODINGS = frozenset(_DECODERS)


@attrs.frozen
class VadParams:
    """Tuning of :class:`EnergyVad` and of the engine's turn timing built on it."""

    frame_ms: int = attrs.field(default=20)
    """Analysis frame length; the engine's clock ticks once per frame."""
    threshold_dbfs: float = -40.0
    """A frame whose RMS level is at or above this (dB relative to full scale) is speech."""
    start_speech_ms: int = 100
    """Speech needed (within one burst, see ``start_gap_ms``) before a turn starts."""
    start_gap_ms: int = 300
    """Silence that discards speech heard before a turn could start (a click, a cough)."""
    word_ms: int = 300
    """Speech heard per revealed word: scripted words appear in proportion to speech."""
    eot_ramp_ms: int = 600
    """Trailing silence after which ``end_of_turn_confidence`` would reach 1.0 (linear ramp).

    At the default, confidence reaches 0.7 (the default ``eot_threshold``) after 420 ms of
    silence, in line with Flux's ~260 ms p50 end-of-turn latency plus the silence it needs.
    """

    @frame_ms.validator
    def _check_frame_ms(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 5 <= value <= 100:
            raise ValidationError(f"frame_ms must be between 5 and 100, got {value}")


@attrs.define(eq=False)
class EnergyVad:
    """Cut audio into frames and flag each one as speech or silence.

    Args:
        encoding: ``linear16``, ``linear32`` (signed little-endian PCM), ``mulaw`` or ``alaw``.
        sample_rate: Samples per second (mono).
        params: Frame length and threshold.
    """

    encoding: str
    sample_rate: int
    params: VadParams = attrs.field(factory=VadParams)
    _remainder: bytes = attrs.field(default=b"", init=False, repr=False)
    _threshold: float = attrs.field(default=0.0, init=False, repr=False)
    _energy: Callable[[memoryview], float] = attrs.field(init=False, repr=False)
    frame_bytes: int = attrs.field(default=0, init=False)
    """Bytes in one full frame."""
    sample_width: int = attrs.field(default=0, init=False)
    """Bytes per sample."""

    def __attrs_post_init__(self) -> None:
        if self.encoding not in _DECODERS:
            raise ValidationError(
                f"encoding must be one of {sorted(_DECODERS)} for the mock engine, "
                f"got {self.encoding!r}"
            )
        if not 1000 <= self.sample_rate <= 192000:
            raise ValidationError(f"sample_rate must be 1000..192000, got {self.sample_rate}")
        self.sample_width, self._energy = _DECODERS[self.encoding]
        samples = max(1, self.sample_rate * self.params.frame_ms // 1000)
        self.frame_bytes = samples * self.sample_width
        self._threshold = 10.0 ** (self.params.threshold_dbfs / 10.0)

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet analysed (less than one frame)."""
        return len(self._remainder)

    def feed(self, data: bytes) -> list[tuple[bool, int]]:
        """Analyse ``data`` and return ``(is_speech, samples)`` for each complete frame."""
        buffer = self._remainder + data if self._remainder else bytes(data)
        size = self.frame_bytes
        usable = len(buffer) - len(buffer) % size
        self._remainder = buffer[usable:]
        view = memoryview(buffer)
        samples = size // self.sample_width
        threshold = self._threshold
        energy = self._energy
        return [
            (energy(view[offset : offset + size]) >= threshold, samples)
            for offset in range(0, usable, size)
        ]

    def flush(self) -> list[tuple[bool, int]]:
        """Analyse the buffered partial frame (whole samples only), as at the end of a stream."""
        tail = self._remainder
        self._remainder = b""
        usable = len(tail) - len(tail) % self.sample_width
        if not usable:
            return []
        speech = self._energy(memoryview(tail)[:usable]) >= self._threshold
        return [(speech, usable // self.sample_width)]
