"""manifest.json: what ran, where, with which versions, and the command line (secrets hidden)."""

from __future__ import annotations

import platform
import re
import sys
from datetime import datetime
from typing import Any

from horde.cluster.connect import ray_binding
from horde.cluster.events import ClusterShape
from horde.coordinator.bundle.schema import BUNDLE_FORMAT
from horde.coordinator.plan import Plan
from horde.coordinator.scenario.load import LoadedScenario
from horde.coordinator.scenario.redact import Redactor

_SECRET_KEY = re.compile(r"token|secret|password|passwd|key|authorization|cookie", re.I)


class _RedactedTarget(dict):
    """manifest["target"]: the run adds keys as it learns them (the metrics URL once the probe
    starts, in run/session.py); each value passes the redaction rule on the way in, so no
    later writer can put a URL's credentials or an ${ENV} value into the bundle."""

    def __init__(self, redactor: Redactor, data: dict[str, Any]) -> None:
        super().__init__()
        self._redactor = redactor
        for key, value in data.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        redactor = getattr(self, "_redactor", None) or Redactor()  # copy/pickle set items before __init__ state
        super().__setitem__(key, redactor.value({key: value})[key])


def redacted_argv(argv: list[str], redactor: Redactor | None = None) -> list[str]:
    """The command line with the values of secret-looking --set keys, URL userinfo, secret query
    values and the scenario's ${ENV} values hidden."""
    redactor = redactor or Redactor()
    out = []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev == "--set" or a.startswith("--set="):
            body = a[len("--set=") :] if a.startswith("--set=") else a
            key, eq, _ = body.partition("=")
            if eq and (_SECRET_KEY.search(key) or "${" in body):
                a = ("--set=" if a.startswith("--set=") else "") + f"{key}=***"
        out.append(redactor.text(a))
    return out


def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def build_manifest(
    loaded: LoadedScenario, plan: Plan, shape: ClusterShape, base_url: str, started: datetime, target_proc: Any
) -> dict:
    """manifest.json as the run begins: the run fills in agents, outcome and times as it goes."""
    import aiohttp
    import numpy

    from horde.coordinator import __version__

    redactor = getattr(loaded, "redactor", None) or Redactor()  # tests hand in stand-ins
    manifest: dict[str, Any] = {
        "horde_version": __version__,
        "bundle_format": BUNDLE_FORMAT,
        "scenario": loaded.as_run,
        "scenario_file": str(loaded.source),
        "outcome": "running",
        "complete": False,
        "started": started.isoformat(),
        "target": {
            "url": redactor.url(base_url),
            "embedded": target_proc is not None,
            "pid": getattr(target_proc, "pid", None),
            "admin_url": getattr(target_proc, "admin_url", None),  # never the admin token
            "faults": target_proc.faults() if target_proc is not None else None,
        },
        "cluster": {**shape.to_dict(), "ray_binding": ray_binding(shape.kind)},
        "plan": {
            "agents": plan.count,
            "cpus_per_agent": plan.cpus_per_agent,
            "duration_s": plan.duration_s,
            "stages": [{"name": n, "end_s": e / 1e9} for n, e in zip(plan.stage_names, plan.stage_ends_ns)],
            "engines": plan.engines,
            "max_in_flight": [s.max_in_flight for s in plan.agents],
            "max_connections": [s.max_connections for s in plan.agents],
        },
        "versions": {
            "python": platform.python_version(),
            "ray": package_version("ray"),  # from package metadata: only cluster/ imports Ray
            "aiohttp": aiohttp.__version__,
            "numpy": numpy.__version__,
            "platform": platform.platform(),
        },
        "argv": redacted_argv(sys.argv, redactor),
        # Python users: each file as the agents got it (agents/users.py checks the hash)
        "user_code": [
            {"entry": u.name, "file": u.path, "class_name": u.class_name, "sha256": u.sha256}
            for u in (plan.agents[0].users if plan.agents else ())
            if u is not None
        ],
    }
    manifest["target"] = _RedactedTarget(redactor, manifest["target"])
    return manifest
