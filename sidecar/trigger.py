"""Reload triggers behind one `Trigger` protocol: HTTP, a Unix signal (by pidfile or name), or none.

The orchestrator never knows which one it holds; `make_trigger` picks it from `Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .procfs import read_stat
from .settings import Expect, Settings

if TYPE_CHECKING:  # imported by HttpTrigger: `once` (an initContainer) and signal triggers run without aiohttp
    import aiohttp

__all__ = [
    "HttpTrigger",
    "NoTrigger",
    "SignalTrigger",
    "Trigger",
    "TriggerError",
    "find_processes",
    "make_trigger",
    "read_pidfile",
]


class TriggerError(RuntimeError):
    """The app was not told to reload; the message says what to check."""


class Trigger(Protocol):
    method: str

    async def fire(self) -> str:
        """Ask the app to reload; returns evidence (e.g. 'HTTP 200'), raises `TriggerError`."""
        ...


class NoTrigger:
    """No reload trigger configured: the app reads the files itself (e.g. it polls them)."""

    method = "none"

    async def fire(self) -> str:
        return "no trigger configured"


class HttpTrigger:
    """HTTP reload with a timeout per attempt, retries with exponential backoff and expected statuses."""

    method = "http"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        verb: str = "POST",
        expect: Expect | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        import aiohttp

        self._session, self.url, self.verb = session, url, verb
        self.expect = expect or Expect()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries, self.backoff_s = retries, backoff_s

    async def fire(self) -> str:
        import aiohttp

        seen: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), 5.0))
            try:
                async with self._session.request(self.verb, self.url, timeout=self.timeout) as resp:
                    body = (await resp.content.read(300)).decode("utf-8", "replace").strip()
                    if self.expect.accepts(resp.status):
                        return f"HTTP {resp.status}"
                    seen.append(f"HTTP {resp.status} {body[:120]!r}".rstrip())
                    if resp.status in (404, 405, 403):
                        break  # a wrong URL or a disabled endpoint does not get better with retries
            except TimeoutError:
                seen.append(f"no answer within {self.timeout.total:g} s")
            except aiohttp.ClientError as e:
                seen.append(f"{type(e).__name__}: {e}")
        hint = ""
        if any(s.startswith(("HTTP 403", "HTTP 404", "HTTP 405")) for s in seen):
            hint = " (is the reload endpoint enabled? e.g. Prometheus needs --web.enable-lifecycle)"
        raise TriggerError(f"{self.verb} {self.url} failed after {len(seen)} attempt(s): {'; '.join(seen)}{hint}")


# The kernel's PID_MAX_LIMIT on 64-bit: no pid is larger, whatever kernel.pid_max says.
PID_MAX = 4_194_304
# A pid and a newline take at most 8 bytes; room for padding, nothing like a config file.
PIDFILE_MAX_BYTES = 64
# A process that started this long after its pidfile was last written did not write it (its pid was
# reused). The slack absorbs clock granularity and small wall-clock adjustments.
PID_REUSE_SLACK_S = 1.0
_PROC = Path("/proc")


class SignalTrigger:
    """A Unix signal to the app, found by pidfile or by command name (needs shareProcessNamespace).

    The target is checked before every signal: never PID 1, the sidecar or one of its ancestors; a
    pidfile's pid must be a process that started before the pidfile was last written (else the pid was
    reused) and, with `process` also set, carry that name; a name must match exactly one top-most process.
    """

    method = "signal"

    def __init__(
        self, signum: signal.Signals, *, pidfile: Path | None = None, process: str = "", proc: Path = _PROC
    ) -> None:
        self.signum, self.pidfile, self.process, self.proc = signum, pidfile, process, proc

    async def fire(self) -> str:
        # Everything here is non-blocking and bounded (a small pidfile opened O_NONBLOCK, a /proc scan).
        pid, written = self._target()
        _deliver(pid, self.signum, lambda: self._check(pid, written))
        return f"{self.signum.name} -> pid {pid}"

    def _target(self) -> tuple[int, float | None]:
        """The pid to signal, and when its pidfile was last written (None when found by name)."""
        if self.pidfile is not None:
            return read_pidfile(self.pidfile)
        pids = find_processes(self.process, self.proc)
        if not pids:
            raise TriggerError(
                f"no process named {self.process!r} found in /proc; is the app running and the pod using "
                "shareProcessNamespace: true?"
            )
        if len(pids) > 1:
            raise TriggerError(
                f"{len(pids)} processes named {self.process!r} that are not each other's children: "
                f"{', '.join(map(str, pids))}; set RELOAD_PIDFILE to say which one is the app"
            )
        return pids[0], None

    def _check(self, pid: int, written: float | None) -> None:
        """Refuse a pid that cannot be the app's; raises `TriggerError` saying why."""
        where = f"pidfile {self.pidfile}" if self.pidfile is not None else f"RELOAD_PROCESS={self.process!r}"
        if pid == 1:
            raise TriggerError(f"{where} names pid 1, the init process of the pod (or container), never the app")
        if pid == os.getpid():
            raise TriggerError(f"{where} names pid {pid}, the sidecar itself")
        if pid in _ancestors(self.proc):
            raise TriggerError(f"{where} names pid {pid}, an ancestor of the sidecar, never the app")
        info = _read_proc(pid, self.proc)
        if info is None:
            raise TriggerError(
                f"process {pid} is gone; is the app running? ({where}; the sidecar sees only the processes of "
                "its own PID namespace: does the pod use shareProcessNamespace: true?)"
            )
        if written is None:
            return
        late = info.started_wall() - written
        if late > PID_REUSE_SLACK_S:
            raise TriggerError(
                f"process {pid} ({info.comm!r}) started {late:.1f} s after pidfile {self.pidfile} was last "
                "written, so it is not the process that wrote it (the pid was reused); is the app running?"
            )
        if self.process and self.process not in info.names(with_exe=True):
            raise TriggerError(
                f"process {pid} from pidfile {self.pidfile} is {info.comm!r}, not {self.process!r} "
                "(RELOAD_PROCESS); is the pidfile the app's?"
            )


