"""parse_server_message: every flux.md example, leniency, and malformed input."""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Any

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flux_sagemaker.core.events import (
    ConfigureFailure,
    ConfigureSuccess,
    Connected,
    EagerEndOfTurn,
    EndOfTurn,
    ServerError,
    ServerWarning,
    StartOfTurn,
    Thresholds,
    Trigger,
    TurnEventType,
    TurnInfo,
    TurnResumed,
    Unknown,
    Update,
    Word,
    _Bad,
    _checked_word,
    parse_server_message,
)
from flux_sagemaker.errors import MessageParseError


def turn(payload: str | bytes) -> TurnInfo:
    msg = parse_server_message(payload)
    assert isinstance(msg, TurnInfo)
    return msg


# ---- the examples of flux.md section 2 -------------------------------------------------------


def test_connected() -> None:
    payload = (
        b'{"type":"Connected","request_id":"550e8400-e29b-41d4-a716-446655440000","sequence_id":0}'
    )
    msg = parse_server_message(payload)
    assert msg == Connected(request_id="550e8400-e29b-41d4-a716-446655440000", sequence_id=0)
    assert msg.raw == json.loads(payload)


MULTI_END_OF_TURN = """{"type":"TurnInfo","request_id":"ad12514a-0d38-4f7e-8fba-cce10d8f174c",
 "sequence_id":11,"event":"EndOfTurn","turn_index":0,"audio_window_start":0,"audio_window_end":1.3,
 "transcript":"Hello, how are you?","languages_hinted":["en","es","de"],"languages":["en"],
 "words":[{"word":"Hello,","confidence":0.96},{"word":"how","confidence":0.94},
 {"word":"are","confidence":0.97},{"word":"you?","confidence":0.92}],
 "end_of_turn_confidence":0.86,"trigger":"model"}"""


def test_turn_info_end_of_turn_multi() -> None:
    msg = turn(MULTI_END_OF_TURN)
    assert type(msg) is EndOfTurn
    assert msg.request_id == "ad12514a-0d38-4f7e-8fba-cce10d8f174c"
    assert msg.sequence_id == 11
    assert msg.event == TurnEventType.END_OF_TURN
    assert msg.turn_index == 0
    assert msg.audio_window_start == 0.0
    assert isinstance(msg.audio_window_start, float)
    assert msg.audio_window_end == 1.3
    assert msg.transcript == "Hello, how are you?"
    assert msg.languages == ("en",)
    assert msg.languages_hinted == ("en", "es", "de")
    assert msg.words[0] == Word(word="Hello,", confidence=0.96, start=None, end=None)
    assert len(msg.words) == 4
    assert msg.end_of_turn_confidence == 0.86
    assert msg.trigger == Trigger.MODEL
    assert not msg.synthetic
    assert msg.average_confidence == pytest.approx((0.96 + 0.94 + 0.97 + 0.92) / 4)


def test_update_frame_from_migration_guide() -> None:
    msg = turn(
        '{"type":"TurnInfo","request_id":"2ba892a1-6c0d-4d92-9b89-0000000000","event":"Update",'
        '"turn_index":0,"audio_window_start":0,"audio_window_end":0.47999996,"transcript":"",'
        '"words":[],"end_of_turn_confidence":0.0009,"sequence_id":2}'
    )
    assert type(msg) is Update
    assert msg.audio_window_end == 0.47999996
    assert msg.end_of_turn_confidence == 0.0009
    assert msg.trigger is None
    assert msg.languages == ()
    assert msg.average_confidence is None


def test_words_with_timings() -> None:
    msg = turn(
        '{"type":"TurnInfo","event":"StartOfTurn","turn_index":3,'
        '"words":[{"word":"Hi","confidence":0.95,"start":0.42,"end":0.56},'
        '{"word":"there","confidence":"0.5","start":"0.6","end":null}]}'
    )
    assert type(msg) is StartOfTurn
    assert msg.words == (
        Word(word="Hi", confidence=0.95, start=0.42, end=0.56),
        Word(word="there", confidence=0.5, start=0.6, end=None),
    )


@pytest.mark.parametrize(
    ("event", "cls"),
    [
        ("StartOfTurn", StartOfTurn),
        ("Update", Update),
        ("EagerEndOfTurn", EagerEndOfTurn),
        ("TurnResumed", TurnResumed),
        ("EndOfTurn", EndOfTurn),
    ],
)
def test_each_turn_event_has_its_class(event: str, cls: type[TurnInfo]) -> None:
    msg = turn(json.dumps({"type": "TurnInfo", "event": event, "turn_index": 1}))
    assert type(msg) is cls
    assert msg.event == event
    assert isinstance(msg, TurnInfo)


