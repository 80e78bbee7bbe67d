"""Verification, rollback and quarantine end to end: the real sidecar, real nginx or a loopback app, kubelet swaps.

volume/  written only by tests.kubelet.project (..<timestamp> dir, ..data_tmp renamed over ..data)
target/  the sidecar's own:
  ..v-<good>/  ..v-<bad>/                  both stay on disk, so a rollback is one ..data swap
  ..data -> ..v-<good>                     after a rollback
  ..reload-sidecar-state.json              current, last good, quarantine (survives restarts)
  nginx.conf | app.yaml -> ..data/...      what the app reads (nginx -c target/nginx.conf, or the
                                           loopback app reading target/app.yaml on every request)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from itertools import count
from pathlib import Path

import pytest

from tests.e2e.apps import free_port, http_get, nginx_bin, nginx_conf, start_nginx
from tests.e2e.receiver import reader, serving
from tests.e2e.sidecar_proc import Sidecar, live_files, running, wait_for
from tests.kubelet import project

STATE_FILE = "..reload-sidecar-state.json"
GOOD = {"app.yaml": "version: 1\nmode: fine\n"}
BAD = {"app.yaml": "version: 2\nmode: bad\n"}
FIXED = {"app.yaml": "version: 3\nmode: fixed\n"}


class _App:
    """A scripted loopback app that reads target/app.yaml on every request, like an app reading its config.

    Versions whose text contains "bad" get `reload_bad` on POST /-/reload and `health_bad[i % len]` on their
    i-th GET /health; every other version gets 200. 0 means: hang without answering. `up=False` fails every
    reload with 503 (the app is down).
    """

    def __init__(self, target: Path, reload_bad: int = 200, health_bad: Sequence[int] = (200,)) -> None:
        self.target, self.reload_bad, self.health_bad = target, reload_bad, tuple(health_bad)
        self.up = True
        self.bad_health: list[int] = []  # what the bad version's health polls were answered
        self._polls = count()

    def __call__(self, method: str, path: str, n: int) -> tuple[int, str]:
        bad = "bad" in reader(self.target / "app.yaml")()
        if method == "POST":
            status = (self.reload_bad if bad else 200) if self.up else 503
        elif bad:
            status = self.health_bad[next(self._polls) % len(self.health_bad)]
            self.bad_health.append(status)
        else:
            status = 200
        return status, f"status {status}\n"


def _env(url: str, **extra: str) -> dict[str, str]:
    return {"RELOAD_RELOAD_URL": url + "/-/reload", "RELOAD_RELOAD_RETRIES": "1", "RELOAD_RESYNC_S": "0.3", **extra}


def _health(url: str, interval: str, timeout: str) -> dict[str, str]:
    return {
        "RELOAD_HEALTH_URL": url + "/health",
        "RELOAD_HEALTH_SUCCESSES": "3",
        "RELOAD_HEALTH_INTERVAL_S": interval,
        "RELOAD_HEALTH_TIMEOUT_S": timeout,
    }


def _bytes(files: dict[str, str]) -> dict[str, bytes]:
    return {k: v.encode() for k, v in files.items()}


def _readyz(car: Sidecar) -> tuple[int, str]:
    return http_get(car.url + "/readyz")


def _rolled_back(car: Sidecar) -> dict[str, object]:
    """/status once a quarantine exists and the loop is idle (or degraded) again."""
    return dict(
        wait_for(
            lambda: (s := car.status())["quarantined"] and s["state"] in ("idle", "degraded") and s,
            15,
            what=f"rollback finished; log: {car.log_tail()}",
        )
    )


def _resyncs(car: Sidecar, n: int) -> None:
    """Wait until `n` more periodic resyncs have run (the watcher logs each tick at debug level)."""
    seen = len([e for e in car.events("source_tick") if e.get("tick") == "resync"])
    wait_for(
        lambda: len([e for e in car.events("source_tick") if e.get("tick") == "resync"]) >= seen + n,
        10,
        what=f"{n} resyncs",
    )


def test_nginx_unhealthy_version_is_rolled_back_quarantined_and_never_reapplied(tmp_path: Path) -> None:
    """nginx -t passes but /health answers 500: rolled back, quarantined, kept out across resyncs and a restart."""
    prefix, volume, target = tmp_path / "nginx", tmp_path / "volume", tmp_path / "target"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    good_conf = nginx_conf(port, "good-1", prefix)
    project(volume, {"nginx.conf": good_conf})
    env = {
        "RELOAD_VALIDATE_COMMAND": f"{nginx_bin()} -t -q -c {{dir}}/nginx.conf",
        "RELOAD_SIGNAL": "SIGHUP",
        "RELOAD_PIDFILE": str(prefix / "nginx.pid"),
        "RELOAD_RESYNC_S": "0.5",
        **_health(f"http://127.0.0.1:{port}", "0.1", "1"),
    }
    car = Sidecar(volume, target, tmp_path, **env).start()
    try:
        good = car.wait_current()["current"]
        with start_nginx(prefix, target / "nginx.conf", port) as ngx:
            project(volume, {"nginx.conf": nginx_conf(port, "bad-2", prefix, health="broken", health_status=500)})
            st = _rolled_back(car)
            ngx.wait_body("/", "good-1")
            [(bad, q)] = st["quarantined"].items()
            assert bad in [e["version"] for e in car.events("promoted")], "the bad version must have been promoted"
            assert "HTTP 500" in q["reason"] and q["stage"] == "verify", q
            assert st["current"] == st["last_good"] == good and st["state"] == "idle" and st["ready"]
            assert live_files(target) == {"nginx.conf": good_conf.encode()}
            metrics = car.metrics()
            assert metrics["reload_sidecar_rollbacks_total"] == 1.0
            assert metrics['reload_sidecar_reloads_total{result="rolled_back"}'] == 1.0
            assert metrics['reload_sidecar_reloads_total{result="failed"}'] == 1.0
            [event] = car.events("rolled_back")
            assert event["version"] == bad and event["to"] == good and "HTTP 500" in event["reason"], event
            assert _readyz(car)[0] == 200

            triggered = len(car.events("reload_triggered"))
            _resyncs(car, 3)
            assert len(car.events("reload_triggered")) == triggered, "a resync must not re-apply a quarantined version"
            assert car.events("skipped_known_bad")
            assert ngx.get("/") == (200, "good-1") and car.status()["current"] == good

            assert car.stop() == 0
            state = json.loads((target / STATE_FILE).read_text())
            assert state["last_good"] == good and bad in state["quarantined"], state
            car = Sidecar(volume, target, tmp_path, **env).start()
            car.wait_current(good)
            _resyncs(car, 2)
            st = car.status()
            assert not car.events("promoted") and not car.events("reload_triggered"), "a restart must not re-apply it"
            assert st["current"] == st["last_good"] == good and st["ready"] and _readyz(car)[0] == 200
            assert "HTTP 500" in st["quarantined"][bad]["reason"]
            assert ngx.get("/") == (200, "good-1")

            project(volume, {"nginx.conf": nginx_conf(port, "fixed-3", prefix)})
            ngx.wait_body("/", "fixed-3")
            st = wait_for(lambda: (s := car.status())["last_good"] not in (good, bad) and s, what="fixed committed")
            assert st["current"] == st["last_good"] and st["ready"] and list(st["quarantined"]) == [bad]
            assert car.metrics()["reload_sidecar_rollbacks_total"] == 0.0
    finally:
        car.kill()


@pytest.mark.parametrize("mode", ["500", "hang"])
def test_reload_failing_only_for_the_bad_version_rolls_back_and_stays_ready(tmp_path: Path, mode: str) -> None:
    """A reload endpoint that fails (500 / no answer) only on the bad version: rolled back, idle, /readyz 200."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    app = _App(target, reload_bad=500 if mode == "500" else 0)
    with serving(app, on_reload=reader(target / "app.yaml")) as rx:
        with running(volume, target, tmp_path, **_env(rx.url, RELOAD_RELOAD_TIMEOUT_S="0.5")) as car:
            good = car.wait_current()["current"]
            project(volume, BAD)
            st = _rolled_back(car)
            [(bad, q)] = st["quarantined"].items()
            expected = "HTTP 500" if mode == "500" else "no answer within 0.5 s"
            # a 500 is the app's refusal, asked once (a retry would apply it again); no answer is retried
            attempts, stage = ("1 attempt(s)", "proof") if mode == "500" else ("2 attempt(s)", "reload")
            assert expected in q["reason"] and attempts in q["reason"] and q["stage"] == stage, q
            assert rx.loaded == [BAD["app.yaml"]] * int(attempts[0]) + [GOOD["app.yaml"]], (
                "the failed attempts, then good"
            )
            assert st["current"] == st["last_good"] == good and st["state"] == "idle" and st["ready"]
            assert live_files(target) == _bytes(GOOD)
            assert _readyz(car) == (200, f"ready: {good}\n")
            [event] = car.events("rolled_back")
            assert event["version"] == bad and event["to"] == good and expected in event["reason"]
            metrics = car.metrics()
            assert metrics["reload_sidecar_rollbacks_total"] == 1.0
            assert metrics['reload_sidecar_reloads_total{result="failed"}'] == 1.0


