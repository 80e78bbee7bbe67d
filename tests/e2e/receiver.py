"""A real loopback HTTP app for reload/health endpoints, run in a thread, scripted by the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# (method, path, call number) -> (status, body); a status of 0 means: hang without answering.
Script = Callable[[str, str, int], tuple[int, str]]


def always(status: int) -> Script:
    return lambda method, path, n: (status, f"status {status}\n")


class Receiver:
    """Counts requests per path; `reads` lets the reload handler snapshot what the app would load."""

    def __init__(self, script: Script, on_reload: Callable[[], str] | None = None) -> None:
        self.script, self.on_reload = script, on_reload
        self.calls: list[tuple[float, str, str]] = []
        self.loaded: list[str] = []
        self.lock = threading.Lock()
        self.hang = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with receiver.lock:
                    n = sum(1 for _, m, p in receiver.calls if p == self.path) + 1
                    receiver.calls.append((time.monotonic(), self.command, self.path))
                    if receiver.on_reload is not None and self.command == "POST":
                        receiver.loaded.append(receiver.on_reload())
                status, body = receiver.script(self.command, self.path, n)
                if status == 0:
                    receiver.hang.wait(30)
                    return
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _answer  # noqa: N815 - http.server's naming

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, method: str = "POST", path: str | None = None) -> int:
        with self.lock:
            return sum(1 for _, m, p in self.calls if m == method and (path is None or p == path))


@contextmanager
def serving(script: Script, on_reload: Callable[[], str] | None = None) -> Iterator[Receiver]:
    rx = Receiver(script, on_reload)
    thread = threading.Thread(target=rx.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield rx
    finally:
        rx.hang.set()
        rx.server.shutdown()
        rx.server.server_close()


def reader(path: Path) -> Callable[[], str]:
    """What the app would load on reload: the file's text, or a marker when it is missing."""
    return lambda: path.read_text() if path.exists() else "<missing>"