def test_configure_success_docs_example() -> None:
    msg = parse_server_message(
        '{"type":"ConfigureSuccess","thresholds":{"eager_eot_threshold":0.4,"eot_threshold":0.7,'
        '"eot_timeout_ms":6000},"keyterms":["apple","banana","orange"],"language_hints":["en","es"]}'
    )
    assert msg == ConfigureSuccess(
        thresholds=Thresholds(eot_threshold=0.7, eager_eot_threshold=0.4, eot_timeout_ms=6000),
        keyterms=("apple", "banana", "orange"),
        language_hints=("en", "es"),
    )
    assert msg.request_id is None
    assert msg.numerals is None


def test_configure_success_minimal_and_numerals() -> None:
    msg = parse_server_message(
        '{"type":"ConfigureSuccess","request_id":"r","sequence_id":4,"thresholds":{},'
        '"keyterms":[],"numerals":true}'
    )
    assert msg == ConfigureSuccess(request_id="r", sequence_id=4, numerals=True)
    assert msg.thresholds == Thresholds()
    assert msg.language_hints is None


def test_configure_failure_uses_code() -> None:
    msg = parse_server_message(
        '{"type":"ConfigureFailure","sequence_id":42,"code":"INVALID_THRESHOLD",'
        '"description":"eager_eot_threshold must be less than or equal to eot_threshold"}'
    )
    assert msg == ConfigureFailure(
        sequence_id=42,
        code="INVALID_THRESHOLD",
        description="eager_eot_threshold must be less than or equal to eot_threshold",
    )


def test_configure_failure_without_code_is_tolerated() -> None:
    msg = parse_server_message('{"type":"ConfigureFailure","request_id":"r","sequence_id":1}')
    assert msg == ConfigureFailure(request_id="r", sequence_id=1, code="", description="")


def test_warning() -> None:
    msg = parse_server_message(
        '{"type":"Warning","request_id":"abc","sequence_id":7,'
        '"code":"FORCE_END_TURN_NO_ACTIVE_TURN","description":"ForceEndTurn received with no active'
        ' turn."}'
    )
    assert msg == ServerWarning(
        request_id="abc",
        sequence_id=7,
        code="FORCE_END_TURN_NO_ACTIVE_TURN",
        description="ForceEndTurn received with no active turn.",
    )


def test_fatal_error_without_request_id() -> None:
    msg = parse_server_message(
        b'{"type":"Error","sequence_id":3,"code":"UNPARSABLE_CLIENT_MESSAGE","description":'
        b'"Could not deserialize last text message: unknown variant `Configure`"}'
    )
    assert isinstance(msg, ServerError)
    assert msg.request_id is None
    assert msg.code == "UNPARSABLE_CLIENT_MESSAGE"
    assert msg.sequence_id == 3


# ---- leniency ---------------------------------------------------------------------------------


def test_numeric_strings_accepted() -> None:
    msg = turn(
        '{"type":"TurnInfo","event":"Update","turn_index":"2","sequence_id":"7",'
        '"audio_window_start":" 1.3 ","audio_window_end":"2","end_of_turn_confidence":"5e-1"}'
    )
    assert (msg.turn_index, msg.sequence_id) == (2, 7)
    assert (msg.audio_window_start, msg.audio_window_end) == (1.3, 2.0)
    assert msg.end_of_turn_confidence == 0.5


@pytest.mark.parametrize("field", ["turn_index", "audio_window_end"])
def test_a_long_almost_numeric_string_is_refused_in_linear_time(field: str) -> None:
    """The numeric-string check ran a regex whose two digit runs could split a digit string any
    way, so refusing 10,000 digits and a letter took seconds, and a long one in a (server-
    controlled) payload held the event loop for hours. The alarm is only a hang guard."""
    payload = f'{{"type":"TurnInfo","event":"Update","turn_index":0,"{field}":"{"9" * 200_000}x"}}'

    def hang(signum: int, frame: object) -> None:
        raise AssertionError("the numeric-string check hung")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        with pytest.raises(MessageParseError, match="not a number"):
            parse_server_message(payload)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_integral_float_is_an_int() -> None:
    msg = turn('{"type":"TurnInfo","event":"Update","turn_index":3.0}')
    assert msg.turn_index == 3
    assert type(msg.turn_index) is int


def test_thresholds_numeric_strings() -> None:
    msg = parse_server_message(
        '{"type":"ConfigureSuccess","thresholds":{"eot_threshold":"0.8","eot_timeout_ms":"6000"}}'
    )
    assert isinstance(msg, ConfigureSuccess)
    assert msg.thresholds == Thresholds(eot_threshold=0.8, eot_timeout_ms=6000)


