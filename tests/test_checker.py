"""`run_command` against hostile and careless checkers: real processes, real limits, real /proc.

Each hostile checker is bounded by the test itself too (it stops after a few seconds or a few GiB), so
that the same test run against the old code fails on its assertions instead of hurting the machine.
After each one, a normal check in the same work dir still passes.

    work/                     the work dir a check stages in (the sidecar's target dir)
    ├── ..check-XXXX/         the candidate: `{dir}`, exactly the snapshot's files
    └── ..check-run-YYYY/     the checker's working dir, HOME and TMPDIR
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sidecar import checker
from sidecar.checker import COOKIE, LIMITS, Limits, StagingError, remove_tree, run_command
from sidecar.settings import ValidatorSpec
from sidecar.snapshot import snapshot_of
from sidecar.validate import Checks, validate
from tests.e2e.apps import nginx_bin
from tests.root import needs_root
from tests.tmpfs import tmpfs

# Hostile checker processes that burn CPU and memory up to their limits: with the end-to-end tests, not in the
# fast in-process run (`-m "not e2e"`).
pytestmark = pytest.mark.e2e

PY = sys.executable
SYSTEM_PY = "/usr/bin/python3"  # world-executable, unlike a Python under /root
GOOD = {"app.conf": b"ok\n"}


def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


async def _still_works(work: Path) -> None:
    """A normal check after the hostile one passes, and leaves nothing behind in `work`."""
    assert await run_command((PY, "-c", "import sys; sys.exit(0)", "{dir}"), GOOD, 10.0, work) == []
    assert sorted(os.listdir(work)) == []


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    except OSError:
        return None


def _running(pid: int, marker: str) -> bool:
    """Whether `pid` is still a live (not zombie) process whose command line carries `marker`."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X") and marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _our_zombies() -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                rest = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if rest[0] == b"Z" and int(rest[1]) == os.getpid():
                out.append(int(name))
    return out


def _subreaper() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(-1)
    assert libc.prctl(37, ctypes.byref(value), 0, 0, 0) == 0  # PR_GET_CHILD_SUBREAPER
    return value.value


# --- output ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_checker_printing_200_mb_is_killed_at_the_output_cap(tmp_path: Path) -> None:
    """200 MB of output is not read to the end: past 1 MiB the checker is killed and the version refused
    (the old code read all of it and accepted the version, since the printer exits 0)."""
    work = _work(tmp_path)
    script = "import sys\nfor _ in range(3200): sys.stdout.buffer.write(b'x' * 65535 + b'\\n')\n"  # 200 MiB
    started = time.monotonic()
    problems = await run_command((PY, "-c", script, "{dir}"), GOOD, 30.0, work)
    assert problems == [f"checker {PY!r} printed more than 1 MiB of output; killed"]
    assert time.monotonic() - started < 20
    await _still_works(work)


# --- processes -------------------------------------------------------------------------------------------

FORKER = (  # forks up to 1,000 children that sleep; writes each pid as it goes; all of them end by 30 s
    "import os, sys, time\n"
    "out = open(sys.argv[1], 'w')\n"
    "for i in range(1000):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        time.sleep(30); os._exit(0)\n"
    "    out.write(f'{pid}\\n'); out.flush()\n"
    "time.sleep(30)\n"
)


@pytest.mark.timeout(60)
async def test_a_checker_forking_1000_children_is_killed_past_the_process_limit(tmp_path: Path) -> None:
    """A checker that forks children in a loop is killed with all of them once more than 64 processes of the
    check run at once (also as root, where RLIMIT_NPROC does not apply), and its zombies are reaped."""
    work, pids = _work(tmp_path), tmp_path / "pids"
    marker = f"forker-{os.getpid()}-{time.monotonic_ns()}"
    problems = await run_command((PY, "-c", FORKER, str(pids), marker, "{dir}"), GOOD, 20.0, work)
    assert problems == [f"checker {PY!r} started more than 64 processes; killed"]
    children = [int(line) for line in pids.read_text().split()]
    assert 64 <= len(children) < 1000, len(children)
    assert [pid for pid in children if _running(pid, marker)] == []
    assert set(children) & set(_our_zombies()) == set()
    await _still_works(work)


