"""SessionLog: the prefix and fields of a session's log records."""

from __future__ import annotations

import logging

import pytest

from flux_sagemaker.session_log import SessionLog, check_log_extra


def test_records_before_the_first_stream_name_the_endpoint_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = SessionLog(logging.getLogger("flux_sagemaker"), "ep", {"a": 1})
    with caplog.at_level(logging.INFO, logger="flux_sagemaker"):
        log.info("opening %s", "now")
        log.request_id = "r-1"
        log.info("open")
    first, second = caplog.records
    assert first.getMessage() == "[ep] opening now"
    assert first.flux_request_id is None
    assert second.getMessage() == "[ep r-1] open"
    assert (second.flux_endpoint, second.flux_request_id, second.a) == ("ep", "r-1", 1)


def test_a_percent_sign_from_the_server_is_text_not_a_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = SessionLog(logging.getLogger("flux_sagemaker"), "ep", {})
    log.request_id = "id%s%d"
    with caplog.at_level(logging.INFO, logger="flux_sagemaker"):
        log.warning("failed (%s)", "reset")
    (record,) = caplog.records
    assert record.getMessage() == "[ep id%s%d] failed (reset)"


def test_log_extra_is_copied() -> None:
    extra = {"call_id": "c"}
    checked = check_log_extra(extra)
    extra["call_id"] = "changed"
    assert checked == {"call_id": "c"}
    assert check_log_extra(None) == {}
