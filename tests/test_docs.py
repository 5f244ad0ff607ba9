"""The code samples of README.md and docs/: all compile, and the runnable ones run as written
against the mock endpoint (pointed at through the AWS environment, as a user would point them at
SageMaker through theirs)."""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

# Imported here, before the in-process pytester run below: pytester unloads the modules a run
# imported first, and cryptography (under trustme) cannot be imported again in the same process.
import trustme  # noqa: F401

from flux_sagemaker import FluxClient
from flux_sagemaker.samples import load_sample
from flux_sagemaker.testing import MockFluxEndpoint
from flux_sagemaker.testing.server import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parent.parent
#: Every page with code samples (benchmarks.md and reliability_figures.md are generated figures).
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SAMPLE = load_sample()
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def samples(page: Path) -> list[str]:
    """The page's ```python blocks."""
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


def sample(page: str, containing: str) -> str:
    """The one python block of ``page`` (relative to the repository) holding ``containing``."""
    [found] = [s for s in samples(ROOT / page) if containing in s]
    return found


def _compile(source: str, name: str) -> Any:
    # Samples are written as they would appear inside an async function: top-level await.
    return compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def run_sample(source: str, namespace: dict[str, Any], name: str = "<sample>") -> None:
    """Run a sample in ``namespace``, awaiting it if it awaits at top level."""
    result = eval(_compile(source, name), namespace)
    if result is not None:
        await result


def _all_samples() -> Iterator[Any]:
    for page in PAGES:
        for index, source in enumerate(samples(page)):
            yield pytest.param(source, id=f"{page.name}-{index}")


@pytest.mark.parametrize("source", list(_all_samples()))
def test_every_python_sample_compiles(source: str) -> None:
    _compile(source, "<sample>")


@pytest.fixture
def sample_env(aws_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean AWS environment with the samples' region and the mock's credentials."""
    aws_env.setenv("AWS_REGION", "us-east-1")  # the samples' region
    aws_env.setenv("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
    return aws_env


@pytest.fixture
async def endpoint(sample_env: pytest.MonkeyPatch) -> AsyncIterator[MockFluxEndpoint]:
    """The mock, scripted with the sample's turns, where the environment points the samples."""
    async with MockFluxEndpoint(script=SAMPLE.turns) as mock:
        sample_env.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", mock.url)
        yield mock


async def microphone() -> AsyncIterator[bytes]:
    """The sample's audio in 20 ms chunks."""
    for offset in range(0, len(SAMPLE.pcm), 640):
        yield SAMPLE.pcm[offset : offset + 640]
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.md"])
async def test_the_transcribe_sample_runs(
    page: str, endpoint: MockFluxEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {}
    await run_sample(sample(page, "async def transcribe"), namespace, page)
    with anyio.fail_after(30):
        await namespace["transcribe"](microphone())
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        line for turn in SAMPLE.turns for line in ("user started speaking", f"final: {turn}")
    ]
    assert bytes(endpoint.streams[0].audio) == SAMPLE.pcm


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("page", "containing"),
    [("README.md", "MockFluxEndpoint(script="), ("docs/testing.md", "MockFluxEndpoint(script=")],
)
async def test_the_mock_endpoint_samples_run(page: str, containing: str) -> None:
    with anyio.fail_after(30):
        await run_sample(sample(page, containing), {}, page)


@pytest.mark.anyio
async def test_the_client_page_samples_run(endpoint: MockFluxEndpoint) -> None:
    """docs/client.md's samples, in the order a session would use them."""
    page = "docs/client.md"
    namespace: dict[str, Any] = {}
    exec("from flux_sagemaker import *", namespace)
    await run_sample(sample(page, "settings = FluxSettings("), namespace, page)
    await run_sample(sample(page, "as flux:\n    ..."), namespace, page)
    replies: list[str] = []
    drafts: list[str] = []

    class Player:
        async def stop(self) -> None:
            pass

    class Draft:
        def cancel(self) -> None:
            pass

    def start_reply(text: str) -> Draft:
        drafts.append(text)
        return Draft()

    async def reply(text: str) -> None:
        replies.append(text)

    namespace.update(player=Player(), reply=reply, start_reply=start_reply, log=None)
    client = FluxClient("my-flux-endpoint", region="us-east-1", settings=namespace["settings"])
    with anyio.fail_after(30):
        async with client as flux:
            namespace["flux"] = flux
            await run_sample(sample(page, "await flux.configure("), namespace, page)
            await run_sample(sample(page, "await flux.force_end_turn()"), namespace, page)

            async def send() -> None:
                async for chunk in microphone():
                    await flux.send_audio(chunk)
                await run_sample(sample(page, "await flux.close()"), namespace, page)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await run_sample(sample(page, "match event:"), namespace, page)
    assert replies == list(SAMPLE.turns)
    assert drafts  # eager mode is on in the settings sample


def test_the_reliability_sample_runs(sample_env: pytest.MonkeyPatch) -> None:
    # Building a client does no I/O: this checks the policies' names and values.
    run = _compile(sample("docs/reliability.md", "FluxClient("), "docs/reliability.md")
    exec(run, {})


def test_the_pytest_plugin_samples_run(pytester: pytest.Pytester) -> None:
    page = "docs/testing.md"
    pytester.makeconftest("import pytest\n\n" + sample(page, "def anyio_backend("))
    pytester.makepyfile(
        test_testing_page=sample(page, "async def test_two_turns("),
        test_readme="import pytest\n\n" + sample("README.md", "async def test_my_agent("),
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
