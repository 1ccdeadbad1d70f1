"""No secret in any output: known secrets planted in every place a user can put one, then
every byte horde writes (the results, the monitor's history and snapshot, report.html,
exports) and prints (stdout and stderr of each command) is searched for each of them.

Commands, as a user runs them (`python -m horde.coordinator.cli`): validate (a valid and an
invalid scenario), run (in process, against a local aiohttp server on 127.0.0.1 that answers
everything), report (text and --html), export, monitor (a scenario with an alert that fires
and a webhook whose post fails; and a bare URL with credentials), and submit's job
preparation (entrypoint, metadata, runtime_env: `prepare_job`, no job server needed).
Loopback only, bounded: a few hundred requests in all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from horde.cluster.jobs import prepare_job

ENV_SECRET = "envsecret-R5y7Hq"
SECRETS = {
    "url user": "urluser-Q7mw",
    "url password": "urlpw-Z9kd",
    "query token": "qtok-Wm4xb",
    "metrics user": "metuser-3Kpa",
    "metrics password": "metpw-8Hqz",
    "metrics api_key": "metkey-5Rtn",
    "request authorization": "authreq-J2vc",
    "request cookie": "cookiereq-N6bf",
    "flow authorization": "authflow-T4cs",
    "flow cookie": "cookieflow-P1sw",
    "x-api-key": "apikey-L8dg",
    "env": ENV_SECRET,
    "--set value": "settok-G3hy",
    "webhook token": "hooktok-V0ae",
    "monitored url password": "monpw-K2qe",
}
S = SECRETS


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """A local HTTP server answering 200 with a small JSON body to anything."""

    async def anything(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": "abc", "status": "done"})

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", anything)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"], box["port"] = runner, runner.addresses[0][1]
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield box["port"]
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def scenario_text(port: int) -> str:
    base = f"http://{S['url user']}:{S['url password']}@127.0.0.1:{port}"
    metrics = (
        f"http://{S['metrics user']}:{S['metrics password']}@127.0.0.1:{port}/metrics?api_key={S['metrics api_key']}"
    )
    return f"""
name: secrets-test
target:
  url: "{base}/base?access_token={S["query token"]}&page=1"
  metrics: "{metrics}"
requests:
  - name: plain
    path: /api/${{HORDE_T_SECRET}}/items
    headers:
      Authorization: "Bearer {S["request authorization"]}"
      Cookie: "sid={S["request cookie"]}"
      X-Api-Key: "{S["x-api-key"]}"
      X-Tenant: "tenant-${{HORDE_T_SECRET}}"
  - name: post
    method: POST
    path: /api/items
    json: {{note: "${{HORDE_T_SECRET}}", n: 1}}
  - name: login
    flow:
      - name: start
        method: POST
        path: /api/start
        headers:
          Authorization: "Bearer {S["flow authorization"]}"
          Cookie: "s={S["flow cookie"]}"
        capture: {{run_id: id}}
      - name: get
        path: /api/runs/${{run_id}}
workload:
  model: open
  stages: [{{duration: 2s, target: 20}}]
flush_interval: 500ms
alerts:
  - name: always
    metric: p99(latency)
    warning: "> 0ms"
"""


def horde(cwd: Path, *args: str, check: bool = True) -> str:
    """Run a horde command; its stdout and stderr together."""
    env = {**os.environ, "HORDE_T_SECRET": ENV_SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "horde.coordinator.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    if check:
        assert done.returncode in (0, 4), f"horde {' '.join(args)} -> {done.returncode}:\n{out[-3000:]}"
    return out


def leaks(text: str | bytes, where: str) -> list[str]:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return [f"{name} ({value}) in {where}" for name, value in SECRETS.items() if value.encode() in data]


@pytest.mark.timeout(120)
def test_no_secret_reaches_any_output(server, tmp_path):
    port = server
    work = tmp_path / "work"
    work.mkdir()
    scenario = work / "scenario.yaml"
    scenario.write_text(scenario_text(port))
    bad = work / "bad.yaml"  # invalid where an ${ENV} value and a URL password land
    bad.write_text(
        scenario_text(port).replace("model: open", 'model: open\n  max_in_flight: "${HORDE_T_SECRET}"')
        + 'agents: "x-${HORDE_T_SECRET}"\n'
    )
    set_arg = f"requests[0].headers.X-Auth-Token={S['--set value']}"
    hook = f"http://127.0.0.1:1/hook?token={S['webhook token']}"  # nothing listens on port 1: the post fails
    printed: dict[str, str] = {}

    printed["validate"] = horde(work, "validate", str(scenario), "--set", set_arg)
    assert "valid" in printed["validate"]
    printed["validate (invalid)"] = horde(work, "validate", str(bad), "--set", set_arg, check=False)
    assert "max_in_flight" in printed["validate (invalid)"] and "agents" in printed["validate (invalid)"]

    printed["run"] = horde(work, "run", str(scenario), "--in-process", "--set", set_arg, "--out", "results")
    bundle = next(p for p in (work / "results").iterdir() if p.is_dir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["metrics"].startswith("http://***@127.0.0.1")  # the probe's URL was recorded
    assert "***" in json.dumps(manifest["scenario"]["requests"][2]["flow"][0]["headers"])
    printed["report"] = horde(work, "report", str(bundle))
    printed["report --html"] = horde(work, "report", str(bundle), "--html")
    printed["export"] = horde(work, "export", str(bundle))

    snapshot = work / "monitor" / "snapshot.json"
    printed["monitor"] = horde(
        work,
        "monitor",
        str(scenario),
        "--set",
        set_arg,
        "--duration",
        "2",
        "--interval",
        "0.5",
        "--history",
        str(work / "monitor" / "history.sqlite3"),
        "--snapshot",
        str(snapshot),
        "--webhook",
        hook,
    )
    assert "ALERT" in printed["monitor"]  # the rule fired, so a webhook post was tried (and failed)
    assert "alert webhook" in printed["monitor"] and "token=***" in printed["monitor"]
    monitored = f"http://user:{S['monitored url password']}@127.0.0.1:{port}/x"
    printed["monitor (url)"] = horde(
        work,
        "monitor",
        monitored,
        "--duration",
        "1",
        "--interval",
        "0.5",
        "--history",
        str(work / "monitor" / "history.sqlite3"),
        "--snapshot",
        str(work / "monitor" / "url-snapshot.json"),
    )

    job = prepare_job(scenario, overrides=[set_arg], working_dir=work, job_id="secrets")
    assert job.files[".horde-jobs/horde-secrets/overrides.json"] == json.dumps([set_arg])  # travels as a file
    printed["submit (entrypoint, metadata, runtime_env)"] = json.dumps(
        {"entrypoint": job.entrypoint, "metadata": job.metadata, "runtime_env": job.runtime_env}
    )

    found = [leak for where, text in printed.items() for leak in leaks(text, where)]
    written = [p for p in work.rglob("*") if p.is_file() and p not in (scenario, bad)]
    assert any(p.name == "report.html" for p in written) and snapshot.is_file()
    assert any(p.suffix == ".csv" for p in written) and any(p.name == "history.sqlite3" for p in written)
    found += [leak for p in written for leak in leaks(p.read_bytes(), str(p.relative_to(work)))]
    assert not found, "secrets leaked:\n  " + "\n  ".join(found)
