"""The bundle's records as types: manifest.json, summary.json, a windows.jsonl line, an alerts.jsonl line.

One model for the writer (``BundleWriter`` validates before it writes) and every reader
(``read_bundle`` parses through it), so a key renamed on one side fails a test instead of
turning into a silent ``None`` on the other. docs/bundle-format.md describes the same keys;
tests/coordinator/bundle/test_schema.py holds the two together.

Where the shape is fixed the model forbids unknown keys (a Stats scope, a threshold, a
generator reading). Where it is open it says so: maps keyed by endpoint, stage, agent label
or node id; the scenario as run (its own schema is horde.coordinator.scenario.models); the
analyses' records (soak, spikes), which their modules own. Fields a finished run always
writes still have defaults, because readers also meet bundles of killed coordinators and
hand-made ones (tests), and a missing figure reads as "no figure", never as a traceback.

Item access (``summary["total"]["requests"]``, ``.get``) works by JSON key for code written
against the dict form (tests, bench scripts, notebooks); horde's own readers use attributes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

BUNDLE_FORMAT = 2  # bundle_format this horde writes (2: compact, gzip-streamed windows; sends.msgpack)
READABLE_FORMATS = frozenset({1, 2})  # bundle_format values this horde reads


_QUEUED_NAMES = AliasChoices("generator_queued_sends", "queued_sends")  # the second: bundles before issue 14


class Record(BaseModel):
    """A fixed-shape bundle record; item access by JSON key for dict-era callers."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def _field_for(self, key: str) -> str | None:
        fields = type(self).model_fields
        if key in fields:
            return key
        for name, f in fields.items():
            if f.alias == key:
                return name
        return None

    def __getitem__(self, key: str) -> Any:
        name = self._field_for(key)
        if name is not None:
            return getattr(self, name)
        extra = self.__pydantic_extra__ or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            v = self[key]
        except KeyError:
            return default
        return default if v is None else v

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        name = self._field_for(key)
        if name is not None:
            return name in self.model_fields_set
        return key in (self.__pydantic_extra__ or {})

    def to_json(self) -> dict[str, Any]:
        """The record as its JSON file holds it (keys that were set, by JSON name)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class OpenRecord(Record):
    """A record whose known keys are typed and whose other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# -- a scope's statistics (measure/aggregate.py Stats.to_dict) -----------------------------


