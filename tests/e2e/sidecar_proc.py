"""Run the real `reload-sidecar run` as a process and read its HTTP API and JSON logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.e2e.apps import free_port, http_get


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `cond` until truthy; fail the test with `what` after `timeout` s."""
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            value = cond()
            if value:
                return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        time.sleep(interval)


class SidecarProcess:
    """A `python -m sidecar <command>` process in a session of its own, its output in `log_path`.

    Subclasses set `command`, `env` (RELOAD_* variables) and `log_path`; `spawn()` starts it.
    """

    command = "run"
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, prefix: Sequence[str] = ()) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "sidecar", self.command],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.command} exited with {self.proc.returncode}: {self.log_tail()}")
        return True

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and (name is None or ev.get("event") == name):
                    out.append(ev)
        return out

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, and the exit code (SIGKILL to the group after 10 s)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


class Sidecar(SidecarProcess):
    """One sidecar process; `env` are its RELOAD_* variables (source/target/listen are filled in).

    With `netns`, it runs inside that network namespace (a pod of its own), listening on all of the
    namespace's addresses at `port`, and the test reaches it at `host`.
    """

    def __init__(
        self,
        source: Path,
        target: Path,
        workdir: Path,
        *,
        netns: str = "",
        host: str = "127.0.0.1",
        port: int | None = None,
        **env: str,
    ) -> None:
        self.source, self.target, self.workdir, self.netns = source, target, workdir, netns
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.env = {
            "RELOAD_SOURCE_DIR": str(source),
            "RELOAD_TARGET_DIR": str(target),
            "RELOAD_LISTEN": f"0.0.0.0:{self.port}" if netns else f"127.0.0.1:{self.port}",
            "RELOAD_DEBOUNCE_MS": "50",
            "RELOAD_LOG_LEVEL": "debug",
            **env,
        }
        self.log_path = workdir / f"sidecar-{netns or 'lo'}-{self.port}.log"

    def start(self, wait_healthy: bool = True) -> Sidecar:
        # `ip netns exec` execs in place: the pid stays the sidecar's
        self.spawn(["ip", "netns", "exec", self.netns] if self.netns else [])
        if wait_healthy:
            wait_for(
                lambda: self.alive() and http_get(self.url + "/healthz")[0] == 200,
                20,
                what=f"sidecar /healthz; log: {self.log_tail()}",
            )
        return self

    def again(self) -> Sidecar:
        """The same sidecar for a new life (after `kill`): same dirs and settings, a port of its own; not
        started (a pod's loopback sidecar: not for one in a network namespace)."""
        assert not self.netns, "again() is for loopback sidecars"
        own = ("RELOAD_SOURCE_DIR", "RELOAD_TARGET_DIR", "RELOAD_LISTEN")
        return Sidecar(self.source, self.target, self.workdir, **{k: v for k, v in self.env.items() if k not in own})

    def readyz(self) -> int:
        return http_get(self.url + "/readyz")[0]

    def status(self) -> dict[str, Any]:
        code, body = http_get(self.url + "/status")
        assert code == 200, body
        return dict(json.loads(body))

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as `name{labels}` -> value."""
        out: dict[str, float] = {}
        for line in http_get(self.url + "/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def wait_current(self, version: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until /status shows `version` (or any) live and the loop idle again."""

        def done() -> dict[str, Any] | None:
            st = self.status()
            ok = st["current"] is not None and (version is None or st["current"] == version)
            return st if ok and st["state"] in ("idle", "degraded", "held") else None

        return dict(wait_for(done, timeout, what=f"current={version}; log: {self.log_tail()}"))


@contextlib.contextmanager
def running(source: Path, target: Path, workdir: Path, **env: str) -> Iterator[Sidecar]:
    car = Sidecar(source, target, workdir, **env).start()
    try:
        yield car
    finally:
        car.kill()


def live_files(target: Path) -> dict[str, bytes]:
    """What the app sees: every file reachable from the target's top-level links (via ..data)."""
    out: dict[str, bytes] = {}
    data = target / "..data"
    for path in sorted(data.rglob("*")):
        if path.is_file():
            out[path.relative_to(data).as_posix()] = path.read_bytes()
    return out
