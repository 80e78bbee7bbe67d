"""Waves with proof of load: a version the canary's nginx refuses at reload (it passes `nginx -t`) reaches
exactly one pod. The canary rolls back at once and reports it failed; every other pod holds it.

The refusal: a `listen` on the port the pod's own sidecar listens on (every pod is a network namespace,
tests/e2e/netns.py): `nginx -t` does not bind, the running master cannot, and keeps its old workers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sidecar.snapshot import read_snapshot
from sidecar.stagger import wave_order
from tests.e2e.sidecar_proc import wait_for
from tests.e2e.test_waves import APP_PORT, BAKE_S, SIDECAR_PORT, apply, conf, fleet, healthy_at
from tests.kubelet import project


@pytest.mark.timeout(150)
def test_version_the_canarys_app_refuses_reaches_exactly_one_pod(tmp_path: Path) -> None:
    with fleet(tmp_path, 4) as pods:
        good = apply(pods, "v2")
        wait_for(lambda: all(healthy_at(p, good) for p in pods), 60, 0.2, what="v2 healthy everywhere")

        refused = conf("v3").replace(f"listen {APP_PORT};", f"listen {APP_PORT};\n        listen {SIDECAR_PORT};")
        for pod in pods:
            project(pod.volume, {"nginx.conf": refused})
        bad = read_snapshot(pods[0].volume).version
        canary = wave_order(bad, {p.name for p in pods})[0]

        def settled() -> bool:
            states = {p.name: p.car.status() for p in pods if p.car}
            return all(bad in st["quarantined"] if name == canary else bad in st["held"] for name, st in states.items())

        wait_for(settled, 60, 0.2, what="the canary refused and rolled back, the others held")
        time.sleep(BAKE_S)
        for pod in pods:
            assert pod.car is not None and pod.nginx is not None
            st = pod.car.status()
            assert st["current"] == st["last_good"] == good, pod.name
            assert pod.nginx.get("/") == (200, "v2")
            touched = [e for e in pod.car.events("promoted") if e["version"] == bad]
            assert len(touched) == (1 if pod.name == canary else 0), pod.name
            assert not [e for e in pod.car.events("committed") if e.get("version") == bad], pod.name
        by_name = {p.name: p for p in pods}
        car = by_name[canary].car
        assert car is not None
        assert (
            "Address already in use" in car.status()["quarantined"][bad]["reason"]
            or "new workers" in (car.status()["quarantined"][bad]["reason"])
        )
