"""`horde target serve`: the reference automaton as a standalone server."""

from __future__ import annotations

import sys

import click


@click.group()
def target() -> None:
    """The reference automaton (the bundled system under test)."""


@target.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--stall-every", type=float, metavar="S", help="Freeze all responses every S seconds ...")
@click.option("--stall-for", type=float, metavar="S", help="... for S seconds.")
@click.option(
    "--faults-json",
    default=None,
    metavar="JSON|@FILE",
    help="Faults in the automaton's JSON form (see docs/scenarios.md), inline or @file.",
)
def target_serve(host, port, stall_every, stall_for, faults_json) -> None:
    """Serve the automaton until Ctrl-C. Faults can be changed while it runs via its admin URL."""
    from horde.automaton.__main__ import main as automaton_main

    args = ["serve", "--host", host, "--port", str(port)]
    if faults_json is not None:
        args += ["--faults-json", faults_json]
    if stall_every is not None:
        args += ["--stall-every", str(stall_every)]
    if stall_for is not None:
        args += ["--stall-for", str(stall_for)]
    sys.exit(automaton_main(args))
