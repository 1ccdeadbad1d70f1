"""Did the generator itself keep up? A pure verdict from the agents' own readings.

A load generator that ran out of CPU reports the target as slow when it is not; horde
says so in the bundle instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from horde.coordinator.measure.histogram import Histogram

CPU_SATURATED = 0.90  # an agent's event loop is one thread: 90% of a core is saturation
LOOP_LAG_SATURATED_NS = 250_000_000
LATE_FRACTION_SATURATED = 0.01
# The summary warns when the wait for the agents' own slots moved a reported latency
# percentile by more than this fraction (issue 14): the figure is then partly horde's.
GENERATOR_QUEUEING_WARN = 0.05
_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


@dataclass
class AgentTotals:
    """Running totals of one agent (all incarnations) from its batches."""

    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    loop_lag_max_ns: int = 0
    late_sends: int = 0
    generator_queued_sends: int = 0  # late because every one of the agent's own slots was busy
    send_lag_max_ns: int = 0
    interrupted: int = 0
    unsent: int = 0
    batches: int = 0
    first_watermark_ns: int | None = None
    last_watermark_ns: int = 0
    engines: set[str] = field(default_factory=set)
    timing: str = ""  # its send timers and priority, as of its last batch that said ("precise timers, fifo 1")
    began_ns: int = 0  # when this incarnation began, relative to the run start (replacements start late)

    def add(self, readings, watermark_ns: int, engine: str, timing: str = "") -> None:
        self.cpu_s = readings.cpu_s  # cumulative since the agent's run began
        self.peak_rss_bytes = max(self.peak_rss_bytes, readings.rss_bytes)
        self.loop_lag_max_ns = max(self.loop_lag_max_ns, readings.loop_lag_max_ns)
        self.late_sends += readings.late_sends
        self.generator_queued_sends += getattr(readings, "generator_queued_sends", 0)
        self.send_lag_max_ns = max(self.send_lag_max_ns, readings.send_lag_max_ns)
        self.interrupted += readings.interrupted
        self.unsent += readings.unsent
        self.batches += 1
        if self.first_watermark_ns is None:
            self.first_watermark_ns = watermark_ns
        self.last_watermark_ns = max(self.last_watermark_ns, watermark_ns)
        if engine:
            self.engines.update(engine.split(","))
        if timing:
            self.timing = timing


def generator_verdict(agents: dict[str, AgentTotals], requests: int) -> dict:
    """`agents` is keyed by agent label: "3" for agent 3, "3#1" for its first replacement."""
    reasons = []
    per_agent = {}
    total_cpu = 0.0
    late = 0
    for idx, a in sorted(agents.items()):
        elapsed = (a.last_watermark_ns - a.began_ns) / 1e9
        frac = a.cpu_s / elapsed if elapsed > 0 else 0.0
        total_cpu += a.cpu_s
        late += a.late_sends
        per_agent[idx] = {
            "cpu_s": round(a.cpu_s, 3),
            "cpu_fraction": round(frac, 3),
            "peak_rss_mb": round(a.peak_rss_bytes / 2**20, 1),
            "loop_lag_max_ms": round(a.loop_lag_max_ns / 1e6, 3),
            "late_sends": a.late_sends,
            "generator_queued_sends": a.generator_queued_sends,
            "send_lag_max_ms": round(a.send_lag_max_ns / 1e6, 3),
            "interrupted": a.interrupted,
            "unsent": a.unsent,
            "engines": sorted(a.engines),
            "timing": a.timing,
        }
        if frac > CPU_SATURATED:
            reasons.append(f"agent {idx} used {frac:.0%} of a core")
        if a.loop_lag_max_ns > LOOP_LAG_SATURATED_NS:
            reasons.append(f"agent {idx} event loop lagged {a.loop_lag_max_ns / 1e6:.0f} ms")
    if requests and late / requests > LATE_FRACTION_SATURATED:
        reasons.append(f"{late} of {requests} sends ({late / requests:.1%}) left more than 10 ms late")
    return {
        "saturated": bool(reasons),
        "reasons": reasons,
        "agents": per_agent,
        "cpu_s": round(total_cpu, 3),
        "cpu_us_per_request": round(total_cpu / requests * 1e6, 2) if requests else None,
        "late_sends": late,
        # Sends that waited for a free slot of horde's own max_in_flight (generator queueing):
        # visible in latency (coordinated omission corrected), not a sign of generator
        # saturation, and not the target's time either (service time leaves it out).
        "generator_queued_sends": sum(a.generator_queued_sends for a in agents.values()),
        "interrupted": sum(a.interrupted for a in agents.values()),
        "unsent": sum(a.unsent for a in agents.values()),
    }


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _pkey(q: float) -> str:
    return f"p{round(q * 100, 6):g}"


def generator_queueing(
    scopes: dict[str, tuple[Histogram, Histogram, int]], quantiles: Sequence[float] = _QUANTILES
) -> dict:
    """How much generator queueing moved the reported latency percentiles.

    `scopes`: name -> (latency, the same latency with the generator-queue wait taken out,
    requests that waited for a free slot of their own agent). A percentile "moved" by
    (with - without) / without. Warns when any moved by more than GENERATOR_QUEUEING_WARN.
    """
    out: dict = {"warn_above": GENERATOR_QUEUEING_WARN, "scopes": {}, "warning": None}
    worst: tuple[float, str, str] | None = None
    for name, (latency, unqueued, queued) in scopes.items():
        if not queued:
            continue
        with_q = latency.quantiles(quantiles)
        without = unqueued.quantiles(quantiles)
        moved = {}
        for q in quantiles:
            a, b = with_q[q], without[q]
            if a is None or b is None:
                continue
            moved[_pkey(q)] = round((a - b) / b, 4) if b > 0 else (0.0 if a == 0 else None)
        out["scopes"][name] = {
            "requests": queued,
            "latency_ms_without": {_pkey(q): _ms(without[q]) for q in quantiles},
            "moved": moved,
        }
        for key, m in moved.items():
            if m is not None and (worst is None or m > worst[0]):
                worst = (m, name, key)
    if worst is not None and worst[0] > GENERATOR_QUEUEING_WARN:
        m, name, key = worst
        n = out["scopes"][name]["requests"]
        out["warning"] = (
            f"generator queueing moved {name} latency {key} by {m:+.0%} (over {GENERATOR_QUEUEING_WARN:.0%}): "
            f"{n} requests waited for a free slot of their agent's own max_in_flight; raise max_in_flight "
            "or add agents to measure the target alone"
        )
    return out
