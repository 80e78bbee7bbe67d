"""Reload triggers behind one `Trigger` protocol: HTTP, a Unix signal (by pidfile or name), a restart, or none.

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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from .procfs import ProcStat, children, read_stat
from .settings import Expect, Settings

if TYPE_CHECKING:  # aiohttp is imported by HttpTrigger: `once` (an initContainer) and signal triggers run without it
    from typing import Any

    import aiohttp

    from .metrics import Metrics
    from .state import State

__all__ = [
    "AppRefused",
    "HttpTrigger",
    "NoTrigger",
    "NotSignalled",
    "RestartTrigger",
    "SignalTrigger",
    "Trigger",
    "TriggerError",
    "find_processes",
    "make_trigger",
    "pace",
    "read_pidfile",
]


class TriggerError(RuntimeError):
    """The app was not told to reload; the message says what to check."""


class NotSignalled(TriggerError):
    """The app's process could not be found or checked (a pidfile being rewritten, two processes of the
    name, a pid that cannot be the app's) or could not be signalled, so nothing reached it: the app still
    runs the version it had. Not the version's fault: the reloader puts that version back and tries again,
    it never quarantines the new one for it."""


class AppRefused(TriggerError):
    """The app answered the reload request with a refusal (an HTTP status not expected): final, never retried."""


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
    """HTTP reload with a timeout per attempt and expected statuses.

    Any answer that is not expected (a 4xx or 5xx) is the app's refusal and final: a retry would apply the
    refused version again. Only a connection error or a time-out (no answer) is retried, with backoff.
    """

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
                    seen.append(f"HTTP {resp.status} {body[:200]!r}".rstrip())
                    break
            except TimeoutError:
                seen.append(f"no answer within {self.timeout.total:g} s")
            except aiohttp.ClientError as e:
                seen.append(f"{type(e).__name__}: {e}")
        hint = ""
        if seen[-1].startswith(("HTTP 403", "HTTP 404", "HTTP 405")):
            hint = " (is the reload endpoint enabled? e.g. Prometheus needs --web.enable-lifecycle)"
        message = f"{self.verb} {self.url} failed after {len(seen)} attempt(s): {_summary(seen)}{hint}"
        if seen[-1].startswith("HTTP "):
            raise AppRefused(message)
        raise TriggerError(message)


def _summary(seen: list[str]) -> str:
    """The attempts in order, each different answer once, a repeated one with its count (`no answer within
    5 s x4`), as the health check's evidence is: one concise reason however many retries."""
    return "; ".join(what if n == 1 else f"{what} x{n}" for what, n in Counter(seen).items())


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
            raise NotSignalled(
                f"no process named {self.process!r} found in /proc; is the app running and the pod using "
                "shareProcessNamespace: true?"
            )
        return _the_app(self.process, pids), None

    def _check(self, pid: int, written: float | None) -> None:
        """Refuse a pid that cannot be the app's; raises `TriggerError` saying why."""
        where = f"pidfile {self.pidfile}" if self.pidfile is not None else f"RELOAD_PROCESS={self.process!r}"
        if pid == 1:
            raise NotSignalled(f"{where} names pid 1, the init process of the pod (or container), never the app")
        if pid == os.getpid():
            raise NotSignalled(f"{where} names pid {pid}, the sidecar itself")
        if pid in _ancestors(self.proc):
            raise NotSignalled(f"{where} names pid {pid}, an ancestor of the sidecar, never the app")
        info = _read_proc(pid, self.proc)
        if info is None:
            raise NotSignalled(
                f"process {pid} is gone; is the app running? ({where}; the sidecar sees only the processes of "
                "its own PID namespace: does the pod use shareProcessNamespace: true?)"
            )
        if written is None:
            return
        late = info.started_wall() - written
        if late > PID_REUSE_SLACK_S:
            raise NotSignalled(
                f"process {pid} ({info.comm!r}) started {late:.1f} s after pidfile {self.pidfile} was last "
                "written, so it is not the process that wrote it (the pid was reused); is the app running?"
            )
        if self.process and self.process not in info.names(with_exe=True):
            raise NotSignalled(
                f"process {pid} from pidfile {self.pidfile} is {info.comm!r}, not {self.process!r} "
                "(RELOAD_PROCESS); is the pidfile the app's?"
            )


