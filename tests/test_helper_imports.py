"""Test modules share helpers through support modules, never through each other.

A test module that imports another (``from tests.experiments.test_exp_cross_validate
import tiny_args``) ties the two together: the imported module's fixtures and top-level
work run in the importing one, and moving or deleting a test breaks an unrelated file.
Shared helpers live in the fixture modules (``tests/*/support.py``, ``fixtures.py``,
``conftest.py``, ``keras_reference.py``...); this checks every import in tests/ with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imports_of_test_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path`` of a ``test_*`` module (dotted
    ``tests.<...>.test_x``, or a bare ``test_x`` next to it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[-1].startswith("test_")]
    return found


def test_the_check_sees_both_spellings(tmp_path):
    source = tmp_path / "test_m.py"
    source.write_text(
        "from tests.experiments.test_exp_cross_validate import tiny_args\n"
        "import test_other\n"
        "from tests.experiments.support import tiny_args\n"
    )
    assert imports_of_test_modules(source) == [(1, "tests.experiments.test_exp_cross_validate"), (2, "test_other")]


def test_no_test_module_imports_another():
    offending = [
        f"{path.relative_to(TESTS.parent)}:{line}: {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, module in imports_of_test_modules(path)
    ]
    assert not offending, f"move the shared helpers into a support module: {offending}"
