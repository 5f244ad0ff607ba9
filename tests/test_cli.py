"""The flux-sagemaker CLI, run as a subprocess against the embedded and the served mock endpoint."""

from __future__ import annotations

import json
import os
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import wave
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker import (
    FluxClient,
    FluxEvent,
    KeepalivePolicy,
    Reconnected,
    StreamRolledOver,
    TransportError,
    ValidationError,
)
from flux_sagemaker.cli.main import build_parser, main
from flux_sagemaker.cli.render import EventTiming, event_record
from flux_sagemaker.cli.session import stream_audio
from flux_sagemaker.cli.wavfile import WavStreamParser, read_wav
from flux_sagemaker.core.events import EndOfTurn
from flux_sagemaker.core.settings import FluxSettings
from flux_sagemaker.samples import load_sample, sample_path
from flux_sagemaker.testing import MockFluxEndpoint
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

TURNS = list(load_sample().turns)
CLEAR_LINE = "\r\x1b[2K"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=DEFAULT_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=DEFAULT_SECRET_KEY,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flux_sagemaker", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else _env(),
        timeout=30,
        check=False,
    )


def interruptible(module: str, *args: str) -> list[str]:
    """``python -m module args`` with Ctrl-C (SIGINT) raising KeyboardInterrupt, as in a
    terminal, even where the tests run in a background job: that starts with SIGINT ignored,
    which its processes inherit, and the process would never see the test's Ctrl-C."""
    start = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "del sys.argv[0]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", start, module, *args]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (for usage and help, which exit before doing anything):
    exit status, stdout, stderr. A process of its own costs a second of imports per call."""
    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def final_transcripts(stdout: str) -> list[str]:
    """The transcripts of the EndOfTurn lines of the line-per-event output."""
    turns = [
        line.split("turn ", 1)[1].split("  ", 1)[1].rsplit("  trigger=", 1)[0]
        for line in stdout.splitlines()
        if " EndOfTurn " in line
    ]
    return [t.strip("'\"") for t in turns]


def run_in_pty(args: list[str], *, pty_stream: str = "stdout") -> tuple[int, str, str]:
    """Run the CLI with stdout (or stderr) on a pseudo-terminal; return (status, pty, other)."""
    master, slave = os.openpty()
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, pty_stream: slave}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_sagemaker", *args],
        stdin=subprocess.DEVNULL,
        env=_env(),
        **streams,
    )
    os.close(slave)
    captured = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO on Linux once the child closed the terminal
            break
        if not data:
            break
        captured += data
    os.close(master)
    other = proc.communicate(timeout=30)[1 if pty_stream == "stdout" else 0]
    return proc.returncode, captured.decode(), other.decode()


# -- WAV files ------------------------------------------------------------------------------


def write_pcm_wav(
    path: Path, frames: bytes, *, channels: int = 1, width: int = 2, rate: int = 16000
) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return path


def write_raw_wav(path: Path, fmt: int, bits: int, data: bytes, rate: int = 16000) -> Path:
    block = bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_read_wav_sample() -> None:
    audio = read_wav(sample_path())
    pcm, rate, _ = load_sample()
    assert (audio.encoding, audio.sample_rate, audio.data) == ("linear16", rate, pcm)
    assert audio.description == "mono 16-bit PCM, 16000 Hz"


def test_read_wav_mulaw(tmp_path: Path) -> None:
    audio = read_wav(write_raw_wav(tmp_path / "m.wav", 7, 8, b"\xff\x7f" * 400, rate=8000))
    assert (audio.encoding, audio.sample_rate, audio.data) == ("mulaw", 8000, b"\xff\x7f" * 400)
    assert audio.duration == pytest.approx(0.1)


@given(st.binary(max_size=64))
def test_read_wav_widens_8_bit(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        audio = read_wav(write_pcm_wav(Path(tmp) / "u8.wav", data, width=1))
    samples = struct.unpack(f"<{len(data)}h", audio.data)
    assert audio.encoding == "linear16"
    assert audio.converted
    assert samples == tuple((b - 128) * 256 for b in data)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: write_pcm_wav(p, b"\0" * 64, channels=2), "stereo 16-bit PCM, 16000 Hz"),
        (lambda p: write_pcm_wav(p, b"\0" * 64, rate=22050), "mono 16-bit PCM, 22050 Hz"),
        (lambda p: write_pcm_wav(p, b"\0" * 60, width=3), "mono 24-bit PCM, 16000 Hz"),
        (lambda p: write_raw_wav(p, 3, 32, b"\0" * 64), "mono 32-bit IEEE float, 16000 Hz"),
    ],
)
def test_read_wav_refuses(tmp_path: Path, make: Any, expected: str) -> None:
    with pytest.raises(ValidationError, match="not supported") as info:
        read_wav(make(tmp_path / "bad.wav"))
    assert expected in str(info.value)
    assert "mono" in str(info.value).split("Flux needs")[1]


def unfinished_wav(path: Path, pcm: bytes, *, riff_size: int = 36) -> Path:
    """A 16 kHz linear16 WAV whose writer never went back to fill in its sizes (killed while
    recording, or writing to a pipe): the data chunk says 0 bytes, the samples follow it."""
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    header = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data\0\0\0\0"
    path.write_bytes(b"RIFF" + struct.pack("<I", riff_size) + header + pcm)
    return path


@pytest.mark.parametrize("riff_size", [36, 0])
def test_read_wav_whose_sizes_were_never_written(tmp_path: Path, riff_size: int) -> None:
    pcm, _, _ = load_sample()
    audio = read_wav(unfinished_wav(tmp_path / "rec.wav", pcm, riff_size=riff_size))
    assert (audio.encoding, audio.sample_rate, audio.data) == ("linear16", 16000, pcm)


def test_read_wav_empty_data_chunk_before_another_chunk(tmp_path: Path) -> None:
    """A data chunk that is really empty, followed by a chunk the RIFF size covers."""
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data\0\0\0\0"
    body += b"LIST" + struct.pack("<I", 8) + b"INFOabcd"
    path = tmp_path / "empty.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert read_wav(path).data == b""


def test_transcribe_a_recording_whose_sizes_were_never_written(tmp_path: Path) -> None:
    pcm, _, _ = load_sample()
    path = unfinished_wav(tmp_path / "rec.wav", pcm)
    script = [arg for turn in TURNS for arg in ("--mock-script", turn)]
    result = run_cli("transcribe", str(path), "--mock", "--fast", *script)
    assert result.returncode == 0, result.stderr
    assert "mono 16-bit PCM, 16000 Hz, 6.1 s" in result.stderr
    assert final_transcripts(result.stdout) == TURNS


def wav_bytes(
    data: bytes,
    *,
    fmt: int = 1,
    bits: int = 16,
    data_size: int | None = None,
    before_data: bytes = b"",
    after_data: bytes = b"",
) -> bytes:
    """A mono 16 kHz WAV as bytes, with chunks of our choosing around its data."""
    block = bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, 16000, 16000 * block, block, bits)
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + before_data
    body += b"data" + struct.pack("<I", size) + data + after_data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def feed_in_pieces(parser: WavStreamParser, blob: bytes, cuts: list[int]) -> bytes:
    out = b""
    for start, end in zip([0, *cuts], [*cuts, len(blob)], strict=True):
        out += parser.feed(blob[start:end])
    return out


@given(
    data=st.binary(max_size=300).map(lambda b: b[: len(b) // 2 * 2]),
    cuts=st.lists(st.integers(0, 400), max_size=8).map(sorted),
    size_known=st.booleans(),
    eight_bit=st.booleans(),
)
def test_a_piped_wav_gives_the_files_samples_however_the_reads_cut_it(
    data: bytes, cuts: list[int], size_known: bool, eight_bit: bool
) -> None:
    """The same samples as the file read whole, for any cut of the bytes into reads; a
    `data` size the writer could not fill in (0 or 0xFFFFFFFF) runs to the end."""
    listing = b"LIST" + struct.pack("<I", 5) + b"INFO!" + b"\0"  # odd size: padded
    blob = wav_bytes(
        data,
        bits=8 if eight_bit else 16,
        data_size=None if size_known else 0xFFFFFFFF,
        before_data=listing,
        after_data=b"",
    )
    parser = WavStreamParser("stdin")
    samples = feed_in_pieces(parser, blob, [min(c, len(blob)) for c in cuts])
    assert parser.header_read
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.wav"
        path.write_bytes(blob)
        expected = read_wav(path)
    assert samples == expected.data
    assert parser.format is not None
    assert parser.format.encoding == expected.encoding == "linear16"


def test_a_piped_wav_ends_where_its_data_size_says() -> None:
    blob = wav_bytes(b"\1\0" * 10, data_size=8, after_data=b"LIST" + b"\0" * 4)
    parser = WavStreamParser("stdin")
    assert parser.feed(blob) == b"\1\0" * 4
    assert parser.finished
    unfinished = WavStreamParser("stdin")
    assert unfinished.feed(wav_bytes(b"\1\0" * 3, data_size=0)) == b"\1\0" * 3
    assert not unfinished.finished  # 0: until the pipe closes


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"OggS" + b"\0" * 40, "not a WAV file"),
        (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", "data comes before its fmt chunk"),
        (wav_bytes(b"", fmt=3, bits=32), "mono 32-bit IEEE float, 16000 Hz: not supported"),
        (
            wav_bytes(b"", before_data=b"LIST" + struct.pack("<I", 1 << 20)),
            "no WAV data in its first 1 MiB",
        ),
    ],
    ids=["ogg", "data-first", "float", "huge-header"],
)
def test_a_piped_stream_that_is_not_a_wav_flux_takes(blob: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WavStreamParser("stdin").feed(blob)


@pytest.mark.parametrize("blob", [b"", b"RIFF", wav_bytes(b"")[:30]], ids=["empty", "4", "30"])
def test_a_pipe_that_closes_inside_the_header(blob: bytes) -> None:
    parser = WavStreamParser("stdin")
    assert parser.feed(blob) == b""
    with pytest.raises(ValidationError, match="stdin"):
        parser.end()


def test_transcribe_stdin() -> None:
    script = [arg for turn in TURNS for arg in ("--mock-script", turn)]
    result = subprocess.run(
        [sys.executable, "-m", "flux_sagemaker", "transcribe", "-", "--mock", "--json", *script],
        input=sample_path().read_bytes(),
        capture_output=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ends = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["transcript"] for r in ends if r.get("event") == "EndOfTurn"] == TURNS
    assert "stdin: mono 16-bit PCM, 16000 Hz; streaming until it closes" in result.stderr.decode()
    assert "2 turn(s), 6.1 s of audio" in result.stderr.decode()


def test_transcribe_a_file_on_stdin_as_that_file() -> None:
    """`transcribe - < call.wav`: a file on stdin arrives all at once, not at the pace it was
    spoken, so it is taken as `transcribe call.wav` takes it: --fast, its length, and no
    end-of-turn latency measured on audio that was all sent at the start."""
    script = [arg for turn in TURNS for arg in ("--mock-script", turn)]
    command = [sys.executable, "-m", "flux_sagemaker", "transcribe", "-", "--mock", "--fast"]
    with sample_path().open("rb") as stdin:
        result = subprocess.run(
            [*command, *script],
            stdin=stdin,
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert final_transcripts(result.stdout) == TURNS
    assert "stdin: mono 16-bit PCM, 16000 Hz, 6.1 s" in result.stderr
    assert "2 turn(s), 6.1 s of audio" in result.stderr
    assert "latency" not in result.stderr


def test_transcribe_stdin_streams_as_the_audio_arrives() -> None:
    """The first turn is transcribed while the pipe is still open: nothing waits for its end."""
    pcm, _, _ = load_sample()
    first_turn = pcm[: len(pcm) // 2]  # the first turn and the pause after it
    script = [arg for turn in TURNS for arg in ("--mock-script", turn)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_sagemaker", "transcribe", "-", "--mock", "--json", *script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    hang_guard = threading.Timer(30, proc.kill)  # a CLI that waits for the pipe's end
    hang_guard.start()
    try:
        proc.stdin.write(wav_bytes(first_turn, data_size=0))
        proc.stdin.flush()
        records = []
        while not any(r.get("event") == "EndOfTurn" for r in records):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            records.append(json.loads(line))
        out, err = proc.communicate(pcm[len(first_turn) :], timeout=30)
    finally:
        hang_guard.cancel()
        proc.kill()
    assert proc.returncode == 0, err
    records += [json.loads(line) for line in out.decode().splitlines()]
    assert [r["transcript"] for r in records if r.get("event") == "EndOfTurn"] == TURNS
    ends = [r for r in records if r.get("event") == "EndOfTurn"]
    assert ends[0]["latency"] is not None  # measured: the audio came at the pipe's pace


def test_transcribe_stdin_ctrl_c_while_the_pipe_is_idle_exits_130() -> None:
    """Ctrl-C while the producer writes nothing (stalled, or not in the terminal's process
    group) ends the CLI at once: the read waiting on the idle pipe does not hold it."""
    pcm, _, _ = load_sample()
    script = [arg for turn in TURNS for arg in ("--mock-script", turn)]
    with subprocess.Popen(
        interruptible("flux_sagemaker", "transcribe", "-", "--mock", "--json", *script),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        hang_guard = threading.Timer(30, proc.kill)  # a CLI that never shows the turn
        hang_guard.start()
        try:
            proc.stdin.write(wav_bytes(pcm[: len(pcm) // 2], data_size=0))  # the first turn
            proc.stdin.flush()
            # Its EndOfTurn comes once all of it was sent: the CLI waits on the pipe by then.
            while b'"EndOfTurn"' not in (line := proc.stdout.readline()):
                assert line, proc.stderr.read()
            proc.send_signal(signal.SIGINT)
            status = proc.wait(timeout=20)  # the pipe stays open
        finally:
            hang_guard.cancel()
            proc.kill()
        stderr = proc.stderr.read().decode()
    assert status == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr


class _Turns:
    """A renderer that keeps the EndOfTurn events and their latencies, and signals each."""

    def __init__(self) -> None:
        self.ends: list[tuple[EndOfTurn, float | None]] = []
        self.ended = anyio.Event()

    def event(self, event: FluxEvent, timing: EventTiming) -> None:
        if isinstance(event, EndOfTurn):
            self.ends.append((event, timing.latency))
            self.ended.set()

    def finish(self) -> None:
        pass


@pytest.mark.anyio
async def test_latencies_count_the_silence_the_client_added_while_the_pipe_stalled() -> None:
    """A source that stalls in the middle of a turn: the client's keepalive silence ends the
    turn, and Flux's times count that silence. The turn still gets its latency (from the
    last audio the source sent), and so do the turns after it."""
    pcm, rate, turns = load_sample()
    half = len(pcm) // 4 * 2  # the first turn and its pause
    stall = half + (len(pcm) - half) // 4 * 2  # inside the second turn's speech
    renderer = _Turns()

    async def chunks() -> AsyncIterator[bytes]:
        yield pcm[:half]
        await renderer.ended.wait()
        renderer.ended = anyio.Event()
        yield pcm[half:stall]
        await renderer.ended.wait()  # the stalled turn ended on the client's silence
        yield pcm[stall:]

    with anyio.fail_after(30):
        async with MockFluxEndpoint(script=turns) as endpoint:
            keepalive = KeepalivePolicy(turn_silence_after=0.1)
            settings = FluxSettings(sample_rate=rate)
            kwargs = endpoint.client_kwargs()
            async with FluxClient("flux", settings=settings, keepalive=keepalive, **kwargs) as flux:
                result = await stream_audio(
                    flux, chunks(), bytes_per_second=2 * rate, live=True, renderer=renderer
                )
                assert flux.stats.silence_bytes_sent > 0
    assert len(renderer.ends) == 3
    assert [latency is not None for _, latency in renderer.ends] == [True, True, True]
    assert len(result.latencies) == 3


def test_transcribe_stdin_that_is_not_a_wav_exit_1() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flux_sagemaker", "transcribe", "-", "--mock"],
        input=b"ID3\x04" + b"\0" * 100,
        capture_output=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "stdin is not a WAV file" in result.stderr.decode()


def test_transcribe_unsupported_wav_exit_1(tmp_path: Path) -> None:
    path = write_pcm_wav(tmp_path / "stereo.wav", b"\0" * 6400, channels=2, rate=22050)
    result = run_cli("transcribe", str(path), "--mock", "--fast")
    assert result.returncode == 1
    assert "stereo 16-bit PCM, 22050 Hz: not supported" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_transcribe_a_wav_without_audio_exit_1_before_connecting(tmp_path: Path) -> None:
    path = write_pcm_wav(tmp_path / "empty.wav", b"")
    # An endpoint nobody serves: the error must come before any connection is tried.
    result = run_cli(
        "transcribe", str(path), "--endpoint", "x", "--endpoint-url", "http://127.0.0.1:9"
    )
    assert result.returncode == 1
    assert "empty.wav holds no audio: nothing to transcribe" in result.stderr
    assert "connect" not in result.stderr


def test_transcribe_not_a_wav(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"ID3 not audio")
    result = run_cli("transcribe", str(tmp_path / "x.wav"), "--mock", "--fast")
    assert result.returncode == 1
    assert "is not a WAV file" in result.stderr


# -- demo -----------------------------------------------------------------------------------


def test_demo_fast_piped_one_line_per_event() -> None:
    result = run_cli("demo", "--fast")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Connected" in lines[0]
    assert all(
        line.split()[1] in {"Connected", "Update", "StartOfTurn", "EndOfTurn"} for line in lines
    )
    assert final_transcripts(result.stdout) == TURNS
    assert "\r" not in result.stdout
    assert "2 turn(s)" in result.stderr


def test_demo_realtime_piped_reports_latency() -> None:
    result = run_cli("demo", "--eager")
    assert result.returncode == 0, result.stderr
    assert final_transcripts(result.stdout) == TURNS
    assert " EagerEndOfTurn " in result.stdout
    eot = [line for line in result.stdout.splitlines() if " EndOfTurn " in line]
    assert all("latency=" in line for line in eot)
    assert "end-of-turn latency after speech: mean" in result.stderr


def test_a_reader_that_goes_away_stops_the_demo_quietly() -> None:
    """`flux-sagemaker demo | head -1`: no traceback once the pipe's reader is gone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_sagemaker", "demo", "--fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    assert proc.stdout is not None
    assert "Connected" in proc.stdout.readline()
    proc.stdout.close()  # like head after its line
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err