def _the_app(process: str, pids: list[int]) -> int:
    """The one top-most process named `process` (`pids` not empty); several unrelated ones are refused."""
    if len(pids) > 1:
        raise NotSignalled(
            f"{len(pids)} processes named {process!r} that are not each other's children: "
            f"{', '.join(map(str, pids))}; set RELOAD_PIDFILE to say which one is the app"
        )
    return pids[0]


def read_pidfile(path: Path) -> tuple[int, float]:
    """The pid in `path` and the file's mtime. Never blocks: a FIFO, a device, a large file or anything
    but one decimal number in 1..PID_MAX is a `TriggerError` naming the problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise NotSignalled(f"cannot read pidfile {path}: {e.strerror}; is the app running?") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotSignalled(f"pidfile {path} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
        if st.st_size > PIDFILE_MAX_BYTES:
            raise NotSignalled(
                f"pidfile {path} is {st.st_size} bytes, too large to hold a pid (at most {PIDFILE_MAX_BYTES})"
            )
        raw = os.read(fd, PIDFILE_MAX_BYTES + 1)
    except OSError as e:
        raise NotSignalled(f"cannot read pidfile {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(raw) > PIDFILE_MAX_BYTES:
        raise NotSignalled(f"pidfile {path} grew past {PIDFILE_MAX_BYTES} bytes while read, too large to hold a pid")
    text = raw.strip(b" \t\r\n")
    if not re.fullmatch(rb"[0-9]{1,20}", text):
        shown = text.decode("utf-8", "backslashreplace")[:40]
        raise NotSignalled(f"pidfile {path} holds {shown!r}, not the app's pid")
    pid = int(text)
    if not 1 <= pid <= PID_MAX:
        # 0 would signal our own process group
        raise NotSignalled(f"pidfile {path} holds {pid}, not a pid (pids are 1 to {PID_MAX})")
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
            _send_signal(pid, pidfd, signum)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    except ProcessLookupError:
        raise NotSignalled(f"process {pid} is gone; is the app running?") from None


def _send_signal(pid: int, pidfd: int | None, signum: signal.Signals) -> None:
    """Through the pidfd when there is one; raises `ProcessLookupError` when the process is gone."""
    try:
        if pidfd is None:
            os.kill(pid, signum)
        else:
            signal.pidfd_send_signal(pidfd, signum)
    except PermissionError:
        raise NotSignalled(
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
        raise NotSignalled(f"cannot list processes in {proc}: {e.strerror}") from e
    for pid in entries:
        info = None if pid in me else _read_proc(pid, proc, exe=False)
        if info is not None and name in info.names():
            matches[pid] = info.ppid
    return sorted(pid for pid, ppid in matches.items() if ppid not in matches)


# --- the restart trigger ---------------------------------------------------------------------------------

_restart_log = structlog.get_logger("restart")

# A process counts as started after the version went live only if it started this much after the
# `..data` swap: /proc gives start times in clock ticks (10 ms), compared with a file's wall-clock mtime.
# Erring late costs a needless restart; erring early would leave the app on the old version.
START_SLACK_S = 0.1
# After SIGKILL the process is gone within milliseconds unless the kernel is stuck (D state, NFS).
KILL_WAIT_S = 10.0
# The new process is looked for every 20 ms for its first 5 s (an app's usual start, where the latency
# counts), then every 50 ms (the kubelet's back-off: a crashing process must still be seen between looks).
_POLL_FAST_S, _POLL_FAST_FOR_S, _POLL_SLOW_S = 0.02, 5.0, 0.05


@dataclass(frozen=True, slots=True)
class _Found:
    """The app's process as the lookup found it."""

    info: _Proc
    written: float | None  # the pidfile's mtime, None when found by name
    dead: bool  # a zombie: it has exited already and waits to be reaped

    @property
    def pid(self) -> int:
        return self.info.pid

    def same(self, other: _Found | None) -> bool:
        return other is not None and (self.pid, self.info.started_ticks) == (other.pid, other.info.started_ticks)


