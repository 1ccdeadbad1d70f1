"""Peer generator: Locust's FastHttpUser (geventhttpclient) with no think time.

    locust -f bench/peers/locustfile.py --headless --only-summary -u 64 -r 64 -t 10s \
        --host http://127.0.0.1:PORT --json-file out

Each user keeps its own keep-alive connection and loops GET / back to back. The path can
be changed with the HORDE_BENCH_PATH environment variable (default "/").
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant, task

PATH = os.environ.get("HORDE_BENCH_PATH", "/")


class RootUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def get_root(self) -> None:
        self.client.get(PATH)
