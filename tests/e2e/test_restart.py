"""The restart trigger end to end: the real sidecar, a real app that reads its config only at start, and a
supervisor in the kubelet's place that starts the app again whenever it exits (restartPolicy: Always).

volume/app.conf -> ..data/app.conf     written by tests.kubelet.project
target/app.conf -> ..data/app.conf     what the app reads, once, when it starts
app.pid                                written by the app; RELOAD_PIDFILE (or RELOAD_PROCESS by name)
"""

from __future__ import annotations

import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.apps import free_port, http_get
from tests.e2e.sidecar_proc import Sidecar, live_files, wait_for
from tests.e2e.supervisor import Supervisor
from tests.kubelet import project

APP = Path(__file__).with_name("config_app.py")
HEALTH = {"RELOAD_HEALTH_SUCCESSES": "2", "RELOAD_HEALTH_INTERVAL_S": "0.1", "RELOAD_HEALTH_TIMEOUT_S": "5"}
# A checker that refuses any version whose app.conf mentions "refuse" (stands in for the app's own).
CHECKER = "import sys; sys.exit('refused by the checker' if 'refuse' in open(sys.argv[1]).read() else 0)"


def conf(body: str, health: str = "ok", term: str = "exit", crash: str = "no") -> dict[str, str]:
    return {"app.conf": f"body: {body}\nhealth: {health}\nterm: {term}\ncrash: {crash}\n"}


@dataclass
class Pod:
    """A pod's worth of processes: the sidecar, the supervisor ("kubelet") and the app it keeps running."""

    tmp: Path
    volume: Path
    target: Path
    port: int
    car: Sidecar
    sup: Supervisor

    def body(self) -> str:
        return http_get(f"http://127.0.0.1:{self.port}/")[1]

    def serving(self, body: str, timeout: float = 30) -> None:
        wait_for(lambda: self.body() == body, timeout, what=f"app serving {body!r}; log: {self.car.log_tail()}")

    def settled(self, timeout: float = 60) -> dict[str, Any]:
        """/status once the loop is idle with the last good version live and no change pending."""

        def done() -> dict[str, Any] | None:
            st = self.car.status()
            return st if st["state"] == "idle" and st["current"] == st["last_good"] is not None else None

        return dict(wait_for(done, timeout, what=f"an idle sidecar; log: {self.car.log_tail()}"))

    def restarts(self) -> list[str]:
        """The restart events of the sidecar's log, in order."""
        names = ("app_restarting", "app_killing", "app_restarted", "app_restart_skipped", "app_not_running")
        return [e["event"] for e in self.car.events() if e["event"] in names]


def start_pod(
    tmp: Path, first: dict[str, str], *, by_name: bool = False, sup: dict[str, float] | None = None, **env: str
) -> Pod:
    volume, target, pidfile, port = tmp / "volume", tmp / "target", tmp / "app.pid", free_port()
    project(volume, first)
    exe = sys.executable
    lookup = {"RELOAD_PIDFILE": str(pidfile)}
    if by_name:  # the interpreter under a unique name, which is then the kernel's comm of the app
        name = f"cfgapp{secrets.token_hex(4)}"
        (tmp / name).symlink_to(sys.executable)
        exe, lookup = str(tmp / name), {"RELOAD_PROCESS": name}
    settings = {
        "RELOAD_RESTART": "true",
        "RELOAD_RESTART_GRACE_S": "5",
        "RELOAD_RESTART_WAIT_S": "30",
        "RELOAD_RESTART_MIN_INTERVAL_S": "0",  # pacing has tests of its own
        "RELOAD_RESYNC_S": "0",
        "RELOAD_HEALTH_URL": f"http://127.0.0.1:{port}/healthz",
        **HEALTH,
        **lookup,
        **env,
    }
    car = Sidecar(volume, target, tmp, **settings).start()
    car.wait_current()  # the app starts after the sidecar's first promotion, as in a pod
    argv = [exe, str(APP), str(target / "app.conf"), str(pidfile), str(port)]
    supervisor = Supervisor(argv, tmp / "app.log", **(sup or {})).start()
    pod = Pod(tmp, volume, target, port, car, supervisor)
    pod.serving(first["app.conf"].split("\n", 1)[0].removeprefix("body: "))
    return pod


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        pod.car.kill()
        pod.sup.stop()


