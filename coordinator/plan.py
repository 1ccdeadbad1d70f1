"""Scenario + cluster shape -> one AgentSpec per agent. Pure: no clock, no I/O.

The split is exact, like k6's execution segments: users are dealt out by global user
index (1000 users over 3 agents is 334 + 333 + 333), arrivals by global arrival index,
connection caps by integer division with the remainder spread over the first agents.
A `unique` data file is dealt the same way: row r to agent r % count, so no row is used
twice in the run (agents/data.py says what a replacement agent takes).

Engines: under `auto` (and `fast` too) an entry with its own `timeout`,
`follow_redirects`, `cookies: true` or a `${data...}` reference is served by aiohttp: the
lean engine sends pre-encoded bytes with one timeout for all, keeps no cookies and never
follows a redirect.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from horde.agents.spec import (
    AgentSpec,
    DataFeed,
    FlowStepTemplate,
    FlowTemplate,
    RequestTemplate,
    Stage,
    TlsSpec,
    UserTemplate,
)
from horde.agents.stages import Profile, level_to_users, users_for_agent

_DATA_REF = re.compile(r"\$\{data\.([A-Za-z0-9_-]+)\.[^}]+\}")
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
    tls_verify: bool = True  # False: the scenario turned certificate verification off
    data_files: dict[str, dict] = field(default_factory=dict)  # name -> {file, order, rows}
    data_uses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # entry -> data files it takes a row of

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


def agent_cpus(cluster_cpus: float, n: int) -> float:
    """The CPUs each of `n` agents reserves on a cluster of `cluster_cpus` (the coordinator's left)."""
    usable = max(0.1, cluster_cpus - COORDINATOR_CPUS) if cluster_cpus > COORDINATOR_CPUS else cluster_cpus
    return round(min(1.0, max(0.05, usable / n)), 4)


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


def _encode_body(json_body, body: str | None, headers: dict[str, str]) -> bytes | None:
    if json_body is not None:
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(json_body, separators=(",", ":")).encode()
    return body.encode() if body is not None else None


def _data_names(text: str) -> tuple[str, ...]:
    return tuple(sorted({m.group(1) for m in _DATA_REF.finditer(text)}))


def _texts(path: str, headers: dict[str, str], body: bytes | None) -> str:
    return " ".join([path, *headers.values(), body.decode() if body is not None else ""])


def _needs_aiohttp(t: RequestTemplate) -> bool:
    return t.timeout_s is not None or t.follow_redirects or t.cookies or bool(t.data)


def data_feeds(tables, index: int, count: int) -> tuple[DataFeed, ...]:
    """Agent `index`'s view of the data files: all rows, or for `unique` rows r % count == index."""
    return tuple(
        DataFeed(
            name=t.name,
            order=t.order,
            columns=t.columns,
            rows=t.rows[index::count] if t.order == "unique" else t.rows,
            total_rows=len(t.rows),
        )
        for t in tables
    )


def build_templates(
    scenario, base_url: str, supports_fast: Callable[[RequestTemplate], bool] | None
) -> tuple[RequestTemplate, ...]:
    """One template per mix entry (a flow entry gets a placeholder: its steps run as a flow)."""
    base = base_url.rstrip("/")
    out = []
    for r in scenario.requests:
        if getattr(r, "flow", None) or getattr(r, "user", None):
            out.append(RequestTemplate(name=r.name, method="GET", url=base + "/", engine="aiohttp"))
            continue
        headers = dict(r.headers)
        body = _encode_body(r.json, r.body, headers)
        follow = r.follow_redirects if r.follow_redirects is not None else getattr(scenario, "follow_redirects", False)
        t = RequestTemplate(
            name=r.name,
            method=r.method,
            url=base + r.path,
            headers=tuple(headers.items()),
            body=body,
            expect=frozenset(r.expect),
            engine="aiohttp",
            timeout_s=r.timeout,
            follow_redirects=follow,
            cookies=r.cookies,
            data=_data_names(_texts(r.path, headers, body)),
        )
        wanted = scenario.engine
        if _needs_aiohttp(t):
            pass
        elif wanted == "fast" or (wanted == "auto" and supports_fast is not None and supports_fast(t)):
            t = RequestTemplate(**{**t.__dict__, "engine": "fast"})
        out.append(t)
    return tuple(out)


def build_flows(scenario, base_url: str) -> tuple[tuple[FlowTemplate | None, ...], tuple[str, ...]]:
    """Flow templates aligned with the mix entries, and the step endpoint names they add
    (`flow/step`, numbered after the mix entries)."""
    base = base_url.rstrip("/")
    flows: list[FlowTemplate | None] = []
    step_names: list[str] = []
    n = len(scenario.requests)
    for i, r in enumerate(scenario.requests):
        if not getattr(r, "flow", None) or getattr(r, "user", None):
            flows.append(None)
            continue
        steps = []
        names: set[str] = set()
        for st in r.flow:
            headers = dict(st.headers)
            body = _encode_body(st.json, st.body, headers)
            names.update(_data_names(_texts(st.path, headers, body)))
            follow = st.follow_redirects
            if follow is None:
                follow = getattr(scenario, "follow_redirects", False)
            steps.append(
                FlowStepTemplate(
                    name=st.name,
                    method=st.method,
                    url=base + st.path,
                    endpoint=n + len(step_names),
                    headers=tuple(headers.items()),
                    body=body,
                    expect=frozenset(st.expect),
                    capture=tuple(st.capture.items()),
                    until=(st.until.path, st.until.equals) if st.until is not None else None,
                    every_s=st.every,
                    max_polls=st.max_polls,
                    timeout_s=st.timeout,
                    follow_redirects=follow,
                )
            )
            step_names.append(f"{r.name}/{st.name}")
        flows.append(FlowTemplate(name=r.name, endpoint=i, steps=tuple(steps), data=tuple(sorted(names))))
    return tuple(flows), tuple(step_names)


def build_users(scenario, base_url: str, first: int) -> tuple[tuple[UserTemplate | None, ...], tuple[str, ...]]:
    """User templates aligned with the mix entries, and the endpoint names they add
    (`user/<request>` for each declared request, then `user/other`), numbered from `first`."""
    users: list[UserTemplate | None] = []
    names: list[str] = []
    for i, r in enumerate(scenario.requests):
        code = getattr(r, "code", None) if getattr(r, "user", None) else None
        if code is None:
            if getattr(r, "user", None):  # parsed from text: load_scenario reads the file
                raise ValueError(f"user entry {r.name!r}: its file was not read (load the scenario from its file)")
            users.append(None)
            continue
        subs = r.endpoint_names()
        eps = list(range(first + len(names), first + len(names) + len(subs)))
        users.append(
            UserTemplate(
                name=r.name,
                path=code.path,
                class_name=r.class_name,
                source=code.source,
                sha256=code.sha256,
                endpoint=i,
                base_url=base_url.rstrip("/"),
                requests=tuple(zip(r.requests, eps[:-1])),
                other=eps[-1],
                timeout_s=r.timeout if r.timeout is not None else scenario.timeout,
            )
        )
        names += subs
    return tuple(users), tuple(names)


def build_plan(
    scenario,
    base_url: str,
    cluster_cpus: float,
    *,
    supports_fast: Callable[[RequestTemplate], bool] | None = None,
    agents: int | None = None,
    attachments=None,
) -> Plan:
    """`attachments`: the files the scenario names, already read (LoadedScenario.attachments);
    None: none (a scenario without tls files or data)."""
    verify = getattr(getattr(scenario, "tls", None), "verify", True)  # (tests hand in stand-ins)
    tls = attachments.tls if attachments is not None else TlsSpec(verify=verify)
    tables = attachments.data if attachments is not None else ()
    wl = scenario.workload
    n = agents if agents is not None else agent_count(scenario.agents, cluster_cpus)
    names = stage_names(wl.stages)
    # Stage durations are simulated time; a compressed soak runs them `time_compression` faster.
    k = float(getattr(scenario, "time_compression", 1.0) or 1.0)
    stages = tuple(Stage(duration_s=s.duration / k, target=float(s.target), name=nm) for s, nm in zip(wl.stages, names))
    profile = Profile(float(wl.start), stages)
    templates = build_templates(scenario, base_url, supports_fast)
    flows, step_names = build_flows(scenario, base_url)
    users, user_names = build_users(scenario, base_url, len(scenario.requests) + len(step_names))
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
            flows=flows,
            users=users if any(u is not None for u in users) else (),
            limits=scenario.limits.to_agent(),
            tls=tls,
            data=data_feeds(tables, i, n),
        )
        for i in range(n)
    )
    ends = []
    acc = 0.0
    for s in stages:
        acc += s.duration_s
        ends.append(int(round(acc * 1e9)))
    return Plan(
        agents=specs,
        cpus_per_agent=agent_cpus(cluster_cpus, n),
        endpoints=tuple(r.name for r in scenario.requests) + step_names + user_names,
        stage_names=names,
        stage_ends_ns=tuple(ends),
        duration_s=profile.duration_s,
        engines={
            t.name: ("flow" if f is not None else "python" if u is not None else t.engine)
            for t, f, u in zip(templates, flows, users)
        },
        tls_verify=tls.verify,
        data_files={
            t.name: {"file": t.file, "order": t.order, "rows": len(t.rows), "sha256": t.sha256} for t in tables
        },
        data_uses={t.name: (f.data if f is not None else t.data) for t, f in zip(templates, flows) if (f or t).data},
    )
