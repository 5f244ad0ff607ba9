"""The mock endpoint's Flux turn engine: turns from real audio, control messages, guarantees."""

from __future__ import annotations

import array
import bisect
import itertools
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_sagemaker.errors import LocalProtocolError, ValidationError
from flux_sagemaker.samples import load_sample
from flux_sagemaker.testing.bundle import FLUX_ENGLISH_20260311, FLUX_MULTI_20260417, NEWEST
from flux_sagemaker.testing.engine import (
    PLACEHOLDER_TRANSCRIPT,
    BundleProfile,
    EngineParams,
    FluxEngine,
    ScriptedTurn,
)
from flux_sagemaker.testing.vad import EnergyVad, alaw_to_linear, mulaw_to_linear

Message = dict[str, Any]
RID = "11111111-2222-4333-8444-555555555555"
CLOSE = '{"type":"CloseStream"}'
FORCE = '{"type":"ForceEndTurn"}'


# -- audio helpers -------------------------------------------------------------------------------


def tone(seconds: float, rate: int = 16000, amplitude: float = 0.3) -> bytes:
    """A 440 Hz sine burst, linear16."""
    count = round(seconds * rate)
    step = 2 * math.pi * 440 / rate
    return array.array(
        "h", (int(amplitude * 32767 * math.sin(i * step)) for i in range(count))
    ).tobytes()


def silence(seconds: float, rate: int = 16000) -> bytes:
    return bytes(round(seconds * rate) * 2)


def _encoder(decode: Callable[[int], int]) -> Callable[[bytes], bytes]:
    """A G.711 encoder that picks the code whose decoded value is nearest (oracle: the decoder)."""
    table = sorted((decode(code), code) for code in range(256))
    values = [value for value, _ in table]

    def encode(pcm: bytes) -> bytes:
        out = bytearray()
        for sample in array.array("h", pcm):
            i = bisect.bisect_left(values, sample)
            candidates = [j for j in (i - 1, i) if 0 <= j < len(values)]
            out.append(table[min(candidates, key=lambda j: abs(values[j] - sample))][1])
        return bytes(out)

    return encode


to_mulaw = _encoder(mulaw_to_linear)
to_alaw = _encoder(alaw_to_linear)


def downsample_by_2(pcm: bytes) -> bytes:
    return array.array("h", pcm)[::2].tobytes()


def to_linear32(pcm: bytes) -> bytes:
    return array.array("i", (s << 16 for s in array.array("h", pcm))).tobytes()


def engine(**kwargs: Any) -> FluxEngine:
    script = kwargs.pop("script", ())
    bundle = kwargs.pop("bundle", NEWEST)
    return FluxEngine(EngineParams(**kwargs), script=script, bundle=bundle, request_id=RID)


def feed(eng: FluxEngine, audio: bytes, chunk: int) -> list[Message]:
    out: list[Message] = []
    for offset in range(0, len(audio), chunk):
        out += eng.receive_audio(audio[offset : offset + chunk])
    return out


def run(eng: FluxEngine, audio: bytes, chunk: int, *, close: bool = True) -> list[Message]:
    out = eng.connected() + feed(eng, audio, chunk)
    return out + (eng.receive_text(CLOSE) if close else [])


def events(messages: Iterable[Message], *, updates: bool = False) -> list[str]:
    return [
        m["event"]
        for m in messages
        if m["type"] == "TurnInfo" and (updates or m["event"] != "Update")
    ]


def of(messages: Iterable[Message], event: str) -> list[Message]:
    return [m for m in messages if m.get("event") == event]


