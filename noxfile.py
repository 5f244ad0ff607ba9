"""Development sessions: tests, lint, typecheck, docs, bench, soak and interop."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.11", "3.12", "3.13"]
ROOT = Path(__file__).parent

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
# uv creates and fills each session's environment in about 25 s where pip takes about 40: five
# environments in a CI run. With `pip install nox` alone (not "nox[uv]"), nox falls back to
# virtualenv and pip. uv compiles bytecode at install, as pip does: with PYTHONDONTWRITEBYTECODE
# set (as on this machine) every test process, the CLI's subprocesses too, would otherwise compile
# botocore and pipecat again from source. uv must never fetch an interpreter: a missing one is
# skipped (below).
nox.options.default_venv_backend = "uv|virtualenv"
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
# A missing interpreter is skipped (and reported), never silently passed: on CI nox would otherwise
# fail the whole run for a Python version that the machine simply does not have.
nox.options.error_on_missing_interpreters = False


def _add_pyenv_interpreters() -> None:
    """Put pyenv's interpreters on PATH so that nox finds python3.12 and python3.13 there too."""
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    versions = Path(root) / "versions"
    if not versions.is_dir():
        return
    extra = [str(path / "bin") for path in sorted(versions.iterdir(), reverse=True)]
    os.environ["PATH"] = os.pathsep.join([*os.environ.get("PATH", "").split(os.pathsep), *extra])


_add_pyenv_interpreters()


def _install(session: nox.Session, *extras: str, groups: tuple[str, ...] = ()) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    if session.venv_backend != "uv":
        session.install("--upgrade", "pip")  # older pips lack --group
    args = [spec]
    for group in groups:
        args += ["--group", group]
    session.install(*args)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the whole test suite (core, end to end, CLI, Pipecat adapter).

    On the first Python, on asyncio and trio with branch coverage; on the others, on asyncio
    only and without coverage: all three versions in full took 28 minutes on a 2-core CI
    machine, whose budget is 20. Tests run in one worker per core (pytest-xdist; `-- -n 0`
    runs them in one process); coverage follows the workers through its subprocess patch.
    """
    _install(session, "testing", "pipecat", groups=("test",))
    pytest_args = ["-n", "auto", *session.posargs]
    if session.python != PYTHONS[0]:
        session.run("pytest", *pytest_args, env={"FLUX_TEST_BACKENDS": "asyncio"})
        return
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *pytest_args)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report", "--fail-under=90")
    session.run(
        "coverage",
        "report",
        "--include=flux_sagemaker/core/*",
        "--fail-under=95",
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("--group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    _install(session, "testing", "pipecat", groups=("typecheck",))
    session.run("mypy", "--strict", "flux_sagemaker")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict."""
    _install(session, "testing", groups=("docs",))
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


# The peers the benchmarks compare against run under Python 3.12 in environments of their own:
# deepgram-sagemaker 0.4 needs the AWS SDK 0.11, while the official client is measured at 0.12.
PEER_REQUIREMENTS = {
    "FLUX_BENCH_PY312": ["aws-sdk-sagemaker-runtime-http2==0.12.0", "smithy-http[awscrt]==0.6.0"],
    "FLUX_BENCH_PY312_DEEPGRAM": ["deepgram-sdk==7.17.0", "deepgram-sagemaker==0.4.0"],
}


def _peer_pythons(session: nox.Session) -> dict[str, str]:
    """Create (once) the peers' 3.12 environments; return their interpreters by variable."""
    python312 = shutil.which("python3.12")
    if python312 is None:
        session.warn("python3.12 not found: the AWS SDK and Deepgram peers are skipped")
        return {}
    found = {}
    for variable, requirements in PEER_REQUIREMENTS.items():
        venv = ROOT / ".nox" / f"bench-peer-{variable.lower()}"
        python = venv / "bin" / "python"
        if not python.exists():
            session.run(python312, "-m", "venv", str(venv), external=True)
            session.run(str(python), "-m", "pip", "install", "-q", *requirements, external=True)
        found[variable] = str(python)
    return found


# On 3.12, like the peers (the AWS SDK needs 3.12+): the client comparison is like for like.
@nox.session(python="3.12")
def bench(session: nox.Session) -> None:
    """Run the benchmarks and rewrite docs/benchmarks.md (long; not part of CI)."""
    _install(session, "testing", groups=("bench",))
    session.run("python", "-m", "benchmarks", *session.posargs, env=_peer_pythons(session))


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """Concurrent sessions (100 by default) with random faults for a bounded time (not in CI),
    split among a process per core (`--processes 1`: one process)."""
    _install(session, "testing", groups=("test",))
    session.run("python", "-m", "benchmarks.soak", *session.posargs)


@nox.session(python="3.12")
def interop(session: nox.Session) -> None:
    """The official AWS SDK client streams through the mock endpoint (Python 3.12+)."""
    _install(session, "testing", groups=("test", "interop"))
    session.run("pytest", "tests/interop", "-p", "no:cacheprovider", *session.posargs)
