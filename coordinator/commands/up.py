"""`horde up` and `horde down`: a warm, loopback-only Ray for iterative work.

`horde up` starts the warm head (cluster/head.py) as a process of its own and records it in
~/.horde/up.json (mode 0600): its PID and start time, its address, and the horde and Ray it
runs. While it is up, `horde run` without --address attaches to it instead of starting an
embedded Ray (and says so), saving Ray's start. `horde down` stops that process by PID (it
stops the Ray it started) and then any of the processes it had started that outlived it, by
PID and start time, and nothing else.

The record is checked before each use: a head whose process is gone, whose PID now belongs to
another process, whose address does not answer, or that runs another horde or Ray than this
one is stale; `horde run` says why and starts an embedded Ray, `horde down` clears it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import psutil

from horde.coordinator.bundle.outcome import EXIT_ERROR
from horde.coordinator.commands.common import err

UP_TIMEOUT_S = 90.0
DOWN_TIMEOUT_S = 30.0


def state_dir() -> Path:
    return Path(os.environ.get("HORDE_STATE_DIR") or Path.home() / ".horde")


def state_path() -> Path:
    return state_dir() / "up.json"


@dataclass(frozen=True)
class WarmHead:
    address: str
    pid: int
    create_time: float  # psutil's start time of `pid`: a PID reused by another process differs
    session_dir: str
    auth: str  # the head's RAY_AUTH_MODE: a run attaching to it uses the same
    horde_version: str
    horde_path: str
    ray_version: str
    python: str
    pool: dict = field(default_factory=dict)  # the agent pool: keeper and agent PIDs, or its error


def _identity() -> dict[str, str]:
    """What a head must share with this horde for its workers to run this horde's code."""
    from importlib.metadata import PackageNotFoundError, version

    import horde.coordinator

    try:
        horde_version = version("horde")
    except PackageNotFoundError:
        horde_version = "unknown"
    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        ray_version = "unknown"
    return {
        "horde_version": horde_version,
        "horde_path": str(Path(horde.coordinator.__file__ or "").resolve().parent.parent),
        "ray_version": ray_version,
        "python": sys.executable,
    }


def read_state() -> WarmHead | None:
    """The recorded head, or None. A damaged record raises ValueError naming the file."""
    path = state_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        optional = {"pool"}  # absent from records of an older horde
        return WarmHead(**{k: data[k] for k in WarmHead.__dataclass_fields__ if k not in optional or k in data})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a horde up record ({type(exc).__name__}: {exc})") from exc


