#!/usr/bin/env python3
"""A usage collector that refuses every other upload (driven by bench/soak.sh).

POSTs are answered 503 and 200 in turn (the first one 503), so the uploader meets refusals,
backs off and sends the same file again. What it accepts is saved as DIR/<Idempotency-Key>, the
file name the device gave it; a second copy under the same key is counted as a duplicate (and
compared with the first). Each request is logged as one JSON line on stdout.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
state = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        name = os.path.basename(self.headers.get("Idempotency-Key", ""))
        with lock:
            state["n"] += 1
            status = 503 if state["n"] % 2 == 1 else 200
            dup = None
            if status == 200 and name:
                path = os.path.join(self.server.dir, name)
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        dup = "same" if f.read() == body else "different"
                else:
                    with open(path + ".tmp", "wb") as f:
                        f.write(body)
                    os.rename(path + ".tmp", path)
            print(json.dumps({"n": state["n"], "status": status, "file": name, "bytes": len(body),
                              "encoding": self.headers.get("Content-Encoding"), "duplicate": dup}),
                  flush=True)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.dir = a.dir
    print(json.dumps({"listening": a.port}), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
