#!/usr/bin/env python3
"""The traffic of bench/soak.sh: valid requests mixed with everything hostile, for DURATION s.

Tasks, all on one asyncio loop, each counting its outcomes (HTTP status, or what happened to
the connection):
- valid:      keep-alive connections sending GETs with a valid token, paced to --rate req/s in
              all; the latency of every answer is kept (p50/p99/max in the summary);
- bad_token:  expired, bad signature, garbage, oversized and missing tokens (expect 401);
- oversized:  a head over server.max_header_bytes, sent in one go (expect 431);
- smuggling:  CL+TE, a coding other than chunked, repeated framing headers, obs-fold, a chunk
              size with a sign (`+5`) or a bare LF, two Host lines, a `;` path parameter
              (expect 400); and a bad head as the *second* request of a keep-alive connection
              (the first is answered, then the connection is closed without an answer);
- slowloris:  connections that send a partial head one header line a second, reopened when the
              daemon closes them (at server.header_read_timeout_ms);
- storm:      bursts of connections that close at once, after half a request line, or with a
              reset (SO_LINGER 0);
- flapper:    the backend is killed (SIGKILL) and restarted every --flap-up s (down --flap-down
              s), so some valid requests get 502;
- sampler:    the daemon's RSS (VmRSS, RssAnon) and gatelet_connections_active every 2 s, and
              /healthz every 5 s.

Once the time is up every task stops and closes its connections; the client then waits until
the daemon reports gatelet_connections_active = 0 and writes one JSON summary to --out.
"""

import argparse
import asyncio
import base64
import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----- tokens -------------------------------------------------------------------------------

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def expired_token(valid, key):
    """The valid token's claims with exp and iat an hour or two in the past, signed with the
    issuer's key by openssl (Ed25519, raw input): a well-formed token that is expired."""
    h, p, _ = valid.split(".")
    claims = json.loads(unb64(p))
    now = int(time.time())
    claims.update(exp=now - 3600, iat=now - 7200)
    if "nbf" in claims:
        claims["nbf"] = now - 7200
    msg = f"{h}.{b64(json.dumps(claims, separators=(',', ':')).encode())}"
    # OpenSSL 3.0 signs Ed25519 in one shot only from a file, not from a pipe.
    with tempfile.NamedTemporaryFile() as f:
        f.write(msg.encode())
        f.flush()
        sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", f.name],
                             capture_output=True, check=True).stdout
    return f"{msg}.{b64(sig)}"


def bad_signature(valid):
    h, p, s = valid.split(".")
    raw = bytearray(unb64(s))
    raw[10] ^= 0x01
    return f"{h}.{p}.{b64(bytes(raw))}"


# ----- HTTP/1.1, by hand (the hostile shapes cannot be sent by a library) -------------------

# The x-request-id of every answer the gateway's pipeline gave (the framing guard's 400s and
# hyper's 431s carry none); soak.sh looks each one up in the usage files.
ANSWERED_IDS = []


class Closed(Exception):
    """The connection closed (or reset) before a whole response arrived."""


