"""What shipping test data inside the AgentSpec costs, and what a row costs an agent.

    python bench/data_spec.py [--rows 10000,100000,1000000]

For each row count: a data file of three columns (~40 bytes a row as CSV) in one AgentSpec;
prints the CSV size, the pickled spec's size, and the CPU time to pickle and unpickle it
(what Ray does once per agent when it starts the actor), then DataFeeds.next's CPU time per
row for each order. In process, no Ray, no network; bounded by the row counts. Asserts
nothing: the decision it informs is in docs/scenarios.md ("Test data") and in the bounds of
coordinator/scenario/attachments.py.
"""

from __future__ import annotations

import argparse
import pickle
import time

from horde.agents.data import DataFeeds
from horde.agents.spec import AgentSpec, DataFeed, RequestTemplate, Stage


def spec_with(rows: tuple[tuple[str, ...], ...], order: str) -> AgentSpec:
    return AgentSpec(
        index=0,
        count=1,
        incarnation=0,
        model="open",
        arrivals="constant",
        start_level=1.0,
        stages=(Stage(1.0, 1.0),),
        requests=(RequestTemplate("a", "GET", "http://127.0.0.1/"),),
        weights=(1.0,),
        data=(DataFeed("accounts", order, ("user", "password", "note"), rows, len(rows)),),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10000,100000,1000000")
    args = ap.parse_args()
    head = f"{'rows':>9} {'csv MB':>7} {'pickled MB':>10} {'dumps ms':>9} {'loads ms':>9}"
    print(head + "  next() us/row: unique cycle random")
    for n in (int(x) for x in args.rows.split(",")):
        rows = tuple((f"user{i:07d}", f"pw{i:07d}", "x" * 20) for i in range(n))
        csv_bytes = sum(len(",".join(r)) + 1 for r in rows)
        spec = spec_with(rows, "cycle")
        t0 = time.process_time()
        blob = pickle.dumps(spec)
        t1 = time.process_time()
        pickle.loads(blob)
        t2 = time.process_time()
        per_row = []
        for order in ("unique", "cycle", "random"):
            feeds = DataFeeds(spec_with(rows, order).data)
            k = min(n, 200_000)
            s0 = time.process_time()
            for _ in range(k):
                feeds.next("accounts")
            per_row.append((time.process_time() - s0) / k * 1e6)
        print(
            f"{n:>9} {csv_bytes / 1e6:>7.1f} {len(blob) / 1e6:>10.1f} {(t1 - t0) * 1e3:>9.0f} {(t2 - t1) * 1e3:>9.0f}"
            f"  {per_row[0]:.2f} {per_row[1]:.2f} {per_row[2]:.2f}"
        )


if __name__ == "__main__":
    main()
