"""`python -m automaton serve`: the reference automaton as a standalone process."""

from __future__ import annotations

import sys

import click

from automaton.faults import FaultConfig
from automaton.server import serve


@click.group()
def main() -> None:
    """The reference automaton: the system under test horde ships."""


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int, help="0 picks a free port.")
@click.option("--stall-every", "stall_every_s", type=float, default=None, help="Stall period, seconds.")
@click.option("--stall-for", "stall_for_s", type=float, default=None, help="Stall length, seconds.")
@click.option("--db", "db_path", default=None, help="SQLite file (default: a temporary one, deleted at exit).")
@click.option("--async-workflows", is_flag=True, help="Workflow runs answer 202 and finish in the background.")
def serve_command(
    host: str,
    port: int,
    stall_every_s: float | None,
    stall_for_s: float | None,
    db_path: str | None,
    async_workflows: bool,
) -> None:
    """Serve until SIGTERM/SIGINT; prints `listening http://HOST:PORT` once ready."""
    try:
        faults = FaultConfig(stall_every_s=stall_every_s, stall_for_s=stall_for_s)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    def announce(url: str) -> None:
        # launch.start_automaton waits for exactly this line.
        sys.stdout.write(f"listening {url}\n")
        sys.stdout.flush()

    try:
        serve(host, port, faults, db_path=db_path, ready_callback=announce, async_workflows=async_workflows)
    except OSError as exc:  # port in use, address not available, unwritable --db
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main(prog_name="python -m automaton")
