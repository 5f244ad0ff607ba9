"""A short run of the soak (``benchmarks/soak.py``): many sessions, random faults, an audit of
every audio byte from the mock's records alone.

The rest of the suite strikes one fault at a time. The soak strikes many, on sessions sharing
connections, each at whatever moment it comes. It found a silent loss of audio and a
``LocalProtocolError`` that ended sessions, which one fault at a time never showed (on the tree
before their fixes, 3 of 4 runs of this soak failed). The faults' timing depends on scheduling,
so a regression may take more than one run to show. Sessions that run out of retries on a slow
machine are reported, not failed on (``--allow-retryable-failures``); any other failure, and
any byte lost, fails the test.
"""

from __future__ import annotations

import pytest

from benchmarks import soak


def test_a_short_soak_loses_no_audio_and_ends_no_session_with_a_bug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--streams", "50", "--duration", "20", "--seed", "3", "--refusal-rate", "0.1"]
    status = soak.main([*args, "--allow-retryable-failures"])
    summary = capsys.readouterr().out
    assert "audio bytes lost              0 (+0 in failed sessions" in summary, summary
    assert status == 0, summary
