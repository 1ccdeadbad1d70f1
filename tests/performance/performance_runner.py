"""Run every performance category through pytest and write one combined report.

    python tests/performance/performance_runner.py --out DIR [--full] [--only soak,monitoring]
                                                   [--timeout 1800] [-- EXTRA PYTEST ARGS]

Each category (load, stress, spike, soak, benchmarks, monitoring) is its own file,
``tests/performance/test_<category>.py``, run in its own pytest subprocess with
pytest-json-report (``DIR/<category>.json``; its output in ``DIR/<category>.log``), so one
category's crash or hang cannot take the others down. ``--full`` sets HORDE_PERF_FULL=1:
the scenario files at their written sizes instead of the CI sizes.

The combined report, in DIR:

- ``performance-report.json``: per category its status (passed / failed / skipped /
  missing / error / timeout), pytest's counts, the duration, and per test its outcome,
  duration, the figures it recorded (``record_property``, e.g. through the suite's
  ``report`` fixture, and pytest-json-report's ``json_metadata``) and, for a failure, the
  first lines of the reason;
- ``performance-report.md`` and ``performance-report.html``: the same as tables.

Exit code 0 when every category that ran passed (skips are fine), 1 otherwise (a failed
test, a missing file, a pytest error or a timeout), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CATEGORIES = ("load", "stress", "spike", "soak", "benchmarks", "monitoring")
REPORT_VERSION = 1
FAILURE_LINES = 12  # of a failure's reason, in the report
FIGURE_CHARS = 300  # of one figure, in the tables (the JSON keeps it whole)


# -- running -------------------------------------------------------------------------------


def category_file(category: str) -> Path:
    return HERE / f"test_{category}.py"


def run_category(
    category: str, out: Path, *, full: bool, timeout_s: float | None, extra_args: list[str]
) -> dict[str, Any]:
    """One pytest subprocess for one category; returns its entry of the combined report."""
    path = category_file(category)
    entry: dict[str, Any] = {
        "category": category,
        "file": str(path.relative_to(REPO)),
        "exit_code": None,
        "duration_s": 0.0,
        "counts": {},
        "tests": [],
    }
    if not path.exists():
        return {**entry, "status": "missing", "reason": f"{entry['file']} does not exist"}
    json_path = out / f"{category}.json"
    log_path = out / f"{category}.log"
    json_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(path),
        "-v",
        "-p",
        "no:cacheprovider",
        "--json-report",
        f"--json-report-file={json_path}",
        *extra_args,
    ]
    env = dict(os.environ)
    if full:
        env["HORDE_PERF_FULL"] = "1"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
            code = proc.returncode
    entry.update(exit_code=code, duration_s=round(time.monotonic() - t0, 1), log=str(log_path))
    report = _read_json(json_path)
    if report is not None:
        entry.update(parse_json_report(report))
        entry["json_report"] = str(json_path)
    entry["status"] = category_status(entry, timed_out=timed_out)
    if timed_out:
        entry["reason"] = f"stopped after {timeout_s:g} s"
    elif report is None:
        entry["reason"] = f"pytest wrote no JSON report (exit code {code}); see {log_path}"
    return entry


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the category's own process group (its pytest and what that started), then SIGKILL."""
    import signal

    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- reading pytest-json-report (pure) ---------------------------------------------------------