class Quantiles(Record):
    """Latency-like figures of one scope, ms (3 decimals), None without samples."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    p99_9: float | None = Field(default=None, alias="p99.9")
    max: float | None = None
    min: float | None = None
    mean: float | None = None
    overflow: int = 0  # values above 2^44 ns: counted, in no bucket


class Stats(Record):
    requests: int = 0
    errors: int = 0
    error_rate: float = 0.0
    rps: float = 0.0
    duration_s: float = 0.0
    bytes: int = 0
    errors_by_class: dict[str, int] = Field(default_factory=dict)  # open: error class -> count
    latency_ms: Quantiles = Field(default_factory=Quantiles)
    service_time_ms: Quantiles = Field(default_factory=Quantiles)
    send_lag_ms: Quantiles = Field(default_factory=Quantiles)


class StageStats(Record):
    total: Stats = Field(default_factory=Stats)
    endpoints: dict[str, Stats] = Field(default_factory=dict)


# -- summary.json ---------------------------------------------------------------------------


class ThresholdResult(Record):
    expr: str
    endpoint: str | None = None
    stage: str | None = None
    abort: bool = False
    ok: bool
    observed: float | None = None  # base units: ns for times, a fraction for rates
    observed_text: str = ""


class GeneratorAgent(Record):
    cpu_s: float = 0.0
    cpu_fraction: float = 0.0
    peak_rss_mb: float = 0.0
    loop_lag_max_ms: float = 0.0
    late_sends: int = 0
    # Sends over 10 ms late because every one of the agent's own max_in_flight slots was busy;
    # bundles before it call this "queued_sends".
    generator_queued_sends: int = Field(
        default=0, validation_alias=AliasChoices("generator_queued_sends", "queued_sends")
    )
    send_lag_max_ms: float = 0.0
    interrupted: int = 0
    unsent: int = 0
    engines: list[str] = Field(default_factory=list)
    timing: str = ""  # its send timers and scheduling priority ("precise timers, rr 1"; agents/priority.py)


class GeneratorQueueingScope(Record):
    requests: int = 0  # requests that waited for a free slot of their own agent
    latency_ms_without: dict[str, float | None] = Field(default_factory=dict)  # the wait taken out
    moved: dict[str, float | None] = Field(default_factory=dict)  # (with - without) / without, per percentile


class GeneratorQueueing(Record):
    warn_above: float = 0.05
    scopes: dict[str, GeneratorQueueingScope] = Field(default_factory=dict)  # "total" and endpoints
    warning: str | None = None


class Generator(Record):
    saturated: bool = False
    reasons: list[str] = Field(default_factory=list)
    agents: dict[str, GeneratorAgent] = Field(default_factory=dict)  # open: agent label ("3", "3#1")
    cpu_s: float | None = None
    cpu_us_per_request: float | None = None
    late_sends: int = 0
    # Sends over 10 ms late because every one of the agent's own max_in_flight slots was busy;
    # bundles before it call this "queued_sends".
    generator_queued_sends: int = Field(
        default=0, validation_alias=AliasChoices("generator_queued_sends", "queued_sends")
    )
    interrupted: int = 0
    unsent: int = 0
    bad_batches: int = 0  # batches refused by the checks (coordinator/measure/batch_check.py)
    generator_queueing: GeneratorQueueing | None = None  # absent in bundles before issue 14


class SeriesSummary(Record):
    min: float | None = None
    mean: float | None = None
    max: float | None = None
    last: float | None = None
    windows: int = 0


class TargetResources(Record):
    scrapes: int = 0
    failures: int = 0
    target_memory: SeriesSummary | None = None
    target_cpu: SeriesSummary | None = None
    target_connections: SeriesSummary | None = None
    target_fds: SeriesSummary | None = None


class NodeSummary(Record):
    cpu_mean: float | None = None
    cpu_max: float | None = None
    mem_peak_mb: float | None = None
    net_tx_peak_mb_s: float | None = None
    net_rx_peak_mb_s: float | None = None
    tcp_connections_max: float | None = None
    agents: list[str] = Field(default_factory=list)
    windows: int = 0


class Nodes(Record):
    nodes: dict[str, NodeSummary] = Field(default_factory=dict)  # open: Ray node id
    saturated: list[str] = Field(default_factory=list)


class Sends(Record):
    bin_s: float = 0.1
    counts: list[int] = Field(default_factory=list)  # format 1: every bin; format 2: empty (see `file`)
    file: str | None = None  # format 2: "sends.msgpack", the bins as the run handed them off
    bins: int | None = None  # format 2: how many bins the file covers
    sends: int | None = None  # format 2: all sends counted


class TimeInfo(Record):
    compression: float = 1.0
    real_duration_s: float | None = None
    simulated_duration_s: float | None = None


class Load(Record):
    """Where the planned arrivals went (coordinator/run/ledger.py): planned = sent + missed + unsent."""

    planned: int | None = None  # None: a closed model, or flows (no fixed arrival count)
    sent: int = 0  # reported + interrupted + lost
    reported: int = 0
    interrupted: int = 0
    lost: int = 0
    missed: int | None = None
    unsent: int = 0


class Cpu(Record):
    """horde's own CPU seconds per phase of the run (coordinator/run/cpu_phases.py); None: not reached."""

    startup_s: float | None = None
    steady_s: float | None = None
    per_request_us: float | None = None  # steady_s per request sent
    shutdown_s: float | None = None
    analyses_s: float | None = None
    scope: str = ""  # "coordinator+ray": with the Ray this run started; "coordinator": an attached Ray's not counted


