#!/usr/bin/env python3
"""Restart pacing against the kubelet's back-off: restarts and app downtime for a burst and for a stream.

  python3 bench/restart_pacing.py                  # both cases, paced (default interval) and unpaced: ~15 min
  python3 bench/restart_pacing.py --burst-scale 0.1 --json out.json    # ~4 min, the burst time-scaled too

Cases (each run with RELOAD_RESTART_MIN_INTERVAL_S at its default, 600 s, and at 0 = no pacing):
  burst   10 versions over 3 s (0.33 s apart)
  stream  one version per minute for 10 minutes (10 versions)

The app is tests/e2e/config_app.py (reads its config once, at start; pidfile); the kubelet is
tests/e2e/supervisor.py with the kubelet's back-off: a first exit restarted after 1 s (its sync), a further
exit of a process that ran less than 10 minutes after 10 s, doubling to 300 s, forgotten after 10 minutes
of running. The stream is **time-scaled** so that it runs in about a minute per run: the back-off, its
reset, the reaction, the pacing interval, the debounce and the times the versions arrive are all
multiplied by `--scale` (default 0.1: 10 s -> 1 s, 10 minutes -> 60 s); the app's start (~0.2 s) and the
sidecar's own work are not. Real-scale figures are the measured ones divided by the scale (so the app's
start counts as ~2 s, about a container's start). The burst runs at real scale by default
(`--burst-scale 1`: its paced run waits the whole 600 s interval); scaled, its versions arrive faster than
the sidecar restarts the app, which hides restarts the real burst costs.

Per run: restarts (the app's exits the sidecar caused), the time the app spent in back-off (the
supervisor's waits beyond its 1 s reaction), app downtime (no answer to GET /, polled back to back), and
how long after the last version arrived the app served it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.apps import free_port, http_get  # noqa: E402 - path set above
from tests.e2e.supervisor import Supervisor  # noqa: E402
from tests.kubelet import project  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restart import Poller, start_sidecar  # noqa: E402 - the app poller and sidecar start of the restart bench
from rollback import Log, wait  # noqa: E402 - the sidecar log reader and poll loop the rollback bench uses

APP = ROOT / "tests" / "e2e" / "config_app.py"
# The kubelet, real scale: reaction to an exit, first back-off, cap, reset after this long running.
KUBELET = {"first_s": 1.0, "backoff_s": 10.0, "max_backoff_s": 300.0, "reset_s": 600.0}
DEFAULT_INTERVAL_S, DEBOUNCE_MS = 600.0, 200
CASES = {"burst": [i * 3.0 / 9 for i in range(10)], "stream": [i * 60.0 for i in range(10)]}


def conf(body: str) -> dict[str, str]:
    return {"app.conf": f"body: {body}\nhealth: ok\n"}


def downtime(poller: Poller, since: float) -> float:
    """Seconds without an answer: from the last answer before a failed attempt to the next answer (a
    pause of the poller itself, with no failure in it, is not downtime)."""
    events = sorted([(t, True) for t, _ in poller.answers if t >= since] + [(t, False) for t in poller.failures])
    down, last_ok, failing = 0.0, since, False
    for t, ok in events:
        if ok:
            if failing:
                down += t - last_ok
            last_ok, failing = t, False
        else:
            failing = True
    return down


def one_run(case: str, interval_s: float, scale: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pacing-") as t, contextlib.ExitStack() as stack:
        tmp = Path(t)
        volume, target, pidfile = tmp / "volume", tmp / "target", tmp / "app.pid"
        port, listen = free_port(), free_port()
        project(volume, conf("v0"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
        env.update(
            RELOAD_SOURCE_DIR=str(volume),
            RELOAD_TARGET_DIR=str(target),
            RELOAD_LISTEN=f"127.0.0.1:{listen}",
            RELOAD_DEBOUNCE_MS=str(round(DEBOUNCE_MS * scale)),
            RELOAD_RESYNC_S="0",
            RELOAD_LOG_LEVEL="info",
            RELOAD_RESTART="true",
            RELOAD_PIDFILE=str(pidfile),
            RELOAD_RESTART_WAIT_S=str(max(1.0, 330 * scale)),
            RELOAD_RESTART_MIN_INTERVAL_S=str(interval_s * scale),
            RELOAD_HEALTH_URL=f"http://127.0.0.1:{port}/healthz",
            RELOAD_HEALTH_SUCCESSES="2",
            RELOAD_HEALTH_INTERVAL_S="0.1",
            RELOAD_HEALTH_TIMEOUT_S="10",
        )
        start_sidecar(stack, env, tmp / "sidecar.log", listen)
        status_url = f"http://127.0.0.1:{listen}/status"
        argv = [sys.executable, str(APP), str(target / "app.conf"), str(pidfile), str(port)]
        sup = Supervisor(argv, tmp / "app.log", **{k: v * scale for k, v in KUBELET.items()}).start()
        stack.callback(sup.stop)
        url = f"http://127.0.0.1:{port}/"
        wait(lambda: http_get(url)[1] == "v0", 30, "the app serving")
        poller = Poller(url, pause_s=0.005)
        began = time.time()
        for i, at in enumerate(CASES[case], start=1):
            time.sleep(max(0.0, began + at * scale - time.time()))
            project(volume, conf(f"v{i}"))
        last_at, last = time.time(), f"v{len(CASES[case])}"
        wait(lambda: any(b == last for _, b in poller.answers), 900 * scale + 60, f"{case}: {last} served")

        def settled() -> bool:
            st = json.loads(http_get(status_url)[1])
            return bool(st["state"] == "idle" and st["current"] == st["last_good"] and st["ready"])

        wait(settled, 60, f"{case}: sidecar idle")
        answers = poller.stop()
        served = next(t for t, b in answers if b == last)
        log = Log(tmp / "sidecar.log")
        events = log.poll()
        restarts = sum(1 for e in events if e["event"] == "app_restarting")
        lives = sup.lives
        # The supervisor's waits beyond its reaction to an exit: the kubelet's back-off (CrashLoopBackOff).
        backoff = sum(
            max(0.0, b.started - a.ended - KUBELET["first_s"] * scale)
            for a, b in zip(lives, lives[1:], strict=False)
            if a.ended is not None
        )
        promoted = sum(1 for e in events if e["event"] == "promoted") - 1  # not the first version
        return {
            "case": case,
            "interval_s": interval_s,
            "versions": len(CASES[case]),
            "promoted": promoted,
            "restarts": restarts,
            "backoff_s": backoff,
            "down_s": downtime(poller, began),
            "last_served_after_s": served - last_at,
            "span_s": served - began,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1, help="time scale of the stream (kubelet, sidecar, arrivals)")
    ap.add_argument("--burst-scale", type=float, default=1.0, help="time scale of the burst")
    ap.add_argument("--cases", default="burst,stream", help="burst, stream or both")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    print(
        "restart pacing; app: tests/e2e/config_app.py, the kubelet's back-off played by tests/e2e/supervisor.py "
        "(10 s doubling to 300 s, reset after 10 min running; 1 s to react to an exit)"
    )
    rows = []
    for case in args.cases.split(","):
        scale = args.burst_scale if case == "burst" else args.scale
        if scale != 1:
            print(
                f"{case}: TIME-SCALED x{scale:g}: back-off {KUBELET['backoff_s'] * scale:g} s doubling to "
                f"{KUBELET['max_backoff_s'] * scale:g} s, reset after {KUBELET['reset_s'] * scale:g} s running, "
                f"the interval and the arrivals scaled alike; 'real' = measured / {scale:g}"
            )
        for interval in (DEFAULT_INTERVAL_S, 0.0):
            r = one_run(case, interval, scale)
            rows.append({**r, "scale": scale})
            label = {"burst": "10 versions over 3 s", "stream": "1 version/min for 10 min"}[case]
            pacing = f"interval {interval:g} s" if interval else "no pacing"
            print(
                f"  {label:<26} {pacing:<16} restarts {r['restarts']:2d} (promoted {r['promoted']:2d})   "
                f"back-off real {r['backoff_s'] / scale:6.0f} s   app down real {r['down_s'] / scale:6.0f} s   "
                f"last version live after real {r['last_served_after_s'] / scale:6.0f} s   "
                f"(measured: back-off {r['backoff_s']:.2f} s, down {r['down_s']:.2f} s, "
                f"span {r['span_s']:.1f} s)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"kubelet": KUBELET, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
