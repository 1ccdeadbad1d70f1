"""Render a bundle: a text summary for the terminal, JUnit XML for CI."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from horde.coordinator.bundle.store import Bundle


def _ms(v) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v / 1000:.2f}s"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _row(name: str, s: dict) -> str:
    lat = s.get("latency_ms") or {}
    svc = s.get("service_time_ms") or {}
    return (
        f"  {name:<22} {s['requests']:>9} {s['rps']:>9.1f} {100 * s['error_rate']:>6.2f}%"
        f" {_ms(lat.get('p50')):>7} {_ms(lat.get('p90')):>7} {_ms(lat.get('p99')):>7}"
        f" {_ms(lat.get('p99.9')):>7} {_ms(lat.get('max')):>7}   {_ms(svc.get('p50')):>7} {_ms(svc.get('p99')):>7}"
    )


HEADER = (
    f"  {'':<22} {'requests':>9} {'rps':>9} {'errors':>7}"
    f" {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}   {'svc p50':>7} {'svc p99':>7}"
)


def text_summary(bundle: Bundle) -> str:
    m, s = bundle.manifest, bundle.summary
    lines = []
    state = "" if bundle.complete else "  [INCOMPLETE]"
    lines.append(f"horde run {m.get('scenario', {}).get('name', '?')}: {m.get('outcome', '?')}{state}")
    lines.append(f"  bundle   {bundle.path}")
    lines.append(f"  target   {m.get('target', {}).get('url', '?')}   cluster {m.get('cluster', {}).get('kind', '?')}"
                 f" ({m.get('cluster', {}).get('cpus', '?')} CPUs, {len(m.get('cluster', {}).get('nodes', []))} nodes),"
                 f" {len(m.get('agents', [])) or m.get('plan', {}).get('agents', '?')} agents")
    if s is None:
        windows = list(bundle.windows())
        lines.append(f"  no summary (run did not finish); {len(windows)} windows received")
        return "\n".join(lines)
    t = s["total"]
    lines.append(
        f"  duration {s.get('duration_s', 0):.1f}s   requests {t['requests']}   rps {t['rps']:.1f}"
        f"   errors {t['errors']} ({100 * t['error_rate']:.2f}%)"
    )
    classes = {k: v for k, v in (t.get("errors_by_class") or {}).items() if k != "ok"}
    if classes:
        lines.append("  errors by class: " + ", ".join(f"{k} {v}" for k, v in classes.items()))
    g = s.get("generator", {})
    sat = "SATURATED: " + "; ".join(g.get("reasons", [])) if g.get("saturated") else "kept up"
    cpu = g.get("cpu_us_per_request")
    lines.append(f"  generator {cpu if cpu is not None else '-'} us CPU/request, {sat}")
    if g.get("late_sends") or g.get("interrupted") or g.get("unsent"):
        lines.append(f"  late sends {g.get('late_sends', 0)}, interrupted {g.get('interrupted', 0)}, unsent {g.get('unsent', 0)}")
    for lost in s.get("lost_agents", []):
        lines.append(f"  LOST agent {lost['agent']} (incarnation {lost['incarnation']}) at {lost['at_s']:.1f}s: {lost['reason']}")
    lines.append("")
    lines.append("  latency (from intended send, ms) and service time (from actual send, ms)")
    lines.append(HEADER)
    for name, es in s.get("endpoints", {}).items():
        lines.append(_row(name, es))
    lines.append(_row("TOTAL", t))
    if len(s.get("stages", {})) > 1:
        lines.append("")
        lines.append("  by stage")
        for name, st in s["stages"].items():
            lines.append(_row(name, st["total"]))
    for i, sp in enumerate(s.get("spikes") or [], 1):
        d = sp.get("during") or {}
        rec = sp.get("recovery_s")
        t90 = sp.get("time_to_90_s")
        lines.append(
            f"  spike {i}: x{sp.get('factor', 0):.0f} at {sp.get('start_s', 0):.1f}s, reached 90% in "
            f"{'-' if t90 is None else f'{t90:.1f}s'}, p99 {_ms(d.get('latency_p99_ms'))} ms, errors "
            f"{100 * (d.get('error_rate') or 0):.2f}%, recovered {'never' if rec is None else f'in {rec:.1f}s'}"
        )
    if s.get("thresholds"):
        lines.append("")
        lines.append("  thresholds")
        for th in s["thresholds"]:
            scope = "".join(f" [{k} {th[k]}]" for k in ("endpoint", "stage") if th.get(k))
            lines.append(f"    {'PASS' if th['ok'] else 'FAIL'}  {th['expr']}{scope}   observed {th['observed_text']}")
    return "\n".join(lines)


def junit_xml(suite: str, results: list[dict], duration_s: float) -> str:
    """One test case per threshold; a failed threshold is a JUnit failure."""
    failures = sum(1 for r in results if not r["ok"])
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    out.append(
        f"<testsuites><testsuite name={quoteattr('horde.' + suite)} tests=\"{len(results)}\""
        f" failures=\"{failures}\" errors=\"0\" time=\"{duration_s:.3f}\">"
    )
    for r in results:
        scope = "".join(f" [{k}={r[k]}]" for k in ("endpoint", "stage") if r.get(k))
        name = quoteattr(r["expr"] + scope)
        out.append(f"  <testcase classname={quoteattr('horde.' + suite + '.thresholds')} name={name} time=\"0\">")
        if not r["ok"]:
            msg = f"observed {r['observed_text']}"
            out.append(f"    <failure message={quoteattr(msg)}>{escape(r['expr'] + scope + ': ' + msg)}</failure>")
        out.append("  </testcase>")
    out.append("</testsuite></testsuites>")
    return "\n".join(out) + "\n"