async def read_response(reader, want_body=False):
    """(status, connection_close, body) of one response; Closed if none arrives."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise Closed(type(e).__name__) from None
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    h = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            h[k.strip().lower()] = v.strip().lower()
    body = b""
    rid = h.get(b"x-request-id")
    if rid is not None:
        ANSWERED_IDS.append(rid.decode())
    try:
        if b"content-length" in h:
            body = await reader.readexactly(int(h[b"content-length"]))
        elif h.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                body += chunk[:-2]
                if size == 0:
                    break
        elif not (100 <= status < 200 or status in (204, 304)):
            body = await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise Closed("body " + type(e).__name__) from None
    return status, h.get(b"connection") == b"close", (body if want_body else None)


async def connect(port):
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


def close(writer):
    if writer is not None:
        try:
            writer.close()
        except Exception:
            pass


def percentile(sorted_vals, q):
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    if not sorted_vals:
        return None
    return sorted_vals[max(0, math.ceil(q / 100 * len(sorted_vals)) - 1)]


class Soak:
    def __init__(self, a):
        self.a = a
        self.deadline = time.monotonic() + a.duration
        self.t0 = time.monotonic()
        self.counts = defaultdict(Counter)
        self.lat_all = []
        self.lat_ok = []
        self.samples = []
        self.events = []
        self.backend = None
        self.expired = expired_token(a.token, a.key)

    def live(self):
        return time.monotonic() < self.deadline

    def req(self, method, path, token=None, extra=b"", body=b""):
        auth = f"Authorization: Bearer {token}\r\n".encode() if token is not None else b""
        return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + auth + extra
                + (f"Content-Length: {len(body)}\r\n".encode() if body else b"") + b"\r\n" + body)

    # -- valid traffic --------------------------------------------------------------------
    async def valid(self, rate):
        a = self.a
        interval = 1.0 / rate
        nxt = time.monotonic() + random.random() * interval
        reader = writer = None
        request = self.req("GET", "/bench/1/hello", a.token)
        while self.live():
            now = time.monotonic()
            if nxt > now:
                await asyncio.sleep(nxt - now)
            elif now - nxt > 1.0:
                nxt = now  # far behind: do not burst to catch up
            nxt += interval
            try:
                if writer is None:
                    reader, writer = await connect(a.port)
                t = time.perf_counter()
                writer.write(request)
                status, close_it, _ = await asyncio.wait_for(read_response(reader), 15)
                ms = (time.perf_counter() - t) * 1000
                self.counts["valid"][str(status)] += 1
                self.lat_all.append(ms)
                if status == 200:
                    self.lat_ok.append(ms)
                if close_it:
                    close(writer)
                    writer = None
            except Closed as e:
                self.counts["valid"][f"closed before answer ({e})"] += 1
                close(writer)
                writer = None
            except (OSError, asyncio.TimeoutError) as e:
                self.counts["valid"][f"error {type(e).__name__}"] += 1
                close(writer)
                writer = None
        close(writer)

    # -- bad tokens -----------------------------------------------------------------------
    async def bad_tokens(self, rate):
        a = self.a
        kinds = [
            ("expired", self.expired),
            ("bad signature", bad_signature(a.token)),
            ("garbage", "not.a.token"),
            ("garbage base64", b64(os.urandom(40)) + "." + b64(os.urandom(80)) + "." + b64(os.urandom(64))),
            ("oversized token", "eyJ" + "A" * 9000 + ".e30.sig"),
            ("missing", None),
        ]
        reader = writer = None
        i = 0
        while self.live():
            await asyncio.sleep(1.0 / rate)
            name, tok = kinds[i % len(kinds)]
            i += 1
            try:
                if writer is None:
                    reader, writer = await connect(a.port)
                writer.write(self.req("GET", "/bench/1/hello", tok))
                status, close_it, _ = await asyncio.wait_for(read_response(reader), 15)
                self.counts["bad_token"][f"{name}: {status}"] += 1
                if close_it:
                    close(writer)
                    writer = None
            except (Closed, OSError, asyncio.TimeoutError) as e:
                self.counts["bad_token"][f"{name}: {type(e).__name__}"] += 1
                close(writer)
                writer = None
        close(writer)

    # -- one request on a fresh connection ------------------------------------------------
    async def one_shot(self, category, name, data, timeout=15):
        writer = None
        try:
            reader, writer = await connect(self.a.port)
            writer.write(data)
            await writer.drain()
            status, _, _ = await asyncio.wait_for(read_response(reader), timeout)
            self.counts[category][f"{name}: {status}"] += 1
        except (Closed, OSError, asyncio.TimeoutError) as e:
            self.counts[category][f"{name}: {type(e).__name__}"] += 1
        finally:
            close(writer)

    async def oversized(self, period):
        pad = b"X-Big: " + b"b" * 20000 + b"\r\n"
        while self.live():
            await asyncio.sleep(period)
            await self.one_shot("oversized", "20 KB head", self.req("GET", "/bench/1/hello", self.a.token, pad))

    def smuggling_shapes(self):
        t = self.a.token
        auth = f"Authorization: Bearer {t}\r\n".encode()
        host = b"Host: 127.0.0.1\r\n"
        return [
            ("CL+TE", b"POST /bench/1/echo HTTP/1.1\r\n" + host + auth
             + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("TE gzip", b"POST /bench/1/echo HTTP/1.1\r\n" + host + auth
             + b"Transfer-Encoding: gzip\r\n\r\n"),
            ("TE twice", b"POST /bench/1/echo HTTP/1.1\r\n" + host + auth
             + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("CL twice", b"POST /bench/1/echo HTTP/1.1\r\n" + host + auth
             + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi"),
            ("obs-fold", b"GET /bench/1/hello HTTP/1.1\r\n" + host + auth + b"X-Folded: a\r\n b\r\n\r\n"),
            ("chunk size +5", b"POST /bench/1/echo HTTP/1.1\r\n" + host + auth
             + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
            ("chunk bare LF", b"POST /bench/1/echo HTTP/1.1\r\n" + host + auth
             + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            ("two Host", b"GET /bench/1/hello HTTP/1.1\r\n" + host + b"Host: other\r\n" + auth + b"\r\n"),
            ("path ;param", b"GET /bench/1/hello;x HTTP/1.1\r\n" + host + auth + b"\r\n"),
        ]

    async def smuggling(self, period):
        shapes = self.smuggling_shapes()
        i = 0
        while self.live():
            await asyncio.sleep(period)
            name, data = shapes[i % len(shapes)]
            i += 1
            await self.one_shot("smuggling", name, data)

    async def smuggling_second(self, period):
        """A good request, then CL+TE on the same connection: the first is answered; the
        connection is then closed without an answer (the daemon still records the refusal)."""
        bad = self.smuggling_shapes()[0][1]
        good = self.req("GET", "/bench/1/hello", self.a.token)
        while self.live():
            await asyncio.sleep(period)
            writer = None
            try:
                reader, writer = await connect(self.a.port)
                writer.write(good + bad)
                status, _, _ = await asyncio.wait_for(read_response(reader), 15)
                try:
                    second = await asyncio.wait_for(read_response(reader), 20)
                    outcome = f"first {status}, second {second[0]}"
                except Closed:
                    outcome = f"first {status}, then closed without an answer"
                self.counts["smuggling"][f"CL+TE as 2nd request: {outcome}"] += 1
            except (Closed, OSError, asyncio.TimeoutError) as e:
                self.counts["smuggling"][f"CL+TE as 2nd request: {type(e).__name__}"] += 1
            finally:
                close(writer)

    # -- slowloris ------------------------------------------------------------------------
    async def slowloris(self):
        while self.live():
            writer = None
            opened = time.monotonic()
            try:
                reader, writer = await connect(self.a.port)
                writer.write(b"GET /bench/1/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                n = 0
                while self.live():
                    try:
                        got = await asyncio.wait_for(reader.read(4096), 1.0)
                    except asyncio.TimeoutError:
                        writer.write(f"X-Slow-{n}: a\r\n".encode())
                        n += 1
                        continue
                    what = "closed by daemon" if not got else f"answered {got.split()[1].decode()}"
                    self.counts["slowloris"][what] += 1
                    self.events.append(("slowloris held", round(time.monotonic() - opened, 1)))
                    break
            except (OSError, ConnectionError) as e:
                self.counts["slowloris"][type(e).__name__] += 1
                await asyncio.sleep(0.5)
            finally:
                close(writer)

    # -- connection storms ----------------------------------------------------------------
    async def storm_one(self, how):
        try:
            reader, writer = await connect(self.a.port)
        except OSError as e:
            self.counts["storm"][f"connect {type(e).__name__}"] += 1
            return
        try:
            if how == "half line":
                writer.write(b"GET /bench/1/hel")
                await writer.drain()
            elif how == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.counts["storm"][how] += 1
        except OSError as e:
            self.counts["storm"][f"{how} {type(e).__name__}"] += 1
        finally:
            close(writer)

    async def storms(self, period, size):
        hows = ["close at once", "half line", "reset"]
        while self.live():
            await asyncio.sleep(period)
            await asyncio.gather(*(self.storm_one(hows[i % 3]) for i in range(size)))

    # -- the backend flapping -------------------------------------------------------------
    async def flapper(self, up, down):
        a = self.a
        try:
            while self.live():
                self.backend = subprocess.Popen([a.backend, f"127.0.0.1:{a.backend_port}"])
                with open(a.backend_pidfile, "w") as f:
                    f.write(str(self.backend.pid))
                await asyncio.sleep(up)
                if not self.live():
                    break
                self.backend.kill()
                self.backend.wait()
                self.counts["flapper"]["backend killed"] += 1
                await asyncio.sleep(down)
        finally:
            if self.backend and self.backend.poll() is None:
                self.backend.kill()
                self.backend.wait()

    # -- the daemon, watched --------------------------------------------------------------
    async def admin_get(self, path):
        reader, writer = await asyncio.open_connection(*self.a.admin.split(":"))
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
            status, _, body = await asyncio.wait_for(read_response(reader, want_body=True), 10)
            return status, body.decode()
        finally:
            close(writer)

    async def metric(self, family):
        _, text = await self.admin_get("/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(family + " ") or line.startswith(family + "{"))

    def rss(self):
        try:
            with open(f"/proc/{self.a.pid}/status") as f:
                st = dict(line.split(":", 1) for line in f)
            return int(st["VmRSS"].split()[0]), int(st["RssAnon"].split()[0])
        except (OSError, KeyError):
            return None

    async def sampler(self):
        i = 0
        while self.live():
            r = self.rss()
            if r is None:
                self.counts["daemon"]["gone"] += 1
                log("gatelet is gone!")
                return
            try:
                conns = await self.metric("gatelet_connections_active")
            except (OSError, Closed, asyncio.TimeoutError):
                conns = -1
            self.samples.append((round(time.monotonic() - self.t0, 1), r[0], r[1], int(conns)))
            if i % 5 == 0:
                log(f"  t={self.samples[-1][0]:5.0f}s RSS {r[0] / 1024:.1f} MiB, {int(conns)} connections, "
                    f"valid answered {sum(self.counts['valid'].values())}")
            if i % 3 == 0:
                try:
                    status, _ = await self.admin_get("/healthz")
                    self.counts["healthz"][str(status)] += 1
                except (OSError, Closed, asyncio.TimeoutError) as e:
                    self.counts["healthz"][type(e).__name__] += 1
            i += 1
            await asyncio.sleep(2)

    async def run(self):
        a = self.a
        workers = max(1, a.rate // 60)
        tasks = [self.flapper(a.flap_up, a.flap_down), self.sampler(),
                 self.bad_tokens(30), self.oversized(0.5), self.smuggling(0.1),
                 self.smuggling_second(2.0), self.storms(5.0, a.storm)]
        tasks += [self.valid(a.rate / workers) for _ in range(workers)]
        tasks += [self.slowloris() for _ in range(a.slowloris)]
        for r in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(r, BaseException):
                self.counts["client"][f"task failed: {r!r}"] += 1
                log(f"a client task failed: {r!r}")
        # The load is over: every connection of ours is closed. Wait for the daemon to agree.
        t = time.monotonic()
        while await self.metric("gatelet_connections_active") > 0 and time.monotonic() - t < 30:
            await asyncio.sleep(0.2)
        self.drained_s = round(time.monotonic() - t, 1)
        r = self.rss() or (0, 0)
        self.samples.append((round(time.monotonic() - self.t0, 1), r[0], r[1], 0))

    def summary(self):
        lat = sorted(self.lat_all)
        ok = sorted(self.lat_ok)
        held = [v for k, v in self.events if k == "slowloris held"]
        return {
            "duration_s": self.a.duration,
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "valid_latency_ms": {
                "answered": len(lat),
                "p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
                "p999": percentile(lat, 99.9), "max": lat[-1] if lat else None,
                "p99_200": percentile(ok, 99),
            },
            "slowloris_held_s": {"n": len(held), "min": min(held, default=None), "max": max(held, default=None)},
            "rss_samples": self.samples,
            "drained_s": self.drained_s,
        }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True, help="the daemon's pid (RSS)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--key", required=True, help="the issuer's private key (to sign an expired token)")
    ap.add_argument("--backend", required=True)
    ap.add_argument("--backend-port", type=int, required=True)
    ap.add_argument("--backend-pidfile", required=True)
    ap.add_argument("--duration", type=int, default=180)
    ap.add_argument("--rate", type=int, default=400, help="valid requests per second, in all")
    ap.add_argument("--slowloris", type=int, default=50)
    ap.add_argument("--storm", type=int, default=200, help="connections per storm (every 5 s)")
    ap.add_argument("--flap-up", type=float, default=8.0)
    ap.add_argument("--flap-down", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    soak = Soak(a)
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: setattr(soak, "deadline", 0))
    loop.run_until_complete(soak.run())
    with open(a.out, "w") as f:
        json.dump(soak.summary(), f)
    with open(a.out + ".ids", "w") as f:
        f.write("\n".join(ANSWERED_IDS))


if __name__ == "__main__":
    main()
