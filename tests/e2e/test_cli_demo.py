"""`reload-sidecar demo` picks a free port itself, and a busy `--port` is one line and exit 2.

Both start the real `python -m sidecar demo --no-wait`: a temp dir volume, the sidecar and the demo app.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
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
    # as the demo's own check binds: connections of an earlier demo in TIME_WAIT on the port do not count
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_narrates_into_a_pipe_as_it_goes() -> None:
    """stdout a pipe (not a terminal): each step's line arrives while the demo runs, and the printed app.yaml
    exists while it waits (the narration used to appear only at Ctrl-C, block-buffered); Ctrl-C then ends it."""
    # PYTHONUNBUFFERED (set on some machines) would hide the block buffering a user's pipe gets
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_") and k != "PYTHONUNBUFFERED"}
    with subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo", "--port", str(_free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    ) as proc:
        hang = threading.Timer(90, proc.kill)  # hang protection: the pipe then ends
        hang.start()
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if line.startswith("Now edit "):
                    break
            running = proc.poll() is None
            m = re.match(r"Now edit (\S+) ", lines[-1])
            assert m, lines
            exists = Path(m[1]).is_file()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
        finally:
            hang.cancel()
    assert running and exists, lines
    assert re.findall(r"^\[(\d)\] ", "\n".join(lines), re.M) == ["1", "2", "3", "4"]
    assert code == 0


def test_demo_no_wait_points_at_no_directory_it_deletes() -> None:
    """`--no-wait`: no "edit me" and no "Now edit <file>" for a temp dir removed as it exits; its last line
    says the dir is removed, and it is."""
    done = _demo()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Now edit" not in done.stdout and "edit me" not in done.stdout, done.stdout
    root = re.match(r"reload-sidecar demo in (\S+)\n", done.stdout)
    assert root, done.stdout
    assert done.stdout.splitlines()[-1] == f"--no-wait: done; {root[1]} is removed as the demo exits."
    assert not Path(root[1]).exists()
