"""AudioFormat and AudioCoalescer."""

from __future__ import annotations

import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker import errors
from flux_sagemaker.core.audio import (
    MAX_AUDIO_EVENT_BYTES,
    MAX_EVENT_FACTOR,
    AudioCoalescer,
    AudioFormat,
)
from flux_sagemaker.core.settings import FluxSettings

PCM16 = AudioFormat("linear16", 16000)
MULAW8K = AudioFormat("mulaw", 8000)


@pytest.mark.parametrize(
    ("encoding", "rate", "width", "bps"),
    [
        ("linear16", 16000, 2, 32000),
        ("linear32", 48000, 4, 192000),
        ("mulaw", 8000, 1, 8000),
        ("alaw", 8000, 1, 8000),
        ("opus", 48000, None, None),
        ("ogg-opus", 48000, None, None),
        (None, None, None, None),
        ("linear16", None, 2, None),
    ],
)
def test_format_sizes(
    encoding: str | None, rate: int | None, width: int | None, bps: int | None
) -> None:
    fmt = AudioFormat(encoding, rate)
    assert fmt.sample_width == width
    assert fmt.bytes_per_second == bps


def test_from_settings() -> None:
    assert AudioFormat.from_settings(FluxSettings()) == AudioFormat("linear16", 16000)
    settings = FluxSettings(encoding="mulaw", sample_rate=8000)
    assert AudioFormat.from_settings(settings) == MULAW8K
    container = FluxSettings(encoding=None, sample_rate=None)
    assert AudioFormat.from_settings(container) == AudioFormat(None, None)


@pytest.mark.parametrize(
    ("fmt", "byte"),
    [
        (PCM16, 0x00),
        (AudioFormat("linear32", 16000), 0x00),
        (MULAW8K, 0xFF),
        (AudioFormat("alaw", 8000), 0xD5),
    ],
)
def test_silence(fmt: AudioFormat, byte: int) -> None:
    data = fmt.silence(0.08)
    assert fmt.bytes_per_second is not None
    assert len(data) == round(0.08 * fmt.bytes_per_second)
    assert set(data) == {byte}
    assert fmt.silence(0) == b""


def test_silence_whole_samples() -> None:
    # 0.3 s is 9599.999... bytes in floating point; it must still be 9600.
    assert len(PCM16.silence(0.3)) == 9600
    # 1 ms at 44.1 kHz is 44.1 samples: rounded down to 44 whole samples.
    assert len(AudioFormat("linear16", 44100).silence(0.001)) == 88
    assert PCM16.silence(0.00001) == b""


@pytest.mark.parametrize("fmt", [AudioFormat("opus", 48000), AudioFormat(None, None)])
def test_silence_needs_raw_audio(fmt: AudioFormat) -> None:
    with pytest.raises(errors.ValidationError, match="needs raw PCM"):
        fmt.silence(0.5)
    with pytest.raises(errors.ValidationError, match="duration"):
        fmt.duration(100)


def test_duration_and_offsets() -> None:
    assert PCM16.duration(2560) == 0.08
    assert MULAW8K.duration(640) == 0.08
    assert PCM16.byte_offset(1.3) == 41600
    assert PCM16.byte_offset(0.47999996) == 15358  # floored to a whole sample
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(errors.ValidationError, match="seconds"):
            PCM16.silence(bad)
    with pytest.raises(errors.ValidationError, match="n_bytes"):
        PCM16.duration(-1)


def test_byte_offset_of_a_time_too_large_for_bytes() -> None:
    # Finite seconds (an audio_window_end from the server, say) whose byte count overflows.
    with pytest.raises(errors.ValidationError, match="too large"):
        PCM16.byte_offset(1e306)


def test_coalescer_groups_small_frames() -> None:
    co = AudioCoalescer(PCM16)  # 80 ms = 2560 bytes
    assert co.target_bytes == 2560
    frame = bytes(range(256)) * 2 + bytes(128)  # 640 bytes = 20 ms
    assert co.push(frame) == []
    assert co.push(frame) == []
    assert co.push(frame) == []
    assert co.pending_bytes == 1920
    events = co.push(frame)
    assert events == [frame * 4]
    assert co.pending_bytes == 0
    assert co.flush() is None


def test_coalescer_full_event_is_zero_copy() -> None:
    co = AudioCoalescer(PCM16)
    chunk = b"\x01\x02" * 1280
    (event,) = co.push(chunk)
    assert event is chunk
    big = b"\x03\x04" * (1280 * MAX_EVENT_FACTOR)
    (event,) = co.push(big)
    assert event is big


def test_coalescer_splits_large_input() -> None:
    co = AudioCoalescer(PCM16)
    data = bytes(i % 251 for i in range(2560 * 5 + 100))
    events = co.push(data)
    assert [len(e) for e in events] == [2560] * 5
    assert co.pending_bytes == 100
    assert b"".join(events) + (co.flush() or b"") == data


def test_coalescer_splits_buffered_overflow() -> None:
    co = AudioCoalescer(PCM16)
    head = b"\x11\x11" * 100
    assert co.push(head) == []
    tail = bytes(i % 7 for i in range(2560 * 4))
    events = co.push(tail)
    assert [len(e) for e in events] == [2560] * 4
    assert co.pending_bytes == 200
    assert b"".join(events) + (co.flush() or b"") == head + tail