def test_good_version_restarts_the_app_which_serves_it(tmp_path: Path, pods: list[Pod]) -> None:
    """A new version: the app's process is ended with SIGTERM, started again by the "kubelet", and serves the
    new content; /status has the old and the new pid, the metric one restart."""
    pods.append(pod := start_pod(tmp_path, conf("one")))
    first = pod.sup.pid
    project(pod.volume, conf("two"))
    pod.serving("two")
    st = pod.settled()
    assert pod.sup.starts == 2 and pod.sup.lives[0].returncode == -signal.SIGTERM
    restart = st["restart"]
    assert (restart["old_pid"], restart["new_pid"]) == (first, pod.sup.pid) and first != pod.sup.pid
    assert restart["outcome"] == "restarted" and restart["signal"] == "SIGTERM"
    assert pod.restarts() == ["app_restarting", "app_restarted"]
    events = [e["event"] for e in pod.car.events() if e["event"] in ("app_restarted", "verified", "committed")]
    assert events[-3:] == ["app_restarted", "verified", "committed"], events  # verified on the new process
    m = pod.car.metrics()
    assert m['reload_sidecar_restarts_total{outcome="restarted"}'] == 1
    assert m['reload_sidecar_reloads_total{result="success"}'] == 1  # this one: the start-up reloaded nothing


def test_app_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path, pods: list[Pod]) -> None:
    """Found by process name; an app that ignores SIGTERM gets SIGKILL after RELOAD_RESTART_GRACE_S."""
    pods.append(pod := start_pod(tmp_path, conf("one", term="ignore"), by_name=True, RELOAD_RESTART_GRACE_S="1"))
    project(pod.volume, conf("two"))
    pod.serving("two")
    st = pod.settled()
    assert pod.sup.lives[0].returncode == -signal.SIGKILL and pod.sup.starts == 2
    assert st["restart"]["outcome"] == "killed"
    assert pod.restarts() == ["app_restarting", "app_killing", "app_restarted"]
    assert pod.car.metrics()['reload_sidecar_restarts_total{outcome="killed"}'] == 1


def test_unhealthy_version_is_rolled_back_with_a_second_restart(tmp_path: Path, pods: list[Pod]) -> None:
    """A version the app starts on but whose health fails: quarantined, ..data back on the good version, the
    app restarted again and serving the good content; three lives of the app in all."""
    pods.append(pod := start_pod(tmp_path, conf("one"), sup={"backoff_s": 0.5}))
    good = pod.car.status()["current"]
    project(pod.volume, conf("broken", health="fail"))
    st = wait_for(lambda: (s := pod.car.status())["quarantined"] and s["state"] == "idle" and s, 60, what="rollback")
    pod.serving("one")
    [bad] = st["quarantined"]
    assert st["current"] == st["last_good"] == good and st["ready"]
    assert live_files(pod.target) == {"app.conf": conf("one")["app.conf"].encode()}
    assert pod.sup.starts == 3
    assert (st["restart"]["old_pid"], st["restart"]["new_pid"]) == (pod.sup.lives[1].pid, pod.sup.lives[2].pid)
    order = [
        e["event"]
        for e in pod.car.events()
        if e["event"] in ("app_restarting", "app_restarted", "verify_failed", "rolling_back", "verified", "rolled_back")
    ]
    assert order == [
        "app_restarting",
        "app_restarted",
        "verify_failed",
        "rolling_back",
        "app_restarting",
        "app_restarted",
        "verified",
        "rolled_back",
    ], order
    assert pod.car.events("rolled_back")[0]["version"] == bad
    m = pod.car.metrics()
    assert m['reload_sidecar_restarts_total{outcome="restarted"}'] == 2 and m["reload_sidecar_rollbacks_total"] == 1