def read_pidfile(path: Path) -> tuple[int, float]:
    """The pid in `path` and the file's mtime. Never blocks: a FIFO, a device, a large file or anything
    but one decimal number in 1..PID_MAX is a `TriggerError` naming the problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise TriggerError(f"cannot read pidfile {path}: {e.strerror}; is the app running?") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TriggerError(f"pidfile {path} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
        if st.st_size > PIDFILE_MAX_BYTES:
            raise TriggerError(
                f"pidfile {path} is {st.st_size} bytes, too large to hold a pid (at most {PIDFILE_MAX_BYTES})"
            )
        raw = os.read(fd, PIDFILE_MAX_BYTES + 1)
    except OSError as e:
        raise TriggerError(f"cannot read pidfile {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(raw) > PIDFILE_MAX_BYTES:
        raise TriggerError(f"pidfile {path} grew past {PIDFILE_MAX_BYTES} bytes while read, too large to hold a pid")
    text = raw.strip(b" \t\r\n")
    if not re.fullmatch(rb"[0-9]{1,20}", text):
        shown = text.decode("utf-8", "backslashreplace")[:40]
        raise TriggerError(f"pidfile {path} holds {shown!r}, not the app's pid")
    pid = int(text)
    if not 1 <= pid <= PID_MAX:
        # 0 would signal our own process group
        raise TriggerError(f"pidfile {path} holds {pid}, not a pid (pids are 1 to {PID_MAX})")
    return pid, st.st_mtime


def _kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISDIR: "a directory", stat.S_ISCHR: "a character device"}
    kinds |= {stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def _deliver(pid: int, signum: signal.Signals, check: Callable[[], None]) -> None:
    """`check` the target, then signal it. A pidfd taken first pins the process that was checked: if it
    exits and its pid is reused meanwhile, the signal fails instead of reaching the newcomer."""
    try:
        pidfd = _pidfd(pid)
        try:
            check()
            if pidfd is None:
                os.kill(pid, signum)
            else:
                signal.pidfd_send_signal(pidfd, signum)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    except ProcessLookupError:
        raise TriggerError(f"process {pid} is gone; is the app running?") from None
    except PermissionError:
        raise TriggerError(
            f"not allowed to signal pid {pid}: run the sidecar with the app's UID or add CAP_KILL"
        ) from None


def _pidfd(pid: int) -> int | None:
    """A pidfd for `pid`, or None where there is none (kernel < 5.3, a seccomp profile without it)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class _Proc:
    """What /proc/<pid> says about a process."""

    pid: int
    ppid: int
    started_ticks: int  # clock ticks after boot
    comm: str
    argv0: str
    exe: str

    def names(self, *, with_exe: bool = False) -> set[str]:
        """Names it answers to: comm, argv[0]'s basename, an nginx-style title's head, the executable's basename."""
        names = {self.comm, os.path.basename(self.argv0), self.argv0.split(":", 1)[0]}
        if with_exe and self.exe:
            names.add(os.path.basename(self.exe.removesuffix(" (deleted)")))
        return names - {""}

    def started_wall(self) -> float:
        """When it started, in wall-clock seconds (the clock a file's mtime uses)."""
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - self.started_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age


