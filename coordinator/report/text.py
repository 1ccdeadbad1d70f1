"""Render a bundle for the terminal: the text summary. (JUnit XML is bundle/junit.py.)"""

from __future__ import annotations

from horde.coordinator.bundle.junit import junit_xml  # noqa: F401  (re-exported: run/session.py and tests import it here)
from horde.coordinator.bundle.schema import Stats
from horde.coordinator.bundle.store import Bundle
from horde.coordinator.scenario.redact import redact_url


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


def _row(name: str, s: Stats) -> str:
    lat, svc = s.latency_ms, s.service_time_ms
    return (
        f"  {name:<22} {s.requests:>9} {s.rps:>9.1f} {100 * s.error_rate:>6.2f}%"
        f" {_ms(lat.p50):>7} {_ms(lat.p90):>7} {_ms(lat.p99):>7}"
        f" {_ms(lat.p99_9):>7} {_ms(lat.max):>7}   {_ms(svc.p50):>7} {_ms(svc.p99):>7}"
    )


HEADER = (
    f"  {'':<22} {'requests':>9} {'rps':>9} {'errors':>7}"
    f" {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}   {'svc p50':>7} {'svc p99':>7}"
)


def text_summary(bundle: Bundle) -> str:
    m, s = bundle.manifest, bundle.summary
    lines = []
    state = "" if bundle.complete else "  [INCOMPLETE]"
    lines.append(f"horde run {m.scenario_name or '?'}: {m.outcome}{state}")
    lines.append(f"  bundle   {bundle.path}")
    agents = len(m.agents) or (m.plan.agents if m.plan else "?")
    lines.append(
        f"  target   {redact_url(m.target.url) if m.target.url else '?'}   cluster {m.cluster.kind or '?'}"
        f" ({m.cluster.cpus} CPUs, {len(m.cluster.nodes)} nodes), {agents} agents"
    )
    if s is None:
        windows = sum(1 for _ in bundle.windows())
        lines.append(f"  no summary (run did not finish); {windows} windows received")
        return "\n".join(lines)
    t = s.total
    lines.append(
        f"  duration {s.duration_s:.1f}s   requests {t.requests}   rps {t.rps:.1f}"
        f"   errors {t.errors} ({100 * t.error_rate:.2f}%)"
    )
    classes = {k: v for k, v in t.errors_by_class.items() if k != "ok"}
    if classes:
        lines.append("  errors by class: " + ", ".join(f"{k} {v}" for k, v in classes.items()))
    for warning in (s.client or {}).get("warnings", []):  # run/client_info.py
        lines.append(f"  WARNING  {warning}")
    if s.user_errors:  # Python users: the exceptions that ended iterations, by type
        lines.append("  user errors: " + ", ".join(f"{k} {v}" for k, v in s.user_errors.items()))
    g = s.generator
    sat = "SATURATED: " + "; ".join(g.reasons) if g.saturated else "kept up"
    cpu = g.cpu_us_per_request
    lines.append(f"  generator {cpu if cpu is not None else '-'} us CPU/request, {sat}")
    if (c := s.cpu) is not None and c.startup_s is not None:  # horde's CPU outside the steady state
        lines.append(
            f"  horde CPU ({c.scope}): startup {c.startup_s}s, steady {c.steady_s}s ({c.per_request_us} us/request),"
            f" shutdown {c.shutdown_s}s, analyses {c.analyses_s}s"
        )
    if g.late_sends or g.interrupted or g.unsent:
        lines.append(f"  late sends {g.late_sends}, interrupted {g.interrupted}, unsent {g.unsent}")
    if g.generator_queueing is not None and g.generator_queueing.warning:
        lines.append(f"  WARNING: {g.generator_queueing.warning}")
    for lost in s.lost_agents:
        lines.append(
            f"  LOST agent {lost.agent} (incarnation {lost.incarnation}) at {lost.at_s or 0:.1f}s: {lost.reason}"
        )
    lines.append("")
    lines.append("  latency (from intended send, ms) and service time (from actual send, ms)")
    lines.append(HEADER)
    for name, es in s.endpoints.items():
        lines.append(_row(name, es))
    lines.append(_row("TOTAL", t))
    if len(s.stages) > 1:
        lines.append("")
        lines.append("  by stage")
        for name, st in s.stages.items():
            lines.append(_row(name, st.total))
    lines += _spike_lines(s.spikes or [])
    if s.thresholds:
        lines.append("")
        lines.append("  thresholds")
        for th in s.thresholds:
            scope = "".join(f" [{k} {v}]" for k, v in (("endpoint", th.endpoint), ("stage", th.stage)) if v)
            lines.append(f"    {'PASS' if th.ok else 'FAIL'}  {th.expr}{scope}   observed {th.observed_text}")
    return "\n".join(lines)


def _spike_lines(spikes: list[dict]) -> list[str]:
    # Spike records are analysis/spike.py's own (open) shape: read with .get.
    lines = []
    for i, sp in enumerate(spikes, 1):
        d = sp.get("during") or {}
        rec = sp.get("recovery_s")
        t90 = sp.get("time_to_90_s")
        lines.append(
            f"  spike {i}: x{sp.get('factor', 0):.0f} at {sp.get('start_s', 0):.1f}s, reached 90% in "
            f"{'-' if t90 is None else f'{t90:.1f}s'}, p99 {_ms(d.get('latency_p99_ms'))} ms, errors "
            f"{100 * (d.get('error_rate') or 0):.2f}%, recovered {'never' if rec is None else f'in {rec:.1f}s'}"
        )
    return lines
