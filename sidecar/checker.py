"""The app's own checker (`nginx -t`, `promtool check config`) on a staged copy of a candidate, contained.

One deadline covers staging and the run. The checker gets a private copy of the candidate (`{dir}`), a
private working directory that is also its `HOME` and `TMPDIR`, an environment of `PATH`, those two and
the variables it is configured to get, resource limits (`LIMITS`), and output capped while it is read.
Every process it starts is tracked, also those that leave its process group or session, and killed when
the check ends: the sidecar makes itself their child subreaper while checks run, so orphans come back
to it instead of init.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .procfs import ProcStat as _Proc
from .procfs import processes, read_stat

__all__ = ["COOKIE", "LIMITS", "Limits", "StagingError", "program_problem", "remove_tree", "run_command", "stage_files"]

log = structlog.get_logger("checker")

#: Set in every checker's environment to a per-check token: finds its processes that left its tree
#: and process group before they were seen (Jenkins' ProcessTreeKiller finds a build's processes so).
COOKIE = "RELOAD_SIDECAR_CHECK"


class StagingError(OSError):
    """The candidate could not be copied for the checker (a full or broken work dir): the place's fault,
    not the content's, so the version is not refused for it; the caller retries later."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one check may use. The defaults are documented in docs/validation.md ("Limits")."""

    # RLIMIT_CPU per process (SIGXCPU, then SIGKILL a second later).
    cpu_s: int = 20
    # RLIMIT_DATA: heap and private writable mappings, i.e. memory actually asked for. promtool 2.42
    # checks a small config within 128 MiB; Python checkers raise MemoryError past it.
    data_bytes: int = 1 << 30
    # RLIMIT_AS only as a backstop: Go reserves address space it never touches (promtool needs ~1.1 GiB
    # of it for a 5-line config with GOMAXPROCS=64), so this stays far above the data limit.
    address_space_bytes: int = 16 << 30
    # RLIMIT_FSIZE: the largest file a checker may write (SIGXFSZ, or EFBIG where ignored).
    file_bytes: int = 16 << 20
    # Processes of one check alive at once, counted by the sidecar (RLIMIT_NPROC counts every process of
    # the UID on the node, and root ignores it).
    processes: int = 64
    # Output (stdout and stderr together) before the checker is killed.
    output_bytes: int = 1 << 20


LIMITS = Limits()

_TICK_S = 0.05  # how often a running checker's processes are counted
_OUTPUT_GRACE_S = 0.5  # after every process of ours is killed, for the rest of the output
_KILL_PATIENCE_S = 2.0  # a process in uninterruptible sleep may take a moment to die
_HEAD = 16 * 1024  # the head and tail of the output that are kept for the reason
_TAIL = 64 * 1024
_REASON_CHARS = 1500
_MEMORY_HINT = re.compile(rb"MemoryError|out of memory|cannot allocate memory", re.IGNORECASE)
_FILE_HINT = re.compile(rb"File too large", re.IGNORECASE)


# --------------------------------------------------------------------------- staging


class _Abandoned(Exception):
    """The check gave up on staging (deadline or cancellation) while it was under way."""


def stage_files(files: dict[str, bytes], parent: Path | None, prefix: str, stop: threading.Event | None = None) -> Path:
    """Write `files` into a new private directory under `parent` (or the system temp dir).

    On any error, or once `stop` is set, the partial directory is removed before the error is raised.
    """
    stage = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        for name, data in files.items():
            if stop is not None and stop.is_set():
                raise _Abandoned
            path = stage / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    except BaseException:
        remove_tree(stage)
        raise
    return stage


