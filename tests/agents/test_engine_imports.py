"""An agent imports an engine's library only when its scenario uses that engine: a new
agent worker of plain requests starts without aiohttp (~0.09 s of its start, on the path to
the first request: docs/start.md). Each case runs in a fresh interpreter, since this one
has long imported aiohttp."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_BUILD = textwrap.dedent(
    """
    import json, sys
    import horde.cluster.fleet  # what a Ray worker loads with the actor class
    from horde.agents.runner import AgentRunner
    from horde.agents.spec import AgentSpec, FlowStepTemplate, FlowTemplate, RequestTemplate, Stage

    case = sys.argv[1]
    url = "http://127.0.0.1:9/x"
    engine = "aiohttp" if case == "aiohttp" else "fast"
    flows = ()
    if case == "flow":
        step = FlowStepTemplate("start", "GET", url, 0)
        flows = (FlowTemplate("job", 0, (step,)),)
    spec = AgentSpec(
        index=0, count=1, incarnation=0, model="open", arrivals="constant", start_level=1.0,
        stages=(Stage(1.0, 1.0, "hold"),), requests=(RequestTemplate("x", "GET", url, engine=engine),),
        weights=(1.0,), flows=flows, flush_interval_s=1.0, graceful_stop_s=1.0, max_in_flight=1,
        max_connections=1,
    )
    AgentRunner(spec, lease_term_s=5.0)  # the agent and its engines are built here
    print(json.dumps({"aiohttp": "aiohttp" in sys.modules}))
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("case", "imported"), [("plain", False), ("aiohttp", True), ("flow", True)])
def test_aiohttp_is_imported_only_for_a_scenario_that_uses_it(case: str, imported: bool) -> None:
    out = subprocess.run([sys.executable, "-c", _BUILD, case], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"aiohttp": imported}
