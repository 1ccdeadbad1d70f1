"""bench/truth.py's wire truth: the target's time on loopback, from the kernel's packet stamps.

    python -m bench.peers.wire_truth --port PORT   (root, Linux: an AF_PACKET socket on lo)

The target's handler time (bench/peers/delay_target.py) leaves out what the target spends
outside its handler (reading and parsing the request, writing the answer), and every
client sees that too. What no client can do better than is the time between the request
and the response on the wire: this process reads every TCP packet to or from PORT on the
loopback interface with the kernel's receive stamp (SO_TIMESTAMPNS, the same stamp the
same clock as the client's socket reads), and per connection pairs each request (the packet that starts with
a method) with the response that follows it (from the packet that starts "HTTP/" to the
last packet of the response before the next request). Per request it records the last
response packet's stamp minus the request's last packet's stamp, in ns.

A classic BPF filter in the kernel passes only TCP packets of PORT with a payload, so the
rest of the machine's loopback traffic, and the port's handshakes and bare ACKs, never
reach this process (it runs on the target's core). A packet socket bound to IPv4 gets the
incoming copy of each loopback packet only. Its stamp is 2-6 us later than the one the
receiving TCP socket reads for the same packet (measured here, at both ends of a
request), so a wire time is within a few us of what the two sockets' stamps would give.

Commands on stdin, one a line: `get` prints {"ns": [...], "dropped": n} (the times since
the last `get`) as one JSON line and forgets them; EOF ends the process. The first line on
stdout is `ready`.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import subprocess
import sys
from collections import deque

ETH_P_IP = 0x0800
PACKET_HOST = 0  # the incoming copy: its stamp is the one the client's socket reads
SO_TIMESTAMPNS = int(getattr(socket, "SO_TIMESTAMPNS", 35))
SO_ATTACH_FILTER = 26
_TIMESPEC = struct.Struct("@ll")
_ANC = socket.CMSG_SPACE(_TIMESPEC.size)
METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI")
SKIP = b"GET /__"  # the bench's own requests to the target (GET /__truth): not timed
_UNTIMED = -1


def bpf_tcp_port(port: int) -> bytes:
    """Classic BPF for a cooked IPv4 packet socket (data starts at the IP header): accept
    whole the TCP packets whose source or destination port is `port` and that carry a
    payload (IP total length > IP + TCP header lengths); drop the rest (handshakes, bare ACKs,
    every other port), so that they never wake this process."""

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    prog = [
        op(0x30, 0, 0, 9),  # 0  ldb [9]            ip protocol
        op(0x15, 0, 16, 6),  # 1  jeq #6 (tcp)      else drop
        op(0x28, 0, 0, 6),  # 2  ldh [6]            flags + fragment offset
        op(0x45, 14, 0, 0x1FFF),  # 3  jset #0x1fff  a later fragment: drop
        op(0xB1, 0, 0, 0),  # 4  ldxb 4*([0]&0xf)   x = ip header length
        op(0x48, 0, 0, 0),  # 5  ldh [x+0]          source port
        op(0x15, 2, 0, port),  # 6  jeq port        to the payload check
        op(0x48, 0, 0, 2),  # 7  ldh [x+2]          destination port
        op(0x15, 0, 9, port),  # 8  jeq port        else drop
        op(0x50, 0, 0, 12),  # 9  ldb [x+12]        tcp data offset (high nibble)
        op(0x54, 0, 0, 0xF0),  # 10 and #0xf0
        op(0x74, 0, 0, 2),  # 11 rsh #2             tcp header length
        op(0x0C, 0, 0, 0),  # 12 add x              + ip header length
        op(0x02, 0, 0, 0),  # 13 st M[0]
        op(0x28, 0, 0, 2),  # 14 ldh [2]            ip total length
        op(0x61, 0, 0, 0),  # 15 ldx M[0]
        op(0x2D, 0, 1, 0),  # 16 jgt x              a payload: accept, else drop
        op(0x06, 0, 0, 0x40000),  # 17 ret #262144  accept
        op(0x06, 0, 0, 0),  # 18 ret #0             drop
    ]
    return b"".join(prog)


class Pairer:
    """Requests and responses of one server port, paired per connection (client port).

    Pure: fed (stamp_ns, from_server, client_port, payload_head) per packet with a payload.
    """

    def __init__(self) -> None:
        self.requests: dict[int, deque[int]] = {}  # client port -> stamps of unanswered requests
        self.open: dict[int, tuple[int, int]] = {}  # client port -> (request stamp, index into ns)
        self.ns: list[int] = []
        self.dropped = 0  # responses with no request seen (a connection older than the sniffer)

    def packet(self, stamp_ns: int, from_server: bool, client_port: int, head: bytes) -> None:
        if not from_server:
            if head.startswith(METHODS):
                stamp = _UNTIMED if head.startswith(SKIP) else stamp_ns
                self.requests.setdefault(client_port, deque()).append(stamp)
                self.open.pop(client_port, None)
            else:  # a request's body or the rest of its head: the request ends later
                waiting = self.requests.get(client_port)
                if waiting and waiting[-1] != _UNTIMED:
                    waiting[-1] = stamp_ns
            return
        if head.startswith(b"HTTP/"):
            waiting = self.requests.get(client_port)
            if not waiting:
                self.dropped += 1
                self.open.pop(client_port, None)
                return
            request = waiting.popleft()
            if request == _UNTIMED:
                self.open.pop(client_port, None)
                return
            self.open[client_port] = (request, len(self.ns))
            self.ns.append(stamp_ns - request)
        elif client_port in self.open:  # more of the response: it ends at its last packet
            request, i = self.open[client_port]
            self.ns[i] = stamp_ns - request

    def take(self) -> dict[str, object]:
        out = {"ns": self.ns, "dropped": self.dropped}
        self.ns, self.dropped = [], 0
        self.open.clear()  # indices into the list just handed out
        return out


def parse(data: bytes, port: int) -> tuple[bool, int, bytes] | None:
    """(from_server, client_port, payload head) of an IPv4 TCP packet with a payload, else None."""
    if len(data) < 20:
        return None
    ihl = (data[0] & 0xF) * 4
    total = (data[2] << 8) | data[3]
    if len(data) < ihl + 20:
        return None
    src, dst = struct.unpack_from("!HH", data, ihl)
    tcp_len = (data[ihl + 12] >> 4) * 4
    start = ihl + tcp_len
    if total <= start:  # no payload: SYN, ACK, FIN
        return None
    head = data[start : start + 8]
    if src == port:
        return True, dst, head
    if dst == port:
        return False, src, head
    return None


def open_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    prog = bpf_tcp_port(port)
    buf = bytes(prog)
    import ctypes  # the sock_fprog struct wants the program's address

    cbuf = ctypes.create_string_buffer(buf)
    fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(cbuf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("lo", ETH_P_IP))  # Python applies htons to the bind address itself
    sock.setblocking(False)
    del cbuf  # the kernel copied the program
    # Packets that passed before the filter was attached (any traffic of the moment): drop.
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            break
    return sock


def serve(port: int) -> None:
    sock = open_socket(port)
    pairer = Pairer()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "packet")
    sel.register(sys.stdin, selectors.EVENT_READ, "command")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "command":
                line = sys.stdin.readline()
                if not line:
                    return
                if line.strip() == "get":
                    print(json.dumps(pairer.take()), flush=True)
                continue
            while True:
                try:
                    data, anc, _flags, addr = sock.recvmsg(128, _ANC)
                except BlockingIOError:
                    break
                if addr[2] != PACKET_HOST or not anc:
                    continue
                got = parse(data, port)
                if got is None:
                    continue
                sec, nsec = _TIMESPEC.unpack_from(anc[0][2])
                pairer.packet(sec * 1_000_000_000 + nsec, *got)


class WireTruth:
    """This module in a subprocess (pinned with `prefix`, e.g. taskset), for bench/truth.py."""

    def __init__(self, port: int, prefix: list[str], cwd: str) -> None:
        argv = [*prefix, sys.executable, "-m", "bench.peers.wire_truth", "--port", str(port)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"the wire sniffer did not start (first line {line!r}; it needs root on Linux)")

    def take(self) -> tuple[list[int], int]:
        """(request-to-response times in ns, responses with no request seen) since the last call."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("get\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        return list(got["ns"]), int(got["dropped"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    serve(ap.parse_args().port)


if __name__ == "__main__":
    main()