def _alive(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _answers(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def stale_reason(head: WarmHead) -> str | None:
    """Why the recorded head cannot take a run of this horde (None: it can)."""
    if not _alive(head.pid, head.create_time):
        return f"its process {head.pid} is gone"
    if not _answers(head.address):
        return f"its Ray at {head.address} does not answer"
    mine = _identity()
    for key in ("horde_version", "horde_path", "ray_version", "python"):
        if getattr(head, key) != mine[key]:
            return f"it runs {key.replace('_', ' ')} {getattr(head, key)}, this horde {mine[key]}"
    return None


def warm_address() -> str | None:
    """The address of a usable warm head, for `horde run`; a stale record is reported, not used."""
    try:
        head = read_state()
    except ValueError as exc:
        err(f"warning: {exc}; starting an embedded Ray (`horde down` clears it)")
        return None
    if head is None:
        return None
    reason = stale_reason(head)
    if reason is not None:
        err(
            f"warning: the warm Ray of `horde up` is stale ({reason}); "
            "starting an embedded Ray (`horde down` clears it)"
        )
        return None
    # Ray reads its auth mode from the environment once, when it is imported: the head's mode must
    # be there first, so that this driver sends the token (`horde run` imports Ray after this).
    if "ray._raylet" in sys.modules and os.environ.get("RAY_AUTH_MODE", "token") != head.auth:
        err("warning: Ray is already loaded here with another auth mode than the warm Ray's; starting an embedded Ray")
        return None
    os.environ["RAY_AUTH_MODE"] = head.auth
    err(f"horde: attached to the warm Ray of `horde up` at {head.address} (pid {head.pid}); `horde down` stops it")
    return head.address


def default_pool(num_cpus: int | None) -> tuple[int, float]:
    """The pool that serves `agents: auto` on the warm head (and any run whose agents reserve as
    much): that many agents, of that many CPUs each (coordinator/plan.py)."""
    from horde.coordinator.plan import agent_count, agent_cpus

    cpus = float(num_cpus or os.cpu_count() or 1)
    n = agent_count("auto", cpus)
    return n, agent_cpus(cpus, n)


def start_head(num_cpus: int | None, pool: int | None = None) -> WarmHead:
    """Start cluster/head.py (and its agent pool: `pool` agents, None: default_pool) and record
    it. Raises RuntimeError if it did not come up."""
    from horde.coordinator import files

    directory = state_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = files.open_append(directory / "head.log", "ab", perm=0o600)
    cmd = [sys.executable, "-m", "horde.cluster.head"] + (["--num-cpus", str(num_cpus)] if num_cpus else [])
    size, cpus = default_pool(num_cpus)
    size = size if pool is None else pool
    if size > 0:
        cmd += ["--pool", str(size), "--pool-cpus", str(cpus)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True, text=True
    )
    log.close()
    line = _first_line(proc, UP_TIMEOUT_S)
    try:
        info = json.loads(line) if line else {}
    except ValueError:
        info = {}
    if "address" not in info:
        if proc.poll() is None:
            _stop_tree(proc.pid, psutil.Process(proc.pid).create_time())
        proc.wait(5)
        why = info.get("error") or f"no address within {UP_TIMEOUT_S:.0f}s (see {directory / 'head.log'})"
        raise RuntimeError(f"the warm Ray did not start: {why}")
    head = WarmHead(
        address=info["address"],
        pid=proc.pid,
        create_time=psutil.Process(proc.pid).create_time(),
        session_dir=info.get("session_dir", ""),
        auth=str(info.get("auth", "token")),
        pool=info.get("pool") or {},
        **_identity(),
    )
    files.write_text(state_path(), json.dumps(asdict(head), indent=2) + "\n", perm=0o600)
    return head


def _first_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    line = proc.stdout.readline()
    proc.stdout.close()
    return line


def _stop_tree(pid: int, create_time: float) -> list[int]:
    """SIGTERM the head (it stops its Ray), wait, then end any of its descendants still there,
    each checked by PID and start time. Returns the PIDs that were still running at the end."""
    if not _alive(pid, create_time):
        return []
    root = psutil.Process(pid)
    tree = [root] + root.children(recursive=True)
    known = {p.pid: p.create_time() for p in tree if _safe_create_time(p) is not None}
    root.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while time.monotonic() < deadline and _alive(pid, create_time):
        time.sleep(0.1)
    left = [p for p in tree if p.pid in known and _alive(p.pid, known[p.pid])]
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)
    with contextlib.suppress(OSError):
        os.waitpid(pid, os.WNOHANG)  # our child when `horde up` and `down` are one process (tests)
    return [p.pid for p in left]


def _safe_create_time(p: psutil.Process) -> float | None:
    try:
        return p.create_time()
    except psutil.Error:
        return None


@click.command()
@click.option("--num-cpus", type=int, default=None, help="CPUs the warm Ray offers (default: this machine's).")
@click.option(
    "--pool",
    type=click.IntRange(min=0),
    default=None,
    help="Traffic agents kept warm for runs (default: as many as `agents: auto` uses; 0: none).",
)
def up(num_cpus: int | None, pool: int | None) -> None:
    """Start a warm, loopback-only Ray that `horde run` attaches to until `horde down`."""
    try:
        head = read_state()
    except ValueError as exc:
        err(f"error: {exc}; `horde down` clears it")
        sys.exit(EXIT_ERROR)
    if head is not None:
        reason = stale_reason(head)
        if reason is None:
            click.echo(f"horde: the warm Ray is already up at {head.address} (pid {head.pid})")
            return
        err(f"error: a stale warm Ray is recorded ({reason}); run `horde down` first")
        sys.exit(EXIT_ERROR)
    try:
        head = start_head(num_cpus, pool)
    except RuntimeError as exc:
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    if head.pool.get("error"):
        err(f"warning: the agent pool did not start ({head.pool['error']}); runs create their agents")
    pooled = len(head.pool.get("agents", []))
    click.echo(
        f"horde: warm Ray up at {head.address} (pid {head.pid}, 127.0.0.1 only, {pooled} pooled agent(s)); "
        "`horde run` attaches to it"
    )


@click.command()
def down() -> None:
    """Stop the warm Ray of `horde up` (only what it started, by PID) and clear its record."""
    path = state_path()
    try:
        head = read_state()
    except ValueError as exc:
        err(f"warning: {exc}; removed")
        path.unlink(missing_ok=True)
        return
    if head is None:
        click.echo("horde: no warm Ray is up")
        return
    if not _alive(head.pid, head.create_time):
        path.unlink(missing_ok=True)
        click.echo(f"horde: the warm Ray (pid {head.pid}) was already gone; record cleared")
        return
    left = _stop_tree(head.pid, head.create_time)
    path.unlink(missing_ok=True)
    extra = f"; ended {len(left)} process(es) that outlived it: {left}" if left else ""
    click.echo(f"horde: warm Ray at {head.address} (pid {head.pid}) stopped{extra}")
