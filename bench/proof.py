#!/usr/bin/env python3
"""Proof of load: signal -> proof latency per kind, and how long a refused version stays live (figures only).

  python3 bench/proof.py                  # nginx (workers), Prometheus SIGHUP (metric), Prometheus POST (http)
  python3 bench/proof.py --good 50 --refused 10 --json out.json

For each kind, the real sidecar in front of the real app from Debian:

  signal -> proof   for each of `--good` good versions, from the signal to the evidence: the proof's own
                    figure (`reload_proven` evidence: "N new worker(s) X ms after SIGHUP", "reload timestamp
                    newer than before SIGHUP (X ms)"); for `http` the POST's round trip (the 2xx is the proof)
  refused in ..data for each of `--refused` versions the app refuses at reload (nginx: a `listen` on a port
                    this script holds; Prometheus: a rule file it may not read), how long `..data` pointed at
                    the refused version: polled every 1 ms by this script, from the swap to the swap back.
                    nginx retries a busy `listen` 5 x 500 ms before it gives up; with RELOAD_APP_ERROR_LOG
                    the sidecar sees its final `[emerg]` then, not at RELOAD_PROOF_TIMEOUT_S.

Needs root (the apps run without CAP_DAC_OVERRIDE so that a file owned by nobody is unreadable to them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.apps import free_port, nginx_conf, prometheus_yml, promtool_bin  # noqa: E402
from tests.e2e.proof_apps import (  # noqa: E402
    apply,
    busy_listen,
    nginx_proof_env,
    start_nginx_no_dac,
    start_prometheus_no_dac,
    unreadable,
    wait_settled,
)
from tests.e2e.sidecar_proc import Sidecar  # noqa: E402

FAST = {"RELOAD_HEALTH_SUCCESSES": "1", "RELOAD_HEALTH_INTERVAL_S": "0.05", "RELOAD_HEALTH_TIMEOUT_S": "10"}
_MS = re.compile(r"([0-9.]+) ms")


class DataWatch:
    """Polls `target/..data` every millisecond: how long each version dir was the live one."""

    def __init__(self, target: Path) -> None:
        self.target, self._stop = target, threading.Event()
        self.spans: list[tuple[str, float, float]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        live, since = "", time.monotonic()
        while not self._stop.is_set():
            try:
                now = os.readlink(self.target / "..data")
            except OSError:
                now = ""
            if now != live:
                t = time.monotonic()
                if live:
                    self.spans.append((live, since, t))
                live, since = now, t
            time.sleep(0.001)

    def __enter__(self) -> DataWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def live_for(self, version: str) -> float | None:
        spans = [t1 - t0 for v, t0, t1 in self.spans if v.endswith(version)]
        return spans[0] if spans else None


@contextmanager
def _nginx(work: Path) -> Iterator[tuple[Sidecar, Path, Callable[[str], str], Callable[[], str]]]:
    prefix, volume, target, port = work / "nginx", work / "volume", work / "target", free_port()
    (prefix / "tmp").mkdir(parents=True)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    busy = held.getsockname()[1]
    env = {**nginx_proof_env(prefix, port), **FAST}

    def good(body: str) -> str:
        return nginx_conf(port, body, prefix)

    def refused() -> str:
        return busy_listen(good(f"r{time.monotonic()}"), port, busy)

    apply(volume, "nginx.conf", good("v0"))
    with ExitStack() as stack:
        stack.callback(held.close)
        car = Sidecar(volume, target, work, RELOAD_LOG_LEVEL="info", **env).start()
        stack.callback(car.kill)
        car.wait_current()
        stack.enter_context(start_nginx_no_dac(prefix, target / "nginx.conf", port))
        yield car, volume, good, refused


@contextmanager
def _prometheus(work: Path, how: str) -> Iterator[tuple[Sidecar, Path, Callable[[str], str], Callable[[], str]]]:
    workdir, volume, target, port = work / "prom", work / "volume", work / "target", free_port()
    workdir.mkdir(parents=True)
    url = f"http://127.0.0.1:{port}"
    trigger = (
        {"RELOAD_SIGNAL": "SIGHUP", "RELOAD_PIDFILE": str(workdir / "prometheus.pid")}
        | {"RELOAD_PROOF_METRIC": "prometheus_config", "RELOAD_PROOF_URL": f"{url}/metrics"}
        if how == "metric"
        else {"RELOAD_RELOAD_URL": f"{url}/-/reload"}
    )
    env = {
        "RELOAD_VALIDATE_COMMAND": f"{promtool_bin()} check config {{dir}}/prometheus.yml",
        **trigger,
        "RELOAD_HEALTH_URL": f"{url}/-/healthy",
        **FAST,
    }
    rules = unreadable(work / "rules.yml", "groups: []\n")

    def good(job: str) -> str:
        return prometheus_yml(job, "127.0.0.1:9")

    def refused() -> str:
        return good(f"r{time.monotonic()}") + f"rule_files:\n  - {str(rules)!r}\n"

    apply(volume, "prometheus.yml", good("v0"))
    with ExitStack() as stack:
        car = Sidecar(volume, target, work, RELOAD_LOG_LEVEL="info", **env).start()
        stack.callback(car.kill)
        car.wait_current()
        stack.enter_context(start_prometheus_no_dac(workdir, target / "prometheus.yml", port))
        yield car, volume, good, refused


def _proof_ms(car: Sidecar, version: str, kind: str) -> float:
    if kind == "http":
        [ev] = [e for e in car.events("reload_triggered") if e.get("version") == version]
        return float(ev["duration_ms"])
    [ev] = [e for e in car.events("reload_proven") if e.get("version") == version]
    found = _MS.findall(ev["evidence"])
    return float(found[-1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(kind: str, good_runs: int, refused_runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-proof-") as tmp:
        work = Path(tmp)
        pod = _nginx(work) if kind == "workers" else _prometheus(work, kind)
        with pod as (car, volume, good, refused), DataWatch(work / "target") as watch:
            name = "nginx.conf" if kind == "workers" else "prometheus.yml"
            proof: list[float] = []
            for i in range(good_runs):
                v = apply(volume, name, good(f"good-{i}"))
                st = wait_settled(car, v, f"{v} settled", timeout_s=120)
                assert st["last_good"] == v, st
                proof.append(_proof_ms(car, v, kind))
            stayed: list[float] = []
            for _ in range(refused_runs):
                v = apply(volume, name, refused())
                st = wait_settled(car, v, f"{v} settled", timeout_s=120)
                assert v in st["quarantined"], st
                time.sleep(0.05)  # the watcher sees the swap back
                live = watch.live_for(v)
                if live is not None:
                    stayed.append(live * 1000)
    return {
        "kind": kind,
        "good": good_runs,
        "proof_ms_p50": round(statistics.median(proof), 1),
        "proof_ms_p99": round(_pct(proof, 0.99), 1),
        "refused": refused_runs,
        "refused_live_ms_p50": round(statistics.median(stayed), 1) if stayed else None,
        "refused_live_ms_p99": round(_pct(stayed, 0.99), 1) if stayed else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--good", type=int, default=20)
    parser.add_argument("--refused", type=int, default=5)
    parser.add_argument("--kinds", default="workers,metric,http")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: the apps run without CAP_DAC_OVERRIDE (see the docstring)", file=sys.stderr)
        return 2
    results = [run(kind, args.good, args.refused) for kind in args.kinds.split(",")]
    print(
        f"{'proof':8} {'good':>5} {'signal->proof p50':>18} {'p99':>8} {'refused':>8} {'in ..data p50':>14} {'p99':>8}"
    )
    for r in results:
        print(
            f"{r['kind']:8} {r['good']:>5} {r['proof_ms_p50']:>15} ms {r['proof_ms_p99']:>5} ms {r['refused']:>8} "
            f"{r['refused_live_ms_p50']!s:>11} ms {r['refused_live_ms_p99']!s:>5} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
