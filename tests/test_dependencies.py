"""Runtime dependencies are what the package imports; test-only references are in the dev extra."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _imported_roots(folder: Path, *, exclude: tuple[str, ...] = ()) -> set[str]:
    roots: set[str] = set()
    for path in folder.rglob("*.py"):
        if any(part in exclude for part in path.relative_to(folder).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                roots.add(node.module.split(".")[0])
    return roots


def _names(requirements: list[str]) -> list[str]:
    return [r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requirements]


def test_grad_cam_is_a_test_reference_not_a_runtime_dependency() -> None:
    """medft computes its own CAMs (docs/architecture.md); grad-cam is the tests' yardstick."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "grad-cam" not in _names(project["dependencies"])
    assert "grad-cam" in _names(project["optional-dependencies"]["dev"])
    # The saliency benchmark times grad-cam beside medft when it is installed (a tool, not
    # library code: only `medft bench` imports medft.benchmarks, and it skips that column).
    assert "pytorch_grad_cam" not in _imported_roots(ROOT / "medft", exclude=("benchmarks",))
    assert "pytorch_grad_cam" in _imported_roots(ROOT / "tests")  # tests/explain/test_saliency.py