class Summary(Record):
    outcome: str = ""
    stop_reason: str = ""
    duration_s: float = 0.0
    total: Stats = Field(default_factory=Stats)
    endpoints: dict[str, Stats] = Field(default_factory=dict)  # open: endpoint name, in the scenario's order
    stages: dict[str, StageStats] = Field(default_factory=dict)  # open: stage name
    thresholds: list[ThresholdResult] = Field(default_factory=list)
    generator: Generator = Field(default_factory=Generator)
    lost_agents: list[AlertRecord] = Field(default_factory=list)  # the agent_lost records of alerts.jsonl
    target_resources: TargetResources | None = None
    nodes: Nodes | None = None
    sends: Sends | None = None
    late_samples: int = 0
    engines: dict[str, str] = Field(default_factory=dict)  # open: endpoint -> request engine
    alerts: list[AlertRecord] = Field(default_factory=list)  # the alert-rule records that resolved (judge/alerts.py)
    time: TimeInfo | None = None
    soak: dict[str, Any] | None = None  # open: analysis/soak.py's verdicts (runs of 30+ windows)
    spikes: list[dict[str, Any]] | None = None  # open: analysis/spike.py's records (plans with spikes)
    load: Load | None = None  # None: a bundle from before
    client: dict[str, Any] | None = None  # open: run/client_info.py (tls_verify, warnings, data files); None: not used
    user_errors: dict[str, int] = Field(default_factory=dict)  # open: exception type -> iterations (Python users)
    cpu: Cpu | None = None  # None: a bundle from before


# -- manifest.json --------------------------------------------------------------------------


class Target(Record):
    url: str | None = None
    embedded: bool = False
    pid: int | None = None
    admin_url: str | None = None  # never the admin token
    faults: dict[str, Any] | None = None  # open: the automaton's fault settings
    metrics: str | None = None
    served: dict[str, Any] | None = None  # open: the automaton's own counts


class ClusterNode(Record):
    node: str
    host: str = ""
    cpus: float = 0.0
    alive: bool = True


class RayBinding(Record):
    host: str = ""  # the address Ray's servers on this machine bind to
    auth: str = ""  # Ray's token-auth mode: token | disabled


class Cluster(Record):
    kind: str = ""
    address: str = ""
    cpus: float = 0.0
    nodes: list[ClusterNode] = Field(default_factory=list)
    ray_binding: RayBinding | None = None  # None: no Ray (in-process), or a bundle from before
    pool: str = ""  # the warm Ray of `horde up`: how many agents came from its pool, and why not more


class PlanStage(Record):
    name: str
    end_s: float


class Plan(Record):
    agents: int = 0
    cpus_per_agent: float = 0.0
    duration_s: float = 0.0
    stages: list[PlanStage] = Field(default_factory=list)
    engines: dict[str, str] = Field(default_factory=dict)  # open: endpoint -> request engine
    max_in_flight: list[int] = Field(default_factory=list)
    max_connections: list[int] = Field(default_factory=list)


class AgentInfo(Record):
    index: int
    incarnation: int = 0
    pid: int | None = None
    node: str = ""
    host: str = ""


class UserCodeFile(Record):
    entry: str  # the mix entry
    file: str  # as the scenario names it
    class_name: str
    sha256: str


class Manifest(Record):
    horde_version: str | None = None
    bundle_format: int = BUNDLE_FORMAT  # absent only in hand-made bundles: read as format 1
    scenario: dict[str, Any] = Field(default_factory=dict)  # open: the scenario as run (scenario/models.py)
    scenario_file: str | None = None
    outcome: str = "running"
    complete: bool = False
    stop_reason: str = ""
    started: str | None = None
    ended: str | None = None
    duration_s: float | None = None
    start_wall_ns: int | None = None
    target: Target = Field(default_factory=Target)
    cluster: Cluster = Field(default_factory=Cluster)
    plan: Plan | None = None
    agents: list[AgentInfo] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)  # open: component -> version
    argv: list[str] = Field(default_factory=list)
    user_code: list[UserCodeFile] = Field(default_factory=list)  # Python users' files, as every agent loaded them

    @property
    def scenario_name(self) -> str | None:
        return self.scenario.get("name")

    @property
    def model(self) -> str | None:
        """The workload model (`open` / `closed`) as run, None when the scenario says none."""
        workload = self.scenario.get("workload")
        return workload.get("model") if isinstance(workload, dict) else None


# -- windows.jsonl --------------------------------------------------------------------------


