"""The real sidecar process against real kubelet-style swaps and a real loopback HTTP app.

volume/  (written only by tests.kubelet.project: ..<timestamp> dir, ..data_tmp renamed over ..data)
target/  (the sidecar's: ..v-<hash> dirs, ..data, top-level links; what the "app" reads)
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.apps import http_get
from tests.e2e.receiver import always, reader, serving
from tests.e2e.sidecar_proc import Sidecar, live_files, running, wait_for
from tests.kubelet import project

GOOD1 = {"app.yaml": "version: 1\nname: first\n"}
GOOD2 = {"app.yaml": "version: 2\nname: second\n"}
GOOD3 = {"app.yaml": "version: 3\nname: third\n"}


def _bytes(files: dict[str, str]) -> dict[str, bytes]:
    return {k: v.encode() for k, v in files.items()}


def test_good_swap_is_promoted_then_the_app_is_told(tmp_path: Path) -> None:
    """A good swap reaches the target before the reload POST; the start-up promotion signals nobody."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD1)
    with serving(always(200), on_reload=reader(target / "app.yaml")) as app:
        with running(volume, target, tmp_path, RELOAD_RELOAD_URL=app.url + "/-/reload") as car:
            first = car.wait_current()
            assert live_files(target) == _bytes(GOOD1)
            assert (target / "app.yaml").read_text() == GOOD1["app.yaml"]
            assert app.count() == 0, "the first promotion must not signal (the app starts after the sidecar)"
            project(volume, GOOD2)
            second = wait_for(lambda: (st := car.status())["last_good"] != first["current"] and st, what="v2")
            assert app.count() == 1
            assert app.loaded == [GOOD2["app.yaml"]], "the app must find the new files when told to reload"
            assert live_files(target) == _bytes(GOOD2)
            raw = http_get(car.url + "/status")[1]
            assert "second" not in raw and "first" not in raw, "/status must never show file contents"
            assert second["ready"] is True
            metrics = car.metrics()
            assert metrics['reload_sidecar_reloads_total{result="success"}'] == 1.0  # not the start-up
            assert metrics[f'reload_sidecar_current_version_info{{hash="{second["current"]}"}}'] == 1.0
            assert [e["version"] for e in car.events("promoted")] == [first["current"], second["current"]]


def test_storm_of_50_swaps_ends_in_at_most_two_reloads_with_the_last_version(tmp_path: Path) -> None:
    """50 swaps within 1 s (debounce 200 ms) -> at most 2 reload POSTs and the last version live.

    On a busy machine the swaps may come slower than planned: each pause as long as the debounce, and each
    max wait (2 s) the storm outlasts, may end a burst early, so each allows one more reload.
    """
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD1)
    with serving(always(200), on_reload=reader(target / "app.yaml")) as app:
        with running(
            volume, target, tmp_path, RELOAD_RELOAD_URL=app.url + "/-/reload", RELOAD_DEBOUNCE_MS="200"
        ) as car:
            car.wait_current()
            start = time.monotonic()
            last, swaps = "", []
            for i in range(50):
                last = f"version: storm-{i}\n"
                project(volume, {"app.yaml": last})
                swaps.append(time.monotonic())
                time.sleep(max(0.0, start + (i + 1) / 50 - time.monotonic()))
            pauses = sum(b - a >= 0.2 for a, b in itertools.pairwise(swaps))
            max_waits = int((swaps[-1] - swaps[0]) // 2.0)
            wait_for(lambda: app.loaded and app.loaded[-1] == last, 10, what="last storm version reloaded")
            time.sleep(1.0)  # anything still in flight would show up now
            assert 1 <= app.count() <= 2 + pauses + max_waits, (app.loaded, pauses, max_waits)
            assert live_files(target) == {"app.yaml": last.encode()}


def _plant(volume: Path, files: dict[str, str], extra: str) -> None:
    """A kubelet-style swap whose version dir also holds a special entry the kubelet never makes."""

    def add(version_dir: Path) -> None:
        if extra == "symlink_escape":
            os.symlink("/etc/passwd", version_dir / "passwd.yaml")
        elif extra == "fifo":
            os.mkfifo(version_dir / "pipe.yaml")
        elif extra == "socket":  # bound at a short path (AF_UNIX limit), then moved into the version
            short = Path(tempfile.mkdtemp(dir=volume.parent, prefix="s"))
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(short / "s"))
            os.rename(short / "s", version_dir / "sock.yaml")
            short.rmdir()

    project(volume, files, extra=add)


