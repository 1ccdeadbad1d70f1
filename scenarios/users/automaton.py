"""A scripted user of the automaton (scenarios/scripted-automaton.yaml, docs/python-users.md).

Each iteration: "log in" (the automaton has no accounts: a simulated agent's greeting stands
in for a real service's login), create a record, start a research workflow and poll it until
it is done, then invoke one tool chosen at random with an input that suits it.
"""

import random

TOOL_INPUTS = {
    "search": {"query": "latency percentiles"},
    "calculator": {"op": "mean", "numbers": [3, 4, 8]},
    "summarize": {"text": "coordinated omission hides the worst latencies", "max_words": 4},
}


class AutomatonUser:
    def __init__(self):
        self.rng = random.Random()  # per virtual user: its own sequence
        self.records = 0

    async def on_start(self, client):
        await client.get("/health", name="health")

    async def run(self, client):
        login = await client.post("/api/agents/planner/respond", json={"message": "hello"}, name="login")
        if not login.ok:
            return  # the failed request is already counted (and fails the iteration)
        await client.post("/api/records", json={"kind": "note", "n": self.records}, name="create", expect=[201])
        self.records += 1
        run = await client.post(
            "/api/workflows/research/run", json={"input": "load"}, name="workflow", expect=[200, 202]
        )
        status = run.json()
        for _ in range(50):  # bounded, like a flow's max_polls
            if status["status"] != "running":
                break
            await client.sleep(0.02)
            poll = await client.get(f"/api/workflows/runs/{status['run_id']}", name="poll", read=True)
            status = poll.json()
        else:
            client.fail("the workflow was still running after 50 polls")
        if status["status"] != "completed":
            client.fail(f"workflow ended {status['status']}")
        tool = self.rng.choice(sorted(TOOL_INPUTS))
        await client.post(f"/api/tools/{tool}/invoke", json=TOOL_INPUTS[tool], name=f"tool-{tool}")
