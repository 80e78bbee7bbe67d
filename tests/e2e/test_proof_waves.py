"""Waves with proof of load: a version the canary's nginx refuses at reload (it passes `nginx -t`) reaches
exactly one pod. The canary rolls back at once and reports it failed; every other pod holds it.

The refusal: a `listen` on the port the pod's own sidecar listens on (every pod is a network namespace,
tests/e2e/netns.py): `nginx -t` does not bind, the running master cannot, and keeps its old workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.snapshot import read_snapshot
from tests.e2e.sidecar_proc import wait_for
from tests.e2e.test_waves import APP_PORT, SIDECAR_PORT, apply, conf, fleet, healthy_at, reached_only_the_canary
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
        canary = reached_only_the_canary(pods, good, bad)
        by_name = {p.name: p for p in pods}
        car = by_name[canary].car
        assert car is not None
        assert (
            "Address already in use" in car.status()["quarantined"][bad]["reason"]
            or "new workers" in (car.status()["quarantined"][bad]["reason"])
        )
