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

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .procfs import read_stat
from .trigger import (
    _PROC,
    PID_REUSE_SLACK_S,
    SignalTrigger,
    TriggerError,
    _pidfd,
    _Proc,
    _read_proc,
    find_processes,
    read_pidfile,
)

if TYPE_CHECKING:
    from .metrics import Metrics
    from .settings import Settings
    from .state import State

__all__ = ["RestartTrigger"]

log = structlog.get_logger("restart")

# A process counts as started after the version went live only if it started this much after the
# `..data` swap: /proc gives start times in clock ticks (10 ms), compared with a file's wall-clock mtime.
# Erring late costs a needless restart; erring early would leave the app on the old version.
START_SLACK_S = 0.1
# After SIGKILL the process is gone within milliseconds unless the kernel is stuck (D state, NFS).
KILL_WAIT_S = 10.0
# The new process is looked for every 20 ms for its first 5 s (an app's usual start, where the latency
# counts), then every 250 ms (the kubelet's back-off, where it does not).
_POLL_FAST_S, _POLL_FAST_FOR_S, _POLL_SLOW_S = 0.02, 5.0, 0.25


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
    """End the app's process and wait for the kubelet to start a new one (see the module doc)."""

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
        proc: Path = _PROC,
        state: State | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(signum, pidfile=pidfile, process=process, proc=proc)
        self.target_dir, self.grace_s, self.wait_s = target_dir, grace_s, wait_s
        self.state, self.metrics = state, metrics

    @classmethod
    def from_settings(cls, s: Settings, state: State | None = None, metrics: Metrics | None = None) -> RestartTrigger:
        return cls(
            s.restart_signal,
            target_dir=s.target_dir,
            pidfile=s.pidfile,
            process=s.process,
            grace_s=s.restart_grace_s,
            wait_s=s.restart_wait_s,
            state=state,
            metrics=metrics,
        )

    async def fire(self) -> str:
        began = time.monotonic()
        live_since = self._live_since()
        old = self._find()  # raises TriggerError for a target that can never be the app
        record: dict[str, Any] = {
            "old_pid": old.pid if old else None,
            "new_pid": None,
            "signal": self.signum.name,
            "outcome": "failed",
            "at": time.time(),
        }
        try:
            if old is not None and live_since is not None and old.info.started_wall() > live_since + START_SLACK_S:
                record.update(outcome="skipped", new_pid=old.pid)
                log.info("app_restart_skipped", pid=old.pid, reason="it started after this version went live")
                return f"pid {old.pid} started after this version went live: it read it, not restarted"
            if old is None:
                log.warning("app_not_running", waiting_s=self.wait_s, lookup=self._where())
                # It may be starting (the kubelet's back-off): any process started since the swap reads it.
                after = _ticks(live_since) if live_since is not None else _ticks()
                how, outcome = "no app process was running", "started"
            else:
                after = _ticks()
                t = time.monotonic()
                killed = await self._end(old)
                outcome = "killed" if killed else "restarted"
                sent = f"{self.signum.name}{' then SIGKILL' if killed else ''}"
                how = f"{sent} -> pid {old.pid}, gone after {time.monotonic() - t:.2f} s"
            t = time.monotonic()
            new = await self._wait_new(old, after)
            record.update(new_pid=new.pid, outcome=outcome)
            log.info(
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
            if len(pids) > 1:
                raise TriggerError(
                    f"{len(pids)} processes named {self.process!r} that are not each other's children: "
                    f"{', '.join(map(str, pids))}; set RELOAD_PIDFILE to say which one is the app"
                )
            pid = pids[0]
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
            log.info("app_restarting", pid=old.pid, signal=self.signum.name, grace_s=self.grace_s)
            if not old.dead:
                self._send(pidfd, old, self.signum)
            if await self._exited(pidfd, old, self.grace_s):
                return False
            log.warning("app_killing", pid=old.pid, signal="SIGKILL", after_s=self.grace_s)
            self._send(pidfd, old, signal.SIGKILL)
            if await self._exited(pidfd, old, KILL_WAIT_S):
                return True
            raise TriggerError(f"process {old.pid} is still alive {KILL_WAIT_S:g} s after SIGKILL")
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _send(self, pidfd: int | None, old: _Found, signum: signal.Signals) -> None:
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signum)
            elif not self._gone(old):
                os.kill(old.pid, signum)
        except ProcessLookupError:
            pass  # it has exited already
        except PermissionError:
            raise TriggerError(
                f"not allowed to signal pid {old.pid}: run the sidecar with the app's UID or add CAP_KILL"
            ) from None

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
        """The app's new process: found by the same lookup, not `old`, started at or after tick `after`."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.wait_s
        last = f"no process found by {self._where()}"
        while True:
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
            if loop.time() >= deadline:
                raise TriggerError(
                    f"no new app process within {self.wait_s:g} s (RELOAD_RESTART_WAIT_S): {last}; is the "
                    "container in CrashLoopBackOff or its restartPolicy not Always? (kubectl describe pod)"
                )
            await asyncio.sleep(_POLL_FAST_S if loop.time() - began < _POLL_FAST_FOR_S else _POLL_SLOW_S)


def _dead(pid: int, proc: Path) -> bool:
    st = read_stat(pid, proc)
    return st is not None and st.dead


def _ticks(wall: float | None = None) -> int:
    """Now (or the wall-clock time `wall`) in /proc's clock ticks since boot, the unit of a start time."""
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    if wall is not None:
        boot -= time.time() - wall
    return int(boot * os.sysconf("SC_CLK_TCK"))
