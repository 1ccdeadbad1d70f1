"""Talking to a Ray cluster's job server (the dashboard's HTTP port): its address, the auth
token, the SDK client, and its errors turned into JobsError with advice. Client side of
horde's Ray jobs (cluster/jobs.py); the token rules are described there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 5.0
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class JobsError(RuntimeError):
    """A jobs operation failed; the message says what to do about it."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str
    entrypoint: str
    start_time_s: float | None
    end_time_s: float | None
    driver_node_id: str | None
    driver_exit_code: int | None  # horde's exit code (0 passed, 4 thresholds failed, ...)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def auth_headers(token: str | None = None) -> dict[str, str]:
    """`Authorization: Bearer <token>` from the sources Ray 2.60 reads, in its order; or nothing."""
    if token is None:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            return {}
        token = _token_from_environment()
    token = (token or "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _token_from_environment() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        try:
            return Path(path_env).expanduser().read_text()
        except OSError as exc:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path_env}: cannot read the token: {exc}") from exc
    default = Path.home() / ".ray" / "auth_token"
    try:
        return default.read_text()
    except OSError:
        return None


def _http_address(address: str) -> str:
    address = (address or "").strip().rstrip("/")
    if not address:
        raise JobsError("no job server address: give the dashboard's address, e.g. http://127.0.0.1:8265")
    if address.startswith("ray://"):
        raise JobsError(
            f"{address} is a Ray client address; jobs go to the dashboard's HTTP port: "
            "http://HEAD:8265 (`ray dashboard ray-config.yaml` forwards it to 127.0.0.1:8265)"
        )
    if "://" not in address:
        address = "http://" + address
    return address


def _probe(url: str) -> None:
    """Fail fast and clearly on an unreachable job server (requests alone may hang for minutes)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise JobsError(
            f"cannot reach the Ray job server at {url} ({exc}). Is the cluster up, and is this its "
            "dashboard address (port 8265)? For a cluster from ray-config.yaml, run "
            "`ray dashboard ray-config.yaml` and use http://127.0.0.1:8265"
        ) from exc


def _auth_error_type() -> type[BaseException]:
    import ray.exceptions

    # Ray < 2.52 has no token auth and no such error: nothing will match it.
    return getattr(ray.exceptions, "AuthenticationError", type("_NoAuthError", (Exception,), {}))


def _client(address: str, token: str | None):
    from ray.job_submission import JobSubmissionClient

    AuthenticationError = _auth_error_type()

    url = _http_address(address)
    _probe(url)
    try:
        return JobSubmissionClient(url, headers=auth_headers(token))
    except AuthenticationError as exc:
        raise JobsError(_auth_advice(url, 401 if "required" in str(exc).lower() else 403)) from exc
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobsError(f"{url} does not answer as a Ray job server: {exc}") from exc


# The SDK logs every upload and ignored file at INFO on stderr; horde's commands say what matters.
_NOISY_LOGGERS = (
    "ray._private.runtime_env.packaging",
    "ray._private.runtime_env.working_dir",
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
)


@contextlib.contextmanager
def _quiet_sdk() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _translated:
    """Turn the SDK's errors into JobsError with advice (and keep its INFO chatter quiet)."""

    def __init__(self, address: str, job_id: str | None) -> None:
        self._address, self._job_id = address, job_id
        self._quiet = _quiet_sdk()

    def __enter__(self) -> None:
        self._quiet.__enter__()
        return None

    # Literal[False]: it never swallows an exception (it raises JobsError instead, or lets it pass).
    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        self._quiet.__exit__(None, None, None)
        if exc is None or isinstance(exc, JobsError):
            return False
        url = _http_address(self._address)
        if isinstance(exc, _auth_error_type()):
            raise JobsError(_auth_advice(url, 401 if "required" in str(exc).lower() else 403)) from exc
        text = str(exc)
        if self._job_id and ("404" in text or "does not exist" in text):
            raise JobsError(f"no job {self._job_id} on {url}; `horde jobs list` shows the cluster's jobs") from exc
        if "already exists" in text:
            raise JobsError(f"a job {self._job_id} already exists on {url}; choose another id") from exc
        if isinstance(exc, (RuntimeError, ConnectionError, OSError, ValueError)):
            raise JobsError(f"the job server at {url} refused the request: {text.strip()[:500]}") from exc
        return False


def _auth_advice(url: str, status_code: int) -> str:
    if status_code == 401:
        what = "requires a token and none was sent"
    else:
        what = "rejected the token"
    return (
        f"the Ray cluster at {url} {what} (token authentication). Set RAY_AUTH_TOKEN, or "
        "RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token; "
        "`ray get-auth-token` on the head node prints it"
    )


def _info(d) -> JobInfo:
    def seconds(ms) -> float | None:
        return ms / 1000.0 if ms else None

    status_value = getattr(d.status, "value", d.status)
    return JobInfo(
        job_id=d.submission_id or d.job_id or "",
        status=str(status_value),
        message=d.message or "",
        entrypoint=d.entrypoint or "",
        start_time_s=seconds(d.start_time),
        end_time_s=seconds(d.end_time),
        driver_node_id=getattr(d, "driver_node_id", None) or None,
        driver_exit_code=getattr(d, "driver_exit_code", None),
    )