def test_unknown_type_is_kept() -> None:
    msg = parse_server_message('{"type":"Metadata","duration":3}')
    assert msg == Unknown(type="Metadata")
    assert msg.raw == {"type": "Metadata", "duration": 3}


def test_unknown_event_is_a_plain_turn_info() -> None:
    msg = turn('{"type":"TurnInfo","event":"SpeechPaused","turn_index":4,"transcript":"hi"}')
    assert type(msg) is TurnInfo
    assert msg.event == "SpeechPaused"
    assert msg.transcript == "hi"


def test_unknown_trigger_is_kept() -> None:
    msg = turn('{"type":"TurnInfo","event":"EndOfTurn","turn_index":0,"trigger":"vad"}')
    assert msg.trigger == "vad"
    assert msg.trigger not in set(Trigger)


def test_unknown_fields_ignored_and_raw_out_of_eq_and_repr() -> None:
    plain = parse_server_message('{"type":"Connected","request_id":"r","sequence_id":0}')
    extra = parse_server_message(
        '{"type":"Connected","request_id":"r","sequence_id":0,"secret_future":{"x":[1,2]}}'
    )
    assert plain == extra
    assert hash(plain) == hash(extra)
    assert extra.raw["secret_future"] == {"x": [1, 2]}
    assert "secret_future" not in repr(extra)


def test_defaults_for_missing_fields() -> None:
    msg = turn('{"type":"TurnInfo","event":"Update","turn_index":0,"words":null}')
    assert msg == Update(turn_index=0)
    assert (msg.request_id, msg.sequence_id, msg.transcript, msg.words) == (None, None, "", ())
    assert (msg.audio_window_start, msg.end_of_turn_confidence) == (0.0, 0.0)
    word = turn('{"type":"TurnInfo","event":"Update","turn_index":0,"words":[{}]}')
    assert word.words == (Word(word="", confidence=0.0),)


def test_str_and_bytes_payloads_agree() -> None:
    assert parse_server_message(MULTI_END_OF_TURN) == parse_server_message(
        MULTI_END_OF_TURN.encode()
    )


def test_promote_update_to_synthetic_end_of_turn() -> None:
    last = turn(
        '{"type":"TurnInfo","request_id":"r","sequence_id":9,"event":"Update","turn_index":2,'
        '"transcript":"so long","words":[{"word":"so","confidence":0.5},'
        '{"word":"long","confidence":0.7}],"end_of_turn_confidence":0.4}'
    )
    final = EndOfTurn.promote(last)
    assert final.synthetic
    assert final.event == "EndOfTurn"
    assert final.trigger is None
    assert (final.turn_index, final.transcript, final.sequence_id) == (2, "so long", 9)
    assert final.words == last.words
    assert final.raw is last.raw
    assert final.average_confidence == pytest.approx(0.6)


def test_turn_event_class_cannot_take_another_event() -> None:
    with pytest.raises(TypeError):
        EndOfTurn(turn_index=0, event="Update")  # type: ignore[call-arg]


def test_enums_compare_with_strings() -> None:
    name: str = TurnEventType.EAGER_END_OF_TURN
    assert name == "EagerEndOfTurn"
    assert {t.value for t in Trigger} == {"model", "manual", "timeout"}


