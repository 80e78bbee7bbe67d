"""Reload triggers: HTTP (real loopback server) and Unix signals (real processes found by pidfile or name)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.metrics import Metrics
from sidecar.settings import Settings
from sidecar.state import State
from sidecar.trigger import (
    PID_MAX,
    AppRefused,
    HttpTrigger,
    NoTrigger,
    NotSignalled,
    RestartTrigger,
    SignalTrigger,
    TriggerError,
    find_processes,
    make_trigger,
)
from tests.aio import serving
from tests.root import needs_root


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Recorder:
    """A reload endpoint answering from a script of statuses (the last one repeats), recording each call."""

    def __init__(self, *statuses: int, body: str = "") -> None:
        self.statuses, self.body = statuses, body
        self.calls: list[str] = []

    async def __call__(self, request: web.Request) -> web.Response:
        self.calls.append(f"{request.method} {request.path}")
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        return web.Response(status=status, text=self.body)


class FailsEverySecondCall:
    """A reload endpoint that fails every second call: 500 on the 1st, 3rd, ... call, 200 on the others."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.Response(status=500 if self.calls % 2 else 200, text="flaky")


# --- HTTP ------------------------------------------------------------------------------------------------


async def test_http_500_is_the_apps_refusal_and_never_retried(session: aiohttp.ClientSession) -> None:
    """A 500 is the app refusing the version: one request per fire (a retry would apply it again), the
    error is an `AppRefused` with the app's body; the next fire asks once more."""
    handler = FailsEverySecondCall()
    async with serving(handler) as base:
        url = f"{base}/-/reload"
        trigger = HttpTrigger(session, url, retries=3, backoff_s=0.01)
        with pytest.raises(AppRefused) as exc:
            await trigger.fire()
        assert handler.calls == 1
        assert str(exc.value) == f"POST {url} failed after 1 attempt(s): HTTP 500 'flaky'"
        assert await trigger.fire() == "HTTP 200"
        assert handler.calls == 2


async def test_http_refusal_body_is_in_the_message(session: aiohttp.ClientSession) -> None:
    """An endpoint that answers 500 is asked once; the message carries the app's own reason."""
    handler = Recorder(500, body="config error: bad yaml")
    async with serving(handler) as base:
        url = f"{base}/-/reload"
        with pytest.raises(AppRefused) as exc:
            await HttpTrigger(session, url, retries=2, backoff_s=0.01).fire()
    assert len(handler.calls) == 1
    assert str(exc.value) == f"POST {url} failed after 1 attempt(s): HTTP 500 'config error: bad yaml'"


async def test_http_404_is_not_retried_and_hints_at_the_endpoint(session: aiohttp.ClientSession) -> None:
    """A 404 is final (no retries) and the error asks whether the reload endpoint is enabled."""
    handler = Recorder(404, body="404: Not Found")
    async with serving(handler) as base:
        with pytest.raises(TriggerError) as exc:
            await HttpTrigger(session, f"{base}/-/reload", retries=3, backoff_s=0.01).fire()
    assert len(handler.calls) == 1
    assert "failed after 1 attempt(s): HTTP 404" in str(exc.value)
    assert "--web.enable-lifecycle" in str(exc.value)


