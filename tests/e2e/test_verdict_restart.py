"""A durable verdict: a sidecar SIGKILLed (an OOM kill) while the app is degraded or a rollback is under way
never answers ready after its restart on a version it has not seen proven and healthy; it finishes the work
first (issue 21, item 1). The first start of a pod stays fast (every other e2e test starts that way).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.receiver import reader, serving
from tests.e2e.sidecar_proc import Sidecar, wait_for
from tests.e2e.test_restart import conf, start_pod
from tests.kubelet import project


def _restarted(car: Sidecar) -> Sidecar:
    """The same sidecar started again after a SIGKILL: same dirs and settings, a new life."""
    car.kill()
    return car.again().start()


class Wedged:
    """An app that wedges on a bad version: once it loaded one, its reload endpoint and health answer 500,
    whatever is loaded next, until `heal()`."""

    def __init__(self, target: Path) -> None:
        self.read, self.wedged = reader(target / "app.yaml"), False

    def heal(self) -> None:
        self.wedged = False

    def __call__(self, method: str, path: str, n: int) -> tuple[int, str]:
        if method == "POST" and "bad" in self.read():
            self.wedged = True
        status = 500 if self.wedged else 200
        return status, f"status {status}\n"


@pytest.mark.timeout(120)
def test_restart_while_degraded_is_not_ready_until_the_app_is_healthy_again(tmp_path: Path) -> None:
    """HTTP trigger, an app wedged by a bad version: degraded (503). SIGKILL and restart the sidecar: still
    503 (reload_sidecar_ready 0) while the app is sick, though the last good version is live; ready once the
    app recovers and the re-check proves it."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, {"app.yaml": "v: good\n"})
    app = Wedged(target)
    with serving(app) as rx:
        env = {
            "RELOAD_RELOAD_URL": rx.url + "/-/reload",
            "RELOAD_HEALTH_URL": rx.url + "/health",
            "RELOAD_HEALTH_SUCCESSES": "2",
            "RELOAD_HEALTH_INTERVAL_S": "0.1",
            "RELOAD_HEALTH_TIMEOUT_S": "2",
            "RELOAD_RESYNC_S": "0.5",
        }
        car = Sidecar(volume, target, tmp_path, **env).start()
        try:
            good = car.wait_current()["current"]
            project(volume, {"app.yaml": "v: bad\n"})
            st = wait_for(lambda: (s := car.status())["quarantined"] and not s["ready"] and s, 30, what="degraded")
            assert st["current"] == st["last_good"] == good and "still not healthy" in st["ready_reason"], st
            car = _restarted(car)
            wait_for(lambda: car.events("recovered"), 10, what="the new life's recovery")
            assert car.readyz() == 503, "ready on a version it has not seen healthy"
            # and through several re-checks: never ready while the app is wedged
            posts = rx.count("POST")
            wait_for(lambda: rx.count("POST") >= posts + 2, 30, what="two re-checks after the restart")
            st = car.status()
            assert car.readyz() == 503 and not st["ready"] and st["current"] == good, st
            assert car.metrics()["reload_sidecar_ready"] == 0.0
            assert "proven healthy again" in st["ready_reason"] or "not healthy" in st["ready_reason"], st

            app.heal()
            wait_for(lambda: car.readyz() == 200, 30, what=f"ready once the app is healthy; {car.log_tail()}")
            assert car.status()["verdict"]["step"] == "committed"
        finally:
            car.kill()


@pytest.mark.timeout(150)
def test_restart_during_a_rollback_restart_finishes_the_rollback(tmp_path: Path) -> None:
    """Restart trigger: a bad version (unhealthy, and its process ignores SIGTERM) is rolled back; the sidecar
    is SIGKILLed while the rollback waits out the app's grace period. The new sidecar does not answer ready
    while the app serves the bad version: it restarts the app on the last good version first."""
    pod = start_pod(tmp_path, conf("one"), RELOAD_RESTART_GRACE_S="8", RELOAD_HEALTH_TIMEOUT_S="2")
    car = pod.car
    try:
        project(pod.volume, conf("two", health="fail", term="ignore"))
        pod.serving("two")
        # the rollback's restart: SIGTERM sent to the bad version's process, which ignores it
        wait_for(lambda: len(car.events("app_restarting")) >= 2, 30, what=f"the rollback's restart; {car.log_tail()}")
        car = _restarted(car)
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = car.readyz()
            try:
                body = pod.body()
            except OSError:  # the app between two lives
                body = "<down>"
            seen.append((ready, body))
            if ready == 200:
                break
            time.sleep(0.05)
        assert seen[-1] == (200, "one"), seen[-5:]
        assert all(ready != 200 for ready, body in seen if body != "one"), "ready while the app ran the bad version"
        st: dict[str, Any] = car.status()
        assert st["current"] == st["last_good"] and st["verdict"]["step"] == "committed", st
        assert pod.sup.starts == 3  # one, two, one again: the new sidecar restarted the app
    finally:
        car.kill()
        pod.sup.stop()