class WindowNode(Record):
    cpu_fraction: float | None = None
    cpus: float | None = None
    mem_used_bytes: float | None = None
    mem_total_bytes: float | None = None
    net_sent_bytes_per_s: float | None = None
    net_recv_bytes_per_s: float | None = None
    tcp_connections: float | None = None


class Window(Record):
    index: int
    start_s: float
    end_s: float
    total: Stats = Field(default_factory=Stats)
    endpoints: dict[str, Stats] = Field(default_factory=dict)  # open: endpoints with samples in the window
    # open: agent index -> GeneratorReadings folded over the window (agents/samples.py owns the keys)
    generator: dict[str, dict[str, Any]] = Field(default_factory=dict)
    target: dict[str, float] = Field(default_factory=dict)  # open: resource series -> peak
    coordinator: dict[str, float] = Field(default_factory=dict)  # rss_bytes
    nodes: dict[str, WindowNode] = Field(default_factory=dict)  # open: node id (12 characters)


# -- alerts.jsonl ---------------------------------------------------------------------------

AlertKind = Literal["abort", "agent_lost", "agent_restored", "bad_batch", "alert"]


class AlertRecord(OpenRecord):
    """One line of alerts.jsonl. `kind` says which record it is; the keys each kind carries
    are in docs/bundle-format.md. Open for lines other tools append (their keys are kept as
    they are, read with `.get`); an alert-engine event stored wrapped as
    `{"event", "t_s", "alert": {...}}` is flattened by `Bundle.alerts()` before it gets here."""

    kind: AlertKind | None = None
    at_s: float | None = None  # when (an agent_lost: declared once its lease had surely lapsed)
    # agent_lost / agent_restored / bad_batch
    agent: int | None = None
    incarnation: int | None = None
    reason: str | None = None
    detail: str | None = None
    last_batch_s: float | None = None
    share: str | None = None
    node: str | None = None
    replaced: bool | None = None
    replacement_incarnation: int | None = None
    replaced_at_s: float | None = None
    replacement_node: str | None = None
    # Maybe sent, never reported: an upper bound (open model: its planned arrivals from its
    # last report until its lease surely lapsed, not accounted for; closed: its last in-flight count).
    lost_samples: int | None = None
    missed: int | None = None  # its planned arrivals after its lease lapsed: never sent (None: closed model)
    missed_from_s: float | None = None  # when its lease had surely lapsed
    missed_until_s: float | None = None  # None: not replaced (to the end of the run)
    # abort
    observed: float | None = None
    # alert (judge/alerts.py AlertEngine's record, plus the event that wrote the line)
    id: str | None = None
    source: str | None = None
    rule: str | None = None
    rule_name: str | None = None
    metric: str | None = None
    key: str | None = None
    endpoint: str | None = None
    level: str | None = None
    start: float | None = None
    fired: float | None = None
    escalated: float | None = None
    end: float | None = None
    resolved: float | None = None
    peak: float | None = None
    peak_at: float | None = None
    last: float | None = None
    op: str | None = None
    warning: float | None = None
    critical: float | None = None
    text: str | None = None
    event: str | None = None  # fired / escalated / resolved
    event_t_s: float | None = None


Summary.model_rebuild()


def bundle_json_schema() -> dict[str, Any]:
    """The JSON Schema of each bundle record (`horde schema --bundle`)."""
    return {
        "manifest.json": Manifest.model_json_schema(by_alias=True),
        "summary.json": Summary.model_json_schema(by_alias=True),
        "windows.jsonl": Window.model_json_schema(by_alias=True),
        "alerts.jsonl": AlertRecord.model_json_schema(by_alias=True),
    }


def as_manifest(m: Manifest | dict[str, Any] | None) -> Manifest:
    """A manifest from what a caller holds (a parsed model, its dict form, or nothing)."""
    if isinstance(m, Manifest):
        return m
    return Manifest.model_validate(m or {})


def as_summary(s: Summary | dict[str, Any] | None) -> Summary | None:
    if s is None or isinstance(s, Summary):
        return s
    return Summary.model_validate(s)


def first_problem(exc: ValidationError) -> str:
    """The first validation error as `key.path: message` (a file's reader prefixes its name)."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    e = errors[0]
    where = ".".join(str(p) for p in e["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {e['msg']}{more}"
