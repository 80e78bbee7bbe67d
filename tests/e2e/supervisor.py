"""The kubelet's part in a container restart, played in a test: start the app again whenever it exits.

`restartPolicy: Always` with the kubelet's back-off, scaled down: the first exit is restarted after
`first_s` (the kubelet: at its next sync, about a second); a further exit of a process that ran less than
`reset_s` waits `backoff_s`, doubling up to `max_backoff_s` (the kubelet: 10 s doubling to 300 s, forgotten
once the container has run 10 minutes: `flowcontrol.Backoff`, reset after twice its cap). A process that
ran `reset_s` or longer is restarted after `first_s` and the back-off starts over. The supervisor is a
thread of the test process; it starts the app in a session of its own, reaps it, and ends only that
process (by pid).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Life:
    """One run of the app: its pid, when it started, how it ended."""

    pid: int
    started: float
    ended: float | None = None
    returncode: int | None = None


@dataclass
class Supervisor:
    argv: Sequence[str]
    log_path: Path
    first_s: float = 0.0
    backoff_s: float = 0.0
    max_backoff_s: float = 2.0
    reset_s: float = 10.0
    lives: list[Life] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    list(self.argv),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.lives.append(Life(self._proc.pid, time.time()))

    def _run(self) -> None:
        backoff, last_exit = 0.0, None
        while not self._stop.is_set():
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            now = time.time()
            self.lives[-1].ended, self.lives[-1].returncode = now, code
            if last_exit is not None and now - self.lives[-1].started < self.reset_s:
                backoff = min(backoff * 2 if backoff else self.backoff_s, self.max_backoff_s)
                delay = backoff
            else:
                backoff, delay = 0.0, self.first_s
            last_exit = now
            if self._stop.wait(delay):
                return
            self._spawn()

    @property
    def starts(self) -> int:
        return len(self.lives)

    @property
    def pid(self) -> int:
        return self.lives[-1].pid

    def running(self) -> bool:
        return self.lives[-1].ended is None

    def stop(self) -> None:
        """Stop restarting, then SIGKILL the app's current process (its own session) and reap it."""
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._thread.join(10)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