BAD_INPUTS = {
    "malformed_yaml": ({"app.yaml": "a: [1, 2\nb: c\n"}, "app.yaml:", "invalid YAML"),
    "malformed_json": ({"app.json": '{"a": 1,}'}, "app.json:1:", "invalid JSON"),
    "yaml_bomb": (
        {
            "app.yaml": "a: &a [x,x,x,x,x,x,x,x,x]\n"
            + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9))
        },
        "app.yaml",
        "alias expansion",
    ),
    "deep_nesting": ({"app.yaml": "[" * 1000 + "]" * 1000}, "app.yaml", "nesting deeper"),
    "too_big": ({"app.yaml": "a: " + "x" * 3000 + "\n"}, "app.yaml", "RELOAD_MAX_FILE_BYTES"),
    "invalid_utf8": ({"app.yaml": "ok: 1\n"}, "app.yaml:2", "invalid UTF-8"),
    "symlink_escape": (GOOD3, "passwd.yaml", "outside the volume"),
    "fifo": (GOOD3, "pipe.yaml", "FIFO"),
    "socket": (GOOD3, "sock.yaml", "socket"),
    "empty": ({}, "", "no files"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_a_reason_and_nothing_is_lost(tmp_path: Path, case: str) -> None:
    """Each kind of bad input is refused with a clear reason; the last good version stays live and served."""
    files, where, why = BAD_INPUTS[case]
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD1)
    with serving(always(200), on_reload=reader(target / "app.yaml")) as app:
        with running(
            volume, target, tmp_path, RELOAD_RELOAD_URL=app.url + "/-/reload", RELOAD_MAX_FILE_BYTES="2048"
        ) as car:
            good = car.wait_current()["current"]
            if case == "invalid_utf8":
                project(volume, {"app.yaml": b"ok: 1\nname: \xff\xfe\n"})
            elif case in ("symlink_escape", "fifo", "socket"):
                _plant(volume, files, case)
            else:
                project(volume, files)
            started = time.monotonic()
            st = wait_for(lambda: (s := car.status())["refused"] and s, 10, what=f"{case} refused")
            assert time.monotonic() - started < 5, "refusal must be fast"
            [reason] = [r["reason"] for r in st["refused"].values()]
            assert where in reason and why in reason, reason
            assert st["current"] == good and st["last_good"] == good and st["ready"] is True
            assert why in st["last_error"]
            assert live_files(target) == _bytes(GOOD1)
            assert app.count() == 0
            assert car.metrics()["reload_sidecar_validation_failures_total"] == 1.0
            [event] = car.events("refused")
            assert any(why in p for p in event["problems"]) and event["level"] == "warning"
            # still working: the next good version goes through
            project(volume, GOOD2)
            wait_for(lambda: app.loaded == [GOOD2["app.yaml"]], 10, what="good version after the bad one")
            assert live_files(target) == _bytes(GOOD2)


