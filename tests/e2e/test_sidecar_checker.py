"""The real sidecar process with a hostile RELOAD_VALIDATE_COMMAND (tests/e2e/hostile_checker.py).

volume/app.conf -> ..data/app.conf   (kubelet-style; its content tells the checker how to misbehave)
target/                              (the sidecar's; `..check-*` dirs appear here only during a check)
logs/pids                            (every pid the checker made, for the leftover check)
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e.apps import http_get
from tests.e2e.hostile_checker import HOSTILE, leftovers, zombie_children
from tests.e2e.sidecar_proc import running, wait_for
from tests.kubelet import project


def test_hostile_checkers_are_refused_and_the_sidecar_stays_healthy(tmp_path: Path) -> None:
    """A checker that prints 200 MB or forks 1,000 children is killed with a clear reason and the version
    refused; one whose child calls setsid passes, but the child does not outlive the check; /healthz
    answers throughout, the next good version is promoted, and no process, zombie or `..check-*` is left."""
    volume, target, logs = tmp_path / "volume", tmp_path / "target", tmp_path / "logs"
    logs.mkdir()
    (logs / "pids").touch()
    project(volume, {"app.conf": "good-1\n"})
    command = f"{sys.executable} {HOSTILE} {logs} {{dir}}"
    with running(volume, target, tmp_path, RELOAD_VALIDATE_COMMAND=command, RELOAD_VALIDATE_TIMEOUT_S="20") as car:
        assert car.proc is not None
        first = car.wait_current()

        def refused(n: int) -> dict[str, dict[str, str]]:
            return dict(wait_for(lambda: len(r := car.status()["refused"]) == n and r, 30, what=f"{n} refused"))

        project(volume, {"app.conf": "print\n"})
        [printed] = refused(1).values()
        assert printed["stage"] == "validate"
        assert printed["reason"] == f"checker {sys.executable!r} printed more than 1 MiB of output; killed"
        assert http_get(car.url + "/healthz")[0] == 200

        project(volume, {"app.conf": "fork\n"})
        forked = [r for r in refused(2).values() if r != printed]
        assert [r["reason"] for r in forked] == [f"checker {sys.executable!r} started more than 64 processes; killed"]
        assert http_get(car.url + "/healthz")[0] == 200

        project(volume, {"app.conf": "setsid\n"})  # the checker passes: the version is promoted
        wait_for(lambda: car.status()["current"] not in (None, first["current"]), 30, what="setsid version live")

        project(volume, {"app.conf": "good-2\n"})
        wait_for(lambda: (target / "app.conf").read_text() == "good-2\n", 30, what="good-2 live")
        st = car.wait_current()
        assert st["ready"] is True and len(st["refused"]) == 2
        assert http_get(car.url + "/healthz")[0] == 200
        assert car.metrics()["reload_sidecar_validation_failures_total"] == 2.0

        assert len((logs / "pids").read_text().split()) > 64
        assert leftovers(logs / "pids") == []
        assert zombie_children(car.proc.pid) == []
        assert [p.name for p in target.iterdir() if p.name.startswith("..check-")] == []
        killed = [e["reason"] for e in car.events("checker_killed")]
        assert len(killed) == 2 and "printed more than" in killed[0] and "started more than" in killed[1], killed