def test_refused_version_never_restarts_the_app(tmp_path: Path, pods: list[Pod]) -> None:
    """A version the checker (RELOAD_VALIDATE_COMMAND) refuses is never seen by the app: no restart at all."""
    checker = f'{sys.executable} -c "{CHECKER}" {{dir}}/app.conf'
    pods.append(pod := start_pod(tmp_path, conf("one"), RELOAD_VALIDATE_COMMAND=checker))
    first = pod.sup.pid
    project(pod.volume, conf("please refuse me"))
    st = wait_for(lambda: (s := pod.car.status())["refused"] and s, 30, what="the refusal")
    assert "refused by the checker" in next(iter(st["refused"].values()))["reason"]
    project(pod.volume, conf("please refuse me too", health="fail"))
    wait_for(lambda: len(pod.car.status()["refused"]) == 2, 30, what="the second refusal")
    assert pod.body() == "one" and pod.sup.pid == first and pod.sup.starts == 1 and pod.sup.running()
    assert pod.restarts() == [] and pod.car.status()["restart"] is None


def test_storm_of_50_updates_costs_at_most_two_restarts(tmp_path: Path, pods: list[Pod]) -> None:
    """50 versions in quick succession: passes coalesce, the app is restarted at most twice and ends on the last."""
    pods.append(pod := start_pod(tmp_path, conf("v0")))
    for i in range(1, 51):
        project(pod.volume, conf(f"v{i}"))
    pod.serving("v50")
    pod.settled()
    restarts = pod.car.events("app_restarting")
    assert 1 <= len(restarts) <= 2 and pod.sup.starts <= 3, (restarts, pod.sup.lives)
    assert pod.body() == "v50"


@pytest.mark.parametrize("when", ["grace", "new_pid"])
def test_sigkill_of_the_sidecar_mid_restart_leaves_a_whole_version(tmp_path: Path, pods: list[Pod], when: str) -> None:
    """SIGKILL of the sidecar during the app's grace period, or while it waits for the new process (the
    "kubelet" restarts it 3 s later): the app comes up on the whole new version, and a new sidecar commits
    it without restarting the app again."""
    sup = {"first_s": 3.0} if when == "new_pid" else {}
    pods.append(pod := start_pod(tmp_path, conf("one", term="slow:2"), sup=sup))
    project(pod.volume, conf("two"))
    if when == "grace":
        wait_for(lambda: pod.car.events("app_restarting"), 30, what="app_restarting")
        assert pod.sup.running()  # the old process is in its 2 s of shutdown
    else:
        wait_for(lambda: not pod.sup.running(), 30, what="the old process gone")
    pod.car.kill()
    again = pod.car.again()
    if when == "new_pid":  # the new sidecar comes up while the app is still down
        pod.car = again.start()  # a new log: its events only
    pod.serving("two")  # the app reads the version ..data shows when it starts: whole, the new one
    assert live_files(pod.target) == {"app.conf": conf("two")["app.conf"].encode()}
    if when == "grace":
        pod.car = again.start()
    st = pod.settled()
    assert st["ready"] and pod.body() == "two" and pod.sup.starts == 2 and pod.sup.running()
    assert pod.restarts() in (["app_restart_skipped"], ["app_not_running", "app_restarted"]), pod.restarts()
    assert st["restart"]["new_pid"] == pod.sup.pid