def test_coalescer_copies_mutable_buffers() -> None:
    co = AudioCoalescer(PCM16)
    buf = bytearray(b"\x05\x00" * 1280)
    (event,) = co.push(buf)
    buf[:2] = b"\xff\xff"
    assert event[:2] == b"\x05\x00"
    small = bytearray(b"\x06\x00" * 10)
    co.push(small)
    small[:] = bytes(20)
    assert co.flush() == b"\x06\x00" * 10


def test_coalescer_accepts_typed_memoryview() -> None:
    co = AudioCoalescer(PCM16, target_ms=0)
    samples = array.array("h", [1, -1, 2])
    (event,) = co.push(memoryview(samples))
    assert event == samples.tobytes()
    # A non-contiguous view (every other byte) is copied to contiguous bytes.
    strided = memoryview(bytes(range(8)))[::2]
    assert AudioCoalescer(MULAW8K, target_ms=0).push(strided) == [bytes([0, 2, 4, 6])]


def test_pass_through() -> None:
    co = AudioCoalescer(PCM16, target_ms=0)
    assert co.target_bytes == 0
    assert co.push(b"\x00\x01") == [b"\x00\x01"]
    assert co.push(bytearray(b"\x00\x01" * 5000)) == [b"\x00\x01" * 5000]
    assert co.push(b"") == []
    assert co.flush() is None
    opus = AudioCoalescer(AudioFormat("opus", 48000))
    packet = b"\x78\x01\x02"  # odd sizes are fine: opus has no sample width
    assert opus.push(packet) == [packet]
    assert opus.pending_bytes == 0


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_push_larger_than_an_event_is_cut_into_aligned_events(kind: type) -> None:
    # One event per push (no coalescing), but no event past the event-stream limit: the
    # encoder would refuse it after the client had counted the audio as accepted.
    fmt = AudioFormat("linear32", 16000)
    audio = bytes(range(256)) * ((2 * MAX_AUDIO_EVENT_BYTES) // 256 + 8)
    events = AudioCoalescer(fmt, target_ms=0).push(kind(audio))
    assert b"".join(events) == audio
    assert len(events) == 3
    assert all(len(e) <= MAX_AUDIO_EVENT_BYTES and len(e) % 4 == 0 for e in events)


def test_an_opus_push_larger_than_an_event_is_refused() -> None:
    opus = AudioCoalescer(AudioFormat("opus", 48000))
    with pytest.raises(errors.ValidationError, match="cannot be cut; send smaller chunks"):
        opus.push(bytes(MAX_AUDIO_EVENT_BYTES + 1))
    assert opus.push(bytes(MAX_AUDIO_EVENT_BYTES)) == [bytes(MAX_AUDIO_EVENT_BYTES)]


def test_validation() -> None:
    co = AudioCoalescer(PCM16)
    with pytest.raises(errors.ValidationError, match="3 bytes is not a whole number of 2-byte"):
        co.push(b"abc")
    with pytest.raises(errors.ValidationError, match="str"):
        co.push("audio")  # type: ignore[arg-type]
    assert co.pending_bytes == 0
    for bad in (-1, 10_001, True, "80", float("nan")):
        with pytest.raises(errors.ValidationError, match="target_ms"):
            AudioCoalescer(PCM16, target_ms=bad)  # type: ignore[arg-type]


def test_tiny_target_is_one_sample() -> None:
    co = AudioCoalescer(AudioFormat("linear32", 8000), target_ms=0.01)
    assert co.target_bytes == 4


FORMATS = st.sampled_from(
    [PCM16, MULAW8K, AudioFormat("linear32", 8000), AudioFormat("alaw", 24000)]
)


@given(
    fmt=FORMATS,
    target_ms=st.sampled_from([0, 1, 10, 20, 80, 100]),
    sizes=st.lists(st.integers(0, 2000), max_size=40),
    flush_points=st.sets(st.integers(0, 40)),
)
def test_coalescer_properties(
    fmt: AudioFormat, target_ms: int, sizes: list[int], flush_points: set[int]
) -> None:
    co = AudioCoalescer(fmt, target_ms=target_ms)
    width = fmt.sample_width
    assert width is not None
    target = co.target_bytes
    pushed = bytearray()
    emitted: list[bytes] = []
    counter = 0
    for i, n in enumerate(sizes):
        chunk = bytes((counter + j) % 256 for j in range(n * width))
        counter += n * width
        pushed += chunk
        events = co.push(chunk)
        for event in events:
            assert len(event) % width == 0
            if target:
                assert target <= len(event) <= MAX_EVENT_FACTOR * target
            else:
                assert len(event) > 0
        emitted += events
        if target:
            assert co.pending_bytes < target
        assert co.pending_bytes % width == 0
        if i in flush_points:
            rest = co.flush()
            if rest is not None:
                assert 0 < len(rest) < target
                assert len(rest) % width == 0
                emitted.append(rest)
    rest = co.flush()
    if rest is not None:
        emitted.append(rest)
    assert co.pending_bytes == 0
    assert b"".join(emitted) == bytes(pushed)
