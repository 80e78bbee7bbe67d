"""Tell the app to reload: an HTTP request, or a Unix signal to a process found by pidfile or name.

Both sit behind one `Trigger` protocol; the orchestrator never knows which one it holds.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Protocol

import aiohttp

from .settings import Expect, Settings

__all__ = ["HttpTrigger", "NoTrigger", "SignalTrigger", "Trigger", "TriggerError", "find_process", "make_trigger"]


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
        self._session, self.url, self.verb = session, url, verb
        self.expect = expect or Expect()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries, self.backoff_s = retries, backoff_s

    async def fire(self) -> str:
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


class SignalTrigger:
    """A Unix signal to the app, found by pidfile or by command name (needs shareProcessNamespace)."""

    method = "signal"

    def __init__(self, signum: signal.Signals, *, pidfile: Path | None = None, process: str = "") -> None:
        self.signum, self.pidfile, self.process = signum, pidfile, process

    async def fire(self) -> str:
        pid = self._pid()
        try:
            os.kill(pid, self.signum)
        except ProcessLookupError:
            raise TriggerError(f"process {pid} is gone; is the app running?") from None
        except PermissionError:
            raise TriggerError(
                f"not allowed to signal pid {pid}: run the sidecar with the app's UID or add CAP_KILL"
            ) from None
        return f"{self.signum.name} -> pid {pid}"

    def _pid(self) -> int:
        if self.pidfile is not None:
            try:
                raw = self.pidfile.read_text().strip()
            except OSError as e:
                raise TriggerError(f"cannot read pidfile {self.pidfile}: {e.strerror}; is the app running?") from e
            if not raw.isdigit() or int(raw) <= 0 or int(raw) == os.getpid():
                # 0 would signal our own process group: never a valid app pid
                raise TriggerError(f"pidfile {self.pidfile} holds {raw[:40]!r}, not the app's pid")
            return int(raw)
        pid = find_process(self.process)
        if pid is None:
            raise TriggerError(
                f"no process named {self.process!r} found in /proc; is the app running and the pod using "
                "shareProcessNamespace: true?"
            )
        return pid


def find_process(name: str, proc: Path = Path("/proc")) -> int | None:
    """The top-most process whose command name or argv[0] basename is `name` (the master, not workers)."""
    matches: dict[int, int] = {}
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode("utf-8", "replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if name in (comm, os.path.basename(argv0), argv0.split(":", 1)[0]):
            matches[int(entry.name)] = ppid
    roots = sorted(pid for pid, ppid in matches.items() if ppid not in matches)
    return roots[0] if roots else None


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
