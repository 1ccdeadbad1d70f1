"""Both request engines against a real nginx give the same answers.

nginx (Debian nginx-light) runs as a child process with its own config, pid file and logs
in a temporary directory, listening on 127.0.0.1 only. `keepalive_requests` is small so
nginx also closes connections under both engines during the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from agents.fast_http import FastEngine
from agents.http import AiohttpEngine
from agents.samples import ErrorClass
from agents.spec import RequestTemplate

NGINX = "/usr/sbin/nginx"

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    keepalive_requests 40;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location = /204 {{ return 204; }}
        location = /moved {{ return 301 /static.bin; }}
    }}
}}
"""

STATIC = bytes(range(256)) * 40  # 10240 bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.path.exists(NGINX):
        pytest.skip(f"{NGINX} not installed (Debian package nginx-light)")
    d = tmp_path_factory.mktemp("nginx")
    (d / "www").mkdir()
    (d / "www" / "static.bin").write_bytes(STATIC)
    (d / "www" / "empty.txt").write_bytes(b"")
    port = _free_port()
    (d / "nginx.conf").write_text(CONF.format(d=d, port=port))
    proc = subprocess.Popen([NGINX, "-p", str(d), "-c", str(d / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""  # type: ignore[union-attr]
                    pytest.fail(f"nginx did not start: {err} {(d / 'error.log').read_text() if (d / 'error.log').exists() else ''}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGQUIT)  # graceful shutdown, this nginx only
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _templates(base: str) -> list[RequestTemplate]:
    return [
        RequestTemplate("static", "GET", f"{base}/static.bin"),
        RequestTemplate("empty", "GET", f"{base}/empty.txt"),
        RequestTemplate("head", "HEAD", f"{base}/static.bin"),
        RequestTemplate("no-content", "GET", f"{base}/204"),
        RequestTemplate("moved", "GET", f"{base}/moved"),  # not followed by either engine
        RequestTemplate("missing", "GET", f"{base}/missing"),
        RequestTemplate("post", "POST", f"{base}/204", body=b"payload" * 100),
        RequestTemplate("range", "GET", f"{base}/static.bin", headers=(("Range", "bytes=0-99"),)),
    ]


N_REQUESTS = 400


async def _run(engine_cls, base: str) -> Counter:
    templates = _templates(base)
    engine = engine_cls(templates, max_connections=8, timeout_s=10.0, connect_timeout_s=5.0)
    await engine.open()
    try:
        results = await asyncio.gather(*(engine.request(i % len(templates)) for i in range(N_REQUESTS)))
    finally:
        await engine.close()
    return Counter((templates[i % len(templates)].name, *r) for i, r in enumerate(results))


def test_fast_and_aiohttp_engines_agree_on_nginx(nginx: str) -> None:
    fast = uvloop.run(_run(FastEngine, nginx))
    reference = uvloop.run(_run(AiohttpEngine, nginx))
    assert fast == reference
    per = N_REQUESTS // len(_templates(nginx))
    assert fast == Counter(
        {
            ("static", 200, len(STATIC), ErrorClass.OK): per,
            ("empty", 200, 0, ErrorClass.OK): per,
            ("head", 200, 0, ErrorClass.OK): per,
            ("no-content", 204, 0, ErrorClass.OK): per,
            ("moved", 301, fast_body_size(fast, "moved"), ErrorClass.OK): per,
            ("missing", 404, fast_body_size(fast, "missing"), ErrorClass.OK): per,
            ("post", 204, 0, ErrorClass.OK): per,
            ("range", 206, 100, ErrorClass.OK): per,
        }
    )


def fast_body_size(counts: Counter, name: str) -> int:
    """nginx's own error pages vary by version; take the size the run saw (checked equal above)."""
    (size,) = {key[2] for key in counts if key[0] == name}
    assert size > 0
    return size
