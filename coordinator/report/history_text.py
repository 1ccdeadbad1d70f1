"""The text ``horde history`` prints: the table of past runs and a ``track`` result."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from horde.coordinator.analysis.tracking import RunRow


def _f(v: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f}s" if v >= 1000 else f"{v:.3g}"


def text_history(rows: Iterable[RunRow]) -> str:
    """The table ``horde history`` prints (rows as given: newest first)."""
    rows = list(rows)
    if not rows:
        return "no runs recorded"
    lines = [
        (
            f"  {'id':>5} {'started (UTC)':<20} {'scenario':<16} {'outcome':<22} {'requests':>9} {'rps':>8}"
            f" {'errors':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'svc p99':>7} {'thresholds':>10}"
        )
    ]
    for r in rows:
        started = (r.started or "-").replace("T", " ")[:19]
        outcome = (r.outcome or "?") + ("" if r.complete else "*") + (" SAT" if r.saturated else "")
        th = (
            "-"
            if not r.thresholds_total
            else f"{r.thresholds_total - (r.thresholds_failed or 0)}/{r.thresholds_total} ok"
        )
        lines.append(
            f"  {r.id:>5} {started:<20} {r.scenario[:16]:<16} {outcome[:22]:<22} {_f(r.requests, '{:d}'):>9}"
            f" {_f(r.rps, '{:.1f}'):>8} {_f(None if r.error_rate is None else 100 * r.error_rate, '{:.2f}%'):>7}"
            f" {_ms(r.p50_latency_ms):>7} {_ms(r.p95_latency_ms):>7} {_ms(r.p99_latency_ms):>7}"
            f" {_ms(r.p99_service_ms):>7} {th:>10}"
        )
    lines.append("  latency in ms (from intended send); * incomplete run; SAT generator saturated")
    return "\n".join(lines)


def text_track(result: dict[str, Any]) -> str:
    """A few lines for a ``track`` result."""
    scope = f" [{result['endpoint']}]" if result.get("endpoint") else ""
    lines = [
        f"  {result['scenario']}{scope} {result['metric']} over {result['runs']} run(s) ({result['better']} is better)"
    ]
    last = result.get("last")
    if last is not None:
        base = result.get("baseline")
        if base:
            z = result.get("robust_z")
            change = result.get("change")
            verdict = result["verdict"]
            shown = verdict.upper() if verdict in ("regression", "improvement") else verdict
            change_text = "-" if change is None else f"{100 * change:+.1f}%"
            z_text = "-" if z is None else f"{z:+.1f}"
            lines.append(
                f"    last run {last['run_id']} ({last['started']}): {last['value']:.4g} against a median of"
                f" {base['median']:.4g} over {base['runs']} run(s) ({change_text}, robust z {z_text}): {shown}"
            )
        else:
            lines.append(f"    last run {last['run_id']}: {last['value']:.4g}; {result['verdict']}")
    tr = result.get("trend")
    if tr:
        slope = tr.get("slope")
        lines.append(
            f"    trend over the last {tr['n']} run(s): {tr['reading']}"
            + ("" if slope is None else f" ({slope:+.4g} per run, p {tr['p_value']:.2g})")
        )
    for e in result.get("events", [])[-10:]:
        lines.append(f"    {e['verdict']:<11} run {e['run_id']} ({e['started']}): {e['value']:.4g}")
    return "\n".join(lines)