@pytest.mark.parametrize("when", ["verifying", "quarantine_written", "rolling_back"])
def test_sigkill_mid_verification_or_rollback_ends_on_the_verified_version(tmp_path: Path, when: str) -> None:
    """SIGKILL while verifying the bad version or while rolling back: the restart ends on last good, quarantined."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    app = _App(target, health_bad=(500,))
    with serving(app, on_reload=reader(target / "app.yaml")) as rx:
        env = _env(rx.url, **_health(rx.url, "0.2", "2"))
        car = Sidecar(volume, target, tmp_path, **env).start()
        try:
            good = car.wait_current()["current"]
            project(volume, BAD)
            if when == "rolling_back":  # the rollback's own verification of the good version takes >= 0.4 s
                [bad] = wait_for(
                    lambda: (s := car.status())["current"] == good and s["state"] == "verifying" and s["quarantined"],
                    10,
                    interval=0.01,
                    what="rollback verifying",
                )
            else:  # the bad version's verification fails after ~1.4 s: kill it after 2 of its polls
                bad = wait_for(
                    lambda: (s := car.status())["current"] != good and s["state"] == "verifying" and s["current"],
                    10,
                    interval=0.01,
                    what="bad version verifying",
                )
                wait_for(lambda: len(app.bad_health) >= 2, 5, interval=0.01, what="2 bad health polls")
            car.kill()
            state = json.loads((target / STATE_FILE).read_text())
            assert state["last_good"] == good, state  # the live version itself is read from ..data on restart
            assert (when == "rolling_back") == (bad in state["quarantined"]), "killed before the quarantine was saved"
            if when == "quarantine_written":
                # What a kill between quarantining (state saved) and swapping ..data back leaves on disk.
                state["quarantined"] = {bad: {"reason": "HTTP 500 x2 (killed)", "stage": "verify", "at": time.time()}}
                (target / STATE_FILE).write_text(json.dumps(state))

            car = Sidecar(volume, target, tmp_path, **env).start()
            st = wait_for(
                lambda: (s := car.status())["current"] == good and s["state"] == "idle" and s["ready"] and s,
                15,
                what=f"back on the good version; log: {car.log_tail()}",
            )
            assert st["last_good"] == good and bad in st["quarantined"], st
            assert live_files(target) == _bytes(GOOD)
            assert rx.loaded[-1] == GOOD["app.yaml"], "the app must have been told to load the good version last"
            assert _readyz(car)[0] == 200
            posts = rx.count()
            _resyncs(car, 2)
            assert rx.count() == posts and car.status()["current"] == good, "the quarantine must hold after restart"
        finally:
            car.kill()


@pytest.mark.parametrize("pattern", [(200, 500), (200, 200, 500)], ids=["alternating", "two_of_three"])
def test_flapping_health_never_counts_as_k_in_a_row(tmp_path: Path, pattern: tuple[int, ...]) -> None:
    """Health answering 200,500,... (more than K 2xx in total, never K=3 in a row) fails verification; rolled back."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    app = _App(target, health_bad=pattern)
    with serving(app, on_reload=reader(target / "app.yaml")) as rx:
        with running(volume, target, tmp_path, **_env(rx.url, **_health(rx.url, "0.1", "1.5"))) as car:
            good = car.wait_current()["current"]
            project(volume, BAD)
            st = _rolled_back(car)
            [(bad, q)] = st["quarantined"].items()
            assert app.bad_health.count(200) > 3, f"the app answered 2xx often, just never 3 in a row: {app.bad_health}"
            assert "needed 3 good polls in a row" in q["reason"], q
            assert "HTTP 500 x" in q["reason"] and "ok x" in q["reason"], q
            assert st["current"] == st["last_good"] == good and st["ready"] and live_files(target) == _bytes(GOOD)
            [event] = car.events("rolled_back")
            assert event["version"] == bad and "HTTP 500 x" in event["reason"] and "ok x" in event["reason"]


