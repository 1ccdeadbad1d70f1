"""`python -m automaton serve`: the reference automaton as a standalone process."""

from __future__ import annotations

import json
import sys

import click

from horde.automaton.fault_model import FaultConfigError, TargetFaults, fault_config_from_dict
from horde.automaton.server import serve

# The admin token travels in the environment rather than argv, where `ps` shows it.
ADMIN_TOKEN_ENV = "AUTOMATON_ADMIN_TOKEN"


@click.group()
def main() -> None:
    """The reference automaton: the system under test horde ships."""


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int, help="0 picks a free port.")
@click.option("--stall-every", "stall_every_s", type=float, default=None, help="Stall period, seconds.")
@click.option("--stall-for", "stall_for_s", type=float, default=None, help="Stall length, seconds.")
@click.option(
    "--faults-json",
    default=None,
    metavar="JSON",
    help="Faults as JSON (automaton/fault_model.py, the same model as a scenario's "
    "target.embedded.faults); '@FILE' reads a file.",
)
@click.option(
    "--admin-port",
    default=0,
    show_default=True,
    type=int,
    help="Port of the admin endpoint on 127.0.0.1 (0 picks a free port).",
)
@click.option(
    "--admin-token",
    default=None,
    envvar=ADMIN_TOKEN_ENV,
    show_envvar=True,
    help="Bearer token for the admin endpoint (default: a random one, printed).",
)
@click.option("--db", "db_path", default=None, help="SQLite file (default: a temporary one, deleted at exit).")
@click.option("--async-workflows", is_flag=True, help="Workflow runs answer 202 and finish in the background.")
@click.option(
    "--stop-on-stdin-eof",
    is_flag=True,
    help="Also stop when standard input closes (a parent holding the pipe dies, the automaton stops).",
)
def serve_command(
    host: str,
    port: int,
    stall_every_s: float | None,
    stall_for_s: float | None,
    faults_json: str | None,
    admin_port: int,
    admin_token: str | None,
    db_path: str | None,
    async_workflows: bool,
    stop_on_stdin_eof: bool,
) -> None:
    """Serve until SIGTERM/SIGINT.

    Prints `listening http://HOST:PORT` once ready, then `admin http://127.0.0.1:PORT token=TOKEN`.
    """
    try:
        faults = _faults(faults_json, stall_every_s, stall_for_s)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    def announce(url: str) -> None:
        # launch.start_automaton waits for exactly this line, then the admin line.
        sys.stdout.write(f"listening {url}\n")
        sys.stdout.flush()

    def announce_admin(url: str, token: str) -> None:
        sys.stdout.write(f"admin {url} token={token}\n")
        sys.stdout.flush()

    try:
        serve(
            host,
            port,
            faults,
            db_path=db_path,
            ready_callback=announce,
            async_workflows=async_workflows,
            admin_port=admin_port,
            admin_token=admin_token or None,
            admin_callback=announce_admin,
            stop_on_stdin_eof=stop_on_stdin_eof,
        )
    except OSError as exc:  # port in use, address not available, unwritable --db
        raise click.ClickException(str(exc)) from None


def _faults(faults_json: str | None, stall_every_s: float | None, stall_for_s: float | None) -> TargetFaults:
    data: dict[str, object] = {}
    if faults_json is not None:
        text = faults_json
        if text.startswith("@"):
            try:
                with open(text[1:], encoding="utf-8") as file:
                    text = file.read()
            except OSError as exc:
                raise ValueError(f"--faults-json: {exc}") from None
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--faults-json is not valid JSON: {exc}") from None
        faults = fault_config_from_dict(loaded)  # FaultConfigError (a ValueError) lists every problem
        data = dict(loaded or {})
        if stall_every_s is None and stall_for_s is None:
            return faults
        if faults.stall is not None:
            raise ValueError("give the stall once: --stall-every/--stall-for or the stall in --faults-json")
    if stall_every_s is not None or stall_for_s is not None:
        data["stall_every_s"], data["stall_for_s"] = stall_every_s, stall_for_s
        if stall_every_s is None or stall_for_s is None:
            raise ValueError("--stall-every and --stall-for must be given together")
    try:
        return fault_config_from_dict(data)
    except FaultConfigError as exc:
        raise ValueError("; ".join(f"--stall-every/--stall-for: {p}" for p in exc.problems)) from None


if __name__ == "__main__":
    main(prog_name="python -m automaton")
