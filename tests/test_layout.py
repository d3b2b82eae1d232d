"""Test modules share helpers through tests/helpers.py and tests/ranks.py, never through each other
or through conftest.py (which pytest loads itself, as a plugin)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports, relative ones written as from the tests package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("tests." if node.level else "") + (node.module or "")
            found.append(base)
            if node.module is None:  # from . import test_x
                found += [f"tests.{alias.name}" for alias in node.names]
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and len(parts) > 1 and (parts[1].startswith("test_") or parts[1] == "conftest")


def test_no_test_module_imports_another_test_module_or_conftest() -> None:
    offenders = {
        path.name: bad
        for path in sorted(TESTS.glob("*.py"))
        if (bad := [name for name in imported_modules(path) if is_test_module(name)])
    }
    assert offenders == {}


def test_the_check_sees_each_way_of_writing_such_an_import(tmp_path: Path) -> None:
    module = tmp_path / "test_example.py"
    module.write_text(
        "import tests.test_a\nfrom tests.test_b import x\nfrom .test_c import y\nfrom . import test_d\n"
        "from .conftest import z\nfrom tests.helpers import ENGLISH\nimport chargen.test_like\n",
        encoding="utf-8",
    )
    flagged = [name for name in imported_modules(module) if is_test_module(name)]
    assert flagged == ["tests.test_a", "tests.test_b", "tests.test_c", "tests.test_d", "tests.conftest"]