SETSID_CHILD = (  # the checker's child starts a session of its own and sleeps; the checker exits 0 at once
    "import os, sys, time\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.setsid()\n"
    "    if sys.argv[2] == 'clear-env':\n"  # also drop the environment, cookie included
    "        os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', sys.argv[3]], {})\n"
    "    time.sleep(30); os._exit(0)\n"
    "open(sys.argv[1], 'w').write(str(pid))\n"
    "time.sleep(float(sys.argv[4]))\n"
)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("env", "linger"),
    [("keep-env", "0"), ("clear-env", "0.5")],
    ids=["orphaned-at-once", "env-cleared-seen-in-tree"],
)
async def test_a_child_that_calls_setsid_is_dead_when_the_check_returns(tmp_path: Path, env: str, linger: str) -> None:
    """A child that leaves the checker's session (the old process-group kill missed it) is killed and reaped:
    found by its cookie when it was orphaned before any scan, or by the tree when it was seen in it."""
    work, pidfile = _work(tmp_path), tmp_path / "child.pid"
    marker = f"setsid-{os.getpid()}-{time.monotonic_ns()}"
    argv = (PY, "-c", SETSID_CHILD, str(pidfile), env, marker, linger, "{dir}")
    assert await run_command(argv, GOOD, 10.0, work) == []
    child = int(pidfile.read_text())
    assert not _running(child, marker), f"child {child} outlived the check"
    assert child not in _our_zombies()
    await _still_works(work)


HOLD = (  # a well-behaved checker with a helper child that must run to its end: exits 0 only if it did
    "import subprocess, sys\n"
    "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1.5)'])\n"
    "sys.exit(helper.wait())\n"
)


@pytest.mark.timeout(60)
async def test_killing_one_checks_processes_never_touches_a_concurrent_check(tmp_path: Path) -> None:
    """While one check's forker and setsid child are killed, a concurrent check's checker and its helper
    child run undisturbed; the subreaper flag is set only while checks run."""
    work = _work(tmp_path)
    assert _subreaper() == 0
    calm = asyncio.create_task(run_command((PY, "-c", HOLD, "{dir}"), GOOD, 30.0, work))
    await asyncio.sleep(0.3)
    assert _subreaper() == 1
    marker = f"forker-{os.getpid()}-{time.monotonic_ns()}"
    hostile = run_command((PY, "-c", FORKER, str(tmp_path / "pids"), marker, "{dir}"), GOOD, 20.0, work)
    setsid = run_command(
        (PY, "-c", SETSID_CHILD, str(tmp_path / "c.pid"), "keep-env", marker, "0", "{dir}"), GOOD, 20.0, work
    )
    first, second = await asyncio.gather(hostile, setsid)
    assert first == [f"checker {PY!r} started more than 64 processes; killed"] and second == []
    assert await calm == []
    assert _subreaper() == 0
    await _still_works(work)


# --- memory, CPU, files ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_checker_allocating_without_bound_stops_at_the_memory_limit(tmp_path: Path) -> None:
    """Allocation stops at the 1 GiB data limit with a clear reason (the old code let it take 4 GiB and
    accepted the version)."""
    work = _work(tmp_path)
    script = (
        "import sys\n"
        "hoard = []\n"
        "for i in range(64):\n"  # at most 4 GiB, in 64 MiB blocks (calloc'd: mapped, hardly touched)
        "    hoard.append(bytearray(64 << 20))\n"
        "print('allocated', len(hoard) * 64, 'MiB')\n"
    )
    [problem] = await run_command((PY, "-c", script, "{dir}"), GOOD, 30.0, work)
    assert problem.startswith(f"checker {PY!r} exited 1: "), problem
    assert "MemoryError" in problem and problem.endswith("(a checker may use 1 GiB of memory)"), problem
    await _still_works(work)


async def test_a_checker_burning_cpu_is_stopped_by_its_cpu_limit(tmp_path: Path) -> None:
    """Past its CPU time limit the checker gets SIGXCPU and the version a reason that says so."""
    work = _work(tmp_path)
    script = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"
    problems = await run_command((PY, "-c", script, "{dir}"), GOOD, 30.0, work, limits=Limits(cpu_s=1))
    assert problems == [f"checker {PY!r} used more than 1 s of CPU time; killed"]
    await _still_works(work)


