"""Embedded Ray on this machine, or attach to an existing cluster."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import ipaddress
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from horde.cluster.allocator import allocator_env, tune_allocator
from horde.cluster.events import ClusterShape, NodeShape
from horde.cluster.shipping import JOB_ID_ENV, horde_py_module

# `import ray` costs ~0.4 s of CPU: it happens in connect(), which `horde run` calls on a
# thread of its own while the rest of the run starts (coordinator/run/fleet.py), not when the
# run's modules are imported.

# Ray's own metrics (the Prometheus/Grafana export of every Ray process) stall a traffic
# agent's event loop: measured on 2 cores, an agent at 5000 requests/s saw 50-100 ms loop
# stalls with them (p99 50-80 ms against an nginx answering in 0.1 ms) and 17-23 ms
# without (p99 16-18 ms). horde reports its own figures and reads none of Ray's, so the
# embedded Ray runs without them. A `ray start` cluster sets RAY_enable_metrics_collection=0
# itself (ray-config.yaml).
#
# The raylet connects to its own object store with a client that retries every
# raylet_client_connect_timeout_milliseconds (Ray's default: 1000 ms, 10 attempts). On a
# busy 2-core machine the store is sometimes not listening at the first attempt, and the
# raylet then waits a whole second before it serves anyone: 1.0 s of the start in about
# one embedded start in three here (docs/start.md). The same 10 s budget in 10 ms steps.
STREAM_INLINE_BYTES = 1 << 20
EMBEDDED_SYSTEM_CONFIG = {
    "enable_metrics_collection": False,
    "raylet_client_connect_timeout_milliseconds": 10,
    "raylet_client_num_connect_attempts": 1000,
    # No worker prestarted for the first driver: Ray starts one per CPU as the driver
    # registers, and the driver's own connect then waits 0.5-0.9 s on the 2 busy cores. The run
    # creates its agents and node monitors at once instead (cluster/fleet.py), which starts
    # the workers it uses, side by side, once the driver is connected (docs/start.md).
    "prestart_worker_first_driver": False,
    # Streamed items up to this size travel inside the generator's report to the driver, not
    # through the object store (Ray's default limit is 100 KiB). An aggregated batch is
    # 65-150 kB at 10 endpoints x stages and 40 k requests/s an agent, ~300 kB at 1,000: over
    # the default, every batch was put into the agent's store, then located, read and freed
    # by the driver. Simulated, 256 agents x 40 k/s into one coordinator (docs/scale.md):
    # windows on time in 8 runs of 8 (the last 0.76-0.98 s after its end), 54-72% of a core;
    # at the default, late in 5 of 5 (1.35-3.1 s), 66-84%. The agents' side is what counts
    # (the producer decides), so a cluster horde attaches to needs it in every node's
    # environment: ray-config.yaml starts Ray with RAY_max_direct_call_object_size.
    "max_direct_call_object_size": STREAM_INLINE_BYTES,
}

# The embedded Ray serves this machine only. Ray binds its gRPC servers (GCS, raylet node and
# object managers, every worker) to 127.0.0.1 only when the node's IP address is 127.0.0.1,
# and its agents (dashboard agent, runtime-env agent) to the node's IP address; otherwise they
# listen on every interface. docs/security.md lists the ports and who can reach them.
LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
# Ray's logger that announces, on every new local Ray, that it turned token auth on.
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class ClusterError(RuntimeError):
    pass


@dataclass
class Connection:
    shape: ClusterShape
    owned: bool  # True when this process started Ray and must shut it down

    def close(self) -> None:
        import ray

        if self.owned and ray.is_initialized():
            ray.shutdown()


def connect(address: str | None = None, *, num_cpus: int | None = None, ship_horde: bool = True) -> Connection:
    """Reuse an initialised Ray, attach to `address`, or start an embedded single-node Ray.

    `ship_horde=False`: the cluster's workers import horde from this machine's own files (the
    loopback head of `horde up`, started with this process's import path), so nothing is shipped.
    """
    import ray

    if ray.is_initialized():
        return Connection(shape=cluster_shape("attached" if address else "embedded"), owned=False)
    # Before Ray's threads start in this process, and exported for the processes it starts
    # (the embedded Ray's raylet and workers): cluster/allocator.py.
    tune_allocator()
    kwargs: dict = dict(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        configure_logging=True,
    )
    # Inside a Ray job (or with RAY_ADDRESS exported) attach to that cluster.
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address and _is_loopback(address):
            # A Ray bound to 127.0.0.1 on this machine (another horde's embedded Ray, say): this
            # driver must take 127.0.0.1 as its node address too, or ray.init waits forever for
            # a raylet on the machine's routable address.
            kwargs["_node_ip_address"] = LOOPBACK
        if address and (os.environ.get(JOB_ID_ENV) or not ship_horde or _standin_head_at(address)):
            # a horde job (its runtime_env already ships horde), or the warm head of `horde up`
            with _loopback_node_ip() if _is_loopback(address) else contextlib.nullcontext():
                ray.init(address=address, **kwargs)
            kind = "attached" if ship_horde else "warm"
        elif address:
            with (
                horde_py_module() as horde_dir,
                _loopback_node_ip() if _is_loopback(address) else contextlib.nullcontext(),
            ):  # nodes need not have horde installed
                # the job's workers (the agents) get the allocator settings with horde itself
                runtime_env = {"py_modules": [horde_dir], "env_vars": allocator_env()}
                ray.init(address=address, runtime_env=runtime_env, **kwargs)
            kind = "attached"
        else:
            # address="local": always a new instance, never a `ray start` cluster found on this machine
            with _loopback_node_ip(), _quiet_token_auth_notice(), _token_file_for_owner_only(), lean_head():
                ray.init(
                    address="local",
                    num_cpus=num_cpus or os.cpu_count() or 1,
                    _node_ip_address=LOOPBACK,
                    _system_config=EMBEDDED_SYSTEM_CONFIG,
                    **kwargs,
                )
            if standin_agents():
                _mark_standin_head()
            kind = "embedded"
    except Exception as exc:  # Ray raises many types for a bad address or a failed start
        where = f"Ray cluster at {address}" if address else "an embedded Ray"
        raise ClusterError(f"could not start or reach {where}: {exc}") from exc
    return Connection(shape=cluster_shape(kind, address or ""), owned=True)


def _is_loopback(address: str) -> bool:
    """Whether a Ray address (host:port, or ray://host:port) names this machine's loopback."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "auto", a host name: a cluster elsewhere


def ray_binding(kind: str) -> dict | None:
    """How the Ray of a run listens, for the manifest (None: no Ray, an in-process fleet).

    `host` is the address Ray's servers on this machine bind to: 127.0.0.1 for the embedded
    Ray and the warm head of `horde up`; for an attached cluster, every interface (`ray start`
    chose the node addresses).
    `auth` is Ray's token-auth mode, on unless the user exported RAY_AUTH_MODE=disabled.
    """
    if kind not in ("embedded", "warm", "attached"):
        return None
    return {
        "host": ALL_INTERFACES if kind == "attached" else LOOPBACK,
        "auth": os.environ.get("RAY_AUTH_MODE", "token").lower(),
    }


# What `ray.dashboard.optional_deps` imports: Ray imports that module (~1 s of CPU on a loaded
# 2-core machine) only to learn whether they are installed, to start its dashboard processes
# with or without them. horde requires ray[default], so finding them is enough.
_DASHBOARD_DEPS = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "prometheus_client", "pydantic")


def _dashboard_deps_missing() -> ImportError | None:
    for name in _DASHBOARD_DEPS:
        if importlib.util.find_spec(name) is None:
            return ImportError(f"No module named {name!r}")
    return None


def _no_api_server(self, **_kwargs) -> None:
    """Node.start_api_server for the lean head: no API server process (lean_head)."""


def _free_agent_port(params_cls: type) -> type:
    """Ray's RayParams with the dashboard agent's HTTP port free (0) unless one is given."""

    class FreeAgentPortParams(params_cls):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    return FreeAgentPortParams


# The raylet's arguments that name the commands of its two Python agents.
_AGENT_ARGS = {"--dashboard_agent_command=": "dashboard", "--runtime_env_agent_command=": "runtime_env"}
_STANDIN = Path(__file__).with_name("standin_agent.py")
# HORDE_RAY_AGENTS=ray: the embedded Ray starts Ray's own agents (to compare, or to debug Ray).
AGENTS_ENV = "HORDE_RAY_AGENTS"


def standin_agent_args(raylet_command: list[str]) -> list[str]:
    """The raylet's command with cluster/standin_agent.py in place of Ray's two agents.

    An agent whose command does not say its session directory and node id (another Ray's
    arguments) keeps Ray's own command.
    """
    out = []
    for arg in raylet_command:
        prefix = next((p for p in _AGENT_ARGS if arg.startswith(p)), None)
        if prefix is None:
            out.append(arg)
            continue
        given = dict(a.split("=", 1) for a in shlex.split(arg[len(prefix) :]) if a.startswith("--") and "=" in a)
        if not given.get("--session-dir") or not given.get("--node-id"):
            out.append(arg)
            continue
        standin = [sys.executable, "-S", "-I", str(_STANDIN), f"--kind={_AGENT_ARGS[prefix]}"]
        standin += [f"--session-dir={given['--session-dir']}", f"--node-id={given['--node-id']}"]
        if given.get("--node-ip-address"):
            standin.append(f"--node-ip-address={given['--node-ip-address']}")
        out.append(prefix + subprocess.list2cmdline(standin))
    return out


def _with_standin_agents(start_ray_process):
    """services.start_ray_process, starting the raylet with the stand-in agents."""

    @functools.wraps(start_ray_process)
    def start(command, process_type, *args, **kwargs):
        if process_type == "raylet":
            command = standin_agent_args(list(command))
        return start_ray_process(command, process_type, *args, **kwargs)

    return start


# Written into the GCS of a head started with the stand-in agents: a run attaching to it
# (`--address` of another horde's embedded Ray) cannot have a runtime_env prepared there, so
# it ships nothing. Its workers import horde as this machine has it, as on the warm head.
_STANDIN_KEY, _STANDIN_NS = b"standin-agents", b"horde"


def standin_agents() -> bool:
    """Whether the lean head starts the stand-in agents (HORDE_RAY_AGENTS=ray: Ray's own)."""
    return os.environ.get(AGENTS_ENV, "").lower() != "ray"


def _mark_standin_head() -> None:
    import ray

    with contextlib.suppress(Exception):  # a mark not written: attaching runs ship horde, and say why they fail
        client = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]  # set by ray.init, not declared
        client.internal_kv_put(_STANDIN_KEY, b"1", True, _STANDIN_NS, timeout=5)


