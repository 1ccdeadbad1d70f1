"""Both request engines against a real nginx give the same answers.

nginx (Debian nginx-light) is bench/nginx.py's throwaway target: a child process with its
own config, pid file and logs in a temporary directory, listening on 127.0.0.1 only,
stopped by its PID. `keepalive_requests` is small so nginx also closes connections under
both engines during the run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import uvloop

from horde.agents.aiohttp_engine import AiohttpEngine
from horde.agents.fast_http import FastEngine
from horde.agents.samples import ErrorClass
from horde.agents.spec import RequestTemplate

STATIC = bytes(range(256)) * 40  # 10240 bytes


def _bench_nginx() -> ModuleType:
    """bench/nginx.py by path (bench/ is not an installed package; the module is stdlib only)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "nginx.py"
    spec = importlib.util.spec_from_file_location("horde_bench_nginx", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nginx() -> Iterator[str]:
    bench_nginx = _bench_nginx()
    if not os.access(bench_nginx.NGINX_BIN, os.X_OK):
        pytest.skip(f"{bench_nginx.NGINX_BIN} not installed (Debian package nginx-light)")
    if shutil.which("taskset") is None:
        pytest.skip("taskset not installed (util-linux): bench/nginx.py pins nginx with it")
    target = bench_nginx.Nginx(
        cpu=min(os.sched_getaffinity(0)),
        files={"static.bin": STATIC, "empty.txt": b""},
        returns={"/204": "204", "/moved": "301 /static/static.bin"},
        keepalive_requests=40,
    )
    with target:
        yield target.url.rstrip("/")  # the templates add their paths


def _templates(base: str) -> list[RequestTemplate]:
    return [
        RequestTemplate("static", "GET", f"{base}/static/static.bin"),
        RequestTemplate("empty", "GET", f"{base}/static/empty.txt"),
        RequestTemplate("head", "HEAD", f"{base}/static/static.bin"),
        RequestTemplate("no-content", "GET", f"{base}/204"),
        RequestTemplate("moved", "GET", f"{base}/moved"),  # not followed by either engine
        RequestTemplate("missing", "GET", f"{base}/static/missing"),
        RequestTemplate("post", "POST", f"{base}/204", body=b"payload" * 100),
        RequestTemplate("range", "GET", f"{base}/static/static.bin", headers=(("Range", "bytes=0-99"),)),
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
