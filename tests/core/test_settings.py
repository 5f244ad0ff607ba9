"""FluxSettings validation, query-string rendering and parsing, and bundle capabilities."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flux_sagemaker.core.settings import (
    INVOCATION_PATH,
    LANGUAGE_CODES,
    MAX_QUERY_STRING_LENGTH,
    QUERY_STRING_PATTERN,
    SAMPLE_RATES,
    BundleCapabilities,
    Encoding,
    FluxSettings,
    Model,
    Redact,
    format_float,
)
from flux_sagemaker.errors import CapabilityError, ValidationError
from tests.conftest import VECTORS

CAPTURE = VECTORS / "aws-sdk-capture" / "request-headers.json"
MULTI = Model.GENERAL_MULTI.value


def test_invocation_path() -> None:
    assert INVOCATION_PATH == "v2/listen"


def test_defaults_match_the_aws_sdk_capture() -> None:
    headers = json.loads(CAPTURE.read_text())
    assert FluxSettings().query_string() == headers["x-amzn-sagemaker-model-query-string"]


# ---- validation -----------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    ({"model": "nova-3"}, "model"),
    ({"model": 3}, "model"),
    ({"model": "flux-general-en-v2"}, "model"),
    ({"model": "nova-3", "allow_unknown_model": True}, "model"),
    ({"model": "flux-", "allow_unknown_model": True}, "model"),
    ({"encoding": "pcm"}, "encoding"),
    ({"encoding": 16}, "encoding"),
    ({"encoding": None}, "sample_rate"),
    ({"sample_rate": None}, "sample_rate"),
    ({"sample_rate": 22050}, "sample_rate"),
    ({"sample_rate": 16000.0}, "sample_rate"),
    ({"sample_rate": True}, "sample_rate"),
    ({"eot_threshold": 0.49}, "eot_threshold"),
    ({"eot_threshold": 1.01}, "eot_threshold"),
    ({"eot_threshold": "0.7"}, "eot_threshold"),
    ({"eot_threshold": True}, "eot_threshold"),
    ({"eot_threshold": math.nan}, "eot_threshold"),
    ({"eot_threshold": math.inf}, "eot_threshold"),
    ({"eot_threshold": 10**400}, "eot_threshold"),
    ({"eager_eot_threshold": -(10**400)}, "eager_eot_threshold"),
    ({"eager_eot_threshold": 0.29}, "eager_eot_threshold"),
    ({"eager_eot_threshold": 0.91, "eot_threshold": 1.0}, "eager_eot_threshold"),
    ({"eager_eot_threshold": math.nan}, "eager_eot_threshold"),
    ({"eager_eot_threshold": 0.75}, "eager_eot_threshold"),
    ({"eager_eot_threshold": 0.6, "eot_threshold": 0.55}, "eager_eot_threshold"),
    ({"eot_timeout_ms": 499}, "eot_timeout_ms"),
    ({"eot_timeout_ms": 60001}, "eot_timeout_ms"),
    ({"eot_timeout_ms": 5000.0}, "eot_timeout_ms"),
    ({"eot_timeout_ms": "5000"}, "eot_timeout_ms"),
    ({"eot_timeout_ms": True}, "eot_timeout_ms"),
    ({"eot_timeout_ms": 10**5000}, "eot_timeout_ms"),
    ({"sample_rate": 10**5000}, "sample_rate"),
    ({"keyterms": "apple"}, "keyterms"),
    ({"keyterms": 5}, "keyterms"),
    ({"keyterms": [""]}, "keyterms"),
    ({"keyterms": ["   "]}, "keyterms"),
    ({"keyterms": ["x" * 101]}, "keyterms"),
    ({"keyterms": ["a"] * 101}, "keyterms"),
    ({"keyterms": [1]}, "keyterms"),
    ({"keyterms": ["a\nb"]}, "keyterms"),
    ({"keyterms": ["\ud800"]}, "keyterms"),
    ({"language_hints": ["en"]}, "language_hints"),
    ({"model": MULTI, "language_hints": ["xx"]}, "language_hints"),
    ({"model": MULTI, "language_hints": ["english"]}, "language_hints"),
    ({"model": MULTI, "language_hints": [""]}, "language_hints"),
    ({"model": MULTI, "language_hints": "en"}, "language_hints"),
    ({"numerals": "true"}, "numerals"),
    ({"numerals": 1}, "numerals"),
    ({"profanity_filter": "false"}, "profanity_filter"),
    ({"mip_opt_out": 0}, "mip_opt_out"),
    ({"redact": "pci"}, "redact"),
    ({"redact": ""}, "redact"),
    ({"tags": [""]}, "tags"),
    ({"tags": ["x" * 129]}, "tags"),
    ({"tags": "tag"}, "tags"),
    ({"extra_params": "foo=1"}, "extra_params"),
    ({"extra_params": {"bad key": "x"}}, "extra_params"),
    ({"extra_params": {"_x": "x"}}, "extra_params"),
    ({"extra_params": {"keyterm": "x"}}, "keyterm"),
    ({"extra_params": {"model": "x"}}, "model"),
    ({"extra_params": {"keyterms": "x"}}, "keyterms"),
    ({"extra_params": {"smart_format": "true"}}, "smart_format"),
    ({"extra_params": {"foo": ""}}, "extra_params"),
    ({"extra_params": {"foo": []}}, "extra_params"),
    ({"extra_params": {"foo": 1}}, "extra_params"),
    ({"extra_params": {"foo": [1]}}, "extra_params"),
    ({"extra_params": {"foo": True}}, "extra_params"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD)
def test_invalid_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        FluxSettings(**kwargs)
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"eot_threshold": 0.2}, "0.5 to 1.0"),
        ({"eager_eot_threshold": 0.1}, "0.3 to 0.9"),
        ({"eot_timeout_ms": 10}, "500 to 60000"),
        ({"sample_rate": 11025}, "16000"),
        ({"encoding": "flac"}, "ogg-opus"),
        ({"redact": "ssn"}, "aggressive_numbers"),
        ({"model": MULTI, "language_hints": ["zz"]}, "'ja'"),
        ({"eager_eot_threshold": 0.8}, "0.7 by default"),
    ],
)
def test_errors_say_what_is_allowed(kwargs: dict[str, Any], allowed: str) -> None:
    with pytest.raises(ValidationError, match="invalid") as info:
        FluxSettings(**kwargs)
    assert allowed in str(info.value)


def test_long_values_are_shortened_in_errors() -> None:
    with pytest.raises(ValidationError) as info:
        FluxSettings(keyterms=["y" * 500])
    assert "characters)" in str(info.value)
    assert len(str(info.value)) < 300


def test_valid_edges_and_normalization() -> None:
    s = FluxSettings(
        model=Model.GENERAL_MULTI,
        encoding=Encoding.MULAW,
        sample_rate=8000,
        eot_threshold=1,
        eager_eot_threshold=0.9,
        eot_timeout_ms=60000,
        keyterms=["  New York  ", "café"],
        language_hints=["EN-gb", "en", "es_MX", "pt-BR"],
        redact=Redact.NUMBERS,
        tags=[" t1 "],
    )
    assert type(s.model) is str
    assert type(s.encoding) is str
    assert type(s.redact) is str
    assert s.eot_threshold == 1.0
    assert isinstance(s.eot_threshold, float)
    assert s.keyterms == ("New York", "café")
    assert s.language_hints == ("en", "es", "pt")
    assert s.tags == ("t1",)
    assert hash(s) == hash(attrs.evolve(s))


def test_containerized_audio_omits_encoding_and_rate() -> None:
    s = FluxSettings(encoding=None, sample_rate=None)
    assert s.query_string() == "model=flux-general-en"


def test_eager_checked_against_the_default_eot() -> None:
    assert FluxSettings(eager_eot_threshold=0.7).eager_eot_threshold == 0.7
    assert FluxSettings(eager_eot_threshold=0.85, eot_threshold=0.9).eager_eot_threshold == 0.85


def test_the_constructor_is_typed_for_type_checkers() -> None:
    # attrs types __init__ by its converters' parameters: typed `object`, they let mypy accept
    # FluxSettings(sample_rate="16000") or keyterms=5 in a user's code (caught only at run time).
    annotations = FluxSettings.__init__.__annotations__
    assert [name for name, hint in annotations.items() if hint in ("object", object)] == []
    assert annotations["sample_rate"] == "int | None"
    assert annotations["keyterms"] == "Iterable[str] | None"


def test_with_changes_validates() -> None:
    s = FluxSettings(eager_eot_threshold=0.6)
    assert s.with_changes(eot_threshold=0.9).eot_threshold == 0.9
    with pytest.raises(ValidationError, match="eager_eot_threshold"):
        s.with_changes(eot_threshold=0.5)


def test_with_changes_refuses_a_name_that_is_not_a_setting() -> None:
    # A typo in update_settings(eot_treshold=...) raised attrs' TypeError, past `except
    # ValidationError` and `except FluxError`.
    with pytest.raises(
        ValidationError, match=r"not a Flux setting: eot_treshold \(settings: .*eot_threshold"
    ):
        FluxSettings().with_changes(eot_treshold=0.7)


def test_unknown_model_with_override() -> None:
    s = FluxSettings(model="flux-general-xx.2", allow_unknown_model=True, language_hints=["fr"])
    assert s.query_string().startswith("model=flux-general-xx.2&")
    assert "language_hint=fr" in s.query_string()
    parsed = FluxSettings.from_query_string(s.query_string(), allow_unknown_model=True)
    assert parsed == s
    with pytest.raises(ValidationError, match="allow_unknown_model"):
        FluxSettings.from_query_string(s.query_string())
    assert "allow_unknown_model" not in repr(s)


# ---- query strings --------------------------------------------------------------------------


def test_flux_md_example_one() -> None:
    qs = (
        "model=flux-general-en&encoding=linear16&sample_rate=16000"
        "&eager_eot_threshold=0.6&eot_threshold=0.8&eot_timeout_ms=7000"
    )
    s = FluxSettings(eager_eot_threshold=0.6, eot_threshold=0.8, eot_timeout_ms=7000)
    assert s.query_string() == qs
    assert FluxSettings.from_query_string(qs) == s


def test_flux_md_example_two() -> None:
    qs = (
        "model=flux-general-multi&language_hint=en&language_hint=es&eot_threshold=0.7"
        "&encoding=linear16&sample_rate=16000"
    )
    s = FluxSettings(model=MULTI, language_hints=["en", "es"], eot_threshold=0.7)
    assert FluxSettings.from_query_string(qs) == s
    assert s.query_string() == (
        "model=flux-general-multi&encoding=linear16&sample_rate=16000&eot_threshold=0.7"
        "&language_hint=en&language_hint=es"
    )


@pytest.mark.parametrize(
    ("term", "encoded"),
    [
        ("New York", "New%20York"),
        ("café", "caf%C3%A9"),
        ("🎉", "%F0%9F%8E%89"),
        ("a&b=c+d/e?f#g%h", "a%26b%3Dc%2Bd%2Fe%3Ff%23g%25h"),
        ("un-res.erv_ed~", "un-res.erv_ed~"),
        ("term:0.15", "term%3A0.15"),
    ],
)
def test_percent_encoding(term: str, encoded: str) -> None:
    qs = FluxSettings(keyterms=[term], tags=[term]).query_string()
    assert qs.endswith(f"&keyterm={encoded}&tag={encoded}")
    assert "+" not in qs
    assert QUERY_STRING_PATTERN.fullmatch(qs)


def test_repeated_keys_keep_order_and_full_order() -> None:
    s = FluxSettings(
        model=MULTI,
        eot_threshold=0.8,
        eot_timeout_ms=3000,
        eager_eot_threshold=0.5,
        keyterms=["b", "a", "b"],
        language_hints=["fr", "de"],
        numerals=True,
        profanity_filter=False,
        redact="aggressive_numbers",
        mip_opt_out=True,
        tags=["z", "y"],
        extra_params={"zeta": ["2", "1"], "alpha": "x y"},
    )
    assert s.query_string() == (
        "model=flux-general-multi&encoding=linear16&sample_rate=16000&eager_eot_threshold=0.5"
        "&eot_threshold=0.8&eot_timeout_ms=3000&keyterm=b&keyterm=a&keyterm=b"
        "&language_hint=fr&language_hint=de&numerals=true&profanity_filter=false"
        "&redact=aggressive_numbers&mip_opt_out=true&tag=z&tag=y&alpha=x%20y&zeta=2&zeta=1"
    )
    assert s.extra_params == (("alpha", ("x y",)), ("zeta", ("2", "1")))


@pytest.mark.parametrize(("flag", "text"), [(True, "true"), (False, "false")])
def test_booleans_lowercase(flag: bool, text: str) -> None:
    qs = FluxSettings(numerals=flag, mip_opt_out=flag).query_string()
    assert f"&numerals={text}&mip_opt_out={text}" in qs
    assert "numerals" not in FluxSettings().query_string()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.7, "0.7"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.0, "1.0"),
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
    ],
)
def test_format_float_shortest_without_exponent(value: float, text: str) -> None:
    assert format_float(value) == text
    assert float(text) == value


def test_float_rendering_in_query() -> None:
    assert (
        "eot_threshold=0.7&" in FluxSettings(eot_threshold=0.7, eot_timeout_ms=500).query_string()
    )


def test_query_string_length_limit_says_by_how_much() -> None:
    terms = [f"{i:03d}" + "x" * 90 for i in range(21)]
    with pytest.raises(ValidationError) as info:
        FluxSettings(keyterms=terms)
    base = len(FluxSettings().query_string())
    length = base + sum(len("&keyterm=") + len(t) for t in terms)
    assert f"is {length} characters, {length - MAX_QUERY_STRING_LENGTH} over" in str(info.value)
    ok = FluxSettings(keyterms=terms[:19])
    assert len(ok.query_string()) <= MAX_QUERY_STRING_LENGTH


# ---- from_query_string ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qs", "needle"),
    [
        ("", "model is required"),
        ("encoding=linear16&sample_rate=16000", "model is required"),
        ("model=flux-general-en&model=flux-general-en", "more than once"),
        ("model=flux-general-en&numerals=True", "numerals"),
        ("model=flux-general-en&numerals=1", "numerals"),
        ("model=flux-general-en&encoding=linear16&sample_rate=16k", "sample_rate"),
        ("model=flux-general-en&eot_timeout_ms=5000.0", "eot_timeout_ms"),
        ("model=flux-general-en&eot_threshold=nan", "eot_threshold"),
        ("model=flux-general-en&eot_threshold=1e0", "eot_threshold"),
        ("model=flux-general-en&eot_threshold=0.9_5", "eot_threshold"),
        ("model=flux-general-en&eot_threshold=2.0", "eot_threshold"),
        ("model=", "not key=value"),
        ("model", "not key=value"),
        ("model=flux-general-en&", "not key=value"),
        ("model=flux-general-en&%41=1", "not key=value"),
        ("model=flux-general-en&keyterm=%FF", "percent-encoded UTF-8"),
        ("model=flux-general-en&smart_format=true", "Nova"),
        ("model=flux-general-en&keyterms=a", "shadows"),
        ("model=flux-general-en&language_hint=en", "language_hints"),
        ("model=nova-3", "model"),
    ],
)
def test_from_query_string_rejects(qs: str, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        FluxSettings.from_query_string(qs)
    assert needle in str(info.value)


def test_from_query_string_extra_params() -> None:
    qs = "model=flux-general-en&future_param=a%20b&future_param=c"
    s = FluxSettings.from_query_string(qs)
    assert s.extra_params == (("future_param", ("a b", "c")),)
    assert s.encoding is None
    assert s.sample_rate is None
    with pytest.raises(ValidationError, match="unknown query parameter 'future_param'"):
        FluxSettings.from_query_string(qs, allow_extra_params=False)


def test_from_query_string_decodes_values() -> None:
    s = FluxSettings.from_query_string(
        "model=flux-general-en&keyterm=caf%C3%A9%20au%20lait&tag=a%2Bb&keyterm=plus+sign&encoding"
        "=linear16&sample_rate=48000&eot_threshold=.75&eot_timeout_ms=00600&numerals=false"
    )
    assert s.keyterms == ("café au lait", "plus+sign")
    assert s.tags == ("a+b",)
    assert s.sample_rate == 48000
    assert s.eot_threshold == 0.75
    assert s.eot_timeout_ms == 600
    assert s.numerals is False


# ---- properties -----------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=20
).filter(str.strip)
_extra_keys = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True).filter(
    lambda k: (
        k not in {"model", "encoding", "redact", "tag", "tags", "keyterm", "keyterms"}
        and k not in {"language", "diarize", "keywords", "numerals", "endpointing"}
    )
)
_hints = st.sampled_from([*sorted(LANGUAGE_CODES), "en-GB", "PT-br", "es_419"])


@st.composite
def valid_settings(draw: st.DrawFn) -> FluxSettings:
    model = draw(st.sampled_from([m.value for m in Model]))
    audio = draw(
        st.one_of(
            st.just((None, None)),
            st.tuples(st.sampled_from([e.value for e in Encoding]), st.sampled_from(SAMPLE_RATES)),
        )
    )
    eot = draw(st.none() | st.floats(0.5, 1.0))
    eager = draw(st.none() | st.floats(0.3, 0.9))
    assume(eager is None or eager <= (0.7 if eot is None else eot))
    kwargs: dict[str, Any] = {
        "model": model,
        "encoding": audio[0],
        "sample_rate": audio[1],
        "eot_threshold": eot,
        "eager_eot_threshold": eager,
        "eot_timeout_ms": draw(st.none() | st.integers(500, 60000)),
        "keyterms": draw(st.lists(_text, max_size=4)),
        "language_hints": draw(st.lists(_hints, max_size=3)) if model == MULTI else [],
        "numerals": draw(st.none() | st.booleans()),
        "profanity_filter": draw(st.none() | st.booleans()),
        "redact": draw(st.none() | st.sampled_from([r.value for r in Redact])),
        "mip_opt_out": draw(st.none() | st.booleans()),
        "tags": draw(st.lists(_text, max_size=2)),
        "extra_params": draw(
            st.dictionaries(
                _extra_keys, st.one_of(_text, st.lists(_text, min_size=1, max_size=2)), max_size=2
            )
        ),
    }
    try:
        return FluxSettings(**kwargs)
    except ValidationError as exc:  # only the length limit may refuse these
        too_long = "over SageMaker's" in str(exc)
    assert too_long
    assume(False)
    raise AssertionError("unreachable")


@given(valid_settings())
def test_query_string_matches_sagemaker_and_round_trips(s: FluxSettings) -> None:
    qs = s.query_string()
    assert QUERY_STRING_PATTERN.fullmatch(qs)
    assert len(qs) <= MAX_QUERY_STRING_LENGTH
    assert FluxSettings.from_query_string(qs) == s
    assert attrs.evolve(s) == s


@given(st.text(max_size=60))
def test_from_query_string_only_raises_validation_error(qs: str) -> None:
    try:
        s = FluxSettings.from_query_string(qs)
    except ValidationError:
        return
    assert QUERY_STRING_PATTERN.fullmatch(s.query_string())


# ---- capabilities ---------------------------------------------------------------------------


def test_capability_presets() -> None:
    latest = BundleCapabilities.latest()
    assert latest.configure
    assert latest.force_end_turn
    assert latest.numerals_param
    assert latest.profanity_filter_param
    assert not latest.close_stream_finalizes
    en = BundleCapabilities.flux_english_20260311()
    assert (en.configure, en.force_end_turn, en.numerals_param) == (False, False, False)
    assert en.close_stream_finalizes
    multi = BundleCapabilities.flux_multi_20260417()
    assert multi.configure
    assert not multi.profanity_filter_param


@pytest.mark.parametrize("value", ["false", 0, None])
def test_capabilities_are_bools(value: object) -> None:
    # "false" (read from a config file) used to switch Configure on.
    with pytest.raises(ValidationError, match=r"^BundleCapabilities\.configure="):
        BundleCapabilities(configure=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["numerals", "profanity_filter"])
@pytest.mark.parametrize("value", [True, False])
def test_check_capabilities(field: str, value: bool) -> None:
    s = FluxSettings(**{field: value})
    s.check_capabilities(BundleCapabilities.latest())
    with pytest.raises(CapabilityError, match=field):
        s.check_capabilities(BundleCapabilities.flux_multi_20260417())
    FluxSettings().check_capabilities(BundleCapabilities.flux_english_20260311())


def test_none_means_empty_for_lists() -> None:
    s = FluxSettings(keyterms=None, language_hints=None, tags=None, extra_params=None)
    assert (s.keyterms, s.language_hints, s.tags, s.extra_params) == ((), (), (), ())
    assert s == FluxSettings()