# -- the bundled sample --------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", [80, 20])
def test_sample_plays_one_turn_per_scripted_turn(chunk_ms: int) -> None:
    pcm, rate, turns = load_sample()
    eng = engine(sample_rate=rate, script=turns)
    out = run(eng, pcm, rate * 2 * chunk_ms // 1000)

    assert out[0] == {"type": "Connected", "request_id": RID, "sequence_id": 0}
    assert [m["sequence_id"] for m in out] == list(range(len(out)))
    assert events(out) == ["StartOfTurn", "EndOfTurn"] * len(turns)
    ends = of(out, "EndOfTurn")
    assert [m["transcript"] for m in ends] == list(turns)
    assert [m["trigger"] for m in ends] == ["model"] * len(turns)
    assert [m["turn_index"] for m in ends] == list(range(len(turns)))
    assert [m["transcript"] for m in of(out, "StartOfTurn")] == [t.split()[0] for t in turns]
    assert eng.turns_completed == len(turns)
    assert eng.closed
    assert eng.messages_sent == len(out)
    assert eng.audio_seconds_received == pytest.approx(len(pcm) / 2 / rate)

    turn_infos = [m for m in out if m["type"] == "TurnInfo"]
    for index, text in enumerate(turns):
        in_turn = [m for m in turn_infos if m["turn_index"] == index]
        # StartOfTurn, then Updates only, then EndOfTurn; transcripts grow as prefixes.
        started = next(i for i, m in enumerate(in_turn) if m["event"] == "StartOfTurn")
        assert {m["event"] for m in in_turn[started + 1 : -1]} == {"Update"}
        assert in_turn[-1]["event"] == "EndOfTurn"
        assert all(m["transcript"] == "" for m in in_turn[:started])
        shown = [m["transcript"] for m in in_turn[started:]]
        assert all(text.startswith(s) and s for s in shown)
        assert [len(s) for s in shown] == sorted(len(s) for s in shown)
        # Words: the script's, with increasing timings inside the audio window.
        words = in_turn[-1]["words"]
        assert [w["word"] for w in words] == text.split()
        starts = [w["start"] for w in words]
        assert starts == sorted(starts)
        assert all(w["start"] <= w["end"] for w in words)
        assert all(0.85 <= w["confidence"] <= 0.99 for w in words)
        assert in_turn[-1]["audio_window_start"] <= starts[0]
        assert words[-1]["end"] < in_turn[-1]["audio_window_end"]

    # Spoken 0.3-2.16 s and 3.14-4.76 s: speech starts the turn, ~0.42 s of silence ends it.
    assert of(out, "StartOfTurn")[0]["words"][0]["start"] == pytest.approx(0.32, abs=0.06)
    assert ends[0]["audio_window_end"] == pytest.approx(2.16 + 0.42, abs=0.06)
    assert ends[1]["audio_window_start"] == ends[0]["audio_window_end"]
    assert all(m["end_of_turn_confidence"] >= 0.7 for m in ends)


def test_updates_every_240_ms_of_audio_between_and_during_turns() -> None:
    pcm, rate, turns = load_sample()
    out = run(engine(sample_rate=rate, script=turns), pcm, 2560)
    turn_infos = [m for m in out if m["type"] == "TurnInfo"]
    updates = of(out, "Update")
    assert all(round(m["audio_window_end"] / 0.24, 6).is_integer() for m in updates)
    assert any(m["transcript"] == "" and m["turn_index"] == 1 for m in updates)  # between turns
    # Something is sent for every 0.24 s of audio (a state change replaces that tick's Update).
    ends = [0.0] + [m["audio_window_end"] for m in turn_infos]
    assert max(b - a for a, b in itertools.pairwise(ends)) <= 0.24 + 1e-9
    assert len(updates) >= int(len(pcm) / 2 / rate / 0.24) - 4


def test_output_does_not_depend_on_chunking_and_is_deterministic() -> None:
    pcm, rate, turns = load_sample()
    reference = run(engine(sample_rate=rate, script=turns), pcm, 2560)
    for chunk in (640, 333, 9000, len(pcm)):
        assert run(engine(sample_rate=rate, script=turns), pcm, chunk) == reference


def test_script_runs_out_to_a_placeholder_and_scripted_confidences_are_used() -> None:
    pcm, rate, turns = load_sample()
    first = ScriptedTurn(turns[0], confidences=[0.5 + i / 100 for i in range(7)])
    out = run(engine(sample_rate=rate, script=[first]), pcm, 2560)
    ends = of(out, "EndOfTurn")
    assert [m["transcript"] for m in ends] == [turns[0], PLACEHOLDER_TRANSCRIPT]
    assert [w["confidence"] for w in ends[0]["words"]] == [0.5 + i / 100 for i in range(7)]
    with pytest.raises(ValidationError):
        ScriptedTurn("two words", confidences=[0.9])
    with pytest.raises(ValidationError):
        ScriptedTurn("  ")


# -- eager mode, timeout, manual -----------------------------------------------------------------


def test_eager_then_resumed_then_eager_then_end() -> None:
    eng = engine(eager_eot_threshold=0.4, script=["book a table please"])
    # 0.3 s of silence gives confidence 0.5: past eager 0.4, short of eot 0.7.
    audio = silence(0.2) + tone(1.0) + silence(0.3) + tone(0.6) + silence(1.0)
    out = run(eng, audio, 2560, close=False)
    assert events(out) == [
        "StartOfTurn", "EagerEndOfTurn", "TurnResumed", "EagerEndOfTurn", "EndOfTurn",
    ]  # fmt: skip
    eager1, resumed, eager2, end = [m for m in out if m.get("event") not in (None, "Update")][1:]
    assert (
        eager1["transcript"] == eager2["transcript"] == end["transcript"] == "book a table please"
    )
    assert eager1["end_of_turn_confidence"] >= 0.4 > resumed["end_of_turn_confidence"]
    assert resumed["audio_window_end"] == pytest.approx(0.2 + 1.0 + 0.3 + 0.02)
    assert "trigger" not in eager1
    assert end["trigger"] == "model"
    assert end["audio_window_end"] == pytest.approx(0.2 + 1.0 + 0.3 + 0.6 + 0.42)


def test_sample_in_eager_mode_keeps_end_equal_to_eager() -> None:
    pcm, rate, turns = load_sample()
    out = run(engine(sample_rate=rate, script=turns, eager_eot_threshold=0.3), pcm, 2560)
    sequence = events(out)
    assert sequence.count("EndOfTurn") == 2
    for i, event in enumerate(sequence):
        if event == "EndOfTurn":
            assert sequence[i - 1] == "EagerEndOfTurn"
    # The comma in "seven, please" is a 180 ms pause: enough for eager 0.3, then speech resumes.
    assert "TurnResumed" in sequence


@pytest.mark.parametrize("timeout_ms", [500, 2000])
def test_timeout_trigger_when_native_end_of_turn_is_off(timeout_ms: int) -> None:
    eng = engine(eot_threshold=1.0, eot_timeout_ms=timeout_ms, script=["hello"])
    out = run(eng, silence(0.5) + tone(1.0) + silence(3.0), 1280, close=False)
    (end,) = of(out, "EndOfTurn")
    assert end["trigger"] == "timeout"
    assert end["audio_window_end"] == pytest.approx(1.5 + timeout_ms / 1000)
    assert end["end_of_turn_confidence"] < 1.0
    assert end["transcript"] == "hello"


def test_scripted_timeout_turn_waits_for_eot_timeout_ms() -> None:
    eng = engine(eot_timeout_ms=1500, script=[ScriptedTurn("uh so", end_trigger="timeout")])
    (end,) = of(run(eng, tone(0.5) + silence(2.0), 2560), "EndOfTurn")
    assert (end["trigger"], end["audio_window_end"]) == ("timeout", pytest.approx(2.0))


def test_force_end_turn_manual_and_warning_without_turn() -> None:
    eng = engine(script=["first turn here", "second"])
    out = eng.connected()
    warning = eng.receive_text(FORCE)
    assert warning == [
        {
            "type": "Warning", "request_id": RID, "code": "FORCE_END_TURN_NO_ACTIVE_TURN",
            "description": "ForceEndTurn received with no active turn.", "sequence_id": 1,
        }
    ]  # fmt: skip
    assert eng.turn_index == 0  # an ignored ForceEndTurn does not advance the turn
    out += feed(eng, tone(0.4), 1280)
    (end,) = eng.receive_text(FORCE)
    assert (end["event"], end["trigger"], end["turn_index"]) == ("EndOfTurn", "manual", 0)
    assert end["transcript"] == "first turn here"  # every remaining word is revealed
    assert end["end_of_turn_confidence"] < 0.7  # the real confidence, not inflated
    assert eng.turn_index == 1
    # Audio after the forced end belongs to the next turn.
    out = feed(eng, tone(0.3) + silence(0.6), 1280)
    assert events(out) == ["StartOfTurn", "EndOfTurn"]
    assert of(out, "EndOfTurn")[0]["transcript"] == "second"


def test_force_end_turn_supersedes_a_pending_eager() -> None:
    eng = engine(eager_eot_threshold=0.3, script=["a b"])
    out = run(eng, tone(0.5) + silence(0.25), 640, close=False)
    assert events(out)[-1] == "EagerEndOfTurn"
    out = eng.receive_text(FORCE) + feed(eng, tone(0.05), 640)
    assert events(out) == ["EndOfTurn"]
    assert out[0]["transcript"] == "a b"


@pytest.mark.parametrize("bundle", [FLUX_ENGLISH_20260311, FLUX_MULTI_20260417])
def test_force_end_turn_on_a_bundle_without_it_is_fatal(bundle: BundleProfile) -> None:
    eng = engine(bundle=bundle)
    eng.connected()
    (error,) = eng.receive_text(FORCE)
    expected = "`CloseStream`" if not bundle.configure else "`CloseStream` or `Configure`"
    assert error == {
        "type": "Error", "code": "UNPARSABLE_CLIENT_MESSAGE",
        "description": f"unknown variant `ForceEndTurn`, expected {expected}", "sequence_id": 1,
    }  # fmt: skip
    assert eng.closed
    assert eng.receive_audio(tone(1.0)) == []
    assert eng.receive_text(CLOSE) == []


# -- CloseStream ---------------------------------------------------------------------------------


def test_close_stream_newest_sends_a_final_update_not_an_end_of_turn() -> None:
    eng = engine(script=["one two three four five six"])
    out = run(eng, tone(0.5) + silence(0.03), 2560, close=False)  # ends mid-frame
    assert events(out) == ["StartOfTurn"]
    final = eng.receive_text(CLOSE)
    assert eng.closed
    assert events(final, updates=True) == ["Update"]
    assert final[-1]["transcript"] == "one two three four five six"
    assert final[-1]["audio_window_end"] == pytest.approx(0.53)  # the partial frame was decoded
    assert eng.receive_audio(tone(1.0)) == []


@pytest.mark.parametrize("bundle", [FLUX_ENGLISH_20260311, FLUX_MULTI_20260417])
def test_close_stream_on_june_2026_bundles_finalizes_the_turn(bundle: BundleProfile) -> None:
    eng = engine(script=["one two three"], bundle=bundle)
    run(eng, tone(0.5), 2560, close=False)
    (end,) = eng.receive_text(CLOSE)
    assert (end["event"], end["transcript"], end["turn_index"]) == ("EndOfTurn", "one two three", 0)
    assert eng.closed
    assert eng.turns_completed == 1


@pytest.mark.parametrize("bundle", [NEWEST, FLUX_ENGLISH_20260311])
def test_close_stream_between_turns_sends_no_turn_events(bundle: BundleProfile) -> None:
    eng = engine(script=["hi"], bundle=bundle)
    out = run(eng, tone(0.5) + silence(1.0), 2560, close=False)
    assert events(out) == ["StartOfTurn", "EndOfTurn"]
    assert eng.receive_text(CLOSE) == []
    assert eng.closed


def test_force_end_turn_then_close_stream_gives_a_final_turn() -> None:
    eng = engine(script=["last words"])
    run(eng, tone(0.5), 2560, close=False)
    out = eng.receive_text(FORCE) + eng.receive_text(CLOSE)
    assert events(out) == ["EndOfTurn"]
    assert out[0]["trigger"] == "manual"


# -- Configure -----------------------------------------------------------------------------------


def configure(eng: FluxEngine, body: dict[str, Any]) -> Message:
    (reply,) = eng.receive_text(json.dumps({"type": "Configure", **body}))
    return reply


def test_configure_success_returns_the_full_active_config() -> None:
    eng = engine(model="flux-general-multi", keyterms=["Deepgram"], language_hints=["en"])
    eng.connected()
    reply = configure(eng, {"thresholds": {"eot_threshold": 0.8, "eager_eot_threshold": 0.5}})
    assert reply == {
        "type": "ConfigureSuccess", "request_id": RID,
        "thresholds": {"eot_threshold": 0.8, "eager_eot_threshold": 0.5, "eot_timeout_ms": 5000},
        "keyterms": ["Deepgram"], "language_hints": ["en"], "numerals": False, "sequence_id": 1,
    }  # fmt: skip
    reply = configure(eng, {"keyterms": [], "language_hints": ["es", "en-GB"], "numerals": True})
    assert (reply["keyterms"], reply["language_hints"], reply["numerals"]) == (
        [],
        ["es", "en"],
        True,
    )
    assert reply["thresholds"]["eot_threshold"] == 0.8  # unchanged fields are reported too
    assert configure(eng, {"language_hints": None})["language_hints"] == ["es", "en"]  # kept
    assert configure(eng, {"language_hints": []})["language_hints"] == []  # cleared
    assert eng.config.eot_threshold == 0.8
    assert eng.config.numerals is True


def test_configure_takes_effect_on_the_open_turn() -> None:
    eng = engine(script=["slow turn"])
    out = run(eng, tone(0.5), 1280, close=False)
    assert configure(eng, {"thresholds": {"eot_threshold": 0.9}})["type"] == "ConfigureSuccess"
    (end,) = of(feed(eng, silence(1.0), 1280), "EndOfTurn")
    assert end["audio_window_end"] == pytest.approx(0.5 + 0.54)  # 0.9 at 540 ms, not 420 ms
    assert out


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({"thresholds": {"eager_eot_threshold": 0.8}}, "INVALID_THRESHOLD", "less than or equal"),
        ({"thresholds": {"eot_threshold": 0.4}}, "INVALID_THRESHOLD", "eot_threshold"),
        ({"thresholds": {"eot_timeout_ms": 70000}}, "INVALID_THRESHOLD", "eot_timeout_ms"),
        ({"thresholds": {"eager_eot_threshold": 0.2}}, "INVALID_THRESHOLD", "0.3"),
        ({"language_hints": ["es"]}, "INVALID_PARAMETER", "flux-general-en"),
        ({"keyterms": ["x"] * 101}, "INVALID_PARAMETER", "keyterms"),
        ({"keyterms": ["ok", " "]}, "INVALID_PARAMETER", "keyterms"),
    ],
)
def test_configure_failure_keeps_the_previous_config(
    body: dict[str, Any], code: str, needle: str
) -> None:
    eng = engine(eot_threshold=0.75)
    eng.connected()
    before = eng.config
    # Atomic: the valid keyterms of the same message do not take effect either.
    reply = configure(eng, {"keyterms": ["valid"], **body})
    assert (reply["type"], reply["code"]) == ("ConfigureFailure", code)
    assert needle in reply["description"]
    assert eng.config == before
    assert not eng.closed


