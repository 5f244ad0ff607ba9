"""What the distributions hold and need of their dependencies, from the sources (no network)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import tomllib
from pathlib import Path
from types import ModuleType

import flux_sagemaker.testing

ROOT = Path(__file__).parent.parent
PACKAGE = Path(flux_sagemaker.testing.__file__).parent.parent


def _imported_top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_the_sdist_holds_the_packages_the_tests_import() -> None:
    # The sdist ships the tests so that they can run from it: every package of the source tree
    # that they import must come along (test_benchmarks.py imports benchmarks).
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    include = set(pyproject["tool"]["hatch"]["build"]["targets"]["sdist"]["include"])
    local = {path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file()}
    local |= {path.stem for path in ROOT.glob("*.py")}
    imported: set[str] = set()
    for test in (ROOT / "tests").rglob("*.py"):
        imported |= _imported_top_level_names(test)
    assert sorted((imported & local) - include) == []


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _anyio_names_used() -> set[str]:
    """Every ``anyio.x.y`` our package reads, and every name it imports from anyio."""
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anyio"):
                used |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Attribute):
                parts = [node.attr]
                value = node.value
                while isinstance(value, ast.Attribute):
                    parts.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id == "anyio":
                    used.add(".".join(["anyio", *reversed(parts)]))
    return used


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    obj: object = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], 2):
        if isinstance(obj, ModuleType) and not hasattr(obj, part):
            obj = importlib.import_module(".".join(parts[:index]))
        else:
            obj = getattr(obj, part)
    return obj


def test_the_anyio_api_used_exists_in_the_oldest_anyio_we_accept() -> None:
    # The mock endpoint used anyio.move_on_at (new in anyio 4.15) under "anyio>=4.5": with an
    # anyio 4.5-4.14 (pinned by another dependency) every mock stream crashed into a reset.
    # anyio marks each addition with a ".. versionadded::" in its docstring.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    [floor] = [
        _version(match.group(1))
        for requirement in pyproject["project"]["dependencies"]
        if (match := re.fullmatch(r"anyio>=([0-9.]+)", requirement))
    ]
    newer = {
        dotted: added
        for dotted in sorted(_anyio_names_used())
        for added in re.findall(
            r"versionadded::\s*([0-9.]+)", inspect.getdoc(_resolve(dotted)) or ""
        )
        if _version(added) > floor
    }
    assert newer == {}


def test_the_license_text_ships_with_both_distributions() -> None:
    # MIT asks for its text to come with every copy: hatchling puts LICENSE in the wheel's
    # metadata on its own; the sdist takes what its include list names.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert pyproject["project"]["license"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text("utf-8")
    assert "LICENSE" in pyproject["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
