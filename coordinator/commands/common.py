"""What the commands share: an error line on stderr, and reading a scenario or a bundle
with the exit code its failure maps to (coordinator/bundle/outcome.py)."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from horde.coordinator.bundle.outcome import EXIT_ERROR, EXIT_INVALID_SCENARIO


def err(msg: str) -> None:
    click.echo(msg, err=True)


def load_or_exit(file: str, overrides: tuple[str, ...]):
    from horde.coordinator.scenario.load import ScenarioError, load_scenario

    try:
        return load_scenario(file, overrides=overrides)
    except ScenarioError as exc:
        err(f"invalid scenario {file}: {len(exc.problems)} problem(s)")
        for p in exc.problems:
            err(f"  {p.path}: {p.message}")
        sys.exit(EXIT_INVALID_SCENARIO)


def set_file_overrides(path: str | None) -> tuple[str, ...]:
    """The overrides in a --set-file: a JSON list of KEY=VALUE texts. `horde submit` writes them
    into the job's working_dir so their values never appear on the job's command line."""
    if path is None:
        return ()
    import json

    from horde.coordinator.scenario.load import MAX_SCENARIO_BYTES, _read_bounded

    try:  # bounded as the scenario is: /dev/zero or a FIFO is refused, not read without end
        items = json.loads(_read_bounded(path, MAX_SCENARIO_BYTES).decode("utf-8"))
    except (OSError, ValueError) as exc:  # the JSON error names a line and column, never the content
        err(f"invalid --set-file {path}: {exc}")
        sys.exit(EXIT_INVALID_SCENARIO)
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        err(f"invalid --set-file {path}: expected a JSON list of KEY=VALUE texts")
        sys.exit(EXIT_INVALID_SCENARIO)
    return tuple(items)


def read_or_exit(bundle):
    from horde.coordinator.bundle.store import BundleError, read_bundle

    try:
        return read_bundle(bundle)
    except BundleError as exc:
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)


@contextlib.contextmanager
def bundle_errors(*bundles):
    """A BundleError found while reading a bundle's records: exit 1 with it. Records the
    readers skipped (a damaged line of windows.jsonl, ...): a warning with their count."""
    from horde.coordinator.bundle.store import BundleError

    try:
        yield
        for b in bundles:
            if skipped := b.skipped_records():
                more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
                err(f"warning: {b.path}: skipped {len(skipped)} damaged record(s): {'; '.join(skipped[:3])}{more}")
    except BundleError as exc:
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    except (ArithmeticError, ValueError) as exc:  # figures that fit the format but not arithmetic
        if os.environ.get("HORDE_DEBUG"):
            raise
        names = ", ".join(str(b.path) for b in bundles)
        err(f"error: {names}: figures out of range: {type(exc).__name__}: {exc} (set HORDE_DEBUG=1 for the traceback)")
        sys.exit(EXIT_ERROR)
