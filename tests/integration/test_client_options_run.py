"""The HTTP client options in whole runs: HTTPS targets (the automaton and a plain aiohttp
app) with a private CA, a self-signed certificate and mutual TLS; separate cookie sessions
per closed-model user; per-entry timeouts and redirects under `engine: auto`; `unique` data
rows over a three-agent run on the session's embedded Ray, and rows a Python user takes
counted in the summary."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from pathlib import Path

import pytest
from aiohttp import web

from horde.automaton.app import build_app
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.report.text import text_summary
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import load_scenario
from tests.agents.tls_certs import make_certs, serve_in_thread

CERTS = make_certs()


def _scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _run(path: Path, tmp_path: Path, *, in_process: bool = True) -> dict:
    result = run_scenario(
        load_scenario(path),
        RunOptions(in_process=in_process, out_dir=str(tmp_path / "out"), install_signal_handlers=False),
    )
    summary = dict(result.summary)
    summary["text"] = text_summary(read_bundle(result.bundle))
    return summary


def _https_scenario(tmp_path: Path, url: str, tls: str, path: str = "/health") -> Path:
    CERTS.write(tmp_path)
    return _scenario(
        tmp_path,
        f"""
        name: https
        target: {url}
        {tls}
        requests:
          - {{name: health, path: {path}}}
        workload: {{model: open, start: 20, stages: [{{duration: 1s, target: 20}}]}}
        agents: 1
        """,
    )


# ---------------------------------------------------------------------------------- TLS


@pytest.mark.timeout(120)
def test_an_https_automaton_with_a_self_signed_certificate(tmp_path):
    with serve_in_thread(build_app(), CERTS.server_context(self_signed=True)) as url:
        runs = {
            "off": _run(_https_scenario(tmp_path, url, "tls: {verify: false}"), tmp_path),
            "ca": _run(_https_scenario(tmp_path, url, "tls: {ca: self_signed.pem}"), tmp_path),
            "default": _run(_https_scenario(tmp_path, url, ""), tmp_path),
        }
    for name in ("off", "ca"):
        assert runs[name]["total"]["requests"] == 20 and runs[name]["total"]["errors"] == 0, name
    assert runs["off"]["client"]["tls_verify"] is False
    assert any("verification is off" in w for w in runs["off"]["client"]["warnings"])
    assert "WARNING  TLS certificate verification is off" in runs["off"]["text"]
    assert "client" not in runs["ca"]  # verification on and no data files: nothing to say
    failed = runs["default"]["total"]
    assert failed["requests"] == failed["errors"] == 20
    assert failed["errors_by_class"] == {"tls": 20}  # not connect: the service answered, horde refused it


@pytest.mark.timeout(120)
def test_mutual_tls_against_a_plain_aiohttp_app_with_a_private_ca(tmp_path):
    app = web.Application()
    app.router.add_get("/hello", _hello)
    tls = "tls: {ca: ca.pem, cert: client.pem, key: client_key.pem}"
    with serve_in_thread(app, CERTS.server_context(require_client_cert=True)) as url:
        good = _run(_https_scenario(tmp_path, url, tls, "/hello"), tmp_path)
        refused = _run(_https_scenario(tmp_path, url, "tls: {ca: ca.pem}", "/hello"), tmp_path)
    assert good["total"]["requests"] == 20 and good["total"]["errors"] == 0
    assert refused["total"]["errors"] == 20 and set(refused["total"]["errors_by_class"]) <= {"tls", "reset"}


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def test_the_client_key_never_reaches_the_bundle(tmp_path):
    app = web.Application()
    app.router.add_get("/hello", _hello)
    tls = "tls: {ca: ca.pem, cert: client.pem, key: client_key.pem}"
    with serve_in_thread(app, CERTS.server_context(require_client_cert=True)) as url:
        _run(_https_scenario(tmp_path, url, tls, "/hello"), tmp_path)
    secret = CERTS.client_key_pem.splitlines()[1]  # a line of the key's base64 body
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


# ------------------------------------------------------------------------------ cookies


def _session_app(mismatches: list[tuple[str, str]]) -> web.Application:
    """Login sets a session cookie for the account; /me answers 409 when the session's
    account is not the one the caller logged in as."""
    sessions: dict[str, str] = {}
    lock = threading.Lock()

    async def login(request: web.Request) -> web.Response:
        user = request.query["user"]
        with lock:
            token = f"t{len(sessions)}"
            sessions[token] = user
        await asyncio.sleep(0.02)  # let the other users' steps interleave with this one's
        resp = web.Response(text="in")
        resp.set_cookie("session", token)
        return resp

    async def me(request: web.Request) -> web.Response:
        account = sessions.get(request.cookies.get("session", ""), "-")
        if account != request.query["as"]:
            mismatches.append((request.query["as"], account))
            return web.Response(status=409, text=account)
        return web.Response(text=account)

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/me", me)
    return app


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "workload",
    [
        "{model: closed, start: 2, stages: [{duration: 1s, target: 2}]}",  # two users, each its own jar
        "{model: open, start: 100, stages: [{duration: 1s, target: 100}]}",  # each iteration its own jar
    ],
    ids=["closed", "open"],
)
def test_virtual_users_keep_separate_sessions(tmp_path, workload):
    (tmp_path / "accounts.csv").write_text("user\nann\nbob\n")
    mismatches: list[tuple[str, str]] = []
    with serve_in_thread(_session_app(mismatches)) as url:
        path = _scenario(
            tmp_path,
            f"""
            name: sessions
            target: {url}
            data: {{accounts: accounts.csv}}
            requests:
              - name: visit
                flow:
                  - {{name: login, path: "/login?user=${{data.accounts.user}}"}}
                  - {{name: me, path: "/me?as=${{data.accounts.user}}", expect: [200]}}
                  - {{name: again, path: "/me?as=${{data.accounts.user}}", expect: [200]}}
            workload: {workload}
            agents: 1
            """,
        )
        summary = _run(path, tmp_path)
    visits = summary["endpoints"]["visit"]
    assert visits["requests"] >= 20 and visits["errors"] == 0, visits
    assert mismatches == []


# --------------------------------------------------------------------- timeout, redirects


@pytest.mark.timeout(120)
def test_timeouts_and_redirects_under_engine_auto(tmp_path):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(text="late")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/moved", moved)
    app.router.add_get("/ok", _hello)
    with serve_in_thread(app) as url:
        path = _scenario(
            tmp_path,
            f"""
            name: options
            target: {url}
            timeout: 2s
            requests:
              - {{name: slow, path: /slow, expect: [200]}}
              - {{name: slow_short, path: /slow, timeout: 100ms}}
              - {{name: stay, path: /moved, expect: [302]}}
              - {{name: go, path: /moved, follow_redirects: true, expect: [200]}}
            workload: {{model: open, start: 20, stages: [{{duration: 1s, target: 20}}]}}
            agents: 1
            """,
        )
        summary = _run(path, tmp_path)
    eps = summary["endpoints"]
    assert summary["engines"] == {"slow": "fast", "slow_short": "aiohttp", "stay": "fast", "go": "aiohttp"}
    assert eps["slow"]["errors"] == 0 and eps["stay"]["errors"] == 0 and eps["go"]["errors"] == 0
    assert eps["slow_short"]["requests"] > 0
    assert eps["slow_short"]["errors_by_class"] == {"timeout": eps["slow_short"]["requests"]}


# --------------------------------------------------------------------------------- data


def _recording_app(seen: list[str]) -> web.Application:
    lock = threading.Lock()

    async def use(request: web.Request) -> web.Response:
        with lock:
            seen.append(request.match_info["user"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/use/{user}", use)
    return app


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_unique_rows_over_a_three_agent_run(ray_cluster, tmp_path):
    rows = [f"user{i:03d}" for i in range(100)]
    (tmp_path / "accounts.csv").write_text("user\n" + "\n".join(rows) + "\n")
    seen: list[str] = []
    with serve_in_thread(_recording_app(seen)) as url:
        path = _scenario(
            tmp_path,
            f"""
            name: unique
            target: {url}
            data: {{accounts: {{file: accounts.csv, order: unique}}}}
            requests:
              - {{name: use, path: "/use/${{data.accounts.user}}"}}
            workload: {{model: open, start: 60, stages: [{{duration: 2s, target: 60}}]}}
            agents: 3
            """,
        )
        summary = _run(path, tmp_path, in_process=False)
    use = summary["endpoints"]["use"]
    assert use["requests"] == 120  # 60/s for 2 s, over three agents
    exhausted = use["errors_by_class"].get("data_exhausted", 0)
    assert use["errors"] == exhausted  # the only failures: rows ran out
    assert len(seen) == len(set(seen))  # no row used twice anywhere in the cluster
    assert set(seen) <= set(rows)
    assert len(seen) == use["requests"] - exhausted  # the rows consumed are exactly the ones the target saw
    assert exhausted >= 20  # 120 requests, 100 rows
    accounts = summary["client"]["data"]["accounts"]
    assert accounts["rows"] == 100 and accounts["rows_used"] == len(seen) and accounts["ran_out"] is True
    assert any("'accounts' ran out" in w for w in summary["client"]["warnings"])


@pytest.mark.timeout(120)
def test_rows_a_python_user_takes_are_counted_in_the_summary(tmp_path):
    rows = [f"user{i:03d}" for i in range(40)]
    (tmp_path / "accounts.csv").write_text("user\n" + "\n".join(rows) + "\n")
    (tmp_path / "taker.py").write_text(
        "class Taker:\n"
        "    async def run(self, client):\n"
        "        row = client.data('accounts')\n"
        "        await client.get(f\"/use/{row['user']}\", name='use')\n"
    )
    seen: list[str] = []
    with serve_in_thread(_recording_app(seen)) as url:
        path = _scenario(
            tmp_path,
            f"""
            name: taker
            target: {url}
            data: {{accounts: {{file: accounts.csv, order: unique}}}}
            requests:
              - {{name: take, user: "taker.py:Taker", requests: [use]}}
            workload: {{model: open, start: 30, stages: [{{duration: 2s, target: 30}}]}}
            agents: 1
            """,
        )
        summary = _run(path, tmp_path)
    take = summary["endpoints"]["take"]
    assert take["requests"] == 60  # 30 iterations a second for 2 s
    assert sorted(seen) == rows  # every row once, and only the rows
    accounts = summary["client"]["data"]["accounts"]
    assert accounts["rows_used"] == len(seen) == 40  # counted where taken: the target saw exactly these
    assert accounts["exhausted"] == take["errors_by_class"]["data_exhausted"] == 20
    assert accounts["ran_out"] is True


@pytest.mark.timeout(120)
def test_data_rows_feed_the_automatons_records(tmp_path):
    lines = [json.dumps({"user": f"u{i}", "n": i}) for i in range(10)]
    (tmp_path / "people.jsonl").write_text("\n".join(lines) + "\n")
    with serve_in_thread(build_app()) as url:
        path = _scenario(
            tmp_path,
            f"""
            name: records
            target: {url}
            data: {{people: {{file: people.jsonl, order: unique}}}}
            requests:
              - name: create
                method: POST
                path: /api/records
                json: {{owner: "${{data.people.user}}", n: "${{data.people.n}}"}}
                expect: [201]
            workload: {{model: open, start: 10, stages: [{{duration: 1s, target: 10}}]}}
            agents: 1
            """,
        )
        summary = _run(path, tmp_path)
        import urllib.request

        with urllib.request.urlopen(url + "/api/records?limit=100") as resp:
            records = json.load(resp)["records"]
    assert summary["endpoints"]["create"]["errors"] == 0
    owners = sorted(r["data"]["owner"] if "data" in r else r["owner"] for r in records)
    assert owners == sorted(f"u{i}" for i in range(10))