def test_hanging_checker_is_killed_and_the_version_refused(tmp_path: Path) -> None:
    """A checker that hangs is killed (with its children) at RELOAD_VALIDATE_TIMEOUT_S; the version is refused."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    marker = tmp_path / "grandchild.pid"
    script = (
        "import os, subprocess, sys, time; d = sys.argv[1]\n"
        "if 'hang' in open(os.path.join(d, 'app.yaml')).read():\n"
        f"    p = subprocess.Popen(['sleep', '60'])\n"
        f"    open({str(marker)!r}, 'w').write(str(p.pid))\n"
        "    time.sleep(60)\n"
    )
    (tmp_path / "check.py").write_text(script)
    project(volume, GOOD1)
    with running(
        volume,
        target,
        tmp_path,
        RELOAD_VALIDATE_TIMEOUT_S="1",
        RELOAD_VALIDATE_COMMAND=f"{sys.executable} {tmp_path / 'check.py'} {{dir}}",
    ) as car:
        good = car.wait_current()["current"]
        project(volume, {"app.yaml": "mode: hang\n"})
        st = wait_for(lambda: (s := car.status())["refused"] and s, 10, what="hanging checker refused")
        [reason] = [r["reason"] for r in st["refused"].values()]
        assert "did not finish within 1 s" in reason and "killed" in reason
        grandchild = int(marker.read_text())
        wait_for(lambda: not Path(f"/proc/{grandchild}").exists() or _zombie(grandchild), 5, what="grandchild killed")
        assert st["current"] == good
        assert not list(target.glob("..check-*")), "the staged copy must be removed"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("mode", ["500", "no_answer"])
def test_reload_endpoint_failure_rolls_back_and_says_why(tmp_path: Path, mode: str) -> None:
    """A reload URL answering 500 (or nothing) fails the reload with the evidence; the last good files come back."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD1)
    script = always(500) if mode == "500" else always(0)
    with serving(script) as app:
        with running(
            volume,
            target,
            tmp_path,
            RELOAD_RELOAD_URL=app.url + "/-/reload",
            RELOAD_RELOAD_RETRIES="1",
            RELOAD_RELOAD_TIMEOUT_S="0.5",
        ) as car:
            good = car.wait_current()["current"]
            project(volume, GOOD2)
            st = wait_for(
                lambda: (s := car.status())["quarantined"] and s["state"] in ("idle", "degraded") and s,
                15,
                what="reload failure handled",
            )
            [(bad, q)] = st["quarantined"].items()
            expected = "HTTP 500" if mode == "500" else "no answer within 0.5 s"
            attempts = "1 attempt(s)" if mode == "500" else "2 attempt(s)"  # a 500 is a refusal: never retried
            assert expected in q["reason"] and attempts in q["reason"], q
            assert st["current"] == good, "the last good version must be live again"
            assert live_files(target) == _bytes(GOOD1)
            assert car.metrics()['reload_sidecar_reloads_total{result="failed"}'] == 1.0
            assert car.events("reload_failed")[0]["version"] == bad
            assert car.alive()


def test_sigterm_during_a_long_verification_stops_promptly_and_cleanly(tmp_path: Path) -> None:
    """SIGTERM while a pass waits on a 60 s verification window: the pass is cancelled, the sidecar exits 0 fast."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD1)

    def script(method: str, path: str, n: int) -> tuple[int, str]:
        return (500, "down\n") if path == "/health" else (200, "ok\n")

    with serving(script) as app:
        car = Sidecar(
            volume,
            target,
            tmp_path,
            RELOAD_RELOAD_URL=app.url + "/-/reload",
            RELOAD_HEALTH_URL=app.url + "/health",
            RELOAD_HEALTH_TIMEOUT_S="60",
            RELOAD_HEALTH_INTERVAL_S="1",
            RELOAD_HEALTH_SUCCESSES="3",
        ).start()
        try:
            car.wait_current()
            project(volume, GOOD2)
            wait_for(lambda: car.status()["state"] == "verifying", 10, what="verifying")
            started = time.monotonic()
            assert car.stop() == 0
            assert time.monotonic() - started < 5
            assert car.events("pass_cancelled") and car.events("stopped")
        finally:
            car.kill()


def test_once_then_run_does_not_reload_the_app_again(tmp_path: Path) -> None:
    """`once` (initContainer) promotes and commits: the sidecar starting next keeps that version and
    does not signal the app for it."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
    env.update(RELOAD_SOURCE_DIR=str(volume), RELOAD_TARGET_DIR=str(target))
    done = subprocess.run([sys.executable, "-m", "sidecar", "once"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert live_files(target) == _bytes(GOOD1)
    with serving(always(200)) as app:
        with running(volume, target, tmp_path, RELOAD_RELOAD_URL=app.url + "/-/reload") as car:
            st = car.wait_current()
            time.sleep(0.5)
            assert st["current"] == st["last_good"] and st["ready"] is True
            assert app.count() == 0
            project(volume, GOOD2)
            wait_for(lambda: app.count() == 1, 10, what="the next version reloads the app as usual")