def _standin_head_at(address: str) -> bool:
    """Whether the Ray at `address` (on this machine) was started with the stand-in agents."""
    if not _is_loopback(address) or "://" in address:
        return False
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # a Cython module: no stubs

        return GcsClient(address=address).internal_kv_get(_STANDIN_KEY, _STANDIN_NS, timeout=5) == b"1"
    except Exception:  # not reachable, or not a Ray: ray.init says so below
        return False


# How often the start asks the GCS whether the raylet has registered (see _registered_soon).
_REGISTER_POLL_S = 0.01
_REGISTER_WAIT_S = 30.0


def _registered_soon(get_node):
    """services.get_node, asked only once the raylet has registered with the GCS.

    ray.init sleeps 0.1 s after starting the raylet, then asks the GCS for the node; Ray's
    accessor, finding it not yet registered, sleeps a whole second before it asks again. A
    raylet that needs a little more than 0.1 s to register (often, on a busy 2-core machine)
    so costs the start 1.0 s. This asks every 10 ms first, through a client of its own.
    """

    @functools.wraps(get_node)
    def get(gcs_address, node_id, *args, **kwargs):
        import time

        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # a Cython module: no stubs

        try:
            client = GcsClient(address=gcs_address)
            deadline = time.monotonic() + _REGISTER_WAIT_S
            while time.monotonic() < deadline:
                if any(n.hex() == node_id for n in client.get_all_node_info(timeout=_REGISTER_WAIT_S)):
                    break
                time.sleep(_REGISTER_POLL_S)
        except Exception:  # Ray's own call below reports what is wrong
            pass
        return get_node(gcs_address, node_id, *args, **kwargs)

    return get