def test_configure_ranges_follow_the_bundle() -> None:
    old = engine(bundle=FLUX_MULTI_20260417, model="flux-general-multi")
    old.connected()
    assert configure(old, {"thresholds": {"eot_threshold": 1.0}})["type"] == "ConfigureFailure"
    new = engine()
    new.connected()
    assert configure(new, {"thresholds": {"eot_threshold": 1.0}})["type"] == "ConfigureSuccess"
    assert configure(old, {"language_hints": ["xx"]})["code"] == "INVALID_PARAMETER"


@pytest.mark.parametrize(
    "body",
    [
        {"numerals": "true"},
        {"eot_threshold": 0.8},  # flat, not nested in thresholds
        {"features": {"numerals": True}},
        {"thresholds": [0.8]},
        {"thresholds": {"eot_threshold": "0.8"}},
        {"thresholds": {"eot_threshold": True}},
        {"thresholds": {"eot_timeout_ms": 5000.5}},
        {"thresholds": {"end_of_turn": 0.8}},
        {"keyterms": "one,two"},
        {"language_hints": [1]},
    ],
)
def test_configure_schema_violation_is_fatal(body: dict[str, Any]) -> None:
    eng = engine(model="flux-general-multi")
    eng.connected()
    reply = configure(eng, body)
    assert (reply["type"], reply["code"]) == ("Error", "UNPARSABLE_CLIENT_MESSAGE")
    assert eng.closed


