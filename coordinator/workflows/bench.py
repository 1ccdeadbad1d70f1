"""``horde bench SCENARIO``: per-operation benchmarks of a scenario's target, kept in the run history.

Which operations (``choose_operations``):

- an embedded target (``target: embedded``): horde starts the automaton with the scenario's
  faults and seed through the seam ``horde run`` uses (coordinator/run/target.py
  ``start_target``) and times its operations: health, agents, tools,
  workflows, database (coordinator/workflows/microbench.py ``automaton_operations``);
- a URL target, any HTTP service: the scenario's own request entries, each one operation
  (group ``requests``; flows are left out and named: their later steps need the earlier
  answers, so a flow is no single operation).

``groups`` picks among them on either kind of target (an automaton served at a URL can
be timed by group too). Each operation is timed on its own in a closed loop
(``run_microbench``), with the scenario's timeouts.

The result is written as ``<results>/bench-<scenario>-<UTC time>.json`` (a file, so that
nothing takes it for a run bundle) and added to ``<results>/history.sqlite3`` with the
history's own ``History.add_run``: one row under the scenario name ``bench:<scenario>``
(outcome ``bench``), so ``horde history`` lists it and tracks it apart from the load
runs, whose latencies under load are another quantity; each operation is one of its
endpoints (``--endpoint tools.search``). A benchmark in which an operation never got a
good answer is reported, not recorded: its figures time failures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from horde.coordinator import files
from horde.coordinator.analysis.microbench import histogram_of, pooled_figures, scope_figures
from horde.coordinator.run.target import RunError, start_target
from horde.coordinator.workflows.microbench import (
    DEFAULT_ITERATIONS,
    DEFAULT_WARMUP,
    GROUPS,
    REQUESTS_GROUP,
    MicrobenchResult,
    Operation,
    automaton_operations,
    run_microbench,
    scenario_operations,
)

BENCH_FORMAT = 1
HISTORY_PREFIX = "bench:"  # the history's scenario name of a benchmark: bench:<scenario>
OUTCOME = "bench"
ALL_GROUPS = (*GROUPS, REQUESTS_GROUP)


class BenchError(RuntimeError):
    """The benchmark could not run: the target did not start, or nothing to time."""


@dataclass(frozen=True)
class BenchOptions:
    groups: tuple[str, ...] = ()  # empty: the automaton's groups (embedded) or the requests (URL)
    iterations: int | None = None  # None and no duration_s: DEFAULT_ITERATIONS
    duration_s: float | None = None  # per operation
    warmup: int = DEFAULT_WARMUP
    concurrency: int = 1
    engine: str = "aiohttp"
    out_dir: str | None = None  # default: the scenario's output directory (as horde run)
    record: bool = True
    progress: Callable[[str], None] | None = None


@dataclass
class BenchRun:
    scenario: str
    target: str  # as shown: the URL without a password, or "embedded automaton"
    started: datetime
    ended: datetime
    result: MicrobenchResult
    skipped_flows: tuple[str, ...] = ()
    path: Path | None = None  # the result file, when recorded
    history_path: Path | None = None
    history_id: int | None = None
    record_error: str | None = None  # why it is not in the history, if it could not be added

    @property
    def failed(self) -> tuple[str, ...]:
        """Operations without a single good answer."""
        return tuple(name for name, r in self.result.operations.items() if r.errors >= r.stats.n)

    def to_dict(self) -> dict[str, Any]:
        d = self.result.to_dict()
        d["target_url"] = self.target
        return {
            "format": BENCH_FORMAT,
            "kind": "horde-bench",
            "scenario": self.scenario,
            "history_scenario": HISTORY_PREFIX + self.scenario,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat(),
            "skipped_flows": list(self.skipped_flows),
            "failed": list(self.failed),
            **d,
            "history": None if self.history_id is None else {"path": str(self.history_path), "run_id": self.history_id},
        }


def choose_operations(scenario: Any, groups: Sequence[str] = ()) -> tuple[tuple[Operation, ...], tuple[str, ...]]:
    """The operations to time and the flow entries left out (see the module docstring)."""
    unknown = sorted(set(groups) - set(ALL_GROUPS))
    if unknown:
        raise BenchError(f"unknown operation group(s) {unknown}; expected some of {list(ALL_GROUPS)}")
    wanted = tuple(groups) or (GROUPS if scenario.target.is_embedded else (REQUESTS_GROUP,))
    automaton = [g for g in wanted if g != REQUESTS_GROUP]
    ops = list(automaton_operations(automaton)) if automaton else []
    skipped: tuple[str, ...] = ()
    if REQUESTS_GROUP in wanted:
        own, skipped = scenario_operations(scenario.requests)
        ops += own
    if not ops:
        raise BenchError(
            f"nothing to benchmark in {scenario.name}: its requests are all flows "
            f"({', '.join(skipped)}), which are no single operation"
        )
    return tuple(ops), skipped


def _shown_url(url: str) -> str:
    """The URL without a password (a benchmark file may be shared)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run_bench(scenario: Any, options: BenchOptions | None = None) -> BenchRun:
    """Start the target if embedded, time the chosen operations, record the result. Blocking."""
    options = options or BenchOptions()
    say = options.progress or (lambda _line: None)
    ops, skipped = choose_operations(scenario, options.groups)
    if skipped:
        say(f"left out flow(s), no single operation: {', '.join(skipped)}")
    iterations = options.iterations
    if iterations is None and options.duration_s is None:
        iterations = DEFAULT_ITERATIONS
    if scenario.target.is_embedded:
        say("starting the embedded automaton")
    try:  # the one seam that starts a target, with the scenario's faults and seed (as horde run)
        target = start_target(scenario)
    except RunError as exc:
        raise BenchError(str(exc)) from None
    url = target.url
    shown = f"embedded automaton ({url})" if scenario.target.is_embedded else _shown_url(url)
    started = datetime.now(timezone.utc)
    try:
        result = run_microbench(
            url,
            ops,
            iterations=iterations,
            duration_s=options.duration_s,
            warmup=options.warmup,
            concurrency=options.concurrency,
            engine=options.engine,
            timeout_s=scenario.timeout,
            connect_timeout_s=scenario.connect_timeout,
            progress=lambda line: say(f"timing {line}"),
        )
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    finally:
        target.stop()  # a no-op for a URL target: not ours to stop
    run = BenchRun(
        scenario=scenario.name,
        target=shown,
        started=started,
        ended=datetime.now(timezone.utc),
        result=result,
        skipped_flows=skipped,
    )
    if options.record and not run.failed:
        from horde.coordinator.workflows.history import HistoryError

        try:
            record_bench(run, Path(options.out_dir or scenario.output))
        except (HistoryError, OSError) as exc:  # the figures are in hand: print them all the same
            run.record_error = str(exc)
    return run