def _read_proc(pid: int, proc: Path, *, exe: bool = True) -> _Proc | None:
    """`pid`'s entry in `proc`, or None when there is none (gone, or not in our PID namespace)."""
    d = proc / str(pid)
    stat = read_stat(pid, proc)
    if stat is None:
        return None
    try:
        comm = (d / "comm").read_bytes().decode("utf-8", "replace").rstrip("\n")
        with (d / "cmdline").open("rb") as f:
            argv0 = f.read(4096).split(b"\0", 1)[0].decode("utf-8", "replace")
    except OSError:
        return None
    ppid, started = stat.ppid, stat.start
    path = ""
    if exe:
        with contextlib.suppress(OSError):  # another UID's process: not readable without ptrace rights
            path = os.readlink(d / "exe")
    return _Proc(pid, ppid, started, comm, argv0, path)


def _ancestors(proc: Path) -> set[int]:
    """The sidecar's parent, its parent, ... up to the root of the PID namespace."""
    seen: set[int] = set()
    pid = os.getppid()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        info = _read_proc(pid, proc, exe=False)
        pid = info.ppid if info is not None else 0
    return seen


def find_processes(name: str, proc: Path = _PROC) -> list[int]:
    """The top-most processes whose command name or argv[0] basename is `name` (masters, not their workers):
    those whose parent does not match too. The sidecar and its ancestors are never candidates."""
    me = {os.getpid(), *_ancestors(proc)}
    matches: dict[int, int] = {}
    try:
        entries = [int(e.name) for e in proc.iterdir() if e.name.isascii() and e.name.isdigit()]
    except OSError as e:
        raise TriggerError(f"cannot list processes in {proc}: {e.strerror}") from e
    for pid in entries:
        info = None if pid in me else _read_proc(pid, proc, exe=False)
        if info is not None and name in info.names():
            matches[pid] = info.ppid
    return sorted(pid for pid, ppid in matches.items() if ppid not in matches)


def make_trigger(settings: Settings, session: aiohttp.ClientSession) -> Trigger:
    """The trigger `settings` asks for."""
    if settings.reload_url:
        return HttpTrigger(
            session,
            settings.reload_url,
            verb=settings.reload_method,
            expect=settings.reload_expect,
            timeout_s=settings.reload_timeout_s,
            retries=settings.reload_retries,
        )
    if settings.signal is not None:
        return SignalTrigger(settings.signal, pidfile=settings.pidfile, process=settings.process)
    return NoTrigger()