async def test_http_timeout_is_in_the_message(session: aiohttp.ClientSession) -> None:
    """An endpoint that never answers fails each attempt at the per-attempt timeout, and says so."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    async with serving(hang) as base:
        start = time.monotonic()
        try:
            with pytest.raises(TriggerError) as exc:
                await HttpTrigger(session, f"{base}/-/reload", timeout_s=0.2, retries=1, backoff_s=0.01).fire()
        finally:
            release.set()
        elapsed = time.monotonic() - start
    assert "failed after 2 attempt(s): no answer within 0.2 s x2" in str(exc.value)
    assert 0.4 <= elapsed < 10  # two attempts of 0.2 s each; the endpoint itself never answers


async def test_http_expect_explicit_codes(session: aiohttp.ClientSession) -> None:
    """With RELOAD_RELOAD_EXPECT=200,204 a 204 succeeds and a 202 (other 2xx) is a failure."""
    expect = Settings.from_env({"RELOAD_RELOAD_EXPECT": "200,204"}, require_dirs=False).reload_expect
    ok, other = Recorder(204), Recorder(202)
    async with serving(ok) as base:
        assert await HttpTrigger(session, base, expect=expect, retries=0).fire() == "HTTP 204"
    async with serving(other) as base:
        with pytest.raises(TriggerError, match="HTTP 202"):
            await HttpTrigger(session, base, expect=expect, retries=1, backoff_s=0.01).fire()
    assert len(other.calls) == 1  # an answer is final


async def test_http_uses_the_configured_method(session: aiohttp.ClientSession) -> None:
    """The configured verb and path reach the app."""
    handler = Recorder(200)
    async with serving(handler) as base:
        await HttpTrigger(session, f"{base}/reload", verb="PUT").fire()
    assert handler.calls == ["PUT /reload"]


async def test_http_connection_refused(session: aiohttp.ClientSession) -> None:
    """Nothing listening on the port gives a TriggerError naming the connection error, after retries."""
    url = f"http://127.0.0.1:{_free_port()}/-/reload"
    with pytest.raises(TriggerError) as exc:
        await HttpTrigger(session, url, retries=1, backoff_s=0.01).fire()
    assert f"POST {url} failed after 2 attempt(s): ClientConnectorError" in str(exc.value)


async def test_make_trigger_picks_the_configured_kind(session: aiohttp.ClientSession) -> None:
    """Settings with a URL give an HttpTrigger, with a signal a SignalTrigger, with neither a NoTrigger."""
    base = {"RELOAD_SOURCE_DIR": "/s", "RELOAD_TARGET_DIR": "/t"}
    http = make_trigger(Settings.from_env({**base, "RELOAD_RELOAD_URL": "http://127.0.0.1:1/r"}), session)
    assert isinstance(http, HttpTrigger) and http.url == "http://127.0.0.1:1/r" and http.method == "http"
    sig = make_trigger(Settings.from_env({**base, "RELOAD_SIGNAL": "USR1", "RELOAD_PROCESS": "app"}), session)
    assert isinstance(sig, SignalTrigger) and sig.signum == signal.SIGUSR1 and sig.process == "app"
    none = make_trigger(Settings.from_env(base), session)
    assert isinstance(none, NoTrigger) and await none.fire() == "no trigger configured"


# --- signals ---------------------------------------------------------------------------------------------

APP = """
import os, pathlib, signal, sys, time
marker, pidfile = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def on_hup(signum, frame):
    with marker.open("a") as f:
        f.write(f"{os.getpid()} HUP\\n")
signal.signal(signal.SIGHUP, on_hup)
if sys.argv[3:] == ["fork"]:
    if os.fork() == 0:  # a worker with the same name as its master
        pathlib.Path(str(pidfile) + ".worker").write_text(str(os.getpid()))
        while True:
            time.sleep(1)
pathlib.Path(str(pidfile) + ".tmp").write_text(str(os.getpid()))
os.replace(str(pidfile) + ".tmp", pidfile)
while True:
    time.sleep(1)
