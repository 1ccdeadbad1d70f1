"""The layout's rules, read from the code's own imports.

Imports point down the data flow (DESIGN.md, docs/architecture.md): a wing may import the
wings below it and never one above; `agents` imports neither coordinator nor cluster; only
`cluster` imports Ray; the pure wings read no clock and do no I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Higher ranks sit lower: a module may import only from wings of a strictly greater rank
# (or its own wing). `coordinator` alone is the package root (its version string).
RANK = {
    "coordinator.cli": -1,  # the group adds the commands below it
    "coordinator.commands": 0,
    "coordinator.workflows": 1,
    "coordinator.run": 2,
    "coordinator.report": 3,
    "coordinator.analysis": 4,
    "coordinator.bundle": 5,
    "coordinator.scenario": 6,
    "coordinator.plan": 7,
    "coordinator.measure": 7,
    "coordinator.judge": 7,
    "cluster": 7,
    "coordinator.units": 8,
    "coordinator.files": 8,
    "agents": 9,
    "automaton": 9,
    "coordinator": 10,
}
PURE = (
    "coordinator/measure",
    "coordinator/judge",
    "coordinator/analysis",
    "coordinator/scenario",
    "coordinator/plan.py",
    "coordinator/units.py",
)
PURE_EXCEPT = {
    "coordinator/scenario/load.py",  # reads the scenario file and the environment
    "coordinator/scenario/user_code.py",  # reads Python user files, imports them in a subprocess
}
IMPURE_MODULES = {
    "time",
    "datetime",
    "asyncio",
    "socket",
    "threading",
    "subprocess",
    "os",
    "pathlib",
    "io",
    "sqlite3",
    "shutil",
    "tempfile",
    "signal",
    "select",
    "selectors",
    "aiohttp",
    "uvloop",
    "ray",
    "urllib.request",
    "http",
    "psutil",
    "logging",
}


def _wing(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "horde" or len(parts) < 2:
        return None
    if parts[1] != "coordinator" or len(parts) == 2:
        return parts[1]
    return f"coordinator.{parts[2]}" if f"coordinator.{parts[2]}" in RANK else "coordinator"


def _sources() -> list[Path]:
    return sorted(p for top in ("agents", "cluster", "coordinator", "automaton") for p in (REPO / top).rglob("*.py"))


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "horde." + ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "horde.coordinator":
                found += [(node.lineno, f"horde.coordinator.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_every_wing_has_a_rank():
    wings = {_wing(_module_of(p)) for p in _sources()}
    assert wings <= set(RANK), wings - set(RANK)


def test_imports_point_down():
    wrong = []
    for path in _sources():
        mine = _wing(_module_of(path))
        for line, module in _imports(path):
            theirs = _wing(module)
            if theirs is None or theirs == mine or theirs == "coordinator":
                continue
            if RANK[theirs] <= RANK[mine]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({mine}) imports {module} ({theirs})")
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)


@pytest.mark.parametrize("top", ["agents", "automaton", "coordinator"])
def test_only_cluster_imports_ray(top):
    hits = [
        f"{p.relative_to(REPO)}:{line}"
        for p in (REPO / top).rglob("*.py")
        for line, m in _imports(p)
        if m == "ray" or m.startswith("ray.")
    ]
    assert not hits


def test_agents_import_no_driver_side_code():
    hits = [
        f"{p.relative_to(REPO)}:{line} {m}"
        for p in (REPO / "agents").rglob("*.py")
        for line, m in _imports(p)
        if _wing(m) not in (None, "agents")
    ]
    assert not hits


def _pure_files() -> list[Path]:
    files = []
    for entry in PURE:
        path = REPO / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return [p for p in files if p.relative_to(REPO).as_posix() not in PURE_EXCEPT]


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_pure_wings_read_no_clock_and_do_no_io(path):
    bad = [
        f"line {line}: imports {m}"
        for line, m in _imports(path)
        if m in IMPURE_MODULES or m.split(".")[0] in IMPURE_MODULES - {"urllib"}
    ]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad += [
        f"line {n.lineno}: calls open()"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"
    ]
    assert not bad, f"{path.relative_to(REPO)} is a pure module but:\n" + "\n".join(bad)