@contextlib.contextmanager
def lean_head() -> Iterator[None]:
    """Start a head node that has what a horde run uses, and no more.

    Left out while ray.init starts it: the autoscaler's monitor process (a single-node Ray
    for one machine never scales; ~0.5 s of CPU at start and a poll loop after it); the API
    server (Ray's dashboard head, started even with include_dashboard=False for its job and
    state APIs, which horde does not use: ~0.8 s of CPU, and ray.init polls until it is up
    before it starts the raylet); and the import of Ray's dashboard dependencies into this
    process (found instead of imported). The dashboard agent's HTTP port is picked free
    (0) instead of Ray's fixed 52365: when another Ray on the machine holds that port (a
    `horde up`, a second run), the agent retries its bind for 3.3 s and the raylet, waiting
    for the agent, registers that much later (docs/start.md). And the raylet starts
    cluster/standin_agent.py in place of Ray's dashboard and runtime-env agents, which it
    waits for before it registers (~1.5 s of CPU on the path; unless HORDE_RAY_AGENTS=ray).
    Each is a private name of Ray 2.60 (tests/cluster/test_lean_head.py checks they exist):
    where one is gone, the head starts as Ray starts it by default, only slower.
    """
    import ray._private.node as ray_node
    import ray._private.parameter as ray_parameter
    import ray._private.services as ray_services
    import ray._private.utils as ray_utils

    patches = [
        (ray_node.Node, "start_monitor", lambda self: None),
        (ray_node.Node, "start_api_server", _no_api_server),
        (ray_utils, "get_dashboard_dependency_error", _dashboard_deps_missing),
        (ray_parameter, "RayParams", _free_agent_port(ray_parameter.RayParams)),
    ]
    if hasattr(ray_services, "get_node"):
        patches.append((ray_services, "get_node", _registered_soon(ray_services.get_node)))
    if standin_agents() and hasattr(ray_services, "start_ray_process"):
        patches.append((ray_services, "start_ray_process", _with_standin_agents(ray_services.start_ray_process)))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches if hasattr(obj, name)]
    for obj, name, new in patches:
        if hasattr(obj, name):
            setattr(obj, name, new)
    try:
        yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """Let ray.init take 127.0.0.1 as the node's address, for the embedded start only.

    On Linux ray.init replaces a loopback `_node_ip_address` with the machine's routable
    address (services.resolve_ip_for_localhost), unless ENABLE_RAY_CLUSTER is off, as it is
    on macOS and Windows, where Ray keeps a local Ray on 127.0.0.1. Ray reads the constant
    at each call, and once the node runs, its address comes from the node, so the switch is
    needed only while ray.init starts it.
    """
    import ray._private.ray_constants as ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def _token_file_for_owner_only() -> Iterator[None]:
    """Have Ray write the token it generates into a file only this user can read.

    The embedded Ray listens on 127.0.0.1, where every local user can connect: the token is
    what keeps them out. Ray writes a new ~/.ray/auth_token with the umask's mode (0644 by
    default). It treats an empty file as no token and writes into it, keeping the file's
    mode, so an empty 0600 file made first closes that gap. A token file already there is
    the user's own and is left as it is; an empty one left by a failed start is removed.
    """
    path = Path.home() / ".ray" / "auth_token"
    made = False
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            made = True
        except OSError:
            pass  # there already, or not writable: Ray reports its own error if it matters
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if made and path.stat().st_size == 0:
                path.unlink()


