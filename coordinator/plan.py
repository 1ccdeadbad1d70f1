"""Scenario + cluster shape -> one AgentSpec per agent. Pure: no clock, no I/O.

The split is exact, like k6's execution segments: users are dealt out by global user
index (1000 users over 3 agents is 334 + 333 + 333), arrivals by global arrival index,
connection caps by integer division with the remainder spread over the first agents.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from agents.spec import AgentSpec, RequestTemplate, Stage
from agents.stages import Profile, level_to_users, users_for_agent

COORDINATOR_CPUS = 1.0  # what `agents: auto` leaves for the coordinator (and an embedded target)


@dataclass(frozen=True)
class Plan:
    agents: tuple[AgentSpec, ...]
    cpus_per_agent: float
    endpoints: tuple[str, ...]
    stage_names: tuple[str, ...]
    stage_ends_ns: tuple[int, ...]
    duration_s: float
    engines: dict[str, str]  # request name -> engine that serves it

    @property
    def count(self) -> int:
        return len(self.agents)


def split_exact(total: int, parts: int) -> list[int]:
    """total split into `parts` integers that differ by at most one, largest first."""
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


def agent_count(requested: int | str, cluster_cpus: float) -> int:
    if requested == "auto":
        return max(1, math.floor(cluster_cpus - COORDINATOR_CPUS))
    return int(requested)


def stage_names(stages) -> tuple[str, ...]:
    """Given names, and `stage-N` for unnamed stages (never clashing with a given name)."""
    given = {s.name for s in stages if s.name}
    out = []
    for i, s in enumerate(stages):
        name = s.name
        if not name:
            name, k = f"stage-{i + 1}", 1
            while name in given:
                k += 1
                name = f"stage-{i + 1}.{k}"
            given.add(name)
        out.append(name)
    return tuple(out)


def build_templates(scenario, base_url: str, supports_fast: Callable[[RequestTemplate], bool] | None) -> tuple[RequestTemplate, ...]:
    base = base_url.rstrip("/")
    out = []
    for r in scenario.requests:
        headers = dict(r.headers)
        body: bytes | None = None
        if r.json is not None:
            body = json.dumps(r.json, separators=(",", ":")).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif r.body is not None:
            body = r.body.encode()
        t = RequestTemplate(
            name=r.name,
            method=r.method,
            url=base + r.path,
            headers=tuple(headers.items()),
            body=body,
            expect=frozenset(r.expect),
            engine="aiohttp",
        )
        wanted = scenario.engine
        if wanted == "fast" or (wanted == "auto" and supports_fast is not None and supports_fast(t)):
            t = RequestTemplate(**{**t.__dict__, "engine": "fast"})
        out.append(t)
    return tuple(out)


def build_plan(
    scenario,
    base_url: str,
    cluster_cpus: float,
    *,
    supports_fast: Callable[[RequestTemplate], bool] | None = None,
    agents: int | None = None,
) -> Plan:
    wl = scenario.workload
    n = agents if agents is not None else agent_count(scenario.agents, cluster_cpus)
    names = stage_names(wl.stages)
    # Stage durations are simulated time; a compressed soak runs them `time_compression` faster.
    k = float(getattr(scenario, "time_compression", 1.0) or 1.0)
    stages = tuple(Stage(duration_s=s.duration / k, target=float(s.target), name=nm) for s, nm in zip(wl.stages, names))
    profile = Profile(float(wl.start), stages)
    templates = build_templates(scenario, base_url, supports_fast)
    peak = max([float(wl.start)] + [s.target for s in stages])

    if wl.model == "closed":
        peak_users = level_to_users(peak)
        per_agent_conns = [max(1, users_for_agent(peak_users, i, n)) for i in range(n)]
        in_flight = per_agent_conns
    else:
        in_flight = [max(1, x) for x in split_exact(wl.max_in_flight, n)]
        per_agent_conns = list(in_flight)
    if wl.max_connections is not None:
        per_agent_conns = [max(1, x) for x in split_exact(wl.max_connections, n)]

    specs = tuple(
        AgentSpec(
            index=i,
            count=n,
            incarnation=0,
            model=wl.model,
            arrivals=wl.arrivals,
            start_level=float(wl.start),
            stages=stages,
            requests=templates,
            weights=tuple(float(r.weight) for r in scenario.requests),
            think_time_s=tuple(wl.think_time),
            max_in_flight=in_flight[i],
            max_connections=per_agent_conns[i],
            timeout_s=scenario.timeout,
            connect_timeout_s=scenario.connect_timeout,
            flush_interval_s=scenario.flush_interval,
            graceful_stop_s=wl.graceful_stop,
            seed=scenario.seed,
            engine=scenario.engine,
        )
        for i in range(n)
    )
    ends = []
    acc = 0.0
    for s in stages:
        acc += s.duration_s
        ends.append(int(round(acc * 1e9)))
    usable = max(0.1, cluster_cpus - COORDINATOR_CPUS) if cluster_cpus > COORDINATOR_CPUS else cluster_cpus
    cpus_per_agent = min(1.0, max(0.05, usable / n))
    return Plan(
        agents=specs,
        cpus_per_agent=round(cpus_per_agent, 4),
        endpoints=tuple(r.name for r in scenario.requests),
        stage_names=names,
        stage_ends_ns=tuple(ends),
        duration_s=profile.duration_s,
        engines={t.name: t.engine for t in templates},
    )
