#!/usr/bin/env python3
"""Restart trigger latency: a swap -> the app's new process serving it; a bad swap -> the old version again.

  python3 bench/restart.py                 # 20 good and 20 bad swaps
  python3 bench/restart.py --runs 50 --json out.json

The app is tests/e2e/config_app.py: a Python HTTP server that reads its config once, at start, and
writes a pidfile; the sidecar runs with RELOAD_RESTART=true and RELOAD_PIDFILE. The kubelet's part is
played by tests/e2e/supervisor.py, which starts the app again the moment it exits: **no back-off and no
container runtime**. In a cluster add the kubelet's reaction to the exit (about a second), the
container's start, and for a rollback the restart back-off (10 s for the second restart within 10
minutes; docs/restart.md).

Good swap (a new body): measured from the `..data` rename of the source to the first answer with the
new body, polled back to back; split with the sidecar's JSON log into
  swap -> signal sent          watch, debounce, snapshot, validation, promotion, finding the app
  signal -> new process found  the app's exit, the supervisor's restart, the new process's start (pidfile)
  new process -> serving       what is left until the new body is answered (slightly negative: the
                               new process answers before the sidecar, polling every 20 ms, logs it)
and, after it, the verification of the new process (RELOAD_HEALTH_*).

Bad swap (a body whose /healthz answers 500): from the rename to the first answer of the final run of
good answers (after at least one bad one): promotion, restart, the failed verification (the health
window: a setting), quarantine, `..data` back, a second restart.

Health: RELOAD_HEALTH_SUCCESSES=3, INTERVAL_S=0.1, TIMEOUT_S=2; RELOAD_DEBOUNCE_MS=0;
RELOAD_RESTART_MIN_INTERVAL_S=0 (the swaps come a second apart: paced, each would wait 600 s; the pacing
and the back-off are measured by bench/restart_pacing.py).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.apps import free_port, http_get  # noqa: E402 - path set above
from tests.e2e.supervisor import Supervisor  # noqa: E402
from tests.kubelet import project  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollback import Log, wait, wait_rolled_back  # noqa: E402 - the sidecar log reader and poll loop the rollback bench uses

APP = ROOT / "tests" / "e2e" / "config_app.py"
HEALTH = {"RELOAD_HEALTH_SUCCESSES": "3", "RELOAD_HEALTH_INTERVAL_S": "0.1", "RELOAD_HEALTH_TIMEOUT_S": "2"}


def conf(body: str, healthy: bool = True) -> dict[str, str]:
    return {"app.conf": f"body: {body}\nhealth: {'ok' if healthy else 'fail'}\n"}


class Poller:
    """GET / back to back in a thread: (time, body) of every answer, and the time of every failed attempt."""

    def __init__(self, url: str, pause_s: float = 0.0) -> None:
        self.url, self.pause_s = url, pause_s
        self.answers, self.failures = list[tuple[float, str]](), list[float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=1) as resp:
                    self.answers.append((time.time(), resp.read().decode()))
                if self.pause_s:
                    time.sleep(self.pause_s)
            except (OSError, http.client.HTTPException):
                self.failures.append(time.time())
                time.sleep(0.001)  # the old process ended mid-answer, or the new one is not bound yet

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join(5)
        return self.answers


def start_sidecar(stack: contextlib.ExitStack, env: dict[str, str], log_path: Path, listen: int) -> None:
    """The sidecar as a process of its own session (SIGKILLed with its children when `stack` closes),
    waited for until /readyz answers 200."""
    with open(log_path, "wb") as out:
        car = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def stop_sidecar() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(car.pid, signal.SIGKILL)
        car.wait()

    stack.callback(stop_sidecar)
    wait(lambda: http_get(f"http://127.0.0.1:{listen}/readyz")[0] == 200, 30, "sidecar /readyz 200")


def one_good(i: int, volume: Path, url: str, log: Log) -> dict[str, float]:
    seen = len(log.poll())
    body = f"good-{i}"
    poller = Poller(url)
    project(volume, conf(body))
    t_swap = time.time()
    wait(lambda: any(b == body for _, b in poller.answers), 30, f"good run {i}: new body served")
    done = wait(lambda: next((e for e in log.poll()[seen:] if e["event"] == "committed"), None), 30, "commit")
    answers = poller.stop()
    t_serving = next(t for t, b in answers if b == body)
    evs = log.events[seen:]

    def at(name: str) -> float:
        return float(next(e["t"] for e in evs if e["event"] == name))

    return {
        "total": (t_serving - t_swap) * 1000,
        "swap_to_signal": (at("app_restarting") - t_swap) * 1000,
        "signal_to_new_pid": (at("app_restarted") - at("app_restarting")) * 1000,
        "new_pid_to_serving": (t_serving - at("app_restarted")) * 1000,
        "verify": (at("verified") - at("app_restarted")) * 1000,
        "to_commit": (done["t"] - t_swap) * 1000,
    }


def one_bad(i: int, volume: Path, url: str, log: Log, good: str) -> dict[str, float]:
    seen = len(log.poll())
    bad = f"bad-{i}"
    poller = Poller(url)
    project(volume, conf(bad, healthy=False))
    t_swap = time.time()
    wait_rolled_back(log, seen, 60, f"bad run {i}")
    wait(lambda: poller.answers and poller.answers[-1][1] == good, 10, "good body again")
    answers = poller.stop()
    if not any(b == bad for _, b in answers):
        raise SystemExit(f"bad run {i}: the app never served the bad version")
    t_good = None
    for t, b in reversed(answers):
        if b != good:
            break
        t_good = t
    assert t_good is not None
    failed = next(e for e in log.events[seen:] if e["event"] == "verify_failed")
    total = (t_good - t_swap) * 1000
    return {"total": total, "health": failed["duration_ms"], "not_health": total - failed["duration_ms"]}


def summarize(good: list[dict[str, float]], bad: list[dict[str, float]]) -> dict[str, Any]:
    def figures(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        return {k: {"p50": statistics.median(r[k] for r in rows), "max": max(r[k] for r in rows)} for k in rows[0]}

    g, b = figures(good), figures(bad)

    def line(label: str, fig: dict[str, dict[str, float]], key: str) -> str:
        return f"  {label:<62} p50 {fig[key]['p50']:8.1f} ms   max {fig[key]['max']:8.1f} ms"

    print(
        f"restart trigger; app: tests/e2e/config_app.py (reads its config at start); {len(good)} good, {len(bad)} bad"
    )
    print("supervisor restarts the app at once: no kubelet back-off, no container start (see the header)")
    print(line("swap -> new process serving the new version", g, "total"))
    print(line("  swap -> SIGTERM sent (watch..promote, find the app)", g, "swap_to_signal"))
    print(line("  SIGTERM -> new process found (exit, restart, app start)", g, "signal_to_new_pid"))
    print(line("  new process found -> serving the new version", g, "new_pid_to_serving"))
    print(line("(after: verification of the new process, from its pid)", g, "verify"))
    print(line("(swap -> committed)", g, "to_commit"))
    print(line("bad swap -> old version served again", b, "total"))
    print(line("  health window (verification of the bad version)", b, "health"))
    print(line("  not the health window (2 restarts, promotion, rollback)", b, "not_health"))
    return {"good": g, "bad": b, "runs": len(good), "health": HEALTH}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as t, contextlib.ExitStack() as stack:
        tmp = Path(t)
        volume, target, pidfile, port = tmp / "volume", tmp / "target", tmp / "app.pid", free_port()
        listen = free_port()
        project(volume, conf("good-start"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
        env.update(
            HEALTH,
            RELOAD_SOURCE_DIR=str(volume),
            RELOAD_TARGET_DIR=str(target),
            RELOAD_LISTEN=f"127.0.0.1:{listen}",
            RELOAD_DEBOUNCE_MS="0",
            RELOAD_LOG_LEVEL="info",
            RELOAD_RESTART="true",
            RELOAD_PIDFILE=str(pidfile),
            RELOAD_RESTART_WAIT_S="30",
            RELOAD_RESTART_MIN_INTERVAL_S="0",  # no back-off to pace against here: bench/restart_pacing.py
            RELOAD_HEALTH_URL=f"http://127.0.0.1:{port}/healthz",
        )
        start_sidecar(stack, env, tmp / "sidecar.log", listen)
        argv = [sys.executable, str(APP), str(target / "app.conf"), str(pidfile), str(port)]
        sup = Supervisor(argv, tmp / "app.log").start()
        stack.callback(sup.stop)
        url = f"http://127.0.0.1:{port}/"
        wait(lambda: http_get(url)[1] == "good-start", 30, "the app serving")
        log = Log(tmp / "sidecar.log")
        good_rows, bad_rows = [], []
        for i in range(args.runs):
            good_rows.append(one_good(i, volume, url, log))
            bad_rows.append(one_bad(i, volume, url, log, f"good-{i}"))
            time.sleep(0.1)
        out = summarize(good_rows, bad_rows)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
