"""Layers point one way: bundle <- spool <- {agent, coordinator}.  A reverse import fails.

``coordinator/simulate.py`` is the one module allowed to drive agent code (it plays the
agents and the courier); nothing else crosses between agent and coordinator.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bundle", "spool", "agent", "coordinator")
ALLOWED = {
    "bundle": set(),
    "spool": {"bundle"},
    "agent": {"bundle", "spool"},
    "coordinator": {"bundle", "spool"},
}
CROSSING_ALLOWED = {Path("coordinator/simulate.py"): {"agent"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names)
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT)
        allowed = ALLOWED[package] | {package} | CROSSING_ALLOWED.get(relative, set())
        bad = imported_packages(path) - allowed
        if bad:
            offenders.append(f"{relative} imports {sorted(bad)}")
    assert offenders == []


def test_the_scan_sees_imports() -> None:
    assert imported_packages(ROOT / "coordinator" / "simulate.py") >= {"agent", "bundle"}