def parse_json_report(report: dict[str, Any]) -> dict[str, Any]:
    """Counts, pytest's own duration and per test its outcome, duration, figures, reason."""
    summary = report.get("summary") or {}
    counts = {k: int(summary.get(k, 0)) for k in ("passed", "failed", "skipped", "error", "xfailed", "xpassed")}
    counts["total"] = int(summary.get("total", sum(counts.values())))
    tests = []
    for t in report.get("tests") or []:
        phases = [t.get(p) or {} for p in ("setup", "call", "teardown")]
        figures: dict[str, Any] = {}
        for prop in t.get("user_properties") or []:
            if isinstance(prop, dict):
                figures.update(prop)
        if isinstance(t.get("metadata"), dict):
            figures.update(t["metadata"])
        reason = None
        if t.get("outcome") in ("failed", "error"):
            failed = next((p for p in phases if p.get("outcome") == "failed"), {})
            text = failed.get("longrepr") or (failed.get("crash") or {}).get("message") or ""
            reason = "\n".join(str(text).strip().splitlines()[-FAILURE_LINES:])
        elif t.get("outcome") == "skipped":
            setup = phases[0]
            longrepr = setup.get("longrepr")
            if isinstance(longrepr, str):
                reason = longrepr.strip().splitlines()[-1][:200]
        tests.append(
            {
                "nodeid": t.get("nodeid", ""),
                "name": str(t.get("nodeid", "")).split("::", 1)[-1],
                "outcome": t.get("outcome"),
                "duration_s": round(sum(float(p.get("duration") or 0.0) for p in phases), 2),
                "figures": figures,
                **({"reason": reason} if reason else {}),
            }
        )
    collectors = [c for c in report.get("collectors") or [] if c.get("outcome") == "failed"]
    out: dict[str, Any] = {
        "counts": counts,
        "pytest_duration_s": round(float(report.get("duration") or 0.0), 1),
        "tests": tests,
    }
    if collectors:
        out["collection_errors"] = [str(c.get("longrepr", ""))[-2000:] for c in collectors]
    return out


def category_status(entry: dict[str, Any], *, timed_out: bool = False) -> str:
    if timed_out:
        return "timeout"
    counts = entry.get("counts") or {}
    if not counts and not entry.get("tests"):
        return "error"
    if counts.get("failed") or counts.get("error") or entry.get("collection_errors"):
        return "failed"
    if entry.get("exit_code") not in (0, 5):  # 5: nothing collected (all deselected)
        return "error"
    if counts.get("passed") or counts.get("xfailed") or counts.get("xpassed"):
        return "passed"
    return "skipped"


def combine(
    entries: list[dict[str, Any]], *, full: bool, started: datetime, ended: datetime, argv: list[str]
) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for e in entries:
        for k, v in (e.get("counts") or {}).items():
            totals[k] = totals.get(k, 0) + v
    ok = all(e["status"] in ("passed", "skipped") for e in entries)
    return {
        "version": REPORT_VERSION,
        "started": started.isoformat(),
        "ended": ended.isoformat(),
        "duration_s": round((ended - started).total_seconds(), 1),
        "size": "full" if full else "ci",
        "ok": ok,
        "totals": totals,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": argv,
        "categories": {e["category"]: e for e in entries},
    }


# -- rendering (pure) -----------------------------------------------------------------------------


def _figure_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= FIGURE_CHARS else text[: FIGURE_CHARS - 3] + "..."


def _counts_text(counts: dict[str, int]) -> str:
    return " / ".join(str(counts.get(k, 0)) for k in ("passed", "failed", "skipped"))


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# horde performance suite",
        "",
        (
            f"{report['started']} .. {report['ended']} ({report['duration_s']:g} s), size **{report['size']}**, "
            f"Python {report['python']} on {report['platform']}: **{'all passed' if report['ok'] else 'FAILED'}**"
        ),
        "",
        "| category | status | passed / failed / skipped | duration (s) |",
        "| --- | --- | --- | --- |",
    ]
    for name, e in report["categories"].items():
        lines.append(f"| {name} | {e['status']} | {_counts_text(e.get('counts') or {})} | {e['duration_s']:g} |")
    for name, e in report["categories"].items():
        lines += ["", f"## {name}: {e['status']}", ""]
        if e.get("reason"):
            lines += [f"{e['reason']}", ""]
        if not e.get("tests"):
            continue
        lines += ["| test | outcome | s | figures |", "| --- | --- | --- | --- |"]
        for t in e["tests"]:
            figures = "<br>".join(f"`{k}`: {_figure_text(v)}".replace("|", "\\|") for k, v in t["figures"].items())
            if t.get("reason"):
                figures = (figures + "<br>" if figures else "") + _figure_text(t["reason"]).replace("|", "\\|").replace(
                    "\n", " "
                )
            lines.append(f"| {t['name']} | {t['outcome']} | {t['duration_s']:g} | {figures} |")
    return "\n".join(lines) + "\n"