def test_configure_on_a_bundle_without_it_is_fatal() -> None:
    eng = engine(bundle=FLUX_ENGLISH_20260311)
    eng.connected()
    reply = configure(eng, {"thresholds": {"eot_threshold": 0.8}})
    assert reply["description"] == "unknown variant `Configure`, expected `CloseStream`"
    assert reply["code"] == "UNPARSABLE_CLIENT_MESSAGE"
    assert eng.closed


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"KeepAlive"}',
        '{"type":"Finalize"}',
        '{"type":"Whatever"}',
        "not json",
        "[1, 2]",
        '{"kind":"CloseStream"}',
        b"\xff\xfe",
        "[" * 100_000,
        # Not JSON to serde_json, though Python's json takes them: NaN and Infinity (what
        # json.dumps writes for a float('nan') threshold), a BOM, UTF-16 (a text frame is UTF-8).
        '{"type":"Configure","thresholds":{"eot_threshold":NaN}}',
        '{"type":"Configure","thresholds":{"eager_eot_threshold":-Infinity}}',
        '\ufeff{"type":"CloseStream"}'.encode(),
        '{"type":"CloseStream"}'.encode("utf-16-le"),
    ],
)
def test_unknown_or_unparsable_messages_are_fatal(text: str | bytes) -> None:
    eng = engine()
    eng.connected()
    (error,) = eng.receive_text(text)
    assert (error["type"], error["code"]) == ("Error", "UNPARSABLE_CLIENT_MESSAGE")
    assert error["sequence_id"] == 1
    assert error["description"]
    assert eng.closed
    if isinstance(text, str) and "KeepAlive" in text:
        expected = "one of `CloseStream`, `Configure`, `ForceEndTurn`"
        assert error["description"] == f"unknown variant `KeepAlive`, expected {expected}"


