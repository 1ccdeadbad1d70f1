"""horde itself as a peer: `horde run bench/scenarios/nginx_closed.yaml --target URL --out DIR`.

The scenario file is copied into the peer's workdir with the stage duration and user count
set to the benchmark's, so the file in the repository stays a plain, runnable scenario.
What is read back from the bundle is kept to the small `summary_*` functions below, as the
bundle's summary layout may still change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from bench.meter import cmdline
from bench.peers.base import Count, Load, PeerFailed

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "nginx_closed.yaml"


def summary_requests(summary: dict[str, Any]) -> tuple[int, int]:
    """(requests, errors) of the whole run from a bundle's summary.json."""
    total = summary["total"]
    return int(total["requests"]), int(total.get("errors", 0))


def summary_run_s(summary: dict[str, Any]) -> float | None:
    """The measured span of the load, if the summary states one."""
    value = summary.get("total", {}).get("duration_s", summary.get("duration_s"))
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def summary_agent_cpu_s(summary: dict[str, Any]) -> float | None:
    """user+sys CPU seconds of the traffic-agent processes alone (summed over agents, from
    each agent's start of traffic), or None when the summary does not carry them.

    Read from summary["generator"]: its "cpu_s", else the sum of "cpu_s" over its "agents"
    (an object keyed by agent id, or a list).
    """
    generator = summary.get("generator")
    if not isinstance(generator, dict):
        return None
    total = generator.get("cpu_s")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        return float(total)
    agents = generator.get("agents")
    if isinstance(agents, dict):
        agents = list(agents.values())
    if not isinstance(agents, list) or not agents:
        return None
    values = [a.get("cpu_s") if isinstance(a, dict) else None for a in agents]
    if all(isinstance(v, (int, float)) for v in values):
        return float(sum(values))  # type: ignore[arg-type]
    return None


AGENT_TITLE = "ray::TrafficAgent"  # Ray's title of a traffic-agent actor process (TrafficAgentActor)
RAY_OWN_WORKERS = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def process_part(top: bool, title: str) -> str:
    """Which part of a horde run a process is, for the steady-state breakdown.

    `top`: the meter's direct child, i.e. the `horde run` process (the driver: coordinator,
    fan-in, aggregation, bundle). `title`: its command line, as Ray retitles its workers
    ("ray::TrafficAgentActor.stream", "ray::NodeMonitor.stream", "ray::IDLE").
    """
    if top:
        return "driver"
    if title.startswith(AGENT_TITLE):
        return "agent"
    if title.startswith("ray::") and not title.startswith(RAY_OWN_WORKERS):
        return "other actors"  # horde's other actors: the node resource monitor
    return "ray"  # gcs_server, raylet, dashboard, log monitor, Ray's own worker processes


def write_scenario(load: Load, template: Path = SCENARIO) -> Path:
    """The template with this run's duration and users, in the peer's workdir."""
    scenario = yaml.safe_load(template.read_text())
    workload = scenario["workload"]
    workload["stages"] = [{"duration": f"{load.seconds}s", "target": load.users}]
    workload["start"] = load.users
    scenario["target"] = load.url.rstrip("/")
    path = load.workdir / template.name
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def find_summary(out_dir: Path) -> Path | None:
    """summary.json of the bundle under --out (the bundle may be out_dir or a folder in it)."""
    hits = sorted(out_dir.rglob("summary.json"))
    return hits[0] if hits else None


class Horde:
    name = "horde"
    startup_slack_s = 180.0  # Ray's start-up and shutdown

    def __init__(self, executable: str = "horde", engine: str | None = None) -> None:
        self.executable = executable
        self.engine = engine  # None: the scenario's default (auto: the lean engine for plain GETs)
        if engine is not None:
            self.name = f"horde-{engine}"

    @staticmethod
    def process_part(pid: int, top: bool) -> str:
        """The runner's steady-state breakdown of the tree (see process_part above)."""
        return process_part(top, "" if top else cmdline(pid))

    def unavailable(self) -> str | None:
        if shutil.which(self.executable) is None:
            return f"`{self.executable}` not found (pip install -e . puts `horde` on PATH)"
        return None

    def command(self, load: Load) -> list[str]:
        scenario = write_scenario(load)
        return [
            shutil.which(self.executable) or self.executable,
            "run",
            str(scenario),
            "--target",
            load.url.rstrip("/"),
            "-q",
            *(["--set", f"engine={self.engine}"] if self.engine else []),
            "--out",
            str(load.workdir / "bundle"),
        ]

    def count(self, load: Load, stdout: str, exit_code: int) -> Count:
        path = find_summary(load.workdir / "bundle")
        if path is None:
            raise PeerFailed(f"horde exited with {exit_code} and left no summary.json")
        summary = json.loads(path.read_text())
        try:
            requests, errors = summary_requests(summary)
        except (KeyError, TypeError, ValueError) as e:
            raise PeerFailed(f"cannot read the request count from {path}: {e!r}") from e
        extra = {}
        agent_cpu_s = summary_agent_cpu_s(summary)
        if agent_cpu_s is not None:
            extra["agent_cpu_s"] = agent_cpu_s
        return Count(requests=requests, errors=errors, run_s=summary_run_s(summary) or float(load.seconds), extra=extra)
