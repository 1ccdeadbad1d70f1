"""A stand-in for Ray's per-node agents on the lean head: it reports "no port" and waits.

The raylet starts two Python agents, the dashboard agent (metrics and events) and the
runtime-env agent (prepares a task's runtime_env), and registers with the GCS only once
both have written their ports into the session directory. Together they are ~1.5 s of CPU
(Python importing Ray, aiohttp, grpc, opentelemetry) on the path to the first worker, and
a horde run on the embedded Ray uses neither: it exports none of Ray's metrics and asks
for no runtime_env. The lean head (cluster/connect.py) has the raylet start this script in
their place, with `python -S -I` (no site packages, nothing of the user's environment).

The dashboard stand-in writes the agent's ports as -1, which is what Ray's own dashboard
agent writes when its metrics are off (the raylet then logs "Metrics agent not available"
and runs without it). The runtime-env stand-in listens on a free loopback port and answers
the raylet's one request, "prepare this runtime_env", with a failure that says why: a task
or actor that asks for a runtime_env on horde's embedded Ray fails at once with that
message (a RuntimeEnvSetupError), instead of the raylet retrying an absent agent and then
ending the node. Each stays alive as long as its parent, the raylet, which treats an agent
that exits as a failure of the node. Standard library only: it imports nothing of Ray's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

# The port files each agent writes (ray._raylet *_PORT_NAME; persist_port writes
# "{name}_{node_id}" in the session directory, holding the port as decimal text).
PORT_NAMES = {
    "dashboard": ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port"),
    "runtime_env": ("runtime_env_agent_port",),
}
NO_PORT = -1
_POLL_S = 1.0
REFUSAL = (
    "horde's embedded Ray runs no runtime-env agent (cluster/standin_agent.py): a runtime_env "
    "cannot be prepared here. Start Ray yourself (`ray start --head`) and pass --address, or "
    "set HORDE_RAY_AGENTS=ray."
)
# The raylet's two paths, and their protobuf replies written by hand (runtime_env_agent.proto:
# field 1 status, AGENT_RPC_STATUS_OK = 0 / FAILED = 1; field 2 error_message).
_PREPARE = "/get_or_create_runtime_env"
_RELEASE = "/delete_runtime_env_if_possible"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def failed_reply(message: str) -> bytes:
    """A GetOrCreateRuntimeEnvReply: status FAILED, error_message `message`."""
    text = message.encode()
    return b"\x08\x01" + b"\x12" + _varint(len(text)) + text


class _Refuse(BaseHTTPRequestHandler):
    timeout = 5.0  # a local client that connects and sends nothing cannot hold the loop

    def do_POST(self) -> None:  # http.server's name
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
        self.rfile.read(length)
        # Nothing was prepared, so there is nothing to release: an empty reply is status OK.
        body = failed_reply(REFUSAL) if self.path == _PREPARE else b""
        code = 200 if self.path in (_PREPARE, _RELEASE) else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # http.server's signature
        pass


def write_ports(kind: str, session_dir: str, node_id: str, port: int = NO_PORT) -> list[str]:
    """Write the port files of `kind`'s agent, each atomically (the raylet polls for them)."""
    written = []
    for name in PORT_NAMES[kind]:
        path = os.path.join(session_dir, f"{name}_{node_id}")
        tmp = f"{path}.standin-{os.getpid()}"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(str(port))
        os.replace(tmp, path)
        written.append(path)
    return written


def wait_for_parent(parent_pid: int, server: HTTPServer | None = None, poll_s: float = _POLL_S) -> None:
    """Serve (if given a server) until the process that started this one is gone."""
    if server is not None:
        server.timeout = poll_s
    while os.getppid() == parent_pid:
        if server is None:
            time.sleep(poll_s)
        else:
            server.handle_request()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="standin_agent")
    ap.add_argument("--kind", choices=sorted(PORT_NAMES), required=True)
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--node-ip-address", default="127.0.0.1")
    args, _ = ap.parse_known_args(argv)  # the raylet adds its own (--disable-metrics-collection)
    parent_pid = os.getppid()
    server = None
    try:
        if args.kind == "runtime_env":
            server = HTTPServer((args.node_ip_address, 0), _Refuse)
            write_ports(args.kind, args.session_dir, args.node_id, server.server_address[1])
        else:
            write_ports(args.kind, args.session_dir, args.node_id)
    except OSError as exc:
        print(f"horde stand-in {args.kind} agent: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        wait_for_parent(parent_pid, server)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