def test_multi_model_reports_languages() -> None:
    eng = engine(model="flux-general-multi", language_hints=["en", "es"])
    eng.script = (ScriptedTurn("hola amigo", language="es"),)
    out = run(eng, silence(0.3) + tone(0.5) + silence(0.6), 2560)
    turn_infos = [m for m in out if m["type"] == "TurnInfo"]
    assert all(m["languages_hinted"] == ["en", "es"] for m in turn_infos)
    assert of(out, "EndOfTurn")[0]["languages"] == ["es"]
    assert turn_infos[0]["languages"] == []  # no transcript yet
    en = run(engine(), tone(0.5) + silence(0.6), 2560)
    assert all("languages" not in m for m in en)


def test_connected_twice_is_a_local_protocol_error() -> None:
    eng = engine()
    eng.connected()
    with pytest.raises(LocalProtocolError):
        eng.connected()


# -- encodings and the VAD -----------------------------------------------------------------------


def test_g711_decoders_match_the_standard_tables() -> None:
    assert [mulaw_to_linear(c) for c in (0xFF, 0x7F, 0x00, 0x80, 0xF0)] == [
        0,
        0,
        -32124,
        32124,
        120,
    ]
    assert [alaw_to_linear(c) for c in (0xD5, 0x55, 0xAA, 0x2A)] == [8, -8, 32256, -32256]
    for decode in (mulaw_to_linear, alaw_to_linear):
        values = [decode(c) for c in range(256)]
        assert len(set(values)) >= 255
        assert max(map(abs, values)) <= 32767


