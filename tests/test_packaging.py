"""What the distributions hold, checked from the sources (no build, no network)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


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
