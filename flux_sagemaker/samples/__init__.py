"""A bundled speech sample for demos, tests and benchmarks: two short turns of synthetic speech.

``booking.wav`` is 6.1 s of 16 kHz mono linear16 audio spoken by espeak-ng: 0.3 s of silence,
"Hi, I'd like a table for two.", 1.0 s of silence, "Tomorrow at seven, please.", then 1.4 s of
silence. ``booking.json`` lists the turns. ``make_sample.sh`` (next to this file) regenerates
both with espeak-ng 1.51 and sox 14.4.2::

    espeak-ng -v en-us -s 175 -w turn.wav "<turn text>"
    sox -D turn.wav -r 16000 -c 1 -b 16 -e signed-integer turn16.wav \\
        silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse
    sox -D lead.wav turn1.wav gap.wav turn2.wav tail.wav booking.wav  # silences: sox -D -n
"""

from __future__ import annotations

import json
import wave
from importlib import resources
from pathlib import Path
from typing import NamedTuple

__all__ = ["ENCODING", "Sample", "load_sample", "sample_path"]

_WAV = "booking.wav"
_TRANSCRIPT = "booking.json"

#: The Flux ``encoding`` of the sample's PCM (with ``sample_rate`` from :class:`Sample`).
ENCODING = "linear16"


class Sample(NamedTuple):
    """A loaded sample; unpacks as ``pcm, sample_rate, turns``."""

    pcm: bytes
    """Raw little-endian linear16 samples, mono (no WAV header)."""
    sample_rate: int
    """Samples per second."""
    turns: tuple[str, ...]
    """The transcript of each spoken turn, in order."""

    def __repr__(self) -> str:
        pcm = f"<{len(self.pcm)} bytes>"
        return f"Sample(pcm={pcm}, sample_rate={self.sample_rate}, turns={self.turns!r})"


def sample_path() -> Path:
    """The path of the bundled WAV file."""
    return Path(str(resources.files(__name__).joinpath(_WAV)))


def load_sample() -> Sample:
    """Read the bundled WAV (mono linear16) with the stdlib ``wave`` module, and its turns."""
    with wave.open(str(sample_path()), "rb") as wav:
        sample_rate = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    meta = json.loads(resources.files(__name__).joinpath(_TRANSCRIPT).read_text("utf-8"))
    return Sample(pcm=pcm, sample_rate=sample_rate, turns=tuple(meta["turns"]))
