"""Client control messages: exact bytes, Configure validation and apply_to."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_sagemaker.core.commands import Configure, close_stream, force_end_turn
from flux_sagemaker.core.eventstream import decode_message
from flux_sagemaker.core.settings import BundleCapabilities, FluxSettings
from flux_sagemaker.errors import CapabilityError, ValidationError
from tests.conftest import VECTORS

CAPTURE = VECTORS / "aws-sdk-capture" / "close-stream-frame.hex"


def test_close_stream_exact_bytes() -> None:
    assert close_stream() == b'{"type":"CloseStream"}'


def test_close_stream_matches_the_aws_sdk_capture() -> None:
    envelope = decode_message(bytes.fromhex(CAPTURE.read_text().strip()))
    inner = decode_message(envelope.payload)
    assert inner.headers["DataType"] == "UTF8"
    assert inner.payload == close_stream()


def test_force_end_turn_exact_bytes() -> None:
    assert force_end_turn() == b'{"type":"ForceEndTurn"}'


@pytest.mark.parametrize(
    ("kwargs", "wire"),
    [
        (
            {"eot_threshold": 0.8, "eot_timeout_ms": 5000},
            b'{"type":"Configure","thresholds":{"eot_threshold":0.8,"eot_timeout_ms":5000}}',
        ),
        (
            {"keyterms": ["product_name", "feature_name", "company_name"]},
            b'{"type":"Configure","keyterms":["product_name","feature_name","company_name"]}',
        ),
        (
            {
                "language_hints": ["en", "es"],
                "eot_threshold": 0.8,
                "eot_timeout_ms": 6000,
                "keyterms": ["product_name"],
            },
            b'{"type":"Configure","thresholds":{"eot_threshold":0.8,"eot_timeout_ms":6000},'
            b'"keyterms":["product_name"],"language_hints":["en","es"]}',
        ),
        ({"language_hints": []}, b'{"type":"Configure","language_hints":[]}'),
        ({"keyterms": []}, b'{"type":"Configure","keyterms":[]}'),
        ({"numerals": False}, b'{"type":"Configure","numerals":false}'),
        (
            {"eager_eot_threshold": 0.4, "eot_threshold": 0.7},
            b'{"type":"Configure","thresholds":{"eot_threshold":0.7,"eager_eot_threshold":0.4}}',
        ),
        (
            {"keyterms": ['café "x"']},
            '{"type":"Configure","keyterms":["café \\"x\\""]}'.encode(),
        ),
    ],
)
def test_configure_wire_bytes(kwargs: dict[str, Any], wire: bytes) -> None:
    assert Configure(**kwargs).to_json() == wire


def test_configure_normalizes_like_settings() -> None:
    c = Configure(language_hints=["en-GB", "ES"], keyterms=[" a "], eot_threshold=1)
    assert c.language_hints == ("en", "es")
    assert c.keyterms == ("a",)
    assert c.to_json() == (
        b'{"type":"Configure","thresholds":{"eot_threshold":1.0},"keyterms":["a"],'
        b'"language_hints":["en","es"]}'
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "at least one field"),
        ({"eot_threshold": 0.2}, "eot_threshold"),
        ({"eager_eot_threshold": 0.95}, "eager_eot_threshold"),
        ({"eager_eot_threshold": 0.8, "eot_threshold": 0.6}, "eager_eot_threshold"),
        ({"eot_timeout_ms": 100}, "eot_timeout_ms"),
        ({"keyterms": ["a"] * 101}, "keyterms"),
        ({"keyterms": [""]}, "keyterms"),
        ({"language_hints": ["klingon"]}, "language_hints"),
        ({"numerals": "true"}, "numerals"),
    ],
)
def test_configure_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Configure(**kwargs)
    assert field in str(info.value)


def test_apply_to_replaces_and_clears() -> None:
    settings = FluxSettings(
        model="flux-general-multi", keyterms=["a", "b"], language_hints=["en"], eot_threshold=0.8
    )
    after = Configure(keyterms=[], eot_timeout_ms=7000).apply_to(settings)
    assert after.keyterms == ()
    assert after.language_hints == ("en",)
    assert after.eot_threshold == 0.8
    assert after.eot_timeout_ms == 7000
    cleared = Configure(language_hints=[], keyterms=["c"]).apply_to(settings)
    assert cleared.language_hints == ()
    assert cleared.keyterms == ("c",)
    assert cleared.query_string().endswith("&eot_threshold=0.8&keyterm=c")


def test_apply_to_checks_eager_against_the_settings() -> None:
    with pytest.raises(ValidationError, match="eager_eot_threshold"):
        Configure(eager_eot_threshold=0.75).apply_to(FluxSettings())
    with pytest.raises(ValidationError, match="eager_eot_threshold"):
        Configure(eot_threshold=0.5).apply_to(FluxSettings(eager_eot_threshold=0.6))
    ok = Configure(eager_eot_threshold=0.75).apply_to(FluxSettings(eot_threshold=0.8))
    assert ok.eager_eot_threshold == 0.75


def test_apply_to_checks_language_hints_against_the_model() -> None:
    with pytest.raises(ValidationError, match="language_hints"):
        Configure(language_hints=["fr"]).apply_to(FluxSettings())


def test_check_capabilities() -> None:
    c = Configure(eot_threshold=0.9)
    c.check_capabilities(BundleCapabilities.flux_multi_20260417())
    with pytest.raises(CapabilityError, match="Configure"):
        c.check_capabilities(BundleCapabilities.flux_english_20260311())
    numerals = Configure(numerals=True)
    numerals.check_capabilities(BundleCapabilities.latest())
    with pytest.raises(CapabilityError, match="numerals"):
        numerals.check_capabilities(BundleCapabilities.flux_multi_20260417())


@given(
    eot=st.none() | st.floats(0.5, 1.0),
    timeout=st.none() | st.integers(500, 60000),
    keyterms=st.none() | st.lists(st.text("abc xyz", min_size=1).filter(str.strip), max_size=3),
    numerals=st.none() | st.booleans(),
)
def test_to_json_holds_only_given_fields(
    eot: float | None, timeout: int | None, keyterms: list[str] | None, numerals: bool | None
) -> None:
    try:
        c = Configure(
            eot_threshold=eot, eot_timeout_ms=timeout, keyterms=keyterms, numerals=numerals
        )
    except ValidationError:
        assert (eot, timeout, keyterms, numerals) == (None, None, None, None)
        return
    obj = json.loads(c.to_json())
    assert obj.pop("type") == "Configure"
    thresholds = obj.pop("thresholds", {})
    assert thresholds.get("eot_threshold") == eot
    assert thresholds.get("eot_timeout_ms") == timeout
    assert obj.get("keyterms") == (None if keyterms is None else [k.strip() for k in keyterms])
    assert obj.get("numerals") == numerals
    assert set(obj) <= {"keyterms", "numerals"}