def render_html(report: dict[str, Any]) -> str:
    e_ = html.escape
    colour = {
        "passed": "#1a7f37",
        "failed": "#cf222e",
        "error": "#cf222e",
        "timeout": "#cf222e",
        "missing": "#9a6700",
        "skipped": "#6e7781",
    }
    rows = "".join(
        f"<tr><td><a href='#{e_(n)}'>{e_(n)}</a></td><td style='color:{colour.get(e['status'], '#000')}'>"
        f"{e_(e['status'])}</td><td>{e_(_counts_text(e.get('counts') or {}))}</td><td>{e['duration_s']:g}</td></tr>"
        for n, e in report["categories"].items()
    )
    sections = []
    for n, e in report["categories"].items():
        body = f"<p>{e_(e['reason'])}</p>" if e.get("reason") else ""
        if e.get("tests"):
            trs = []
            for t in e["tests"]:
                figs = "".join(
                    f"<div><code>{e_(k)}</code>: {e_(_figure_text(v))}</div>" for k, v in t["figures"].items()
                )
                if t.get("reason"):
                    figs += f"<pre>{e_(t['reason'])}</pre>"
                trs.append(
                    f"<tr><td>{e_(t['name'])}</td><td style='color:{colour.get(t['outcome'], '#000')}'>"
                    f"{e_(str(t['outcome']))}</td><td>{t['duration_s']:g}</td><td>{figs}</td></tr>"
                )
            body += (
                "<table><tr><th>test</th><th>outcome</th><th>s</th><th>figures</th></tr>" + "".join(trs) + "</table>"
            )
        sections.append(f"<h2 id='{e_(n)}'>{e_(n)}: {e_(e['status'])}</h2>{body}")
    verdict = "all passed" if report["ok"] else "FAILED"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>horde performance suite</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;text-align:left}"
        "code,pre{font-size:12px}pre{white-space:pre-wrap;margin:0}</style></head><body>"
        f"<h1>horde performance suite: {e_(verdict)}</h1>"
        f"<p>{e_(report['started'])} .. {e_(report['ended'])} ({report['duration_s']:g} s), size "
        f"<b>{e_(report['size'])}</b>, Python {e_(report['python'])} on {e_(report['platform'])}</p>"
        "<table><tr><th>category</th><th>status</th><th>passed / failed / skipped</th><th>duration (s)</th></tr>"
        f"{rows}</table>{''.join(sections)}</body></html>\n"
    )


def write_reports(report: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    for name, text in (
        ("performance-report.json", json.dumps(report, indent=2, default=str)),
        ("performance-report.md", render_markdown(report)),
        ("performance-report.html", render_html(report)),
    ):
        path = out / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        paths.append(path)
    return paths


# -- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description="Run the performance categories and write one combined report.")
    ap.add_argument("--out", required=True, type=Path, help="Directory for the reports and the per-category logs.")
    ap.add_argument("--full", action="store_true", help="Full sizes (HORDE_PERF_FULL=1): minutes per category.")
    ap.add_argument(
        "--only", default=None, help=f"Comma-separated categories (default: all of {', '.join(CATEGORIES)})."
    )
    ap.add_argument("--timeout", type=float, default=None, help="Seconds per category before it is stopped.")
    args = ap.parse_args(argv)
    categories = CATEGORIES if args.only is None else tuple(c.strip() for c in args.only.split(",") if c.strip())
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        ap.error(f"unknown categories {unknown}; expected some of {list(CATEGORIES)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    entries = []
    for category in categories:
        print(f"[{category}] running {category_file(category).relative_to(REPO)} ...", flush=True)
        entry = run_category(category, out, full=args.full, timeout_s=args.timeout, extra_args=extra)
        entries.append(entry)
        print(
            f"[{category}] {entry['status']} ({_counts_text(entry.get('counts') or {})} passed/failed/skipped) "
            f"in {entry['duration_s']:g} s",
            flush=True,
        )
    report = combine(entries, full=args.full, started=started, ended=datetime.now(timezone.utc), argv=list(sys.argv))
    for path in write_reports(report, out):
        print(f"wrote {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