"""


class App:
    """A real app process that appends `<pid> HUP` to a marker file on SIGHUP and writes a pidfile."""

    def __init__(self, tmp: Path, *, exe: str = sys.executable, fork: bool = False) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.marker, self.pidfile = tmp / "marker", tmp / "app.pid"
        self.script = tmp / "app.py"
        self.script.write_text(APP)
        args = [exe, str(self.script), str(self.marker), str(self.pidfile)] + (["fork"] if fork else [])
        self.proc = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL)
        self.pid = int(self._wait_file(self.pidfile))
        self.worker = int(self._wait_file(Path(f"{self.pidfile}.worker"))) if fork else None

    def _wait_file(self, path: Path) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if path.exists() and (text := path.read_text()):
                return text
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}")
            time.sleep(0.01)
        raise TimeoutError(f"{path} never appeared")

    def hups(self, want: int, timeout: float = 2.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.marker.read_text().splitlines() if self.marker.exists() else []
            if len(lines) >= want:
                return lines
            time.sleep(0.01)
        return self.marker.read_text().splitlines() if self.marker.exists() else []

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def start(subdir: str = "", **kw: object) -> App:
        app = App(tmp_path / subdir, **kw)  # type: ignore[arg-type]
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def _comm(pid: int) -> str:
    """The kernel's command name of a process."""
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _exited_pid() -> int:
    """The pid of a process that has run and been reaped."""
    proc = subprocess.Popen([shutil.which("true") or "/bin/true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def unique_exe(tmp_path: Path) -> str:
    """The Python interpreter under a unique name (<= 15 chars, so it is also the kernel's comm)."""
    name = f"rsapp{secrets.token_hex(4)}"
    os.symlink(sys.executable, tmp_path / name)
    return str(tmp_path / name)


async def test_signal_via_pidfile(start_app: Callable[..., App]) -> None:
    """SIGHUP goes to the pid in the pidfile, and the app really receives it."""
    app = start_app()
    trigger = SignalTrigger(signal.SIGHUP, pidfile=app.pidfile)
    assert await trigger.fire() == f"SIGHUP -> pid {app.pid}"
    assert app.hups(1) == [f"{app.pid} HUP"]
    assert trigger.method == "signal"


async def test_signal_via_process_name(start_app: Callable[..., App], unique_exe: str) -> None:
    """SIGHUP goes to the process found by command name in /proc."""
    app = start_app(exe=unique_exe)
    name = Path(unique_exe).name
    assert _comm(app.pid) == name
    assert await SignalTrigger(signal.SIGHUP, process=name).fire() == f"SIGHUP -> pid {app.pid}"
    assert app.hups(1) == [f"{app.pid} HUP"]


async def test_find_process_picks_the_master(start_app: Callable[..., App], unique_exe: str) -> None:
    """When master and worker share a name, the master (whose parent does not match) is chosen and signalled."""
    app = start_app(exe=unique_exe, fork=True)
    name = Path(unique_exe).name
    assert app.worker is not None
    assert _comm(app.worker) == name
    assert find_processes(name) == [app.pid]
    await SignalTrigger(signal.SIGHUP, process=name).fire()
    assert app.hups(1) == [f"{app.pid} HUP"]
    await asyncio.sleep(0.05)
    assert app.marker.read_text().splitlines() == [f"{app.pid} HUP"]  # the worker got nothing


def test_find_process_by_argv0(tmp_path: Path) -> None:
    """A process whose argv[0] (not its comm) carries the name is found, e.g. `exec -a name sleep`."""
    name = f"rs-argv0-{secrets.token_hex(4)}"
    proc = subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while not find_processes(name) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert find_processes(name) == [proc.pid]
        assert _comm(proc.pid) == "sleep"
    finally:
        proc.kill()
        proc.wait()


def _fake_proc(root: Path, procs: dict[int, tuple[str, str, int]]) -> Path:
    """A /proc-like tree: pid -> (comm, argv0, ppid)."""
    for pid, (comm, argv0, ppid) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(argv0.encode() + b"\0-g\0daemon off;\0")
        rest = " ".join(["0"] * 48)  # the fields after ppid: pgrp, session, ..., starttime (22nd), ...
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {rest}\n")
    (root / "self").mkdir()
    (root / "uptime").write_text("1 1")
    return root


def test_find_process_understands_nginx_titles(tmp_path: Path) -> None:
    """`nginx: master process ...` / `nginx: worker process` titles match `nginx`; the master wins."""
    proc = _fake_proc(
        tmp_path / "proc",
        {
            1: ("pause", "/pause", 0),
            40: ("nginx", "nginx: master process /usr/sbin/nginx", 1),
            41: ("nginx", "nginx: worker process", 40),
            42: ("nginx", "nginx: worker process", 40),
            50: ("reload-sidecar", "/usr/local/bin/python", 1),
        },
    )
    assert find_processes("nginx", proc) == [40]
    assert find_processes("pause", proc) == [1]
    assert find_processes("prometheus", proc) == []


def test_find_process_unknown_name_is_none() -> None:
    """A name no process has gives no pid."""
    assert find_processes(f"no-such-process-{secrets.token_hex(4)}") == []


async def test_unknown_process_name_is_a_clear_error() -> None:
    """Signalling a process name that is not running says to check the app and shareProcessNamespace; nothing
    was signalled (`NotSignalled`: the reloader retries instead of blaming the version)."""
    with pytest.raises(NotSignalled, match="shareProcessNamespace: true"):
        await SignalTrigger(signal.SIGHUP, process=f"ghost-{secrets.token_hex(4)}").fire()


async def test_missing_pidfile(tmp_path: Path) -> None:
    """A missing pidfile gives a TriggerError naming the file and asking whether the app runs."""
    path = tmp_path / "nope.pid"
    with pytest.raises(NotSignalled) as exc:
        await SignalTrigger(signal.SIGHUP, pidfile=path).fire()
    assert str(exc.value) == f"cannot read pidfile {path}: No such file or directory; is the app running?"


@pytest.mark.parametrize("content", ["nginx\n", "", "-1", "12 34"])
async def test_garbage_pidfile(tmp_path: Path, content: str) -> None:
    """A pidfile that does not hold one pid gives a TriggerError quoting what it holds."""
    path = tmp_path / "app.pid"
    path.write_text(content)
    with pytest.raises(NotSignalled) as exc:
        await SignalTrigger(signal.SIGHUP, pidfile=path).fire()
    assert str(exc.value) == f"pidfile {path} holds {content.strip()!r}, not the app's pid"


async def test_dead_pid(tmp_path: Path) -> None:
    """A pidfile naming a process that has exited gives a TriggerError saying it is gone."""
    pid = _exited_pid()
    path = tmp_path / "app.pid"
    path.write_text(f"{pid}\n")
    with pytest.raises(TriggerError, match=f"process {pid} is gone; is the app running"):
        await SignalTrigger(signal.SIGHUP, pidfile=path).fire()


PID_ZERO = """
import asyncio, pathlib, signal, sys
from sidecar.trigger import SignalTrigger, TriggerError
path = pathlib.Path(sys.argv[1])
path.write_text("0\\n")
try:
    asyncio.run(SignalTrigger(signal.SIGHUP, pidfile=path).fire())
except TriggerError as e:
    print("refused:", e)
    sys.exit(0)
sys.exit(3)
"""


def test_pid_zero_in_pidfile_is_refused(tmp_path: Path) -> None:
    """A pidfile holding 0 is refused instead of signalling the sidecar's own process group."""
    # Run in a child with its own session: kill(0, ...) would otherwise hit the test runner.
    proc = subprocess.run(
        [sys.executable, "-c", PID_ZERO, str(tmp_path / "app.pid")],
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "refused:" in proc.stdout


# --- pidfile reading: never blocks, bounded, one decimal number ----------------------------------------------


def _fire_in_thread(trigger: SignalTrigger, within: float) -> tuple[bool, BaseException | str | None]:
    """(blocked, outcome) of `trigger.fire()` run in a thread of its own, given `within` s to finish."""
    outcome: list[BaseException | str] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(trigger.fire()))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    return thread.is_alive(), outcome[0] if outcome else None


def test_fifo_pidfile_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO as pidfile is refused at once; it is never opened for a blocking read (which would hang the loop)."""
    path = tmp_path / "app.pid"
    os.mkfifo(path)
    blocked, outcome = _fire_in_thread(SignalTrigger(signal.SIGHUP, pidfile=path), 20)
    if blocked:  # release the reader so the thread ends, then fail
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert not blocked, "reading the pidfile blocked on a FIFO"
    assert isinstance(outcome, TriggerError), outcome
    assert str(outcome) == f"pidfile {path} is a FIFO, not a regular file; refusing to read it"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"99999999999999999999\n", f"holds 99999999999999999999, not a pid (pids are 1 to {PID_MAX})"),
        (f"{PID_MAX + 1}\n".encode(), f"holds {PID_MAX + 1}, not a pid (pids are 1 to {PID_MAX})"),
        (b"0\n", f"holds 0, not a pid (pids are 1 to {PID_MAX})"),
        ("²\n".encode(), "holds '²', not the app's pid"),
        # Arabic-Indic digits: str.isdigit() and int() take them (too large to name any process if they did)
        (("٩" * 20).encode(), f"holds '{'٩' * 20}', not the app's pid"),
        (b"\xff\xfe12\n", "holds '\\\\xff\\\\xfe12', not the app's pid"),
        (b"12\x0034", "holds '12\\x0034', not the app's pid"),
    ],
)
async def test_pidfile_holding_no_pid_is_a_trigger_error(tmp_path: Path, content: bytes, says: str) -> None:
    """Out-of-range numbers, non-ASCII digits and non-UTF-8 bytes are a TriggerError, never another exception."""
    path = tmp_path / "app.pid"
    path.write_bytes(content)
    with pytest.raises(TriggerError) as exc:
        await SignalTrigger(signal.SIGHUP, pidfile=path).fire()
    assert str(exc.value) == f"pidfile {path} {says}"


async def test_oversized_pidfile_is_refused_unread(start_app: Callable[..., App], tmp_path: Path) -> None:
    """A pidfile over 64 bytes is refused by its size, even when it starts with the app's pid; a 400 MB one too."""
    app = start_app()
    padded = tmp_path / "padded.pid"
    padded.write_text(f"{app.pid}\n" + "\n" * 100)
    with pytest.raises(TriggerError) as exc:
        await SignalTrigger(signal.SIGHUP, pidfile=padded).fire()
    assert (
        str(exc.value) == f"pidfile {padded} is {len(str(app.pid)) + 101} bytes, too large to hold a pid (at most 64)"
    )
    huge = tmp_path / "huge.pid"
    with huge.open("wb") as f:
        f.truncate(400 << 20)  # sparse: costs no disk, but a whole read would take 400 MB of memory
    with pytest.raises(TriggerError, match=f"pidfile {huge} is {400 << 20} bytes, too large"):
        await SignalTrigger(signal.SIGHUP, pidfile=huge).fire()
    await asyncio.sleep(0.05)
    assert app.hups(0) == []


# --- the target is checked before it is signalled ------------------------------------------------------------

NAMESPACE_PROBE = """
import asyncio, os, pathlib, signal, subprocess, sys
from sidecar.trigger import SignalTrigger, TriggerError
depth, path = int(sys.argv[1]), pathlib.Path(sys.argv[2])
if depth < 3:  # pid 1 of the new namespace starts pid 2, which starts pid 3 (the probe)
    sys.exit(subprocess.run([sys.executable, __file__, str(depth + 1), str(path)]).returncode)
for target in (1, os.getppid()):
    path.write_text(f"{target}\\n")
    try:
        print("signalled", target, asyncio.run(SignalTrigger(signal.SIGWINCH, pidfile=path).fire()), flush=True)
    except TriggerError as e:
        print("refused", target, e, flush=True)
"""


def test_pid_1_and_the_sidecars_ancestors_are_refused(tmp_path: Path) -> None:
    """In a PID namespace of its own (needs root): a pidfile naming pid 1 or the sidecar's parent is refused."""
    unshare = shutil.which("unshare")
    needs_root("a PID namespace of its own: CAP_SYS_ADMIN")
    assert unshare is not None, "needs unshare(1) from util-linux"
    script = tmp_path / "probe.py"
    script.write_text(NAMESPACE_PROBE)
    path = tmp_path / "app.pid"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, str(script), "1", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        f"refused 1 pidfile {path} names pid 1, the init process of the pod (or container), never the app",
        f"refused 2 pidfile {path} names pid 2, an ancestor of the sidecar, never the app",
    ], proc.stdout


async def test_own_pid_is_refused(tmp_path: Path) -> None:
    """A pidfile naming the sidecar itself is refused."""
    path = tmp_path / "app.pid"
    path.write_text(f"{os.getpid()}\n")
    with pytest.raises(TriggerError) as exc:
        await SignalTrigger(signal.SIGWINCH, pidfile=path).fire()
    assert str(exc.value) == f"pidfile {path} names pid {os.getpid()}, the sidecar itself"


async def test_pid_of_a_process_younger_than_the_pidfile_is_refused(start_app: Callable[..., App]) -> None:
    """A process started after its pidfile was last written did not write it (a reused pid): no signal."""
    app = start_app()
    written = time.time() - 30  # the pidfile's last write, 30 s before the process started
    os.utime(app.pidfile, (written, written))
    with pytest.raises(TriggerError) as exc:
        await SignalTrigger(signal.SIGHUP, pidfile=app.pidfile).fire()
    assert f"process {app.pid} ('python" in str(exc.value)
    assert f"s after pidfile {app.pidfile} was last written, so it is not the process that wrote it" in str(exc.value)
    await asyncio.sleep(0.05)
    assert app.hups(0) == []
    app.pidfile.write_text(f"{app.pid}\n")  # written again now: the process is older than the pidfile
    assert await SignalTrigger(signal.SIGHUP, pidfile=app.pidfile).fire() == f"SIGHUP -> pid {app.pid}"
    assert app.hups(1) == [f"{app.pid} HUP"]


async def test_pidfile_verified_against_process_name(
    start_app: Callable[..., App], unique_exe: str, session: aiohttp.ClientSession
) -> None:
    """With RELOAD_PIDFILE and RELOAD_PROCESS both set, the pidfile's pid must carry that name."""
    app = start_app(exe=unique_exe)
    name = Path(unique_exe).name
    base = {"RELOAD_SOURCE_DIR": "/s", "RELOAD_TARGET_DIR": "/t", "RELOAD_SIGNAL": "HUP"}
    wrong = make_trigger(
        Settings.from_env({**base, "RELOAD_PIDFILE": str(app.pidfile), "RELOAD_PROCESS": "nginx"}), session
    )
    with pytest.raises(TriggerError) as exc:
        await wrong.fire()
    assert str(exc.value) == (
        f"process {app.pid} from pidfile {app.pidfile} is {name!r}, not 'nginx' (RELOAD_PROCESS); "
        "is the pidfile the app's?"
    )
    await asyncio.sleep(0.05)
    assert app.hups(0) == []
    right = make_trigger(
        Settings.from_env({**base, "RELOAD_PIDFILE": str(app.pidfile), "RELOAD_PROCESS": name}), session
    )
    assert await right.fire() == f"SIGHUP -> pid {app.pid}"
    assert app.hups(1) == [f"{app.pid} HUP"]


async def test_two_top_most_processes_with_the_name_are_refused(start_app: Callable[..., App], unique_exe: str) -> None:
    """Two unrelated processes with the app's name: neither is signalled, and the error lists both pids."""
    first, second = start_app("first", exe=unique_exe), start_app("second", exe=unique_exe)
    name = Path(unique_exe).name
    low, high = sorted((first.pid, second.pid))
    with pytest.raises(TriggerError) as exc:
        await SignalTrigger(signal.SIGHUP, process=name).fire()
    assert str(exc.value) == (
        f"2 processes named {name!r} that are not each other's children: {low}, {high}; "
        "set RELOAD_PIDFILE to say which one is the app"
    )
    await asyncio.sleep(0.05)
    assert first.hups(0) == [] and second.hups(0) == []


async def test_name_matching_pid_1_is_refused(tmp_path: Path) -> None:
    """A name whose only top-most match is pid 1 (the pod's init) is refused."""
    proc = _fake_proc(tmp_path / "proc", {1: ("app", "/app", 0), 7: ("app", "/app", 1)})
    with pytest.raises(TriggerError) as exc:
        await SignalTrigger(signal.SIGHUP, process="app", proc=proc).fire()
    assert (
        str(exc.value) == "RELOAD_PROCESS='app' names pid 1, the init process of the pod (or container), never the app"
    )


# --- restart ---------------------------------------------------------------------------------------------


def _restart(tmp: Path, pidfile: Path, **kw: Any) -> tuple[RestartTrigger, State, Metrics]:
    state, metrics = State(pod="p"), Metrics()
    target = tmp / "target"
    target.mkdir(exist_ok=True)
    kw.setdefault("wait_s", 30.0)
    return (
        RestartTrigger(signal.SIGTERM, target_dir=target, pidfile=pidfile, state=state, metrics=metrics, **kw),
        state,
        metrics,
    )


def _swap(target: Path) -> None:
    """A `..data` swap, as a promotion makes: the version went live now."""
    (target / "..data_tmp").symlink_to("..v-1")
    os.replace(target / "..data_tmp", target / "..data")


async def test_make_trigger_picks_restart(session: aiohttp.ClientSession) -> None:
    env = {"RELOAD_SOURCE_DIR": "/s", "RELOAD_TARGET_DIR": "/t", "RELOAD_RESTART": "true", "RELOAD_PROCESS": "app"}
    trigger = make_trigger(Settings.from_env({**env, "RELOAD_RESTART_GRACE_S": "7"}), session)
    assert isinstance(trigger, RestartTrigger) and trigger.method == "restart"
    assert (trigger.signum, trigger.grace_s, trigger.wait_s, trigger.process) == (signal.SIGTERM, 7.0, 330.0, "app")


async def test_restart_refuses_pid_1_at_once(tmp_path: Path) -> None:
    """A pidfile naming pid 1 is refused as the signal trigger refuses it, without waiting for a new process."""
    pidfile = tmp_path / "app.pid"
    pidfile.write_text("1\n")
    trigger, state, metrics = _restart(tmp_path, pidfile)
    with pytest.raises(TriggerError, match="pid 1"):
        await asyncio.wait_for(trigger.fire(), 10)  # far less than its 30 s wait for a new process
    assert state.restart is not None and state.restart["outcome"] == "failed"
    assert metrics.restarts.labels("failed")._value.get() == 1


async def test_restart_without_a_new_process_fails_after_the_wait(
    start_app: Callable[..., App], tmp_path: Path
) -> None:
    """The app ended by SIGTERM and nothing starts it again: a TriggerError naming RELOAD_RESTART_WAIT_S, the
    old pid in /status and the failure counted."""
    app = start_app()
    trigger, state, metrics = _restart(tmp_path, app.pidfile, wait_s=1.0)
    _swap(trigger.target_dir)
    with pytest.raises(TriggerError, match=r"no new app process within 1 s \(RELOAD_RESTART_WAIT_S\)"):
        await trigger.fire()
    assert app.proc.wait(5) == -signal.SIGTERM
    assert state.restart is not None and (state.restart["old_pid"], state.restart["new_pid"]) == (app.pid, None)
    assert state.restart["outcome"] == "failed"
    assert metrics.restarts.labels("failed")._value.get() == 1


async def test_restart_skips_a_process_started_after_the_version_went_live(
    start_app: Callable[..., App], tmp_path: Path
) -> None:
    """An app process that started after the ..data swap has read the live version: it is not restarted."""
    pidfile = tmp_path / "app.pid"
    trigger, state, metrics = _restart(tmp_path, pidfile)
    _swap(trigger.target_dir)
    await asyncio.sleep(0.5)  # well past START_SLACK_S
    app = start_app()
    assert "not restarted" in await trigger.fire()
    assert app.proc.poll() is None and state.restart is not None and state.restart["outcome"] == "skipped"
    assert metrics.restarts.labels("restarted")._value.get() == 0


async def test_restart_waits_for_an_app_that_is_not_running(start_app: Callable[..., App], tmp_path: Path) -> None:
    """No app process (it is in the kubelet's back-off): nothing is signalled, and the first process that starts
    after the swap is the new one."""
    pidfile = tmp_path / "app.pid"
    trigger, state, metrics = _restart(tmp_path, pidfile)
    _swap(trigger.target_dir)
    fired = asyncio.create_task(trigger.fire())
    await asyncio.sleep(0.5)
    assert not fired.done()
    app = await asyncio.to_thread(start_app)
    evidence = await asyncio.wait_for(fired, 20)
    assert f"new pid {app.pid}" in evidence and app.proc.poll() is None
    assert state.restart is not None and (state.restart["old_pid"], state.restart["new_pid"]) == (None, app.pid)


def _spawn(*code: str) -> subprocess.Popen[bytes]:
    """A child of this process running the same interpreter as the apps here: what a new process of the app's
    container looks like (same parent, same executable) before it writes its pidfile."""
    return subprocess.Popen([sys.executable, "-c", "; ".join(code)], stdin=subprocess.DEVNULL)


async def test_restart_sees_the_new_process_crash_before_its_pidfile(
    start_app: Callable[..., App], tmp_path: Path
) -> None:
    """After the old process ended, a new one of the app's (same parent and executable) starts and exits
    without writing the pidfile: a crash at start, reported at once rather than after RELOAD_RESTART_WAIT_S."""
    app = start_app()
    trigger, state, metrics = _restart(tmp_path, app.pidfile, wait_s=300.0)
    _swap(trigger.target_dir)
    fired = asyncio.create_task(trigger.fire())
    await asyncio.to_thread(app.proc.wait, 10)
    crasher = await asyncio.to_thread(_spawn, "import time", "time.sleep(0.3)", "raise SystemExit(1)")
    with pytest.raises(
        TriggerError, match=rf"exited before pidfile .* \(pid {crasher.pid}, 1 start\(s\).*crash at start"
    ):
        await asyncio.wait_for(fired, 60)  # hang protection only: far below the 300 s wait
    assert await asyncio.to_thread(crasher.wait, 10) == 1
    assert state.restart is not None and state.restart["outcome"] == "failed"
    assert metrics.restarts.labels("failed")._value.get() == 1


async def test_restart_gives_a_new_process_the_health_window_to_show_up(
    start_app: Callable[..., App], tmp_path: Path
) -> None:
    """A new process of the app's that runs but never writes its pidfile fails once it has run longer than the
    health window (RELOAD_HEALTH_TIMEOUT_S), not after RELOAD_RESTART_WAIT_S."""
    app = start_app()
    trigger, state, _ = _restart(tmp_path, app.pidfile, wait_s=300.0, window_s=0.5)
    _swap(trigger.target_dir)
    fired = asyncio.create_task(trigger.fire())
    await asyncio.to_thread(app.proc.wait, 10)
    stuck = await asyncio.to_thread(_spawn, "import time", "time.sleep(60)")
    try:
        with pytest.raises(TriggerError, match=rf"pid {stuck.pid}\) has run .* longer than the health window"):
            await asyncio.wait_for(fired, 60)
    finally:
        stuck.kill()
        await asyncio.to_thread(stuck.wait, 10)
    assert state.restart is not None and state.restart["outcome"] == "failed"


async def test_restart_pacing_counts_from_the_new_process(start_app: Callable[..., App], tmp_path: Path) -> None:
    """No pacing before this trigger's first restart; after it, `pace_s` is the minimum interval counted from
    the new process's start, and `pace` waits it out (logging restart_paced)."""
    app = start_app("old")
    trigger, _, _ = _restart(tmp_path, app.pidfile, min_interval_s=1.0)
    assert trigger.pace_s() == 0.0
    _swap(trigger.target_dir)
    fired = asyncio.create_task(trigger.fire())
    await asyncio.to_thread(app.proc.wait, 10)
    app.pidfile.unlink()  # stale; the new process writes it again
    new = await asyncio.to_thread(start_app, "old")
    assert f"new pid {new.pid}" in await asyncio.wait_for(fired, 20)
    assert 0.0 < trigger.pace_s() <= 1.0
    await asyncio.wait_for(trigger.pace(), 10)
    assert trigger.pace_s() == 0.0
