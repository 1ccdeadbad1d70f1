"""`horde nightly`: run (or submit) a soak scenario, add it to the history, judge it against
earlier nights. One library function; the CLI maps its findings to an exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from horde.coordinator.analysis.compare import compare_bundles
from horde.coordinator.bundle.outcome import (
    EXIT_ERROR,
    EXIT_LEAK,
    EXIT_PASSED,
    EXIT_REGRESSION,
    EXIT_THRESHOLDS_FAILED,
)
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.scenario.load import LoadedScenario
from horde.coordinator.workflows.history import History, default_history_path, track


@dataclass
class NightlyResult:
    bundle: Path
    run_id: int
    findings: list[str] = field(default_factory=list)
    exit_code: int = EXIT_PASSED
    comparison: dict | None = None
    tracks: dict = field(default_factory=dict)


def run_nightly(
    loaded: LoadedScenario,
    *,
    history_dir: str | Path,
    address: str | None = None,
    jobs_address: str | None = None,
    overrides: tuple[str, ...] = (),
    progress=None,
    metrics=("p99_latency_ms", "error_rate"),
) -> NightlyResult:
    """Run tonight's soak, record it in `history_dir`, and compare it with earlier nights."""
    history_dir = Path(history_dir)
    history_dir.mkdir(parents=True, exist_ok=True)
    if jobs_address:
        bundle_path = _via_job(loaded, jobs_address, history_dir, overrides, progress)
    else:
        from horde.coordinator.run.session import RunOptions, run_scenario

        bundle_path = run_scenario(
            loaded, RunOptions(address=address, out_dir=str(history_dir), progress=progress)
        ).bundle
    return judge(bundle_path, history_path=default_history_path(history_dir), metrics=metrics)


def judge(
    bundle_path: str | Path, *, history_path: str | Path, metrics=("p99_latency_ms", "error_rate")
) -> NightlyResult:
    """Add a finished bundle to the history and list what is wrong with tonight."""
    bundle = read_bundle(bundle_path)
    scenario = bundle.manifest.scenario_name or "?"
    codes: list[int] = []
    findings: list[str] = []
    with History(history_path) as h:
        run_id = h.add_run(bundle)
        earlier = [r for r in h.runs(scenario, limit=50) if r.id != run_id and r.complete]
        tracks = {m: track(h, scenario, m) for m in metrics}
    s = bundle.summary
    outcome = bundle.manifest.outcome
    if outcome in ("thresholds_failed", "aborted"):
        failed = [t.expr for t in (s.thresholds if s is not None else []) if not t.ok]
        findings.append(f"thresholds failed: {', '.join(failed) or outcome}")
        codes.append(EXIT_THRESHOLDS_FAILED)
    elif outcome not in ("passed",):
        findings.append(f"the run did not finish: {outcome} ({bundle.manifest.stop_reason})")
        codes.append(EXIT_ERROR)
    soak = (s.soak if s is not None else None) or {}  # analysis/soak.py's own record (open)
    for who, v in (soak.get("leaks") or {}).items():
        items = v.items() if who == "agents" else [(who, v)]
        for name, verdict in items:
            if verdict.get("verdict") == "leak":
                slope = verdict.get("slope_bytes_per_simulated_hour") or 0
                label = name if who != "agents" else "agent " + name
                if who == "target":
                    findings.append(f"memory leak in the target: {slope / 2**20:+.1f} MiB per simulated hour")
                    codes.append(EXIT_LEAK)
                else:  # horde's own process: reported, not a failed night (see soak.analyse)
                    findings.append(f"note: horde's {label} memory grew {slope / 2**20:+.1f} MiB per simulated hour")
    comparison = None
    if earlier:
        previous = earlier[0]
        try:
            comparison = compare_bundles(read_bundle(previous.bundle_path), bundle)
        except Exception as exc:  # the previous bundle may have been moved or pruned
            findings.append(f"note: could not compare with run {previous.id}: {exc}")
        else:
            if comparison.get("regressed"):
                what = ", ".join(str(x) for x in comparison.get("regressions", [])[:5])
                findings.append(f"regression against run {previous.id} ({previous.started}): {what}")
                codes.append(EXIT_REGRESSION)
    for m, t in tracks.items():
        if t.get("verdict") == "regression":
            findings.append(f"{m} regressed against the last nights: {t.get('change')!s}")
            codes.append(EXIT_REGRESSION)
    severity = [EXIT_LEAK, EXIT_REGRESSION, EXIT_THRESHOLDS_FAILED, EXIT_ERROR]
    exit_code = next((c for c in severity if c in codes), EXIT_PASSED)
    return NightlyResult(
        bundle=bundle.path, run_id=run_id, findings=findings, exit_code=exit_code, comparison=comparison, tracks=tracks
    )


def _via_job(loaded: LoadedScenario, jobs_address: str, history_dir: Path, overrides, progress) -> Path:
    import time

    from horde.cluster import jobs

    job_id = jobs.submit(loaded.source, address=jobs_address, overrides=tuple(overrides))
    if progress:
        progress(f"submitted {job_id}")
    while True:
        info = jobs.status(jobs_address, job_id)
        if info.terminal:
            break
        time.sleep(5)
    return jobs.fetch(jobs_address, job_id, history_dir)