# Ray's logger that says, when ray.init runs on a thread (as `horde run` starts it), that it set
# no SIGTERM handler: horde's run sets its own.
_WORKER_LOGGER = "ray._private.worker"


class _DropTokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Token authentication is enabled", "SIGTERM handler is not set"))


@contextlib.contextmanager
def _quiet_token_auth_notice() -> Iterator[None]:
    """Drop Ray's "Token authentication is enabled" line while the embedded Ray starts.

    Ray prints it on every local ray.init that finds RAY_AUTH_MODE unset, then turns auth on
    all the same: the line says nothing about a horde run. Only that line goes; auth stays
    on, and Ray's other warnings (auth disabled, say) still print.
    """
    notice_filter = _DropTokenAuthNotice()
    loggers = [logging.getLogger(_AUTH_LOGGER), logging.getLogger(_WORKER_LOGGER)]
    for logger in loggers:
        logger.addFilter(notice_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notice_filter)


def cluster_shape(kind: str, address: str = "") -> ClusterShape:
    import ray

    nodes = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        nodes.append(
            NodeShape(
                node=n["NodeID"],
                host=n.get("NodeManagerHostname", n.get("NodeManagerAddress", "")),
                cpus=float(res.get("CPU", 0.0)),
                alive=bool(n.get("Alive", False)),
                resources={k: float(v) for k, v in res.items() if not k.startswith("node:")},
            )
        )
    return ClusterShape(kind=kind, address=address, nodes=tuple(nodes))