@pytest.mark.parametrize(
    ("encoding", "rate", "convert"),
    [
        ("mulaw", 8000, lambda pcm: to_mulaw(downsample_by_2(pcm))),
        ("alaw", 8000, lambda pcm: to_alaw(downsample_by_2(pcm))),
        ("linear16", 8000, downsample_by_2),
        ("linear32", 16000, to_linear32),
    ],
)
def test_other_encodings_and_rates_give_the_same_turns(
    encoding: str, rate: int, convert: Callable[[bytes], bytes]
) -> None:
    pcm, _, turns = load_sample()
    reference = run(engine(script=turns), pcm, 2560)
    audio = convert(pcm)
    chunk = len(audio) * 2560 // len(pcm)  # 80 ms in the new format
    out = run(engine(encoding=encoding, sample_rate=rate, script=turns), audio, chunk)
    assert events(out) == events(reference)
    assert [m["transcript"] for m in of(out, "EndOfTurn")] == list(turns)
    for ours, theirs in zip(of(out, "EndOfTurn"), of(reference, "EndOfTurn"), strict=True):
        assert ours["audio_window_end"] == pytest.approx(theirs["audio_window_end"], abs=0.05)


def test_vad_threshold_and_partial_frames() -> None:
    vad = EnergyVad("linear16", 16000)
    assert vad.frame_bytes == 640
    quiet = tone(0.02, amplitude=0.005)  # about -49 dBFS RMS
    loud = tone(0.02, amplitude=0.05)  # about -29 dBFS RMS
    assert vad.feed(quiet[:100]) == []
    assert vad.buffered_bytes == 100
    assert vad.feed(quiet[100:] + loud) == [(False, 320), (True, 320)]
    assert vad.feed(loud[:101]) == []
    assert vad.flush() == [(True, 50)]
    with pytest.raises(ValidationError):
        EnergyVad("opus", 16000)
    with pytest.raises(ValidationError):
        engine(encoding="speex")