def test_without_health_url_the_signal_result_alone_decides(tmp_path: Path) -> None:
    """No health URL: a delivered SIGHUP commits even a /health-500 nginx version; one that cannot be
    delivered (nginx gone, its pidfile with it) is not the version's fault: put back, deferred, retried."""
    prefix, volume, target = tmp_path / "nginx", tmp_path / "volume", tmp_path / "target"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    project(volume, {"nginx.conf": nginx_conf(port, "v1", prefix)})
    env = {"RELOAD_SIGNAL": "SIGHUP", "RELOAD_PIDFILE": str(prefix / "nginx.pid")}
    with running(volume, target, tmp_path, **env) as car:
        first = car.wait_current()["current"]
        with start_nginx(prefix, target / "nginx.conf", port) as ngx:
            project(volume, {"nginx.conf": nginx_conf(port, "v2", prefix, health_status=500)})
            ngx.wait_body("/", "v2")
            st = wait_for(lambda: (s := car.status())["last_good"] != first and s["state"] == "idle" and s, what="v2")
            assert ngx.get("/health")[0] == 500 and not st["quarantined"] and st["ready"]
            assert not car.events("verified") and not car.events("verify_failed")
        v2 = st["current"]
        # nginx is gone (its pidfile with it): the reload of v3 cannot be delivered; nothing was signalled.
        project(volume, {"nginx.conf": nginx_conf(port, "v3", prefix)})
        st = wait_for(lambda: (s := car.status())["deferred"] and s["state"] == "idle" and s, what="v3 deferred")
        assert "pidfile" in st["deferred"]["reason"] and not st["quarantined"], st
        assert st["current"] == st["last_good"] == v2 and st["ready"] and _readyz(car)[0] == 200
        assert not car.events("rolled_back") and not car.events("rolled_back_unhealthy")


def test_degraded_after_failed_rollback_recovers_on_resync_once_the_app_is_back(tmp_path: Path) -> None:
    """Rollback whose reload also fails -> degraded (503); once the app answers again, a resync makes it ready."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    app = _App(target)
    with serving(app, on_reload=reader(target / "app.yaml")) as rx:
        with running(volume, target, tmp_path, **_env(rx.url)) as car:
            good = car.wait_current()["current"]
            app.up = False
            project(volume, BAD)
            st = _rolled_back(car)
            assert st["state"] == "degraded" and st["current"] == good and _readyz(car)[0] == 503, st
            app.up = True
            wait_for(lambda: _readyz(car)[0] == 200, 5, what="ready again after the app came back")
            assert car.status()["state"] == "idle"
