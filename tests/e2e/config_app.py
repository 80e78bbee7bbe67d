"""An app that reads its config only at start, as most Java, Go and Node services do (no reload of any kind).

    python3 config_app.py CONFIG PIDFILE PORT

CONFIG (read once, at start; `key: value` lines):
  body:  what GET / answers
  health: ok | fail       GET /healthz answers 200 or 500
  term:  exit | ignore | slow:<s>   on SIGTERM: exit at once, ignore it (SIGKILL needed), or exit after <s>
  crash: yes              exit with status 1 right after reading the config (before binding, before the
                          pidfile): a version that makes the app crash at start

It binds 127.0.0.1:PORT, then writes its pid to PIDFILE (temp file + rename), then serves. It prints one
line `started <pid> <body>` to stdout when serving.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def main() -> None:
    config_path, pidfile, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(config_path, encoding="utf-8") as f:
        config = _parse(f.read())
    if config.get("crash") == "yes":
        sys.exit(f"crashing at start: {config_path} says crash: yes")
    body = config.get("body", "").encode()
    healthy = config.get("health", "ok") == "ok"
    term = config.get("term", "exit")
    if term == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif term.startswith("slow:"):
        delay = float(term.removeprefix("slow:"))
        signal.signal(signal.SIGTERM, lambda *_: threading.Timer(delay, os._exit, (0,)).start())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/healthz":
                status, answer = (200, b"ok\n") if healthy else (500, b"unhealthy config\n")
            else:
                status, answer = 200, body
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(pidfile + ".tmp", pidfile)
    print(f"started {os.getpid()} {body.decode()} at {time.time():.3f}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
