"""What one traffic agent is told to do: plain, picklable, frozen values.

The coordinator's planner builds these (coordinator/plan.py); agents never import the
coordinator, so the agent side of the contract lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """What a peer may make an agent hold or wait for, per response (the scenario's `limits`).

    Over `max_response_bytes` of body or `max_header_bytes` of head a request fails
    (too_large, protocol); a head not complete within `header_timeout_s` of sending fails
    as a timeout. The defaults are the documented ones (docs/security.md, "Limits").
    """

    max_response_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class TlsSpec:
    """The scenario's `tls`, with its files already read by the coordinator (nodes may not
    have them): PEM text, never paths. `key_pem` is a secret: kept out of repr, and never
    written anywhere (agents/tls.py loads it through a private temporary file)."""

    verify: bool = True
    ca_pem: str | None = None  # trust these CAs (in addition to none: only these)
    cert_pem: str | None = None  # client certificate chain, for mutual TLS
    key_pem: str | None = field(default=None, repr=False)


DEFAULT_TLS = TlsSpec()


@dataclass(frozen=True)
class DataFeed:
    """One data file of the scenario, as this agent takes it (agents/data.py).

    `rows` is the whole file for `cycle` and `random`; for `unique`, only this agent's
    share (rows r with r % count == index, plan.py), so no row is used twice in the run.
    """

    name: str
    order: str  # "unique" | "cycle" | "random"
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...] = field(repr=False)
    total_rows: int = 0  # rows in the file (all agents)


@dataclass(frozen=True)
class RequestTemplate:
    """One entry of the request mix, resolved to a full URL."""

    name: str
    method: str
    url: str  # absolute, e.g. http://127.0.0.1:8080/api/records
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # pre-serialised (JSON bodies are encoded once, at plan time)
    expect: frozenset[int] = frozenset()  # empty: any 2xx/3xx
    engine: str = "aiohttp"  # the engine that serves this entry: "aiohttp" or "fast"
    timeout_s: float | None = None  # this entry's whole-request timeout (None: the agent's)
    follow_redirects: bool = False
    cookies: bool = False  # takes part in its virtual user's cookie session (aiohttp)
    data: tuple[str, ...] = ()  # data feeds its url, headers or body refer to (${data.NAME.COLUMN})


@dataclass(frozen=True)
class FlowStepTemplate:
    """One step of a flow; `${var}` in url, header values and body is filled at run time."""

    name: str
    method: str
    url: str
    endpoint: int  # this step's endpoint index in the samples
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    expect: frozenset[int] = frozenset()
    capture: tuple[tuple[str, str], ...] = ()  # (variable, dot path into the JSON response)
    until: tuple[str, object] | None = None  # (dot path, value): poll until it is equal
    every_s: float = 0.1
    max_polls: int = 50
    timeout_s: float | None = None  # this step's whole-request timeout (None: the agent's)
    follow_redirects: bool = False


@dataclass(frozen=True)
class FlowTemplate:
    name: str
    endpoint: int  # the whole flow's endpoint index (its total time and success)
    steps: tuple[FlowStepTemplate, ...]
    data: tuple[str, ...] = ()  # data feeds its steps refer to: one row of each per iteration


@dataclass(frozen=True)
class UserTemplate:
    """A Python virtual user (agents/users.py): its code travels in the spec, so every node
    gets exactly the file the coordinator read (checked against `sha256` before use)."""

    name: str  # the mix entry's name: the whole iteration's endpoint
    path: str  # the file as the scenario named it (tracebacks and messages show it)
    class_name: str
    source: str  # the file's text
    sha256: str
    endpoint: int  # the iteration's endpoint index
    base_url: str = ""  # the target: request paths are relative to it
    requests: tuple[tuple[str, int], ...] = ()  # declared request name -> its endpoint index
    other: int = 0  # the endpoint of every request not declared (`name/other`)
    timeout_s: float = 10.0  # an iteration still running after this is cut off (timeout)


@dataclass(frozen=True)
class Stage:
    duration_s: float
    target: float  # level at the end of the stage (rate per second, or users)
    name: str = ""


@dataclass(frozen=True)
class AgentSpec:
    """One agent's slice of the run.

    The split is exact (k6 execution segments, made simple): in the open model agent
    `index` of `count` sends the global arrivals k with k % count == index (constant
    arrivals) or an independent Poisson stream at 1/count of the rate (superposition keeps
    it Poisson); in the closed model it runs the global users u with u % count == index.
    A replacement agent gets the same index and a higher incarnation.
    """

    index: int
    count: int
    incarnation: int
    model: str  # "open" | "closed"
    arrivals: str  # "constant" | "poisson" (open model)
    start_level: float
    stages: tuple[Stage, ...]
    requests: tuple[RequestTemplate, ...]
    weights: tuple[float, ...]
    think_time_s: tuple[float, float] = (0.0, 0.0)  # uniform [min, max] (closed model)
    max_in_flight: int = 1000  # this agent's open-model concurrency cap
    max_connections: int = 1000  # this agent's connection pool size
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    flush_interval_s: float = 1.0
    graceful_stop_s: float = 5.0
    seed: int = 0
    engine: str = "aiohttp"  # default engine name, for the bundle
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    # Aligned with `requests`: the flow of a mix entry that is a flow, None for a plain request.
    flows: tuple[FlowTemplate | None, ...] = ()
    limits: Limits = DEFAULT_LIMITS  # response caps, for every engine and flow of the agent
    tls: TlsSpec = DEFAULT_TLS  # for every https request, probe aside (agents/tls.py)
    data: tuple[DataFeed, ...] = ()  # the scenario's data files, this agent's share (agents/data.py)
    # Aligned with `requests`: the Python user of a mix entry that is one, else None (issue 15).
    users: tuple[UserTemplate | None, ...] = ()

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)
