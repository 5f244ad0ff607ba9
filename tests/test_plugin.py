"""The pytest plugin: the flux_endpoint fixture and marker, run in pytester's sandboxes."""

from __future__ import annotations

import pytest

# Imported here, before any in-process sandbox run: pytester unloads the modules a run imported
# first, and cryptography (under trustme) cannot be imported again in the same process.
import trustme  # noqa: F401

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

STREAM_SAMPLE = """
import anyio
import pytest
from flux_sagemaker import EndOfTurn, FluxClient
from flux_sagemaker.samples import load_sample

async def transcribe(endpoint):
    pcm, _, _ = load_sample()
    events = []
    async with FluxClient("any", **endpoint.client_kwargs()) as flux:
        async def send():
            for offset in range(0, len(pcm), 2560):
                await flux.send_audio(pcm[offset:offset + 2560])
            await flux.close()
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            events = [event async for event in flux]
    return events

def finals(events):
    return [e.transcript for e in events if isinstance(e, EndOfTurn)]
"""


@pytest.fixture
def sandbox(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(helpers=STREAM_SAMPLE)
    return pytester


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.flux_endpoint(script=(), tls=False, *"])


def test_fixture_plays_the_marker_script(sandbox: pytest.Pytester) -> None:
    sandbox.makepyfile(
        """
        import pytest
        from helpers import finals, transcribe

        SCRIPT = ["Hi, I'd like a table for two.", "Tomorrow at seven, please."]

        @pytest.mark.anyio
        @pytest.mark.flux_endpoint(script=SCRIPT)
        async def test_script(flux_endpoint):
            assert flux_endpoint.url.startswith("http://127.0.0.1:")
            events = await transcribe(flux_endpoint)
            assert finals(events) == SCRIPT
            assert flux_endpoint.streams[0].input_ended

        @pytest.mark.anyio
        @pytest.mark.flux_endpoint(["Just one turn."])
        async def test_positional_script(flux_endpoint):
            assert [t.transcript for t in flux_endpoint.script] == ["Just one turn."]

        @pytest.mark.anyio
        async def test_defaults(flux_endpoint):
            assert flux_endpoint.script == () and flux_endpoint.bundle.name == "newest"
        """
    )
    result = sandbox.runpytest("-p", "anyio", "--strict-markers")
    result.assert_outcomes(passed=6)  # three tests on asyncio and trio


def test_fixture_tls_bundle_and_faults(sandbox: pytest.Pytester) -> None:
    sandbox.makepyfile(
        """
        import pytest
        from flux_sagemaker.testing import FLUX_ENGLISH_20260311, Fault, FaultKind
        from helpers import finals, transcribe

        FAULT = Fault(kind=FaultKind.LATENCY, after_audio_s=1.0, latency=0.001)

        @pytest.mark.anyio
        @pytest.mark.flux_endpoint(script=["One.", "Two words."], tls=True, faults=[FAULT])
        async def test_tls_and_fault(flux_endpoint):
            assert flux_endpoint.url.startswith("https://")
            events = await transcribe(flux_endpoint)
            assert finals(events) == ["One.", "Two words."]
            assert flux_endpoint.streams[0].fault == FAULT

        @pytest.mark.flux_endpoint(bundle=FLUX_ENGLISH_20260311, region="eu-west-1")
        class TestClassMarker:
            @pytest.mark.anyio
            async def test_class_marker(self, flux_endpoint):
                assert flux_endpoint.bundle is FLUX_ENGLISH_20260311
                assert flux_endpoint.client_kwargs()["region"] == "eu-west-1"

            @pytest.mark.anyio
            @pytest.mark.flux_endpoint(script=["Closest wins."])
            async def test_closest_marker_wins(self, flux_endpoint):
                assert flux_endpoint.bundle.name == "newest"
        """
    )
    result = sandbox.runpytest("-p", "anyio")
    result.assert_outcomes(passed=6)


def test_a_crash_in_the_mock_fails_the_test_that_used_it(sandbox: pytest.Pytester) -> None:
    sandbox.makepyfile(
        """
        import pytest
        from flux_sagemaker import FluxClient, FluxError, RetryPolicy

        @pytest.mark.anyio
        async def test_client_sees_only_a_reset(flux_endpoint):
            def broken(query_string):
                raise KeyError("a bug in the mock")

            flux_endpoint._parse_settings = broken
            with pytest.raises(FluxError):
                kwargs = flux_endpoint.client_kwargs()
                async with FluxClient("any", retry=RetryPolicy(enabled=False), **kwargs):
                    pass
        """
    )
    result = sandbox.runpytest("-p", "anyio")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*the mock endpoint's request handling raised*a bug in the mock*"])


def test_bad_marker_arguments(sandbox: pytest.Pytester) -> None:
    sandbox.makepyfile(
        """
        import pytest

        @pytest.mark.anyio
        @pytest.mark.flux_endpoint(["a"], ["b"])
        async def test_two_positionals(flux_endpoint):
            pass

        @pytest.mark.anyio
        @pytest.mark.flux_endpoint(no_such_option=1)
        async def test_unknown_option(flux_endpoint):
            pass

        @pytest.mark.anyio
        @pytest.mark.flux_endpoint("Hi.")  # was played as three turns: "H", "i" and "."
        async def test_script_given_as_one_string(flux_endpoint):
            pass
        """
    )
    result = sandbox.runpytest("-p", "anyio")
    result.assert_outcomes(errors=6)
    result.stdout.fnmatch_lines(["*takes the script as its only positional argument*"])
    result.stdout.fnmatch_lines(["*no_such_option*"])
    result.stdout.fnmatch_lines(["*script must be a list of turns*got a str*"])


def test_loading_the_plugin_imports_nothing_optional(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_modules(request):
            assert request.config.pluginmanager.has_plugin("flux_sagemaker")
            assert "trustme" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
