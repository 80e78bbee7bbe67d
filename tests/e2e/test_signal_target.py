"""A signal target that cannot be the app's, end to end: the real sidecar refuses it and stays responsive;
a failure to find the app's process is not the version's fault.

volume/app.yaml -> ..data/app.yaml   (kubelet-style, written by tests.kubelet.project)
tmp/app.pid                          a FIFO, not a pidfile: reading it blocking would hang the event loop
nginx/nginx.pid                      real nginx's pidfile, emptied as an app that rewrites it in place does
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.apps import free_port, http_get, nginx_conf, start_nginx
from tests.e2e.sidecar_proc import Sidecar, live_files, running, wait_for
from tests.e2e.test_restart import conf, start_pod
from tests.kubelet import project


def test_fifo_pidfile_is_refused_while_healthz_keeps_answering(tmp_path: Path) -> None:
    """RELOAD_PIDFILE is a FIFO: a new version's reload is refused, reported in /status, and /healthz stays 200."""
    volume, target, fifo = tmp_path / "volume", tmp_path / "target", tmp_path / "app.pid"
    os.mkfifo(fifo)
    project(volume, {"app.yaml": "version: 1\n"})
    env = {"RELOAD_SIGNAL": "SIGHUP", "RELOAD_PIDFILE": str(fifo), "RELOAD_RESYNC_S": "0"}
    with running(volume, target, tmp_path, **env) as car:
        car.wait_current()  # the start-up promotion signals nobody: the pidfile is not read yet
        project(volume, {"app.yaml": "version: 2\n"})
        answers: list[int | str] = []

        def refusal_reported() -> str | None:
            try:
                answers.append(http_get(car.url + "/healthz", timeout=5)[0])
            except OSError as e:
                answers.append(f"no answer: {e}")
            error = car.status()["last_error"]
            return error if error and "FIFO" in error else None

        try:
            error = wait_for(refusal_reported, 30, what="the FIFO refusal in /status")
        except AssertionError as e:
            raise AssertionError(f"{e}; last /healthz answers: {answers[-3:]}") from None
        assert f"pidfile {fifo} is a FIFO, not a regular file; refusing to read it" in error
        failed = car.events("reload_failed")
        assert failed and all("is a FIFO" in ev["error"] for ev in failed), failed
        for _ in range(5):
            answers.append(http_get(car.url + "/healthz", timeout=5)[0])
        assert set(answers) == {200}, answers
        assert car.alive()


def _settled_after_a_failed_reload(car: Sidecar) -> dict[str, Any]:
    """/status once a reload failed and the pass is over (idle, or degraded as the old code ended)."""

    def done() -> dict[str, Any] | None:
        st = car.status()
        return st if car.events("reload_failed") and st["state"] in ("idle", "degraded") else None

    return dict(wait_for(done, 30, what=f"a failed reload handled; log: {car.log_tail()}"))


def _assert_deferred(car: Sidecar, st: dict[str, Any], good: str, why: str) -> str:
    """Not the version's fault: not quarantined, the good version live and ready, the new one deferred."""
    assert st["quarantined"] == {}, st["quarantined"]
    assert st["current"] == st["last_good"] == good and st["ready"], st
    assert http_get(car.url + "/readyz")[0] == 200
    deferred = st["deferred"]
    assert deferred is not None and why in deferred["reason"] and deferred["attempts"] >= 1, deferred
    assert deferred["version"] != good and st["versions"][deferred["version"]]["state"] == "deferred"
    assert why in st["last_error"] and "retried at the next resync" in st["last_error"]
    assert car.events("reload_deferred") and not car.events("rolled_back")
    assert all(e["signalled"] is False for e in car.events("reload_failed")), car.events("reload_failed")
    return str(deferred["version"])


def test_an_empty_pidfile_when_a_good_version_arrives_defers_it_to_the_next_resync(tmp_path: Path) -> None:
    """nginx's pidfile is empty the moment a good version arrives (an app that rewrites it truncate-then-
    write): nothing was signalled, so the version is not quarantined, `..data` goes back to the version
    nginx runs, the sidecar stays ready and `/status` shows the version deferred; once the pidfile holds
    the pid again, the next resync applies it and nginx serves it."""
    prefix, volume, target = tmp_path / "nginx", tmp_path / "volume", tmp_path / "target"
    prefix.mkdir()
    port = free_port()
    one, two = nginx_conf(port, "one", prefix), nginx_conf(port, "two", prefix)
    project(volume, {"nginx.conf": one})
    env = {
        "RELOAD_SIGNAL": "SIGHUP",
        "RELOAD_PIDFILE": str(prefix / "nginx.pid"),
        "RELOAD_RESYNC_S": "0.5",
        "RELOAD_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        "RELOAD_HEALTH_INTERVAL_S": "0.1",
    }
    with running(volume, target, tmp_path, **env) as car:
        good = car.wait_current()["current"]
        with start_nginx(prefix, target / "nginx.conf", port) as ngx:
            pid = ngx.master_pid()
            (prefix / "nginx.pid").write_text("")
            project(volume, {"nginx.conf": two})
            st = _settled_after_a_failed_reload(car)
            new = _assert_deferred(car, st, good, f"pidfile {prefix / 'nginx.pid'} holds ''")
            assert live_files(target)["nginx.conf"].decode() == one
            assert ngx.get("/")[1] == "one"

            (prefix / "nginx.pid").write_text(f"{pid}\n")
            st = wait_for(
                lambda: (s := car.status())["last_good"] == new and s["state"] == "idle" and s,
                30,
                what=f"the deferred version applied; log: {car.log_tail()}",
            )
            ngx.wait_body("/", "two")
            assert st["current"] == new and st["ready"] and st["deferred"] is None and st["quarantined"] == {}
            assert car.metrics()["reload_sidecar_last_reload_successful"] == 1


def test_a_second_process_of_the_apps_name_defers_the_restart_to_the_next_resync(tmp_path: Path) -> None:
    """Restart trigger by name (the supervisor plays the kubelet): a second process of the app's name when
    a good version arrives. Nothing was ended, so the version is not quarantined, the app keeps running the
    version it read and is not restarted, `/status` shows the version deferred; once the second process is
    gone, the next resync restarts the app onto the version."""
    pod = start_pod(tmp_path, conf("one"), by_name=True, RELOAD_RESYNC_S="0.5")
    name = pod.car.env["RELOAD_PROCESS"]
    other = subprocess.Popen([str(tmp_path / name), "-c", "import time; time.sleep(120)"])
    try:
        good = pod.settled()["current"]
        project(pod.volume, conf("two"))
        st = _settled_after_a_failed_reload(pod.car)
        new = _assert_deferred(pod.car, st, good, f"2 processes named {name!r}")
        assert live_files(pod.target)["app.conf"].decode() == conf("one")["app.conf"]
        assert pod.sup.starts == 1 and pod.body() == "one"

        other.kill()
        other.wait(10)
        pod.serving("two")
        st = pod.settled()
        assert st["last_good"] == new and st["deferred"] is None and st["quarantined"] == {}
        assert pod.sup.starts == 2
    finally:
        other.kill()
        other.wait(10)
        pod.car.kill()
        pod.sup.stop()