class RestartTrigger(SignalTrigger):
    """The restart trigger, for apps that read their config only at start.

    The app's process is found and checked exactly as the signal trigger finds it (pidfile or name; never
    pid 1, the sidecar or its ancestors; a pidfile's pid must not have been reused), pinned by a pidfd, and
    ended with `RELOAD_RESTART_SIGNAL`; still alive after `RELOAD_RESTART_GRACE_S`, it gets SIGKILL. The
    kubelet starts the container again (`restartPolicy: Always`) and the new process reads the version just
    made live. `fire` returns once that new process is up (found by the same lookup, started after the old
    one was told to end), so verification starts from there; it waits at most `RELOAD_RESTART_WAIT_S`, which
    covers the kubelet's restart back-off.

    A process that started after the live version was made live has read it already and is not restarted:
    this is what keeps a sidecar that was killed mid-restart, or an app that was down when the version came,
    from costing a second restart for the same version.
    """

    method = "restart"

    def __init__(
        self,
        signum: signal.Signals,
        *,
        target_dir: Path,
        pidfile: Path | None = None,
        process: str = "",
        grace_s: float = 30.0,
        wait_s: float = 330.0,
        min_interval_s: float = 0.0,
        window_s: float | None = None,
        proc: Path = _PROC,
        state: State | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(signum, pidfile=pidfile, process=process, proc=proc)
        self.target_dir, self.grace_s, self.wait_s = target_dir, grace_s, wait_s
        self.min_interval_s = min_interval_s
        # How long a new process may run without being found by the lookup (e.g. a pidfile it never writes):
        # the health window, None without a health check.
        self.window_s = window_s
        self.state, self.metrics = state, metrics
        # When the newest app process this trigger saw come up started (CLOCK_BOOTTIME seconds): pacing
        # counts from there. None until the first restart of this sidecar's life.
        self._last_start: float | None = None
        # (parent pid, executable) of the app's process as last found: how a new process of the app is
        # recognised before the lookup finds it (it may crash before it writes its pidfile).
        self._identity: tuple[int, str] | None = None

    @classmethod
    def from_settings(cls, s: Settings, state: State | None = None, metrics: Metrics | None = None) -> RestartTrigger:
        return cls(
            s.restart_signal,
            target_dir=s.target_dir,
            pidfile=s.pidfile,
            process=s.process,
            grace_s=s.restart_grace_s,
            wait_s=s.restart_wait_s,
            min_interval_s=s.restart_min_interval_s,
            window_s=s.health_timeout_s if s.health_url or s.health_metric_url else None,
            state=state,
            metrics=metrics,
        )

    def pace_s(self) -> float:
        """Seconds until a restart may be made: `RELOAD_RESTART_MIN_INTERVAL_S` after the start of the app
        process the last restart brought up (0 when none was made in this sidecar's life)."""
        if self._last_start is None or self.min_interval_s <= 0:
            return 0.0
        return max(0.0, self._last_start + self.min_interval_s - _boottime())

    async def pace(self) -> None:
        """Wait out the minimum interval between restarts (before a version is promoted; a newer version
        arriving meanwhile cancels the wait, so only the newest is promoted). Rollbacks never wait for it."""
        wait = self.pace_s()
        if wait > 0:
            _restart_log.info("restart_paced", wait_s=round(wait, 1), min_interval_s=self.min_interval_s)
            await asyncio.sleep(wait)

    async def fire(self) -> str:
        began = time.monotonic()
        live_since = self._live_since()
        record: dict[str, Any] = {
            "old_pid": None,
            "new_pid": None,
            "signal": self.signum.name,
            "outcome": "failed",
            "at": time.time(),
        }
        try:
            old = self._find()  # raises TriggerError for a target that can never be the app
            record["old_pid"] = old.pid if old else None
            if old is not None:
                self._identity = _identity(old.info)
            if old is not None and live_since is not None and old.info.started_wall() > live_since + START_SLACK_S:
                self._came_up(old)
                record.update(outcome="skipped", new_pid=old.pid)
                _restart_log.info("app_restart_skipped", pid=old.pid, reason="it started after this version went live")
                return f"pid {old.pid} started after this version went live: it read it, not restarted"
            if old is None:
                _restart_log.warning("app_not_running", waiting_s=self.wait_s, lookup=self._where())
                # It may be starting (the kubelet's back-off): any process started since the swap reads it.
                after = _ticks(live_since) if live_since is not None else _ticks()
                how, outcome = "no app process was running", "started"
            else:
                after = _ticks()
                t = time.monotonic()
                killed = await self._end(old)
                # It has exited: the kubelet starts the next process after this at the earliest.
                self._last_start = max(self._last_start or 0.0, _boottime())
                outcome = "killed" if killed else "restarted"
                sent = f"{self.signum.name}{' then SIGKILL' if killed else ''}"
                how = f"{sent} -> pid {old.pid}, gone after {time.monotonic() - t:.2f} s"
            t = time.monotonic()
            new = await self._wait_new(old, after)
            self._came_up(new)
            record.update(new_pid=new.pid, outcome=outcome)
            _restart_log.info(
                "app_restarted",
                old_pid=old.pid if old else None,
                new_pid=new.pid,
                outcome=outcome,
                waited_ms=round((time.monotonic() - t) * 1000, 1),
            )
            return f"{how}; new pid {new.pid} after {time.monotonic() - t:.2f} s"
        except asyncio.CancelledError:
            record["outcome"] = "interrupted"
            raise
        finally:
            record["duration_s"] = round(time.monotonic() - began, 3)
            self._record(record)

    def _came_up(self, new: _Found) -> None:
        """`new` is the app's process from now on: its start is the last restart, its identity the app's."""
        started = new.info.started_ticks / os.sysconf("SC_CLK_TCK")
        self._last_start = max(self._last_start or 0.0, started)
        self._identity = _identity(new.info)

    def _record(self, record: dict[str, Any]) -> None:
        if self.state is not None:
            self.state.restart = record
        if self.metrics is not None and record["outcome"] in ("restarted", "killed", "failed"):
            self.metrics.restarts.labels(record["outcome"]).inc()

    def _where(self) -> str:
        return f"pidfile {self.pidfile}" if self.pidfile is not None else f"process name {self.process!r}"

    def _live_since(self) -> float | None:
        """When `..data` was last swapped (wall clock): the live version went live then."""
        try:
            return os.lstat(self.target_dir / "..data").st_mtime
        except OSError:
            return None

    def _find(self) -> _Found | None:
        """The app's process, checked as the signal trigger checks it; None when it is not running (no
        pidfile or stale pidfile, no process of that name). Raises `TriggerError` for a process that can
        never be the app (pid 1, the sidecar, a pidfile that is not one, two processes of the name)."""
        written: float | None = None
        if self.pidfile is not None:
            if not os.path.lexists(self.pidfile):
                return None
            pid, written = read_pidfile(self.pidfile)
        else:
            pids = [p for p in find_processes(self.process, self.proc) if not _dead(p, self.proc)]
            if not pids:
                return None
            pid = _the_app(self.process, pids)
        info = _read_proc(pid, self.proc)
        if info is None:
            return None  # a stale pidfile: the app is gone
        if written is not None and info.started_wall() - written > PID_REUSE_SLACK_S:
            return None  # the pid was reused by another process: the pidfile's app is gone
        try:
            self._check(pid, written)
        except TriggerError:
            if _read_proc(pid, self.proc) is None:
                return None
            raise
        return _Found(info, written, _dead(pid, self.proc))

    async def _end(self, old: _Found) -> bool:
        """Signal `old`, SIGKILL it after the grace period; True if SIGKILL was needed. The pidfd taken first
        pins the process that was checked: a reused pid is never signalled."""
        try:
            pidfd = _pidfd(old.pid)
        except ProcessLookupError:
            return False
        try:
            if not self._gone(old):
                self._check(old.pid, old.written)
            _restart_log.info("app_restarting", pid=old.pid, signal=self.signum.name, grace_s=self.grace_s)
            if not old.dead:
                self._send(pidfd, old, self.signum)
            if await self._exited(pidfd, old, self.grace_s):
                return False
            _restart_log.warning("app_killing", pid=old.pid, signal="SIGKILL", after_s=self.grace_s)
            self._send(pidfd, old, signal.SIGKILL)
            if await self._exited(pidfd, old, KILL_WAIT_S):
                return True
            raise TriggerError(f"process {old.pid} is still alive {KILL_WAIT_S:g} s after SIGKILL")
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _send(self, pidfd: int | None, old: _Found, signum: signal.Signals) -> None:
        if pidfd is None and self._gone(old):  # without a pidfd, its pid may name another process now
            return
        with contextlib.suppress(ProcessLookupError):  # it has exited already
            _send_signal(old.pid, pidfd, signum)

    def _gone(self, old: _Found) -> bool:
        """Has `old` exited (gone, a zombie, or its pid now names another process)?"""
        st = read_stat(old.pid, self.proc)
        return st is None or st.dead or st.start != old.info.started_ticks

    async def _exited(self, pidfd: int | None, old: _Found, within_s: float) -> bool:
        """Wait up to `within_s` for `old` to exit: the pidfd turns readable then; /proc is polled without one."""
        loop = asyncio.get_running_loop()
        if pidfd is not None:
            done: asyncio.Future[None] = loop.create_future()

            def exited() -> None:
                if not done.done():
                    done.set_result(None)

            loop.add_reader(pidfd, exited)
            try:
                await asyncio.wait_for(done, within_s)
                return True
            except TimeoutError:
                return False
            finally:
                loop.remove_reader(pidfd)
        deadline = loop.time() + within_s
        while not self._gone(old):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL_FAST_S)
        return True

    async def _wait_new(self, old: _Found | None, after: int) -> _Found:
        """The app's new process: found by the same lookup, not `old`, started at or after tick `after`.

        Meanwhile the processes that look like a new one of the app (`_sightings`) are watched: all of them
        gone before the lookup found one is a crash at start (a pidfile the process never wrote, a name it
        did not live long enough to be found by); one running longer than the health window without being
        found never became the app. Either fails now rather than after `RELOAD_RESTART_WAIT_S`.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.wait_s
        last = f"no process found by {self._where()}"
        seen: dict[int, tuple[int, float]] = {}  # pid -> (start tick, when first seen)
        while True:
            for pid, start in self._sightings(old, after).items():
                seen.setdefault(pid, (start, loop.time()))
            try:
                found = self._find()
                if found is None:
                    last = f"no process found by {self._where()}"
                elif found.dead or found.same(old):
                    last = f"pid {found.pid} is the old process, still exiting"
                elif found.info.started_ticks < after:
                    last = f"pid {found.pid} started before the restart"
                else:
                    return found
            except TriggerError as e:  # e.g. a pidfile being written: looked at again
                last = str(e)
            self._judge(seen, loop.time())
            if loop.time() >= deadline:
                raise TriggerError(
                    f"no new app process within {self.wait_s:g} s (RELOAD_RESTART_WAIT_S): {last}; is the "
                    "container in CrashLoopBackOff or its restartPolicy not Always? (kubectl describe pod)"
                )
            await asyncio.sleep(_POLL_FAST_S if loop.time() - began < _POLL_FAST_FOR_S else _POLL_SLOW_S)

    def _sightings(self, old: _Found | None, after: int) -> dict[int, int]:
        """pid -> start tick of each process that may be the app's new one: started at or after tick `after`,
        not `old`, and named `RELOAD_PROCESS` (top-most), or else with the parent and executable the app's
        process had when it was last found. Empty when neither is known."""
        if self.process:
            try:
                pids = find_processes(self.process, self.proc)
            except TriggerError:
                return {}
            stats = [st for pid in pids if (st := read_stat(pid, self.proc)) is not None]
        elif self._identity is not None:
            stats = _children(self._identity[0], self.proc)
        else:
            return {}
        out: dict[int, int] = {}
        for st in stats:
            if st.dead or st.start < after or (old is not None and st.pid == old.pid):
                continue
            if not self.process:
                info = _read_proc(st.pid, self.proc)
                if info is None or _identity(info) != self._identity:
                    continue
            out[st.pid] = st.start
        return out

    def _judge(self, seen: dict[int, tuple[int, float]], now: float) -> None:
        """Raise `TriggerError` when the processes seen say the new version will not come up (see `_wait_new`)."""
        if not seen:
            return
        alive = {pid: at for pid, (start, at) in seen.items() if _alive(pid, start, self.proc)}
        if not alive:
            pids = ", ".join(map(str, sorted(seen)))
            _restart_log.warning("app_crashed", pids=sorted(seen), lookup=self._where())
            raise TriggerError(
                f"the app's new process exited before {self._where()} showed it (pid {pids}, "
                f"{len(seen)} start(s) seen since the restart): does this version make it crash at start? "
                "(kubectl logs --previous)"
            )
        pid, at = min(alive.items(), key=lambda item: item[1])
        if self.window_s is not None and now - at > self.window_s:
            raise TriggerError(
                f"the app's new process (pid {pid}) has run {now - at:.1f} s, longer than the health window "
                f"(RELOAD_HEALTH_TIMEOUT_S={self.window_s:g}), without {self._where()} showing it: does this "
                "version keep it from starting?"
            )


def _identity(info: _Proc) -> tuple[int, str]:
    """What a new process of the same container shares with the old one: its parent (the container runtime's
    shim, outside the pod's PID namespace: 0) and its executable (its command name where the executable is
    not readable: another UID's process)."""
    return info.ppid, info.exe.removesuffix(" (deleted)") or f"comm:{info.comm}"


def _children(ppid: int, proc: Path) -> list[ProcStat]:
    """The stat of each process whose parent is `ppid` (not the sidecar or its ancestors)."""
    me = {os.getpid(), *_ancestors(proc)}
    try:
        return [st for st in children(ppid, proc) if st.pid not in me]
    except OSError:
        return []


def _alive(pid: int, start: int, proc: Path) -> bool:
    st = read_stat(pid, proc)
    return st is not None and not st.dead and st.start == start


def _dead(pid: int, proc: Path) -> bool:
    st = read_stat(pid, proc)
    return st is not None and st.dead


def _boottime() -> float:
    """Now on the clock /proc's start times count from (seconds since boot, suspend included)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


async def pace(trigger: object) -> None:
    """Wait until `trigger` may act on a new version: the restart trigger's minimum interval between
    restarts; every other trigger (or a wrapper without `pace`) acts at once."""
    paced: Callable[[], Awaitable[None]] | None = getattr(trigger, "pace", None)
    if paced is not None:
        await paced()


def _ticks(wall: float | None = None) -> int:
    """Now (or the wall-clock time `wall`) in /proc's clock ticks since boot, the unit of a start time."""
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    if wall is not None:
        boot -= time.time() - wall
    return int(boot * os.sysconf("SC_CLK_TCK"))


def make_trigger(
    settings: Settings, session: aiohttp.ClientSession, *, state: State | None = None, metrics: Metrics | None = None
) -> Trigger:
    """The trigger `settings` asks for; `state` and `metrics` record the restart trigger's restarts."""
    if settings.restart:
        return RestartTrigger.from_settings(settings, state, metrics)
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
