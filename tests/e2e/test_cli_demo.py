"""`reload-sidecar demo` picks a free port itself, and a busy `--port` is one line and exit 2.

Both start the real `python -m sidecar demo --no-wait`: a temp dir volume, the sidecar and the demo app.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--no-wait", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )


@contextlib.contextmanager
def _listening(port: int) -> Iterator[socket.socket | None]:
    """A socket listening on `port`, or None when something else already does (busy either way)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        yield None
        return
    with sock:
        sock.listen()
        yield sock


def test_demo_with_9533_busy_uses_a_free_port_and_runs_the_script() -> None:
    """9533 taken: the demo's sidecar listens elsewhere, says where, and the four scripted steps run
    (it used to wait 15 s and die on a missing file)."""
    with _listening(9533):
        done = _demo()
    assert done.returncode == 0, done.stdout + done.stderr
    m = re.search(r"sidecar: http://127\.0\.0\.1:(\d+)/status", done.stdout)
    assert m and m[1] != "9533", done.stdout
    steps = re.findall(r"^\[(\d)\] ", done.stdout, re.M)
    assert steps == ["1", "2", "3", "4"], done.stdout
    assert "rolled back to" in done.stdout and "Traceback" not in done.stderr


def test_demo_with_a_busy_port_given_is_one_line() -> None:
    """`--port N` with N taken: one line naming the port, exit 2, no traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = _demo("--port", str(port))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"reload-sidecar: demo --port {port}: port {port} is already in use by another process; "
        "leave --port out to use a free one"
    ]
    assert done.stdout == ""
