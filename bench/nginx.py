"""A throwaway nginx target for benchmarks: one worker pinned to one CPU, all state in a temp dir.

    with Nginx(cpu=0) as target:
        print(target.url)            # http://127.0.0.1:PORT/
        print(target.static_url)     # a small static file

    # more files under /static/, exact-path `return` locations, nginx closing connections
    Nginx(cpu=0, files={"big.bin": b"x" * 10240}, returns={"/204": "204"}, keepalive_requests=40)

nginx runs in the foreground (`daemon off`) as a child of this process, so it is stopped by
its PID (SIGQUIT, then SIGKILL), never by name. Its config, pid file, error log and temp
paths live in a private temp dir that is removed on stop; access logging is off so the
target spends its CPU on requests, not on log lines.

Standard library only (psutil is optional, for the worker's CPU time), so any script under
bench/ can import it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

NGINX_BIN = "/usr/sbin/nginx"
STATIC_PATH = "/static/small.txt"
STATIC_BODY = b"horde static file\n" * 32  # 576 bytes: a small, cacheable static response
STATUS_PATH = "/nginx_status"  # stub_status: the target's own count of requests served

_CONF = """\
# written by bench/nginx.py; everything below {root}
daemon off;
master_process on;
worker_processes 1;
worker_cpu_affinity {affinity_mask};
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    # Benchmarks want every connection kept alive for the whole run; nginx's default
    # (1000 requests per connection) would make fast clients reconnect many times a second.
    keepalive_requests {keepalive_requests};
    keepalive_timeout 75s;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    default_type text/plain;

    server {{
        listen {host}:{port} reuseport backlog=4096;
        location / {{
            return 200 "ok\\n";
        }}
        location /static/ {{
            root {root}/www;
        }}
        location = {status_path} {{
            stub_status;
        }}
{extra_locations}    }}
}}
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out and released; nginx binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


KEEPALIVE_REQUESTS = 100_000_000  # effectively unlimited: no reconnects during a benchmark


def render_config(
    root: str,
    host: str,
    port: int,
    cpu: int,
    *,
    keepalive_requests: int = KEEPALIVE_REQUESTS,
    returns: Mapping[str, str] | None = None,
) -> str:
    """nginx.conf for one worker pinned to `cpu` (worker_cpu_affinity is a bit mask).

    `returns` adds exact-path locations answering with a `return` directive, e.g.
    {"/204": "204", "/moved": "301 /static/a.bin"}.
    """
    extra = "".join(
        f"        location = {path} {{\n            return {value};\n        }}\n"
        for path, value in (returns or {}).items()
    )
    return _CONF.format(
        root=root,
        host=host,
        port=port,
        affinity_mask=format(1 << cpu, "b"),
        status_path=STATUS_PATH,
        keepalive_requests=keepalive_requests,
        extra_locations=extra,
    )


class NginxError(RuntimeError):
    pass


class Nginx:
    """Start/stop one pinned nginx. Also a context manager.

    `files` ({name: content}) are served under /static/ beside STATIC_PATH's file;
    `returns` and `keepalive_requests` go to render_config.
    """

    def __init__(
        self,
        cpu: int = 0,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str = NGINX_BIN,
        startup_timeout_s: float = 10.0,
        *,
        files: Mapping[str, bytes] | None = None,
        returns: Mapping[str, str] | None = None,
        keepalive_requests: int = KEEPALIVE_REQUESTS,
    ) -> None:
        self.cpu = cpu
        self.files = dict(files or {})
        bad = [name for name in self.files if "/" in name or name in ("", ".", "..")]
        if bad:
            raise NginxError(f"files go directly under /static/: {bad}")
        self.returns = dict(returns or {})
        self.keepalive_requests = keepalive_requests
        self.host = host
        self.port = port
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def static_url(self) -> str:
        return f"http://{self.host}:{self.port}{STATIC_PATH}"

    def url_of(self, path: str) -> str:
        """http://host:port + path, e.g. url_of("/static/big.bin")."""
        return f"http://{self.host}:{self.port}{path}"

    @property
    def master_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (children of the master)."""
        if self._proc is None:
            return []
        try:
            with open(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def cpu_seconds(self) -> float:
        """user+sys CPU seconds of master and workers so far (needs psutil)."""
        import psutil

        total = 0.0
        pids = ([self._proc.pid] if self._proc else []) + self.worker_pids()
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def requests_served(self) -> int:
        """nginx's own count of requests handled so far (stub_status), this query included.

        A count from the target's side, independent of what a generator says it sent.
        """
        request = (f"GET {STATUS_PATH} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection((self.host, self.port), timeout=2.0) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        # body: "Active connections: N\nserver accepts handled requests\n A H R\n..."
        lines = data.decode("ascii", "replace").split("\r\n\r\n", 1)[-1].splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("server accepts handled requests"):
                return int(lines[i + 1].split()[2])
        raise NginxError(f"unexpected stub_status reply: {data[:200]!r}")

    def version(self) -> str:
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True, check=False)
        return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")

    def start(self) -> Nginx:
        if self._proc is not None:
            raise NginxError("already started")
        if not os.access(self.binary, os.X_OK):
            raise NginxError(f"{self.binary} not found (apt-get install nginx-light)")
        self.root = Path(tempfile.mkdtemp(prefix="horde-nginx-"))
        # When run as root nginx's workers drop to `nobody`: they must be able to read www/.
        self.root.chmod(0o755)
        (self.root / "tmp").mkdir()
        static = self.root / "www" / STATIC_PATH.lstrip("/")
        static.parent.mkdir(parents=True)
        for p in (static.parent, static.parent.parent):
            p.chmod(0o755)
        for path, body in ((static, STATIC_BODY), *((static.parent / name, body) for name, body in self.files.items())):
            path.write_bytes(body)
            path.chmod(0o644)
        if self.port is None:
            self.port = free_port(self.host)
        conf = self.root / "nginx.conf"
        conf.write_text(
            render_config(
                str(self.root),
                self.host,
                self.port,
                self.cpu,
                keepalive_requests=self.keepalive_requests,
                returns=self.returns,
            )
        )
        with open(self.root / "stderr.log", "wb") as stderr:  # the child keeps its own fd
            self._proc = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    str(self.cpu),
                    self.binary,
                    "-p",
                    str(self.root),
                    "-e",
                    str(self.root / "error.log"),
                    "-c",
                    str(conf),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                # its own session: a Ctrl-C meant for the benchmark must not take the target
                # down mid-run; stop() ends it by PID
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful quit (SIGQUIT) of the master by PID, SIGKILL after `timeout_s`."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            workers = self._children_of(proc.pid)
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
            for pid in workers:  # a worker outliving a killed master is ours to end
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- private ----------------------------------------------------------------------

    @staticmethod
    def _children_of(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def _error_log(self) -> str:
        assert self.root is not None
        text = ""
        for name in ("stderr.log", "error.log"):
            p = self.root / name
            if p.exists():
                text += p.read_text(errors="replace")
        return text.strip()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        request = f"GET / HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NginxError(f"nginx exited with {self._proc.returncode}: {self._error_log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    s.sendall(request)
                    if s.recv(64).startswith(b"HTTP/1.1 200") and self.worker_pids():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise NginxError(f"nginx not ready after {self.startup_timeout_s}s: {self._error_log()}")


if __name__ == "__main__":
    # Manual check: start, print the URLs, serve until Ctrl-C (or 60 s at most).
    import sys

    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    with Nginx(cpu=0) as target:
        print(f"nginx {target.version()} master={target.master_pid} workers={target.worker_pids()}")
        print(target.url, target.static_url, flush=True)
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            pass