@pytest.mark.parametrize("encoding", ["opus", "ogg-opus"])
def test_opus_is_taken_but_not_decoded(encoding: str) -> None:
    eng = engine(encoding=encoding, sample_rate=48000, script=("hello",))
    assert eng.connected()[0]["type"] == "Connected"
    assert eng.receive_audio(bytes(range(256)) * 40) == []  # no speech heard: no turn
    assert eng.audio_seconds_received == 0
    assert [m["type"] for m in eng.receive_text('{"type":"CloseStream"}')] == []
    assert eng.closed


# -- guarantees of flux.md 4.2, for any input ----------------------------------------------------

_OPS = st.one_of(
    st.tuples(st.just("speech"), st.integers(20, 900)),
    st.tuples(st.just("silence"), st.integers(20, 2500)),
    st.tuples(st.just("force"), st.just(0)),
    st.tuples(st.just("configure"), st.integers(0, 4)),
)
_CONFIGS: list[dict[str, Any]] = [
    {"thresholds": {"eot_threshold": 0.9}},
    {"thresholds": {"eot_threshold": 0.5, "eager_eot_threshold": 0.3}},
    {"thresholds": {"eager_eot_threshold": 0.5, "eot_threshold": 0.6, "eot_timeout_ms": 600}},
    {"thresholds": {"eot_threshold": 1.0, "eot_timeout_ms": 800}},
    {"thresholds": {"eager_eot_threshold": 0.9}},  # fails unless eot >= 0.9
]


def check_guarantees(out: list[Message], script: list[str]) -> None:
    assert [m["sequence_id"] for m in out] == list(range(len(out)))
    turn_index, state, last_eager = 0, "idle", None
    for m in out:
        assert m["type"] != "Error", m
        if m["type"] != "TurnInfo":
            continue
        event, transcript = m["event"], m["transcript"]
        assert m["turn_index"] == turn_index  # 4.2.5: advances only right after EndOfTurn
        assert ("trigger" in m) == (event == "EndOfTurn")
        if event == "Update":
            assert (transcript == "") == (state == "idle")
        elif event == "StartOfTurn":
            assert state == "idle"
            assert transcript
            state, last_eager = "speaking", None
        elif event == "EagerEndOfTurn":
            assert state == "speaking"
            assert transcript
            state, last_eager = "awaiting", transcript
        elif event == "TurnResumed":
            assert state == "awaiting"  # 4.2.3
            state = "speaking"
        elif event == "EndOfTurn":
            assert state != "idle"
            if last_eager is not None:
                assert transcript == last_eager  # 4.2.4
            expected = script[turn_index] if turn_index < len(script) else PLACEHOLDER_TRANSCRIPT
            assert transcript == expected
            assert m["trigger"] in ("model", "timeout", "manual")
            turn_index, state = turn_index + 1, "idle"


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(_OPS, max_size=14),
    eager=st.sampled_from([None, 0.3, 0.5, 0.7]),
    chunk_ms=st.sampled_from([20, 50, 80, 130]),
    finalize=st.booleans(),
)
def test_flux_guarantees_hold_for_any_input(
    ops: list[tuple[str, int]], eager: float | None, chunk_ms: int, finalize: bool
) -> None:
    script = ["alpha beta gamma", "delta", "epsilon zeta"]
    bundle = BundleProfile("test", finalize_on_close=finalize)
    eng = engine(eager_eot_threshold=eager, eot_timeout_ms=1000, script=script, bundle=bundle)
    out = eng.connected()
    chunk = 32 * chunk_ms
    for op, value in ops:
        if op == "speech":
            out += feed(eng, tone(value / 1000, amplitude=0.2), chunk)
        elif op == "silence":
            out += feed(eng, silence(value / 1000), chunk)
        elif op == "force":
            out += eng.receive_text(FORCE)
        else:
            out += eng.receive_text(json.dumps({"type": "Configure", **_CONFIGS[value]}))
    out += eng.receive_text(CLOSE)
    check_guarantees(out, script)
    assert eng.closed
    assert eng.turns_completed == len(of(out, "EndOfTurn"))
