"""What every fuzz suite checks of a command's result, and the corpus' location."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from click.testing import Result

CORPUS = Path(__file__).parent / "corpus"
REPO = Path(__file__).resolve().parents[2]


def assert_clean_exit(result: Result, allowed: set[int], argv: list[str]) -> None:
    """The command ended through sys.exit with one of the documented codes, printing no traceback."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (
        f"horde {' '.join(map(repr, argv))} raised {type(exc).__name__}: {exc}\n{result.output[-2000:]}"
    )
    assert "Traceback (most recent call last)" not in result.output, result.output[-2000:]
    assert result.exit_code in allowed, f"horde {argv!r}: exit {result.exit_code}\n{result.output[-2000:]}"


def build_bundle(out_dir: Path) -> Path:
    """A small synthetic finished bundle (the report tests' builder, loaded by path: test
    modules cannot import another directory's conftest)."""
    name = "_fuzz_report_conftest"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "coordinator" / "report" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    spec_ = module.SynthSpec(
        stages=(("ramp", 2), ("hold", 3)), endpoints=("health", "search"), rate_per_s=20, lose_agent_at_s=None
    )
    return Path(module.build_bundle(out_dir, spec_))