@pytest.mark.parametrize("lookup", ["pidfile", "name"])
def test_version_that_crashes_the_app_at_start_is_rolled_back_without_waiting(
    tmp_path: Path, pods: list[Pod], lookup: str
) -> None:
    """A version the app crashes on at start (it exits before it binds or writes its pidfile) while the
    "kubelet" restarts it with back-off: the sidecar sees the new process exit, or its health never answer,
    and rolls back long before RELOAD_RESTART_WAIT_S (300 s here; the test gives up after 90 s). The rollback's
    restart is not paced (RELOAD_RESTART_MIN_INTERVAL_S at its default, 600 s): the app serves the good
    version again, the bad one is quarantined saying why."""
    pods.append(
        pod := start_pod(
            tmp_path,
            conf("one"),
            by_name=lookup == "name",
            sup={"backoff_s": 0.5},
            RELOAD_RESTART_WAIT_S="300",
            RELOAD_RESTART_MIN_INTERVAL_S="600",
        )
    )
    good = pod.car.status()["current"]
    project(pod.volume, conf("broken", crash="yes"))
    st = wait_for(
        lambda: (s := pod.car.status())["quarantined"] and s["state"] == "idle" and s,
        90,
        what=f"the rollback; log: {pod.car.log_tail()}",
    )
    pod.serving("one")
    [(bad, why)] = st["quarantined"].items()
    assert st["current"] == st["last_good"] == good and st["ready"]
    assert any(life.returncode == 1 for life in pod.sup.lives), pod.sup.lives  # it did crash
    if lookup == "pidfile":  # never wrote its pidfile: the exit is what the sidecar saw
        assert "exited" in why["reason"] and "crash at start" in why["reason"], why
    else:  # found by name: the exit, or health that never answered within RELOAD_HEALTH_TIMEOUT_S
        assert "exited" in why["reason"] or "not healthy" in why["reason"], why
    order = [
        e["event"]
        for e in pod.car.events()
        if e["event"] in ("app_restarting", "rolling_back", "restart_paced", "verified", "rolled_back")
    ]
    assert order == ["app_restarting", "rolling_back", "verified", "rolled_back"] or order == [
        "app_restarting",
        "rolling_back",
        "app_restarting",
        "verified",
        "rolled_back",
    ], order  # the rollback's restart (if a crashing process was there to end) is not paced
    assert pod.car.events("rolled_back")[0]["version"] == bad
    assert live_files(pod.target) == {"app.conf": conf("one")["app.conf"].encode()}


def test_quick_versions_are_paced_and_coalesce_to_the_newest(tmp_path: Path, pods: list[Pod]) -> None:
    """10 versions 0.3 s apart with RELOAD_RESTART_MIN_INTERVAL_S=10: the first restarts the app at once; the
    others wait for the interval, each superseding the one before, so only the newest is promoted and restarts
    the app: two restarts, the second at least the interval after the first new process started."""
    pods.append(pod := start_pod(tmp_path, conf("v0"), sup={"backoff_s": 0.5}, RELOAD_RESTART_MIN_INTERVAL_S="10"))
    for i in range(1, 11):
        project(pod.volume, conf(f"v{i}"))
        time.sleep(0.3)
    pod.serving("v10")
    st = pod.settled()
    assert pod.body() == "v10" and st["ready"]
    restarting = pod.car.events("app_restarting")
    assert len(restarting) == 2, [(e["timestamp"], e.get("version")) for e in restarting]
    assert pod.sup.starts == 3, pod.sup.lives
    # The interval counts from the start of the process the first restart brought up (the supervisor's
    # Popen returns after that start, hence the 0.5 s: load only makes the gap longer).
    second = datetime.fromisoformat(restarting[1]["timestamp"]).timestamp()
    assert second - pod.sup.lives[1].started >= 10 - 0.5, (restarting, pod.sup.lives)
    assert pod.car.events("restart_paced"), pod.car.log_tail()
    promoted = [e["version"] for e in pod.car.events("promoted")]
    assert len(promoted) == 3 and promoted[-1] == st["current"], promoted  # the first, one quick one, the newest
