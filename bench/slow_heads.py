#!/usr/bin/env python3
"""Slow heads against a running gatelet (driven by bench/slow_heads.sh, issue 9 item 6).

Opens N connections that each send an unfinished request head of about HEAD_BYTES bytes (a
request line, then header lines, never the blank line that ends a head) in PIECES pieces, one
piece to every connection, then a pause, then the next piece. Holds them open, waits until the
daemon's /metrics settle, records the daemon's RSS, checks that a normal client is still served
(one request with a valid token through to the backend, and /healthz), then closes every
connection, waits until gatelet_connections_active is back to 0 and records RSS again.

Plain blocking sockets and poll(): 1,000 sockets need no event loop. Progress goes to stderr;
the last line on stdout is one JSON object with the figures (read by slow_heads.sh).
"""

import argparse
import http.client
import json
import select
import socket
import sys
import time


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rss_kib(pid):
    """(VmRSS, RssAnon) of a process, in KiB."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                vals[k] = int(v.split()[0])
    return vals["VmRSS"], vals["RssAnon"]


def metrics(admin):
    """The daemon's /metrics as {family: sum of its samples}."""
    c = http.client.HTTPConnection(admin, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        family = name.split("{")[0]
        out[family] = out.get(family, 0) + float(value)
    return out


WATCHED = ("gatelet_connections_active", "gatelet_head_memory_bytes", "gatelet_heads_shed_total")


def settle(admin, want_stable=4, period=0.5, limit=30.0):
    """Polls /metrics until the watched values are unchanged over `want_stable` polls."""
    last, stable, t0 = None, 0, time.monotonic()
    while time.monotonic() - t0 < limit:
        m = metrics(admin)
        now = tuple(m.get(k, 0) for k in WATCHED)
        stable = stable + 1 if now == last else 0
        last = now
        if stable >= want_stable:
            return m
        time.sleep(period)
    log("  /metrics did not settle within", limit, "s; using the last values")
    return metrics(admin)


def head_pieces(host, path, token, head_bytes, pieces):
    """An unfinished head of about head_bytes bytes, cut into `pieces` parts (none for 0: the
    connections then only connect, which shows what a connection costs before its first byte)."""
    if head_bytes == 0:
        return []
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n".encode()
    i = 0
    while len(head) < head_bytes - 100:
        line = f"X-Slow-{i:04d}: {'a' * 80}\r\n".encode()
        head += line
        i += 1
    step = -(-len(head) // pieces)  # ceiling division
    return [head[k:k + step] for k in range(0, len(head), step)]


class Conns:
    """The held connections; a connection the daemon closed is dropped from the set."""

    def __init__(self):
        self.socks = {}
        self.closed_by_peer = 0

    def open(self, addr, n, batch=100):
        for start in range(0, n, batch):
            for _ in range(min(batch, n - start)):
                s = socket.create_connection(addr, timeout=10)
                s.setblocking(False)
                self.socks[s.fileno()] = s
            time.sleep(0.05)  # let the daemon accept, so the listen backlog never overflows

    def reap(self):
        """Drops the connections the daemon closed (readable: EOF, a reset, or a response)."""
        p = select.poll()
        for fd in self.socks:
            p.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        for fd, _ in p.poll(0):
            s = self.socks.pop(fd)
            try:
                s.recv(65536)
            except OSError:
                pass
            s.close()
            self.closed_by_peer += 1

    def send_all(self, data):
        for fd, s in list(self.socks.items()):
            try:
                s.setblocking(True)
                s.settimeout(5)
                s.sendall(data)
                s.setblocking(False)
            except OSError:
                self.socks.pop(fd)
                s.close()
                self.closed_by_peer += 1

    def close_all(self):
        for s in self.socks.values():
            s.close()
        self.socks.clear()


def normal_client(port, admin, path, token):
    """One request with a valid token through to the backend, and /healthz: (status, ms) each."""
    out = {}
    for name, addr, p, headers in (
        ("request", f"127.0.0.1:{port}", path, {"Authorization": f"Bearer {token}"}),
        ("healthz", admin, "/healthz", {}),
    ):
        t0 = time.perf_counter()
        try:
            c = http.client.HTTPConnection(addr, timeout=10)
            c.request("GET", p, headers=headers)
            r = c.getresponse()
            r.read()
            status = r.status
            c.close()
        except OSError as e:
            status = f"error: {e}"
        out[name] = (status, round((time.perf_counter() - t0) * 1000, 1))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--path", default="/bench/1/hello")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--head-bytes", type=int, default=16000)
    ap.add_argument("--pieces", type=int, default=4)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between pieces")
    a = ap.parse_args()

    res = {"idle": rss_kib(a.pid)}
    pieces = head_pieces("127.0.0.1", a.path, a.token, a.head_bytes, a.pieces)
    res["head_bytes"] = sum(map(len, pieces))
    conns = Conns()
    t0 = time.monotonic()
    conns.open(("127.0.0.1", a.port), a.conns)
    log(f"  {len(conns.socks)} connections open ({time.monotonic() - t0:.1f} s)")
    for i, piece in enumerate(pieces):
        time.sleep(a.gap)
        conns.send_all(piece)
        conns.reap()
        log(f"  piece {i + 1}/{len(pieces)} ({len(piece)} bytes) sent; {len(conns.socks)} still open")
    m = settle(a.admin)
    conns.reap()
    res["held"] = rss_kib(a.pid)
    res["held_conns_client"] = len(conns.socks)
    res["held_conns_daemon"] = int(m.get("gatelet_connections_active", 0))
    res["head_memory"] = int(m.get("gatelet_head_memory_bytes", 0))
    res["head_budget"] = int(m.get("gatelet_head_memory_budget_bytes", 0))
    res["shed"] = int(m.get("gatelet_heads_shed_total", 0))
    res["normal"] = normal_client(a.port, a.admin, a.path, a.token)
    log(f"  held: {res['held_conns_daemon']} connections, RSS {res['held'][0]} KiB; normal client {res['normal']}")
    conns.close_all()
    t1 = time.monotonic()
    while metrics(a.admin).get("gatelet_connections_active", 0) > 0:
        if time.monotonic() - t1 > 30:
            log("  connections still open 30 s after the client closed them")
            break
        time.sleep(0.2)
    time.sleep(2)  # let the daemon finish freeing (tasks end after the count drops)
    res["after"] = rss_kib(a.pid)
    res["after_metrics"] = {k: int(v) for k, v in metrics(a.admin).items() if k in WATCHED}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