def remove_tree(path: Path) -> bool:
    """Remove `path` and everything in it, also directories a checker made unreadable; True if gone."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return True
    stack = [str(path)]  # iterative: a checker may nest directories deeper than Python recurses
    while stack:
        top = stack.pop()
        with contextlib.suppress(OSError):
            os.chmod(top, 0o700)
            stack += [e.path for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


def _make(files: dict[str, bytes], parent: Path | None, stop: threading.Event) -> tuple[Path, Path]:
    stage = stage_files(files, parent, "..check-", stop)
    try:
        return stage, Path(tempfile.mkdtemp(prefix="..check-run-", dir=parent))
    except BaseException:
        remove_tree(stage)
        raise


async def _stage(files: dict[str, bytes], parent: Path | None, deadline: float, budget: str) -> tuple[Path, Path] | str:
    """(candidate dir, working dir) made in a worker thread, or the problem that refuses the version."""
    stop = threading.Event()
    work = asyncio.ensure_future(asyncio.to_thread(_make, files, parent, stop))
    try:
        done, _ = await asyncio.wait({work}, timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.CancelledError:
        await _abandon(work, stop)
        raise
    size = sum(map(len, files.values()))
    if not done:
        await _abandon(work, stop)
        return f"staging the candidate for the checker ({len(files)} files, {size} bytes) took over {budget}"
    try:
        return work.result()
    except OSError as e:
        where = parent if parent is not None else _system_temp_dir()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            why = f"no space left on {where} to stage the candidate for the checker ({size} bytes)"
            raise StagingError(why) from e
        raise StagingError(f"cannot stage the candidate for the checker in {where}: {e.strerror or e}") from e


def _system_temp_dir() -> str:
    # Asked again here only to name it in the error: with no usable temp dir at all (a read-only root and
    # no /tmp volume) gettempdir() raises the very error being reported.
    try:
        return tempfile.gettempdir()
    except OSError:
        return "the system temp dir (TMPDIR, /tmp, /var/tmp, /usr/tmp: none usable)"


async def _abandon(work: asyncio.Future[tuple[Path, Path]], stop: threading.Event) -> None:
    """Stop the staging thread (it removes a partial copy itself) and remove what it finished anyway."""
    stop.set()
    await asyncio.wait({work})  # at most the file being written when it was stopped
    if not work.cancelled() and work.exception() is None:
        await asyncio.to_thread(_remove_all, work.result())


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        if not remove_tree(path):
            log.warning("check_dir_not_removed", path=str(path))


# --------------------------------------------------------------------------- the run


async def run_command(
    argv: tuple[str, ...],
    files: dict[str, bytes],
    timeout_s: float,
    work_dir: Path | None,
    *,
    env: tuple[str, ...] = (),
    limits: Limits = LIMITS,
    deadline: float | None = None,
) -> list[str]:
    """Run the checker `argv` (`{dir}` = the staged candidate) within `limits`; [] if it exits 0.

    `deadline` (`time.monotonic()`) defaults to `timeout_s` from now and covers staging and the run;
    `env` names the variables of our environment the checker gets besides PATH, HOME and TMPDIR.
    A refusal is one problem: the checker's output (trimmed), or why it was stopped.
    """
    if deadline is None:
        deadline = time.monotonic() + timeout_s
    budget = f"{timeout_s:g} s (RELOAD_VALIDATE_TIMEOUT_S)"
    made = await _stage(files, work_dir, deadline, budget)
    if isinstance(made, str):
        return [made]
    stage, home = made
    try:
        return await _run(argv, stage, home, deadline, budget, env, limits)
    finally:
        await asyncio.to_thread(_remove_all, (stage, home))


async def _run(
    argv: tuple[str, ...], stage: Path, home: Path, deadline: float, budget: str, names: tuple[str, ...], limits: Limits
) -> list[str]:
    name = argv[0]
    cookie = secrets.token_hex(8)
    environ = _environment(names, home, cookie)
    exe = _resolve(name, environ["PATH"])
    if isinstance(exe, OSError):
        return [f"checker {name!r} cannot be started: {exe.strerror}"]
    args = [a.replace("{dir}", str(stage)) for a in argv[1:]]
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()  # ours, not the transport's: a leftover holding it cannot stall proc.wait()
    capture = _Capture(limits.output_bytes)
    transport, _ = await loop.connect_read_pipe(lambda: capture, os.fdopen(read_fd, "rb", buffering=0))
    _TRACKER.begin()
    try:
        proc = await asyncio.create_subprocess_exec(
            *_launcher(limits),
            exe,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=home,
            env=environ,
            start_new_session=True,
        )
    except BaseException as e:
        _TRACKER.end(None)
        transport.close()
        if isinstance(e, OSError):
            return [f"checker {name!r} cannot be started: {e.strerror or e}"]
        raise
    finally:
        os.close(write_fd)
    run = _TRACKER.register(proc.pid, cookie)
    why: str | None = None
    try:
        why = await _supervise(proc, run, capture, deadline, limits, f"checker {name!r}", budget)
    finally:
        try:
            # Shielded: even a check cancelled twice kills its processes before it is forgotten.
            survivors = await asyncio.shield(asyncio.ensure_future(_finish(run)))
            if why is not None:
                log.warning("checker_killed", checker=name, reason=why)
            if survivors:
                log.warning("checker_survivors", checker=name, pids=survivors)
            code = await asyncio.shield(proc.wait())
            rest = asyncio.ensure_future(capture.ended.wait())
            await asyncio.wait({rest}, timeout=_OUTPUT_GRACE_S)  # only an escaped process still holds the pipe
            rest.cancel()
        finally:
            transport.close()
    if why is not None:
        return [why]
    if code == 0:
        return []
    return [f"checker {name!r} {_failure(code, capture, stage, limits)}"]


async def _finish(run: _Run) -> list[int]:
    """Kill every process of `run`, then forget it; the pids that would not die."""
    try:
        return await asyncio.to_thread(_TRACKER.kill_all, run)
    finally:
        _TRACKER.end(run)


async def _supervise(
    proc: asyncio.subprocess.Process,
    run: _Run,
    capture: _Capture,
    deadline: float,
    limits: Limits,
    who: str,
    budget: str,
) -> str | None:
    """Wait for the checker to exit; the reason if it must be killed first (time, output, processes)."""
    exited = asyncio.ensure_future(proc.wait())
    ended = asyncio.ensure_future(capture.ended.wait())
    try:
        while True:
            if capture.over:
                return f"{who} printed more than {_size(limits.output_bytes)} of output; killed"
            if exited.done():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"{who} did not finish within {budget}; killed"
            pending = {exited} if ended.done() else {exited, ended}
            done, _ = await asyncio.wait(pending, timeout=min(_TICK_S, remaining), return_when=asyncio.FIRST_COMPLETED)
            if not done:  # a tick with the checker still running: count its processes
                running = await asyncio.to_thread(_TRACKER.count, run)
                if running > limits.processes:
                    return f"{who} started more than {limits.processes} processes; killed"
    finally:
        exited.cancel()
        ended.cancel()


def _failure(code: int, capture: _Capture, stage: Path, limits: Limits) -> str:
    raw = capture.raw()
    text = _clip_output(raw.decode("utf-8", "replace").replace(f"{stage}/", "").replace(str(stage), "<candidate>"))
    hint = ""
    if _MEMORY_HINT.search(raw):
        hint = f" (a checker may use {_size(limits.data_bytes)} of memory)"
    elif _FILE_HINT.search(raw):
        hint = f" (a checker may write files of up to {_size(limits.file_bytes)})"
    if code >= 0:
        return f"exited {code}: {text}{hint}"
    sig = -code
    if sig == signal.SIGXCPU:
        what = f"used more than {limits.cpu_s} s of CPU time; killed"
    elif sig == signal.SIGXFSZ:
        what = f"wrote a file larger than {_size(limits.file_bytes)}; killed"
    elif sig == signal.SIGKILL:
        what = "was killed by SIGKILL (out of memory?)"
    else:
        what = f"was killed by {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
    return f"{what}: {text}{hint}" if text else what + hint


def _environment(names: Iterable[str], home: Path, cookie: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "TMPDIR": str(home)}
    env.update((n, os.environ[n]) for n in names if n in os.environ)
    env[COOKIE] = cookie
    return env


def program_problem(name: str) -> str | None:
    """Why the checker program `name` (argv[0]) could not be started here, or None: the start-up check of
    the sidecar's RELOAD_VALIDATE_COMMAND and of the webhook's profiles, resolved as each check resolves it."""
    found = _resolve(name, os.environ.get("PATH", os.defpath))
    if not isinstance(found, OSError):
        return None
    if isinstance(found, PermissionError):
        return f"{name!r} is not executable by uid {os.geteuid()}"
    return f"{name!r} does not exist" if "/" in name else f"{name!r} not found on PATH"


def _resolve(name: str, path: str) -> str | OSError:
    """The checker's executable as an absolute path (it runs in its private dir), or why not."""
    found = os.path.abspath(name) if "/" in name else shutil.which(name, path=path)
    if found is None or not os.path.isfile(found):
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    if not os.access(found, os.X_OK):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    return found