def test_events_are_frozen() -> None:
    msg = Connected(request_id="r", sequence_id=0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        msg.sequence_id = 1  # type: ignore[misc]


# ---- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"\xef\xbb\xbf{}",
        "not json",
        "[]",
        "null",
        '"Connected"',
        "{}",
        '{"type":null}',
        '{"type":3}',
        '{"type":["TurnInfo"]}',
        '{"type":"TurnInfo"}',
        '{"type":"TurnInfo","event":"Update"}',
        '{"type":"TurnInfo","turn_index":0}',
        '{"type":"TurnInfo","event":7,"turn_index":0}',
        '{"type":"TurnInfo","event":"Update","turn_index":1.5}',
        '{"type":"TurnInfo","event":"Update","turn_index":true}',
        '{"type":"TurnInfo","event":"Update","turn_index":"two"}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"audio_window_end":NaN}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"audio_window_end":Infinity}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"audio_window_end":"1e999"}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"audio_window_end":1e999}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"audio_window_end":' + "9" * 400 + "}",
        '{"type":"TurnInfo","event":"Update","turn_index":' + "9" * 5000 + "}",
        '{"type":"TurnInfo","event":"Update","turn_index":0,"transcript":5}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"words":"hi"}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"words":["hi"]}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"words":[{"word":1}]}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"languages":"en"}',
        '{"type":"TurnInfo","event":"Update","turn_index":0,"languages":[1]}',
        '{"type":"ConfigureSuccess","thresholds":[]}',
        '{"type":"ConfigureSuccess","numerals":"true"}',
        '{"type":"ConfigureSuccess","keyterms":"a"}',
        '{"type":"Error","code":{}}',
        '{"type":"Connected","request_id":1}',
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_malformed_raises_message_parse_error(payload: bytes | str) -> None:
    with pytest.raises(MessageParseError) as info:
        parse_server_message(payload)
    raw = payload if isinstance(payload, bytes) else payload.encode()
    assert info.value.raw == raw[:200]
    assert len(str(info.value)) < 300


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_message_parse_error(data: bytes) -> None:
    with contextlib.suppress(MessageParseError):
        parse_server_message(data)


@given(json_values)
def test_arbitrary_json_only_raises_message_parse_error(value: Any) -> None:
    with contextlib.suppress(MessageParseError):
        parse_server_message(json.dumps(value))


_TYPES = ["Connected", "TurnInfo", "ConfigureSuccess", "ConfigureFailure", "Warning", "Error", "X"]
_KEYS = [
    "request_id", "sequence_id", "event", "turn_index", "audio_window_start", "audio_window_end",
    "transcript", "words", "end_of_turn_confidence", "trigger", "languages", "languages_hinted",
    "thresholds", "keyterms", "language_hints", "numerals", "code", "description",
]  # fmt: skip


@given(st.sampled_from(_TYPES), st.dictionaries(st.sampled_from(_KEYS), json_values))
def test_known_types_with_arbitrary_fields(kind: str, fields: dict[str, Any]) -> None:
    obj = {**fields, "type": kind}
    try:
        msg = parse_server_message(json.dumps(obj))
    except MessageParseError:
        return
    assert msg.raw == json.loads(json.dumps(obj))


@given(
    st.sampled_from([e.value for e in TurnEventType] + ["Other"]),
    st.integers(0, 10**6),
    st.lists(st.tuples(st.text(), st.floats(0, 1), st.none() | st.floats(0, 100)), max_size=5),
)
def test_well_formed_turn_info_round_trips(
    event: str, turn_index: int, words: list[tuple[str, float, float | None]]
) -> None:
    obj = {
        "type": "TurnInfo",
        "event": event,
        "turn_index": turn_index,
        "words": [{"word": w, "confidence": c, "start": s} for w, c, s in words],
    }
    msg = turn(json.dumps(obj))
    assert isinstance(msg, TurnInfo)
    assert msg.event == event
    assert msg.turn_index == turn_index
    assert [(w.word, w.confidence, w.start) for w in msg.words] == words


_WORD_FIELDS = st.dictionaries(
    st.sampled_from(["word", "confidence", "start", "end"]),
    st.text(max_size=3) | st.floats() | st.integers(-3, 3) | st.none(),
)


@given(st.lists(_WORD_FIELDS, max_size=4))
@example([{"word": "hi", "confidence": 0.5, "start": 0.25, "end": 0.75}])
@example([{"word": "hi", "confidence": 1, "start": 0.25, "end": 0.75}])
@example([{"word": 7, "confidence": 0.5, "start": 0.25, "end": 0.75}])
def test_words_are_the_words_attrs_builds(items: list[dict[str, Any]]) -> None:
    """Well-formed words skip attrs' __init__; they must equal what it builds, every field."""
    payload = json.dumps({"type": "TurnInfo", "event": "Update", "turn_index": 0, "words": items})
    try:
        built = [_checked_word(item) for item in json.loads(payload)["words"]]
    except (_Bad, ValueError):
        with pytest.raises(MessageParseError):
            turn(payload)
        return
    words = turn(payload).words
    assert len(words) == len(built)
    for word, reference in zip(words, built, strict=True):
        assert attrs.astuple(word) == attrs.astuple(reference)
        assert word == reference
        assert hash(word) == hash(reference)
        assert repr(word) == repr(reference)
        assert attrs.evolve(word, word="x") == attrs.evolve(reference, word="x")


@pytest.mark.parametrize("field", ["confidence", "start", "end"])
@pytest.mark.parametrize("value", ["1e999", "-1e999"])
def test_a_word_with_every_field_must_still_be_finite(field: str, value: str) -> None:
    fields = {"word": '"hi"', "confidence": "0.5", "start": "0.25", "end": "0.75", field: value}
    body = ",".join(f'"{k}":{v}' for k, v in fields.items())
    with pytest.raises(MessageParseError, match=f"{field} is .*not a finite number"):
        turn(f'{{"type":"TurnInfo","event":"Update","turn_index":0,"words":[{{{body}}}]}}')
