"""`horde history`: past runs and their headline figures across the history."""

from __future__ import annotations

import os
import sys

import click

from horde.coordinator.bundle.outcome import EXIT_ERROR
from horde.coordinator.commands.common import err


@click.command()
@click.option(
    "--results",
    "results_dir",
    default="results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The results directory whose history.sqlite3 to read.",
)
@click.option("--scenario", default=None, help="Only this scenario.")
@click.option("--limit", default=20, show_default=True)
@click.option("--metric", default="p99_latency_ms", show_default=True, help="The headline metric to track.")
@click.option("--endpoint", default=None)
def history(results_dir, scenario, limit, metric, endpoint) -> None:
    """List past runs and track their headline figures across the history."""
    from horde.coordinator.workflows.history import (
        History,
        HistoryError,
        default_history_path,
        text_history,
        text_track,
        track,
    )

    path = default_history_path(results_dir)
    if not os.path.exists(path):
        err(f"error: no run history at {path} (runs add themselves to it)")
        sys.exit(EXIT_ERROR)
    try:
        with History(path) as h:
            click.echo(text_history(h.runs(scenario, limit=limit)))
            for s in [scenario] if scenario else h.scenarios():
                try:
                    result = track(h, s, metric, endpoint=endpoint)
                except ValueError as exc:  # an unknown --metric
                    raise click.UsageError(str(exc)) from None
                click.echo(text_track(result))
    except HistoryError as exc:  # a damaged, foreign or locked history file
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
