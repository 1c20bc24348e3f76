"""The house rules of docs/architecture.md that a script can check (issue 19)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 500


def test_every_module_over_500_lines_says_why_in_architecture_md() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    explained = set(re.findall(r"^\| `([\w/]+\.py)` \| \d+ \|", page, re.M))
    long_files = {
        path.relative_to(ROOT / "medft").as_posix()
        for path in (ROOT / "medft").rglob("*.py")
        if len(path.read_text(encoding="utf-8").splitlines()) > LIMIT
    }
    assert long_files, "the check found no file at all over the limit: is the path right?"
    unexplained = sorted(long_files - explained)
    assert not unexplained, (
        f"over {LIMIT} lines with no reason in docs/architecture.md: {unexplained}"
    )


def test_no_module_imports_another_packages_private_module() -> None:
    private = re.compile(r"^\s*(?:from|import)\s+medft\.(\w+)\.(_\w+)", re.M)
    offenders = []
    for path in (ROOT / "medft").rglob("*.py"):
        package = path.relative_to(ROOT / "medft").parts[0]
        for match in private.finditer(path.read_text(encoding="utf-8")):
            if match.group(1) != package:
                offenders.append(
                    f"{path.relative_to(ROOT)}: medft.{match.group(1)}.{match.group(2)}"
                )
    assert not offenders, offenders