# Limits are set between fork and exec by a launcher, never with `preexec_fn` (not safe in a process with
# threads). prlimit(1) from util-linux adds ~0.2 ms to a check (nginx -t: 3.3 -> 3.5 ms); the Python
# fallback, used only where prlimit is missing, adds ~12 ms. Setting them with os.prlimit after the
# spawn would race with the checker's first forks and allocations.
_PY_LAUNCHER = (
    "import os, resource, signal, sys\n"
    "for item in sys.argv[1].split(','):\n"
    "    r, soft, hard = map(int, item.split(':'))\n"
    "    resource.setrlimit(r, (soft, hard))\n"
    "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"  # Python ignores both; an exec would inherit that
    "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
_PRLIMIT: list[str | None] = []  # [path or None], looked up once


def _launcher(limits: Limits) -> list[str]:
    wanted = (
        ("cpu", resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
        ("data", resource.RLIMIT_DATA, limits.data_bytes, limits.data_bytes),
        ("as", resource.RLIMIT_AS, limits.address_space_bytes, limits.address_space_bytes),
        ("fsize", resource.RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes),
        ("core", resource.RLIMIT_CORE, 0, 0),  # no core files from SIGXCPU or a crash
    )
    rows = []
    for option, res, soft, hard in wanted:
        cap = resource.getrlimit(res)[1]  # a non-root process cannot raise a hard limit
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        rows.append((option, res, soft, hard))
    if not _PRLIMIT:
        _PRLIMIT.append(shutil.which("prlimit"))
    if _PRLIMIT[0] is not None:
        return [_PRLIMIT[0], *(f"--{o}={s}:{h}" for o, _, s, h in rows), "--"]
    spec = ",".join(f"{r}:{s}:{h}" for _, r, s, h in rows)
    return [sys.executable, "-S", "-I", "-c", _PY_LAUNCHER, spec]


class _Capture(asyncio.Protocol):
    """The checker's output as it arrives: head and tail kept, reading stopped past the cap."""

    def __init__(self, cap: int) -> None:
        self.cap, self.total, self.over = cap, 0, False
        self.head, self.tail = bytearray(), bytearray()
        self.ended = asyncio.Event()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        if self.total > self.cap:
            self.over = True
            self.ended.set()
            if isinstance(self.transport, asyncio.ReadTransport):
                self.transport.pause_reading()  # the checker blocks on a full pipe until it is killed
            return
        room = _HEAD - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > _TAIL:
            del self.tail[: len(self.tail) - _TAIL]

    def eof_received(self) -> bool | None:
        self.ended.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()

    def raw(self) -> bytes:
        dropped = self.total - len(self.head) - len(self.tail)
        return bytes(self.head + (b"\n...\n" if dropped > 0 else b"") + self.tail)


def _clip_output(text: str) -> str:
    text = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    if len(text) <= _REASON_CHARS:
        return text
    return text[:300] + " … " + text[-(_REASON_CHARS - 300) :]


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


# --------------------------------------------------------------------------- process tracking


@dataclass(slots=True, eq=False)
class _Run:
    """One running check: its checker's pid and every process seen in its tree (pid -> start time)."""

    root: int
    cookie: str
    root_start: int | None
    pidfd: int | None
    known: dict[int, int] = field(default_factory=dict)


def _processes() -> dict[int, _Proc]:
    return {p.pid: p for p in processes()}


class _Tracker:
    """Every running check of this process, and what each one started.

    A process belongs to a check when it descends (by parent) from the check's checker or from a process
    seen in its tree before, or when it is an orphan re-parented to us that carries the check's cookie or
    sits in the session or process group of a live process of the check. Orphans we cannot attribute are
    left alone, and only zombies of a check are reaped (asyncio's child watcher waits on each checker's
    own pid; other children of this process are someone else's to reap).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[int, _Run] = {}
        self.active = 0
        self.subreaper = False
        self._cookies: dict[tuple[int, int], str | None] = {}
        self._me = os.getpid()

    def begin(self) -> None:
        """Before a spawn: the first concurrent check makes this process the subreaper."""
        with self.lock:
            self.active += 1
            if self.active == 1:
                self._me = os.getpid()
                self.subreaper = _set_subreaper(True)

    def end(self, run: _Run | None) -> None:
        with self.lock:
            if run is not None:
                self.runs.pop(run.root, None)
                if run.pidfd is not None:
                    os.close(run.pidfd)
            self.active -= 1
            if self.active == 0 and self.subreaper:
                _set_subreaper(False)  # orphans of anything else this process starts go to init again
                self.subreaper = False

    def register(self, pid: int, cookie: str) -> _Run:
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            pidfd = None  # already gone, or a kernel older than 5.3
        p = read_stat(pid)
        run = _Run(pid, cookie, p.start if p is not None else -1, pidfd)
        with self.lock:
            self.runs[pid] = run
        return run

    def count(self, run: _Run) -> int:
        """Live processes of `run` now (zombies of it are reaped on the way)."""
        with self.lock:
            members = self._members(run)
            self._reap(members)
            return sum(1 for p in members if not p.dead)

    def kill_all(self, run: _Run) -> list[int]:
        """SIGKILL every process of `run`, its checker too, until none is left; pids that would not die."""
        end = time.monotonic() + _KILL_PATIENCE_S
        pause = 0.002
        while True:
            with self.lock:
                members = self._members(run)
                alive = [p for p in members if not p.dead]
                for p in alive:
                    _kill(p, run.pidfd if p.pid == run.root else None)
                reaped = self._reap(members)
            if not alive and not reaped:
                return []
            if time.monotonic() > end:
                return [p.pid for p in alive]
            time.sleep(pause)
            pause = min(2 * pause, 0.05)

    def _reap(self, members: list[_Proc]) -> int:
        roots = self.runs.keys()
        n = 0
        for p in members:
            if p.dead and p.ppid == self._me and p.pid not in roots:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, os.WNOHANG)
                    n += 1
        return n

    def _members(self, run: _Run) -> list[_Proc]:
        procs = _processes()
        owner = self._attribute(procs)
        members = [p for p in procs.values() if owner.get(p.pid) is run]
        run.known = {p.pid: p.start for p in members}
        return members

    def _attribute(self, procs: dict[int, _Proc]) -> dict[int, _Run]:
        children: dict[int, list[int]] = {}
        for p in procs.values():
            children.setdefault(p.ppid, []).append(p.pid)
        owner: dict[int, _Run] = {}
        for run in self.runs.values():
            for pid, start in {run.root: run.root_start, **run.known}.items():
                if pid in procs and procs[pid].start == start:
                    _claim(owner, children, self.runs, pid, run)
        # A session or group id stays reserved while any process uses it: ids of live members are theirs.
        groups = {i: owner[p.pid] for p in procs.values() if p.pid in owner for i in (p.pid, p.sid, p.pgid)}
        by_cookie = {run.cookie: run for run in self.runs.values()}
        parents = (self._me,) if self.subreaper else (self._me, 1)
        orphans = [p for p in procs.values() if p.ppid in parents and p.pid not in owner and p.pid not in self.runs]
        for p in orphans:
            found = groups.get(p.sid) or groups.get(p.pgid) or by_cookie.get(self._cookie(p) or "")
            if found is not None:
                _claim(owner, children, self.runs, p.pid, found)
        for key in [k for k in self._cookies if k[0] not in procs]:
            del self._cookies[key]
        return owner

    def _cookie(self, p: _Proc) -> str | None:
        key = (p.pid, p.start)
        if key not in self._cookies:
            value = None
            with contextlib.suppress(OSError):
                prefix = COOKIE.encode() + b"="
                with open(f"/proc/{p.pid}/environ", "rb") as f:
                    for item in f.read().split(b"\0"):
                        if item.startswith(prefix):
                            value = item[len(prefix) :].decode("ascii", "replace")
            self._cookies[key] = value
        return self._cookies[key]


def _claim(owner: dict[int, _Run], children: dict[int, list[int]], roots: Iterable[int], pid: int, run: _Run) -> None:
    """`pid` and its descendants belong to `run`, except what is already owned or another check's checker."""
    stack = [pid]
    while stack:
        q = stack.pop()
        if q in owner or (q != run.root and q in roots):
            continue
        owner[q] = run
        stack += children.get(q, ())


_TRACKER = _Tracker()
_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our descendants re-parent to us instead of init (Linux)."""
    import ctypes  # on first use: ~3 ms of start-up a sidecar without a checker never needs

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        ok = False
    if not ok and on:
        log.warning("subreaper_unavailable", hint="checker processes that leave their tree may outlive a check")
    return ok


def _kill(p: _Proc, pidfd: int | None) -> None:
    """SIGKILL exactly process `p`: through a pidfd, after checking that the pid still names it."""
    own = pidfd is None
    try:
        if pidfd is None:
            pidfd = os.pidfd_open(p.pid)
        if own:
            q = read_stat(p.pid)
            if q is None or q.start != p.start:
                return  # gone, and the pid reused
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    except OSError as e:
        if e.errno == errno.ENOSYS and (q := read_stat(p.pid)) is not None and q.start == p.start:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)
    finally:
        if own and pidfd is not None:
            os.close(pidfd)
