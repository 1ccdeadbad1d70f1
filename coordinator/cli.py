"""The horde command line: the command group and its entry point. Each command (in
coordinator/commands/, one module per family) parses, calls one library function, and maps the
outcome to an exit code (coordinator/bundle/outcome.py); the modules define plain click commands
and this group adds them, so importing a command module registers nothing by itself."""

from __future__ import annotations

import sys

import click

from horde.cluster.allocator import tune_allocator
from horde.coordinator.bundle.outcome import EXIT_ERROR
from horde.coordinator.commands import bundles, history, jobs, run, target, up, workflows
from horde.coordinator.commands.common import err as _err
from horde.coordinator.commands.workflows import BENCH_GROUPS

__all__ = ["BENCH_GROUPS", "cli", "main"]


class _Horde(click.Group):
    """The command group: a write refused because its path is a link (coordinator/files.py)
    ends any command the same way, with the path named and exit 1."""

    def invoke(self, ctx: click.Context):
        from horde.coordinator.files import UnsafePathError

        try:
            return super().invoke(ctx)
        except UnsafePathError as exc:
            _err(f"error: {exc}")
            sys.exit(EXIT_ERROR)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A real command line cannot hold a NUL (exec takes C strings); one passed by a caller
        # would reach os.stat inside click.Path and raise ValueError: a usage error instead.
        if any("\0" in arg for arg in args):
            raise click.UsageError("an argument contains a NUL character", ctx)
        return super().parse_args(ctx, args)


@click.group(cls=_Horde, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="horde", prog_name="horde")
def cli() -> None:
    """horde: distributed HTTP load generation on Ray.

    Exit codes: 0 passed, 1 error, 2 usage, 3 invalid scenario, 4 thresholds failed,
    5 aborted by a rule, 130 interrupted.
    """


# In the order they were declared when they all lived here (cli.commands keeps it).
for _command in (
    run.run,
    run.validate,
    bundles.report,
    bundles.export,
    jobs.submit,
    jobs.jobs,
    bundles.compare,
    history.history,
    workflows.bench,
    workflows.monitor,
    workflows.nightly,
    workflows.stress,
    run.schema,
    target.target,
    up.up,
    up.down,
):
    cli.add_command(_command)


def main() -> None:
    # Process set-up, before any thread: glibc's malloc for a long run, here and in the
    # processes horde starts (`ray start` of `horde up`, the embedded Ray): cluster/allocator.py.
    tune_allocator()
    cli(prog_name="horde")


if __name__ == "__main__":
    main()