def test_demo_tls() -> None:
    result = run_cli("demo", "--fast", "--tls")
    assert result.returncode == 0, result.stderr
    assert "https://127.0.0.1:" in result.stderr
    assert final_transcripts(result.stdout) == TURNS


def test_demo_live_display_on_a_terminal() -> None:
    status, screen, _ = run_in_pty(["demo", "--fast"])
    assert status == 0
    assert f"{CLEAR_LINE}> turn 0: Hi," in screen  # the open turn, redrawn in place
    for index, turn in enumerate(TURNS):
        assert f"{CLEAR_LINE}turn {index}: {turn}   [model]" in screen
    assert " Update " not in screen


def test_demo_ctrl_c_exits_130() -> None:
    proc = subprocess.Popen(
        interruptible("flux_sagemaker", "demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    assert proc.stdout is not None
    assert "Connected" in proc.stdout.readline()  # streaming in real time by now
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in stderr
    assert "Traceback" not in stderr


# -- transcribe -----------------------------------------------------------------------------


def test_transcribe_mock_human() -> None:
    script = [arg for turn in TURNS for arg in ("--mock-script", turn)]
    result = run_cli("transcribe", str(sample_path()), "--mock", "--fast", *script)
    assert result.returncode == 0, result.stderr
    assert final_transcripts(result.stdout) == TURNS
    assert "mono 16-bit PCM, 16000 Hz, 6.1 s" in result.stderr


def test_transcribe_mock_json(tmp_path: Path) -> None:
    pcm, _, _ = load_sample()
    path = write_pcm_wav(
        tmp_path / "u8.wav",
        bytes((s >> 8) + 128 for s in struct.unpack(f"<{len(pcm) // 2}h", pcm)),
        width=1,
    )
    result = run_cli(
        "transcribe",
        str(path),
        "--mock",
        "--fast",
        "--json",
        "--mock-script",
        TURNS[0],
        "--mock-script",
        TURNS[1],
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["type"] == "Connected"
    ends = [r for r in records if r.get("event") == "EndOfTurn"]
    assert [r["transcript"] for r in ends] == TURNS
    assert [r["turn_index"] for r in ends] == [0, 1]
    assert all(r["trigger"] == "model" and r["latency"] is None for r in ends)  # --fast
    assert all(r["words"][-1]["end"] <= r["audio_window_end"] for r in ends)
    assert [r["received"] for r in records] == sorted(r["received"] for r in records)
    assert "widened to linear16" in result.stderr


def test_transcribe_mock_json_multilingual_reports_the_languages_of_every_turn_info() -> None:
    """flux-general-multi: every TurnInfo carries languages and languages_hinted (flux.md 4.2);
    the JSON lines keep both, an empty list (no transcript yet) included."""
    result = run_cli(
        "transcribe",
        str(sample_path()),
        "--mock",
        "--fast",
        "--json",
        "--model",
        "flux-general-multi",
        "--language-hint",
        "es",
        "--language-hint",
        "en-GB",
        *[arg for turn in TURNS for arg in ("--mock-script", turn)],
    )
    assert result.returncode == 0, result.stderr
    turn_infos = [r for r in map(json.loads, result.stdout.splitlines()) if r["type"] == "TurnInfo"]
    assert all(r["languages_hinted"] == ["es", "en"] for r in turn_infos)
    assert {tuple(r["languages"]) for r in turn_infos} == {(), ("en",)}
    ends = [r for r in turn_infos if r["event"] == "EndOfTurn"]
    assert [r["languages"] for r in ends] == [["en"], ["en"]]


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_transcribe_a_transcript_stdout_cannot_encode(json_lines: bool) -> None:
    """stdout in a code page without the transcript's script (a Windows redirect): the text
    output escapes what it cannot encode, JSON lines are UTF-8."""
    turn = "予約をお願いします 😀"
    args = ["transcribe", str(sample_path()), "--mock", "--fast", "--mock-script", turn]
    result = subprocess.run(
        [sys.executable, "-m", "flux_sagemaker", *args, *(["--json"] if json_lines else [])],
        capture_output=True,
        env=_env(PYTHONIOENCODING="cp1252"),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    if json_lines:
        records = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
        ends = [r["transcript"] for r in records if r.get("event") == "EndOfTurn"]
        assert ends[0] == turn
    else:
        escaped = turn.encode("cp1252", "backslashreplace").decode("cp1252")
        assert escaped in result.stdout.decode("cp1252")


def test_transcribe_bad_setting_exit_1() -> None:
    result = run_cli("transcribe", str(sample_path()), "--mock", "--fast", "--eot-threshold", "2")
    assert result.returncode == 1
    assert "eot_threshold=2.0 is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_transcribe_progress_on_a_terminal_stderr(tmp_path: Path) -> None:
    pcm, _, _ = load_sample()
    path = write_pcm_wav(tmp_path / "long.wav", pcm * 2)
    status, screen, stdout = run_in_pty(
        ["transcribe", str(path), "--mock", "--fast"], pty_stream="stderr"
    )
    assert status == 0
    total = f"{len(pcm) * 2 / 32000:.1f}"
    assert f"{CLEAR_LINE}sent {total} / {total} s (100%)" in screen
    assert " EndOfTurn " in stdout
    assert "\r" not in stdout


# -- the served mock endpoint ----------------------------------------------------------------


def _serve(*args: str) -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        interruptible("flux_sagemaker.testing", "serve", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    info: dict[str, str] = {}
    while "CA file" not in info:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        key, _, value = line.partition(": ")
        info[key] = value.strip()
    try:
        yield info
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
        assert proc.returncode == 130


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    yield from _serve()


@pytest.fixture(scope="module")
def served_tls_old_bundle() -> Iterator[dict[str, str]]:
    yield from _serve("--tls", "--bundle", "flux-english-20260311")


def test_transcribe_served_endpoint_url(served: dict[str, str]) -> None:
    url = served["URL"]
    result = run_cli(
        "transcribe",
        str(sample_path()),
        "--endpoint",
        "flux",
        "--region",
        "us-east-1",
        "--endpoint-url",
        url,
        "--fast",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    ends = [json.loads(line) for line in result.stdout.splitlines() if '"EndOfTurn"' in line]
    assert [r["transcript"] for r in ends] == TURNS


def test_transcribe_served_tls(served_tls_old_bundle: dict[str, str]) -> None:
    info = served_tls_old_bundle
    assert info["URL"].startswith("https://")
    assert Path(info["CA file"]).is_file()
    args = [
        "transcribe",
        str(sample_path()),
        "--endpoint",
        "flux",
        "--region",
        "us-east-1",
        "--fast",
    ]
    result = run_cli(
        *args,
        "--endpoint-url",
        info["URL"],
        "--ca-bundle",
        info["CA file"],
        "--bundle",
        "flux-english-20260311",
    )
    assert result.returncode == 0, result.stderr
    assert final_transcripts(result.stdout) == TURNS
    untrusted = run_cli(*args, "--endpoint-url", info["URL"])
    assert untrusted.returncode == 1
    assert "Traceback" not in untrusted.stderr


def test_transcribe_missing_ca_bundle_exit_1(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    args = ["transcribe", str(sample_path()), "--endpoint", "flux", "--region", "us-east-1"]
    for result in (
        run_cli(*args, "--ca-bundle", missing),
        run_cli(*args, env=_env(AWS_CA_BUNDLE=missing)),
        run_cli("check", *args[2:], "--ca-bundle", missing),
    ):
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert f"cannot use the CA bundle {missing!r}" in result.stderr


def test_transcribe_served_wrong_credentials(served: dict[str, str]) -> None:
    env = _env(AWS_SECRET_ACCESS_KEY="not-the-secret")
    result = run_cli(
        "transcribe",
        str(sample_path()),
        "--endpoint",
        "flux",
        "--endpoint-url",
        served["URL"],
        "--region",
        "us-east-1",
        "--fast",
        env=env,
    )
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "403" in result.stderr


# -- check --------------------------------------------------------------------------------------

_ENDPOINTS: dict[str, tuple[int, dict[str, Any]]] = {
    "ready": (200, {"EndpointStatus": "InService"}),
    "creating": (200, {"EndpointStatus": "Creating"}),
    "missing": (
        400,
        {"__type": "ValidationException", "message": 'Could not find endpoint "missing".'},
    ),
    "denied": (
        400,
        {
            "__type": "AccessDeniedException",
            "message": "User: arn:aws:iam::1:user/x is not authorized",
        },
    ),
}


class _ControlPlane(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, dict[str, Any], dict[str, str]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        target = self.headers["X-Amz-Target"]
        self.requests.append((target, body, dict(self.headers)))
        if target == "SageMaker.DescribeEndpointConfig":
            status, answer = (
                200,
                {
                    "ProductionVariants": [
                        {"VariantName": "AllTraffic", "InstanceType": "ml.g6.2xlarge"}
                    ]
                },
            )
        else:
            status, answer = _ENDPOINTS[body["EndpointName"]]
            if status == 200:
                answer = {
                    **answer,
                    "EndpointName": body["EndpointName"],
                    "EndpointConfigName": "cfg",
                    "ProductionVariants": [
                        {"VariantName": "AllTraffic", "CurrentInstanceCount": 1}
                    ],
                }
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def control_plane() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ControlPlane)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def check(
    name: str, control: str, runtime: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "check",
        "--endpoint",
        name,
        "--region",
        "us-east-1",
        "--control-endpoint-url",
        control,
        "--endpoint-url",
        runtime,
        *extra,
        env=env,
    )


def test_check_ok(control_plane: str, served: dict[str, str]) -> None:
    _ControlPlane.requests.clear()
    result = check("ready", control_plane, served["URL"])
    assert result.returncode == 0, result.stderr
    assert "status: InService" in result.stdout
    assert "variant: AllTraffic: ml.g6.2xlarge x 1" in result.stdout
    assert "flux: Connected in " in result.stdout
    (target, body, headers), (config_target, config_body, _) = _ControlPlane.requests
    assert (target, body) == ("SageMaker.DescribeEndpoint", {"EndpointName": "ready"})
    assert (config_target, config_body) == (
        "SageMaker.DescribeEndpointConfig",
        {"EndpointConfigName": "cfg"},
    )
    assert headers["Content-Type"] == "application/x-amz-json-1.1"
    assert f"Credential={DEFAULT_ACCESS_KEY}/" in headers["Authorization"]
    assert "/us-east-1/sagemaker/aws4_request" in headers["Authorization"]


def test_check_trusts_aws_ca_bundle_for_the_control_plane(
    served: dict[str, str], tmp_path: Path
) -> None:
    """A control plane behind a private CA (a VPC endpoint through a proxy, say): AWS_CA_BUNDLE
    is the default of --ca-bundle for every call."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ControlPlane)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    try:
        control = f"https://127.0.0.1:{server.server_address[1]}/"
        result = check("ready", control, served["URL"], env=_env(AWS_CA_BUNDLE=str(bundle)))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert "status: InService" in result.stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "endpoint 'missing' not found in us-east-1: check --endpoint, and --region"),
        ("creating", "endpoint 'creating' is Creating"),
        ("denied", "access denied to sagemaker:DescribeEndpoint"),
    ],
)
def test_check_control_plane_failures(
    control_plane: str, served: dict[str, str], name: str, message: str
) -> None:
    result = check(name, control_plane, served["URL"])
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["api.sagemaker.example", "http://", "http://[::1/", "ftp://x/"])
def test_check_malformed_control_endpoint_url_exit_1(served: dict[str, str], url: str) -> None:
    result = check("ready", url, served["URL"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"control endpoint URL {url!r}" in result.stderr


def test_debug_output_shows_no_session_token(control_plane: str, served: dict[str, str]) -> None:
    """--debug is what users paste into bug reports: botocore's own debug log prints the
    signed canonical request, session token included, so it stays at INFO."""
    token = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN"
    result = check(
        "ready", control_plane, served["URL"], "--debug", env=_env(AWS_SESSION_TOKEN=token)
    )
    assert token not in result.stderr
    assert "INFO botocore.credentials" in result.stderr  # where the credentials came from


def test_check_walks_the_credential_chain_once(
    control_plane: str, served: dict[str, str], tmp_path: Path
) -> None:
    """A credential_process (or an MFA prompt of an assume-role profile) that asks the user
    is asked once: the Flux stream uses the session the control-plane calls used."""
    runs = tmp_path / "runs"
    process = tmp_path / "credentials.py"
    answer = {
        "Version": 1,
        "AccessKeyId": DEFAULT_ACCESS_KEY,
        "SecretAccessKey": DEFAULT_SECRET_KEY,
    }
    process.write_text(
        f"with open({str(runs)!r}, 'a') as f:\n    f.write('run\\n')\n"
        f"print({json.dumps(answer)!r})\n"
    )
    config = tmp_path / "config"
    config.write_text(
        f"[profile asks]\ncredential_process = {sys.executable} {process}\nregion = us-east-1\n"
    )
    env = _env(AWS_CONFIG_FILE=str(config))
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    result = check("ready", control_plane, served["URL"], "--profile", "asks", env=env)
    assert result.returncode == 0, result.stderr
    assert "flux: Connected in " in result.stdout
    assert runs.read_text().splitlines() == ["run"]


def test_check_no_credentials(control_plane: str, served: dict[str, str]) -> None:
    env = _env()
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    result = check("ready", control_plane, served["URL"], env=env)
    assert result.returncode == 1
    assert "no AWS credentials found" in result.stderr


def test_check_takes_the_region_from_aws_region(
    control_plane: str,
    served: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Like FluxClient, and as --help says: AWS_REGION, though botocore reads only
    # AWS_DEFAULT_REGION (which points elsewhere here). In process: no interpreter start-up.
    for name in os.environ:
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in _env(AWS_REGION="us-east-1", AWS_DEFAULT_REGION="eu-west-1").items():
        monkeypatch.setenv(name, value)
    args = ["check", "--endpoint", "ready", "--control-endpoint-url", control_plane]
    status = main([*args, "--endpoint-url", served["URL"]])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "endpoint: ready (us-east-1)" in out


@pytest.mark.parametrize("region", [[], ["--region", "us-east-1"]], ids=["no-region", "region"])
def test_check_unknown_profile_exit_1(
    region: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in os.environ:
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in _env().items():
        monkeypatch.setenv(name, value)
    status = main(["check", "--endpoint", "ready", "--profile", "nope", *region])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("flux-sagemaker check: error: ")
    assert "(nope) could not be found" in err
    assert "Traceback" not in err


def test_check_unreachable_control_plane(served: dict[str, str]) -> None:
    result = check("ready", "http://127.0.0.1:9/", served["URL"])
    assert result.returncode == 1
    assert "cannot reach 127.0.0.1" in result.stderr


def test_check_model_rejects_parameters(
    control_plane: str, served_tls_old_bundle: dict[str, str]
) -> None:
    info = served_tls_old_bundle
    result = check(
        "ready", control_plane, info["URL"], "--ca-bundle", info["CA file"], "--numerals"
    )
    assert result.returncode == 1
    assert "refused the Flux session (424)" in result.stderr
    assert "--numerals" in result.stderr


# -- usage ----------------------------------------------------------------------------------


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from flux_sagemaker import __version__

    assert run_cli("--version").stdout.strip() == f"flux-sagemaker {__version__}"
    for command in ([], ["demo"], ["transcribe"], ["check"]):
        status, out, _ = run_main(capsys, *command, "--help")
        assert status == 0
        assert "usage: flux-sagemaker" in out


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["transcribe"],
        ["check"],
        ["demo", "--nope"],
        ["transcribe", "x.wav", "--mock", "--fast", "--realtime"],
        ["transcribe", "x.wav"],  # where to: --endpoint NAME or --mock
        ["transcribe", "x.wav", "--endpoint", "flux", "--mock"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(capsys, *args)
    assert status == 2
    assert "usage:" in err


def test_transcribe_paces_in_real_time_unless_fast() -> None:
    parse = build_parser().parse_args
    assert parse(["transcribe", "x.wav", "--mock"]).fast is False
    assert parse(["transcribe", "x.wav", "--endpoint", "flux", "--realtime"]).fast is False
    assert parse(["transcribe", "x.wav", "--mock", "--fast"]).fast is True


def test_mock_with_endpoint_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(
        capsys, "transcribe", "x.wav", "--mock", "--endpoint-url", "http://127.0.0.1:1"
    )
    assert status == 2
    assert "exclude each other" in err


def test_json_records_of_stream_changes_say_what_was_replayed_and_dropped() -> None:
    timing = EventTiming(received=1.5)
    reconnected = Reconnected(
        reason="the server reset the stream",
        error=TransportError("reset"),
        replayed_audio_s=1.25,
        dropped_audio_bytes=960,
    )
    rolled = StreamRolledOver(reason="credentials expire", dropped_audio_s=0.5)
    assert event_record(reconnected, timing) == {
        "type": "Reconnected",
        "reason": "the server reset the stream",
        "replayed_audio_s": 1.25,
        "dropped_audio_s": 0.0,
        "dropped_audio_bytes": 960,
        "received": 1.5,
    }
    assert event_record(rolled, timing)["type"] == "StreamRolledOver"
    assert event_record(rolled, timing)["dropped_audio_s"] == 0.5
