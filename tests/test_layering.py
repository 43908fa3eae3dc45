"""The package layering of docs/ARCHITECTURE.md, checked on the source.

Every ``import`` of every module (top-level and inside functions) is read with ``ast``;
a module may import its own package and the packages of lower layers only:

    data, models, reporting  <  train  <  inference  <  explain  <  evaluate, predict

and nothing in ``cxrjax`` imports ``experiments`` or ``benchmarks`` (they sit on top).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "cxrjax.data": 0,
    "cxrjax.models": 0,
    "cxrjax.reporting": 0,
    "cxrjax.train": 1,
    "cxrjax.inference": 2,
    "cxrjax.explain": 3,
    "cxrjax.evaluate": 4,
    "cxrjax.predict": 4,
}


def package_of(module: str) -> str | None:
    """The layered package a dotted module name belongs to ("cxrjax" itself: None)."""
    parts = module.split(".")
    if parts[0] != "cxrjax" or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from cxrjax import data`` imports the subpackage cxrjax.data.
            if module == "cxrjax":
                found += [(node.lineno, f"cxrjax.{alias.name}") for alias in node.names]
    return found


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / "cxrjax").rglob("*.py")):
        own = package_of(module_name(path, root))
        if own is None:
            continue
        for line, module in imported_modules(path, root):
            where = f"{path.relative_to(root)}:{line} imports {module}"
            if module.split(".")[0] in ("experiments", "benchmarks"):
                bad.append(f"{where} (cxrjax never imports the experiments or benchmarks)")
                continue
            target = package_of(module)
            if target is None or target == own:
                continue
            if LAYERS[target] >= LAYERS[own]:
                bad.append(f"{where} ({own} is layer {LAYERS[own]}, {target} layer {LAYERS[target]})")
    return bad


def test_every_package_is_in_a_layer():
    packages = {package_of(module_name(p)) for p in (ROOT / "cxrjax").rglob("*.py")} - {None}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS and docs/ARCHITECTURE.md"


def test_imports_run_downward_only():
    assert violations() == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from cxrjax.evaluate import report\n", ["cxrjax/explain/x.py:1 imports cxrjax.evaluate"]),
        ("def f():\n    from cxrjax import inference\n", []),
        ("import experiments.grid\n", ["cxrjax/explain/x.py:1 imports experiments.grid"]),
    ],
)
def test_the_checker_sees_upward_imports(tmp_path, source, expected):
    """The walk finds an upward import at module level and inside functions (so a
    passing ``test_imports_run_downward_only`` means something)."""
    fake = tmp_path / "cxrjax" / "explain"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text(source)
    found = violations(tmp_path)
    assert [v.split(" (")[0] for v in found] == expected
