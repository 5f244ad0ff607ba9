"""The bundled speech sample: present, small, readable, and saying what its transcript says."""

from __future__ import annotations

import json
import wave

from flux_sagemaker.samples import ENCODING, load_sample, sample_path
from flux_sagemaker.testing.vad import EnergyVad


def test_sample_is_small_mono_16k_wav() -> None:
    path = sample_path()
    assert path.is_file()
    assert path.stat().st_size < 200 * 1024
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.getcomptype() == "NONE"


def test_load_sample_returns_pcm_rate_and_turns() -> None:
    pcm, sample_rate, turns = load_sample()
    meta = json.loads(sample_path().with_name("booking.json").read_text("utf-8"))
    assert sample_rate == meta["sample_rate"] == 16000
    assert ENCODING == meta["encoding"] == "linear16"
    assert turns == tuple(meta["turns"])
    assert len(turns) == 2
    assert all(turn.split() for turn in turns)
    assert len(pcm) % 2 == 0
    assert 5.0 < len(pcm) / 2 / sample_rate < 7.0
    assert "bytes>" in repr(load_sample())  # the repr does not dump 190 KB of audio


def test_sample_layout_is_lead_speech_gap_speech_tail() -> None:
    pcm, sample_rate, turns = load_sample()
    # 0.3 s of leading digital silence.
    assert pcm[: int(0.3 * sample_rate) * 2] == bytes(int(0.3 * sample_rate) * 2)
    flags = [speech for speech, _ in EnergyVad("linear16", sample_rate).feed(pcm)]
    # Speech regions separated by silences of at least 0.5 s: one per turn.
    regions: list[tuple[int, int]] = []
    silent_run = 100
    for index, speech in enumerate(flags):
        if speech:
            if silent_run >= 25:  # 25 frames of 20 ms
                regions.append((index, index))
            regions[-1] = (regions[-1][0], index)
            silent_run = 0
        else:
            silent_run += 1
    assert len(regions) == len(turns)
    gap_seconds = (regions[1][0] - regions[0][1] - 1) * 0.02
    assert 0.9 <= gap_seconds <= 1.1
    tail_seconds = (len(flags) - regions[-1][1] - 1) * 0.02
    assert 1.2 <= tail_seconds <= 1.6
