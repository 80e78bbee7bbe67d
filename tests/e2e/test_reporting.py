"""What the real sidecar says about what happened: one concise reason per failure, a word when the source
comes back to content refused earlier, `/status` true after commits and after a restart of the sidecar,
and the start-up promotion not counted as a reload.

volume/  written by tests.kubelet.project (kubelet-style ..data swaps)
target/  the sidecar's; the loopback app reads target/app.yaml on each reload request
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.apps import http_get
from tests.e2e.receiver import always, reader, serving
from tests.e2e.sidecar_proc import running, wait_for
from tests.e2e.test_restart import conf, start_pod
from tests.kubelet import project

GOOD = {"app.yaml": b"version: 1\nmode: fine\n"}
BAD = {"app.yaml": b"version: 2\nmode: bad\n"}
BROKEN = {"app.yaml": b"version: [2\n"}  # not YAML: refused at validate
FIXED = {"app.yaml": b"version: 3\nmode: fixed\n"}
SUCCESS = 'reload_sidecar_reloads_total{result="success"}'
# The app's answer to a reload once it is wedged: longer than the 120 characters of a body the error keeps.
WEDGED = "reload failed: " + "the configuration could not be applied to the running workers; " * 3


def test_a_wedged_apps_long_reload_error_is_one_concise_reason(tmp_path: Path) -> None:
    """A bad version wedges the app: every reload after it answers 500 with a long error, so the bad
    version's reload and the rollback's both fail and the sidecar is degraded. A 500 is the app's refusal,
    asked once per version however many retries are allowed (proof.md), and each failure has one concise
    reason: the app's error once in each `reload_failed`, in the quarantine and in `/readyz`. (Repeated
    time-outs, which are retried, are counted: tests/test_trigger.py.)"""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    read, wedged = reader(target / "app.yaml"), [False]

    def app(method: str, path: str, n: int) -> tuple[int, str]:
        wedged[0] = wedged[0] or "bad" in read()
        return (500, WEDGED) if method == "POST" and wedged[0] else (200, "ok\n")

    with serving(app) as rx:
        env = {"RELOAD_RELOAD_URL": rx.url + "/-/reload", "RELOAD_RELOAD_RETRIES": "3", "RELOAD_RESYNC_S": "0"}
        with running(volume, target, tmp_path, **env) as car:
            car.wait_current()
            project(volume, BAD)
            st = wait_for(
                lambda: (s := car.status())["state"] == "degraded" and s, 30, what=f"degraded; {car.log_tail()}"
            )
            shown = "'reload failed: "  # the app's answer starts so, once per failure however long it is
            failed = car.events("reload_failed")
            assert len(failed) == 2 and rx.count("POST") == 2, failed
            for event in failed:
                assert event["error"].count(shown) == 1 and "attempt(s)" in event["error"], event["error"]
            [reason] = [q["reason"] for q in st["quarantined"].values()]
            assert reason.count(shown) == 1, reason
            code, body = http_get(car.url + "/readyz")
            assert code == 503 and body.count(shown) == 1, body
            assert len(body) < 500, body


def test_returning_to_refused_content_is_said_once(tmp_path: Path) -> None:
    """Content refused earlier comes back after a good version: one warning `skipped_known_bad` (was
    refused, at which stage) and `last_error` saying why it is skipped; the resyncs after it stay quiet."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with (
        serving(always(200)) as rx,
        running(volume, target, tmp_path, RELOAD_RELOAD_URL=rx.url, RELOAD_RESYNC_S="0.2") as car,
    ):
        car.wait_current()
        project(volume, BROKEN)
        st = wait_for(lambda: (s := car.status())["refused"] and s, 15, what=f"refused; {car.log_tail()}")
        [broken] = st["refused"]
        project(volume, FIXED)
        fixed = wait_for(lambda: (s := car.status())["last_good"] not in (None, st["last_good"]) and s, 15)
        project(volume, BROKEN)
        said = wait_for(
            lambda: [e for e in car.events("skipped_known_bad") if e["level"] == "warning"], 15, what="a warning"
        )
        ticks = len(car.events("source_tick"))
        wait_for(lambda: len(car.events("source_tick")) >= ticks + 3, 15, what="three resyncs")
        [event] = [e for e in car.events("skipped_known_bad") if e["level"] == "warning"]
        assert event == said[0] and (event["version"], event["was"], event["stage"]) == (broken, "refused", "validate")
        st = car.status()
        assert st["current"] == fixed["last_good"] and st["ready"]
        assert st["last_error"].startswith(f"version {broken} was refused earlier at validate: ")
        assert st["last_error"].endswith("; skipped until the content changes")
        assert len(car.events("refused")) == 1, "refused once, not validated again"


def test_a_commit_clears_last_error(tmp_path: Path) -> None:
    """A refusal sets `last_error`; the next version committed clears it (the refusal stays in `refused`,
    with its reason): `last_error` is what is wrong now, not history."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with serving(always(200)) as rx, running(volume, target, tmp_path, RELOAD_RELOAD_URL=rx.url) as car:
        first = car.wait_current()
        assert first["last_error"] is None
        project(volume, BROKEN)
        st = wait_for(lambda: (s := car.status())["refused"] and s, 15, what=f"refused; {car.log_tail()}")
        assert st["last_error"] is not None and "refused at validate" in st["last_error"]
        project(volume, FIXED)
        st = wait_for(lambda: (s := car.status())["last_good"] != first["current"] and s, 15, what="committed")
        assert st["last_error"] is None and st["last_error_at"] is None, st
        assert [r["stage"] for r in st["refused"].values()] == ["validate"]


def test_the_start_up_is_not_counted_as_a_reload(tmp_path: Path) -> None:
    """The start-up promotion reloads nothing (the app starts after it): `reloads_total{result="success"}`
    stays 0 until the first real reload, which counts 1."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with serving(always(200)) as rx, running(volume, target, tmp_path, RELOAD_RELOAD_URL=rx.url) as car:
        first = car.wait_current()
        assert car.metrics().get(SUCCESS, 0.0) == 0.0
        project(volume, FIXED)
        wait_for(lambda: car.status()["last_good"] != first["current"], 15, what="committed")
        assert car.metrics()[SUCCESS] == 1.0 and rx.count("POST") == 1


def test_the_restart_record_survives_a_restart_of_the_sidecar(tmp_path: Path) -> None:
    """Restart trigger: after a version restarted the app, the sidecar is SIGKILLed (an OOM kill) and
    started again: `/status` `restart` still shows that restart (it is in the state file), not null."""
    pod = start_pod(tmp_path, conf("one"))
    try:
        project(pod.volume, conf("two"))
        pod.serving("two")
        before = pod.settled()["restart"]
        assert before is not None and before["outcome"] == "restarted"
        pod.car.kill()
        pod.car.start()
        after = pod.settled()
        assert after["restart"] == before and after["current"] == after["last_good"]
        assert pod.sup.starts == 2, "a restarted sidecar does not restart the app again"
    finally:
        pod.car.kill()
        pod.sup.stop()
