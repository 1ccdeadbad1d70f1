"""Lint, format and type checks over the tree, run as part of the test suite (so `.ci/run` runs them).

Each check is a subprocess of this interpreter (`python -m ruff`, `python -m mypy`) with the
configuration in pyproject.toml; a failure shows that tool's own output under a header saying
which check failed. Beside them: every third-party package the product code imports is declared
in pyproject's dependencies, and every `# type: ignore[code]` says why on its line.

mypy cannot follow the editable install's import hook that maps the folders to `horde.*`
(setuptools' package-dir), so it reads the product code through a link tree
`.mypy_cache/horde-tree/horde/<wing> -> <wing>/`; its paths are shown repo-relative.
By hand: `python tests/architecture/test_lint.py` lays the tree and runs mypy.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
WINGS = ("agents", "cluster", "coordinator", "automaton")
MYPY_TREE = REPO / ".mypy_cache" / "horde-tree"
TOOL_TIMEOUT_S = 300

pytestmark = pytest.mark.lint


def lay_mypy_tree() -> Path:
    """Make `.mypy_cache/horde-tree/horde/<wing>` point at each product folder (relative links)."""
    horde = MYPY_TREE / "horde"
    horde.mkdir(parents=True, exist_ok=True)
    for wing in WINGS:
        link = horde / wing
        target = os.path.relpath(REPO / wing, horde)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return MYPY_TREE


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(args)}` took over {TOOL_TIMEOUT_S} s:\n{exc.stdout or ''}{exc.stderr or ''}")


def _check_clean(title: str, *args: str, rewrite: tuple[str, str] | None = None) -> None:
    result = _tool(*args)
    if result.returncode == 0:
        return
    output = (result.stdout + result.stderr).strip()
    if "No module named" in output and args[0] in output:
        pytest.fail(f"{title}: {args[0]} is not installed (it is in the `test` extra: pip install -e '.[test]')")
    if rewrite:
        output = output.replace(*rewrite)
    pytest.fail(f"{title} FAILED (`python -m {' '.join(args)}`, exit {result.returncode}):\n{output}", pytrace=False)


def test_ruff_lint_is_clean() -> None:
    _check_clean("RUFF LINT", "ruff", "check", "--no-cache", "--output-format", "concise", ".")


def test_ruff_format_is_clean() -> None:
    _check_clean("RUFF FORMAT (run `ruff format .`)", "ruff", "format", "--no-cache", "--check", ".")


def test_mypy_is_clean() -> None:
    lay_mypy_tree()
    prefix = str((MYPY_TREE / "horde").relative_to(REPO)) + os.sep
    _check_clean("MYPY", "mypy", rewrite=(prefix, ""))


def _product_files() -> list[Path]:
    return sorted(p for wing in WINGS for p in (REPO / wing).rglob("*.py"))


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level name of each non-stdlib, non-horde import -> the files importing it."""
    found: dict[str, set[str]] = {}
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "horde":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_normalise(re.match(r"[A-Za-z0-9._-]+", dep).group(0)) for dep in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert "numpy" in imports  # the scan sees imports at all
    problems = []
    for top, files in sorted(imports.items()):
        distributions = {_normalise(d) for d in providers.get(top, [])}
        if not distributions:
            problems.append(f"{top}: imported by {sorted(files)} but installed by no distribution here")
        elif not distributions & declared:
            problems.append(f"{top} (from {sorted(distributions)}): imported by {sorted(files)}, not in dependencies")
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


IGNORE = re.compile(r"#\s*type:\s*ignore\b(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")


def test_every_type_ignore_names_its_code_and_reason() -> None:
    problems = []
    for path in _product_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = IGNORE.search(line)
            if match is None:
                continue
            if not match.group("codes") or not re.match(r"\s*#\s*\S", match.group("rest")):
                problems.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not problems, "`# type: ignore[code]  # why` expected:\n" + "\n".join(problems)


if __name__ == "__main__":
    lay_mypy_tree()
    sys.exit(subprocess.call([sys.executable, "-m", "mypy", *sys.argv[1:]], cwd=REPO))