# -- the history ------------------------------------------------------------------------


@dataclass(frozen=True)
class _HistoryEntry:
    """What ``History.add_run`` reads of a bundle: a path, a manifest and a summary."""

    path: Path
    manifest: dict[str, Any]
    summary: dict[str, Any]
    complete: bool = True


def history_entry(run: BenchRun, path: Path) -> _HistoryEntry:
    """The benchmark as one history run: the pooled timings as its total, each operation an endpoint."""
    from horde.coordinator import __version__

    ops = run.result.operations
    wall_s = sum(r.wall_s for r in ops.values())
    total = pooled_figures(
        [histogram_of(r.latencies_ns) for r in ops.values()], errors=sum(r.errors for r in ops.values()), wall_s=wall_s
    )
    manifest = {
        "scenario": {"name": HISTORY_PREFIX + run.scenario},
        "started": run.started.isoformat(),
        "ended": run.ended.isoformat(),
        "outcome": OUTCOME,
        "complete": True,
        "horde_version": __version__,
    }
    summary = {
        "duration_s": round((run.ended - run.started).total_seconds(), 3),
        "total": total,
        "endpoints": {name: scope_figures(r.stats) for name, r in ops.items()},
    }
    return _HistoryEntry(path=path, manifest=manifest, summary=summary)


def record_bench(run: BenchRun, results_dir: Path) -> None:
    """Write the result file into ``results_dir`` and add it to the history there."""
    from horde.coordinator.workflows.history import History, default_history_path

    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = run.started.strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"bench-{run.scenario}-{stamp}.json"
    n = 1
    while files.taken(path):
        n += 1
        path = results_dir / f"bench-{run.scenario}-{stamp}-{n}.json"
    run.path = path
    files.write_text(path, json.dumps(run.to_dict(), indent=2) + "\n")  # first: the history never names a missing file
    history_path = default_history_path(results_dir)
    with History(history_path) as h:
        run.history_id = h.add_run(history_entry(run, path))
    run.history_path = history_path
    files.write_text(path, json.dumps(run.to_dict(), indent=2) + "\n")  # again, with its place in the history