@pytest.fixture(params=["prlimit", "python"])
def launcher(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Limits set by prlimit(1), or by the Python launcher used where prlimit is missing."""
    if request.param == "python":
        monkeypatch.setattr(checker, "_PRLIMIT", [None])
    else:
        assert shutil.which("prlimit"), "prlimit (util-linux) is expected on the test machine"
    return str(request.param)


async def test_a_checker_writing_a_huge_file_is_stopped_by_the_file_size_limit(tmp_path: Path, launcher: str) -> None:
    """A file past 16 MiB ends the checker with SIGXFSZ (the Python launcher restores its default action),
    the reason says so, and the file is gone."""
    dd = shutil.which("dd")
    assert dd is not None
    work = _work(tmp_path)
    problems = await run_command((dd, "if=/dev/zero", "of=big", "bs=1M", "count=32"), GOOD, 10.0, work)
    assert problems == [f"checker {dd!r} wrote a file larger than 16 MiB; killed"]
    await _still_works(work)


async def test_the_checker_runs_under_the_documented_limits(tmp_path: Path, launcher: str) -> None:
    """CPU, data, address space, file size and core limits are set on the checker itself, soft and hard."""
    work, out = _work(tmp_path), tmp_path / "limits"
    script = (
        "import resource as r, sys\n"
        "names = ['RLIMIT_CPU', 'RLIMIT_DATA', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_CORE']\n"
        "open(sys.argv[1], 'w').write(repr({n: r.getrlimit(getattr(r, n)) for n in names}))\n"
    )
    assert await run_command((PY, "-c", script, str(out), "{dir}"), GOOD, 10.0, work) == []

    def expected(res: int, soft: int, hard: int) -> tuple[int, int]:
        cap = resource.getrlimit(res)[1]
        return (soft, hard) if cap == resource.RLIM_INFINITY else (min(soft, cap), min(hard, cap))

    assert eval(out.read_text()) == {  # noqa: S307 - a repr this test wrote
        "RLIMIT_CPU": expected(resource.RLIMIT_CPU, 20, 21),
        "RLIMIT_DATA": expected(resource.RLIMIT_DATA, 1 << 30, 1 << 30),
        "RLIMIT_AS": expected(resource.RLIMIT_AS, 16 << 30, 16 << 30),
        "RLIMIT_FSIZE": expected(resource.RLIMIT_FSIZE, 16 << 20, 16 << 20),
        "RLIMIT_CORE": (0, 0),
    }
    assert (LIMITS.processes, LIMITS.output_bytes) == (64, 1 << 20)


# --- private dir, environment ----------------------------------------------------------------------------


async def test_relative_files_land_in_the_private_dir_and_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker runs in a private dir that is also HOME and TMPDIR: what it writes by relative path
    lands there, never in the sidecar's working dir, and is gone after the check."""
    cwd, out = tmp_path / "sidecar-cwd", tmp_path / "seen"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = _work(tmp_path)
    script = (
        "import os, sys\n"
        "open('error.log', 'w').write('x')\n"
        "os.makedirs('logs'); open('logs/access.log', 'w').write('x')\n"
        "os.makedirs(os.path.join(os.environ['HOME'], '.cache'))\n"
        "open(os.path.join(os.environ['TMPDIR'], 'scratch'), 'w').write('x')\n"
        "seen = [os.getcwd(), os.environ['HOME'], os.environ['TMPDIR'], sys.argv[2]]\n"
        "open(sys.argv[1], 'w').write('\\n'.join(seen))\n"
    )
    assert await run_command((PY, "-c", script, str(out), "{dir}"), GOOD, 10.0, work) == []
    run_dir, home, tmp, candidate = out.read_text().split("\n")
    assert run_dir == home == tmp
    assert Path(run_dir).parent == work and Path(run_dir).name.startswith("..check-run-")
    assert Path(candidate).parent == work and Path(candidate) != Path(run_dir)
    assert os.listdir(cwd) == [] and os.listdir(work) == []


async def test_the_environment_is_not_inherited_unless_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker sees PATH, HOME, TMPDIR and its cookie only; a variable of ours reaches it when named
    (RELOAD_VALIDATE_ENV / a profile's env), through validate() as well."""
    monkeypatch.setenv("RELOAD_TEST_SECRET", "hunter2")
    monkeypatch.setenv("RELOAD_TEST_PROXY", "http://proxy:3128")
    work, out = _work(tmp_path), tmp_path / "env"
    script = "import os, sys\nopen(sys.argv[1], 'w').write(repr(dict(os.environ)))\n"
    argv = (PY, "-c", script, str(out), "{dir}")
    assert await run_command(argv, GOOD, 10.0, work) == []
    seen = eval(out.read_text())  # noqa: S307 - a repr this test wrote
    seen.pop("LC_CTYPE", None)  # set by the checker's own Python (PEP 538 C-locale coercion)
    assert sorted(seen) == ["HOME", "PATH", COOKIE, "TMPDIR"], seen
    assert seen["PATH"] == os.environ["PATH"]
    snap = snapshot_of(GOOD, max_file_bytes=1 << 20, max_total_bytes=1 << 20)
    checks = Checks((ValidatorSpec("auto"),), argv, 10.0, work, env=("RELOAD_TEST_PROXY", "RELOAD_TEST_UNSET"))
    assert (await validate(snap, checks)).ok
    seen = eval(out.read_text())  # noqa: S307 - a repr this test wrote
    assert seen["RELOAD_TEST_PROXY"] == "http://proxy:3128" and "RELOAD_TEST_SECRET" not in seen
    assert "RELOAD_TEST_UNSET" not in seen


def test_directories_a_checker_locked_are_removed_anyway() -> None:
    """Needs root, to run the removal as `nobody` (root ignores permission bits), and Debian's python3 (a
    Python `nobody` may run; .ci/run installs it). A checker runs as the sidecar's user and may make
    directories unreadable and unwritable: plain rmtree leaves them (and so a `..check-*` dir per check),
    remove_tree does not."""
    needs_root("runs the removal as the user nobody")
    assert os.access(SYSTEM_PY, os.X_OK), f"needs {SYSTEM_PY} (Debian's python3-minimal)"
    base = Path(tempfile.mkdtemp())  # in /tmp: `nobody` can reach it
    os.chown(base, 65534, 65534)
    try:
        script = "import contextlib, os, shutil\nfrom pathlib import Path\n" + inspect.getsource(remove_tree)
        script += (
            f"top = Path({str(base)!r}) / '..check-x'\n"
            "for d in (top / 'sub', top / 'deep' / 'er'):\n"
            "    d.mkdir(parents=True); (d / 'f').write_text('x')\n"
            "os.chmod(top / 'sub', 0); os.chmod(top / 'deep' / 'er', 0); os.chmod(top / 'deep', 0o500)\n"
            "shutil.rmtree(top, ignore_errors=True)\n"
            "print(top.exists(), remove_tree(top), top.exists())\n"
        )
        out = subprocess.run(
            [SYSTEM_PY, "-I", "-c", script], user=65534, group=65534, capture_output=True, text=True, timeout=30
        )
        assert out.stdout.split() == ["True", "True", "False"], out
    finally:
        shutil.rmtree(base)


# --- staging ---------------------------------------------------------------------------------------------


async def test_staging_counts_against_the_deadline_and_leaves_nothing(tmp_path: Path) -> None:
    """Staging 50,000 files within 0.2 s is not possible: refused as out of time, partial copy removed
    (the old code staged everything first, then gave the checker its full timeout)."""
    work = _work(tmp_path)
    files = {f"f{i:05}.conf": b"x" for i in range(50_000)}
    problems = await run_command((PY, "-c", "pass", "{dir}"), files, 0.2, work)
    assert problems == [
        "staging the candidate for the checker (50000 files, 50000 bytes) took over 0.2 s (RELOAD_VALIDATE_TIMEOUT_S)"
    ]
    assert os.listdir(work) == []
    await _still_works(work)


async def test_cancelling_while_staging_leaves_nothing(tmp_path: Path) -> None:
    """A check cancelled while it stages (shutdown, a caller that went away) removes the partial copy."""
    work = _work(tmp_path)
    files = {f"f{i:05}.conf": b"x" for i in range(50_000)}
    task = asyncio.create_task(run_command((PY, "-c", "pass", "{dir}"), files, 30.0, work))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if any(p.name.startswith("..check-") for p in work.iterdir()):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert os.listdir(work) == []
    await _still_works(work)


async def test_no_space_to_stage_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    """Needs root (mounts a 256 KiB tmpfs as the work dir). A candidate that does not fit raises
    `StagingError` "no space left on <dir> ..." (the old code: a bare `[Errno 28]`), which `validate` turns
    into a transient verdict (no verdict on the content: the sidecar does not remember the version as
    refused), and no `..check-*` is left behind."""
    with tmpfs(_work(tmp_path), "256k") as work:
        files = {"a.conf": b"a" * (200 << 10), "b.conf": b"b" * (200 << 10)}
        with pytest.raises(StagingError) as exc:
            await run_command((PY, "-c", "pass", "{dir}"), files, 10.0, work)
        assert str(exc.value) == f"no space left on {work} to stage the candidate for the checker (409600 bytes)"
        assert os.listdir(work) == []
        snap = snapshot_of(files, max_file_bytes=1 << 20, max_total_bytes=1 << 20)
        verdict = await validate(snap, Checks((ValidatorSpec("none"),), (PY, "-c", "pass", "{dir}"), 10.0, work))
        assert verdict.transient and not verdict.ok and "no space left on" in verdict.reason
        assert os.listdir(work) == []
        await _still_works(work)


async def test_no_temp_dir_to_stage_in_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No work dir and no usable system temp dir (a read-only root without a /tmp volume, as the container
    tests showed): `StagingError` naming what is missing. The old code crashed building that message
    (it asked `tempfile.gettempdir()` again) and `validate` died with a FileNotFoundError traceback."""

    def no_temp_dir() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr("tempfile.gettempdir", no_temp_dir)
    with pytest.raises(StagingError) as exc:
        await run_command((PY, "-c", "pass", "{dir}"), {"a.conf": b"a"}, 10.0, None)
    assert str(exc.value).startswith("cannot stage the candidate for the checker in the system temp dir")
    assert "No usable temporary directory" in str(exc.value)


# --- the real checkers under the limits ------------------------------------------------------------------


async def test_nginx_with_prefix_dot_writes_its_relative_files_in_the_private_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nginx -t -p ./`: the error_log, access_log and pid a config names by relative path are created in
    the checker's private dir (nginx resolves them against its prefix, not the working dir) and removed."""
    cwd = tmp_path / "sidecar-cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = _work(tmp_path)
    conf = b"error_log err.log;\npid nginx.pid;\nevents {}\nhttp { access_log acc.log; server { listen 127.0.0.1:1; } }"
    argv = (nginx_bin(), "-t", "-q", "-e", "stderr", "-p", "./", "-c", "{dir}/nginx.conf")
    assert await run_command(argv, {"nginx.conf": conf}, 10.0, work) == []
    assert os.listdir(cwd) == [] and os.listdir(work) == []
    bad = await run_command(argv, {"nginx.conf": b"events {}\nhttp { lisen 80; }\n"}, 10.0, work)
    assert len(bad) == 1 and 'unknown directive "lisen" in nginx.conf:2' in bad[0], bad


async def test_promtool_checks_a_config_within_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """promtool (Go, which maps far more address space than it uses) passes a good config and refuses a
    bad one under the default limits, also with GOMAXPROCS=64 (more threads, more address space)."""
    work = _work(tmp_path)
    monkeypatch.setenv("GOMAXPROCS", "64")
    good = b"scrape_configs:\n  - job_name: a\n    static_configs: [{targets: ['x:9090']}]\n"
    argv = ("promtool", "check", "config", "{dir}/prometheus.yml")
    assert await run_command(argv, {"prometheus.yml": good}, 10.0, work) == []
    assert await run_command(argv, {"prometheus.yml": good}, 10.0, work, env=("GOMAXPROCS",)) == []
    [bad] = await run_command(argv, {"prometheus.yml": b"global: {scrape_interval: nope}\n"}, 10.0, work)
    assert bad.startswith("checker 'promtool' exited 1: ") and "prometheus.yml" in bad and "nope" in bad, bad
