"""Failure paths end to end: the real sidecar process, a kubelet-style volume, a loopback app, a damaged
or size-limited target.

volume/  written only by tests.kubelet.project
target/  the sidecar's; in the tests marked "root", a tmpfs of a few MB (`mount -t tmpfs -o size=...`,
         unmounted in `finally`), the way an emptyDir with a sizeLimit fills up:
  ..v-<good>/                  the last good version
  ..v-<bad>/                   promoted, failed, deleted right after the rollback
  ..data -> ..v-<good>
  ..reload-sidecar-state.json
  ..filler                     the test's own: takes every free block (tests.tmpfs.fill)
  app.yaml -> ..data/app.yaml  what the loopback app reads on each reload request

Tests marked "root" fail with one line as non-root (tests/root.py, as the fleet tests do); CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.e2e.apps import NginxProc, free_port, nginx_conf, start_nginx
from tests.e2e.receiver import reader, serving
from tests.e2e.sidecar_proc import live_files, running, wait_for
from tests.kubelet import project
from tests.tmpfs import FILLER, fill, free_bytes, tmpfs

STATE_FILE = "..reload-sidecar-state.json"
GOOD = {"app.yaml": b"version: 1\nmode: fine\n"}
BAD = {"app.yaml": b"version: 2\nmode: bad\n"}


def _app_script(target: Path) -> object:
    """The loopback app: a reload of a version whose app.yaml says "bad" answers 500, any other 200."""
    read = reader(target / "app.yaml")
    return lambda method, path, n: (500, "bad config\n") if method == "POST" and "bad" in read() else (200, "ok\n")


def _partials(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir() if p.name.startswith(("..tmp-", "..del-", "..check-")))


def _versions(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir() if p.name.startswith("..v-"))


def test_enospc_while_a_bad_version_fails_still_rolls_back(tmp_path: Path) -> None:
    """(root: tmpfs) The target fills up while a bad version is failing: the quarantine's state write fails
    with ENOSPC, yet ..data goes back, the app is told about the good version again and /readyz is 200;
    once there is room the next resync writes the quarantine."""
    volume = tmp_path / "volume"
    project(volume, GOOD)
    with tmpfs(tmp_path / "target", "2m") as target:
        read = reader(target / "app.yaml")

        def on_reload() -> str:
            text = read()
            if "bad" in text:
                fill(target)  # another writer of the emptyDir takes the last block just now
            return text

        with serving(_app_script(target), on_reload) as app:  # type: ignore[arg-type]
            env = {"RELOAD_RELOAD_URL": app.url + "/-/reload", "RELOAD_RELOAD_RETRIES": "0", "RELOAD_RESYNC_S": "0.3"}
            with running(volume, target, tmp_path, **env) as car:
                good = car.wait_current()["current"]
                project(volume, BAD)
                st = wait_for(
                    lambda: (s := car.status())["quarantined"] and s["state"] == "idle" and s,
                    20,
                    what=f"rollback; log: {car.log_tail()}",
                )
                [bad] = st["quarantined"]
                assert app.loaded == [BAD["app.yaml"].decode(), GOOD["app.yaml"].decode()], app.loaded
                assert st["current"] == st["last_good"] == good and st["ready"] and car.readyz() == 200
                assert live_files(target) == GOOD
                [write_failed, *_] = car.events("state_write_failed")
                assert "No space left" in write_failed["error"]
                [rolled] = car.events("rolled_back")
                assert rolled["version"] == bad and rolled["to"] == good
                assert car.metrics()["reload_sidecar_state_write_failures_total"] >= 1
                assert _versions(target) == [f"..v-{good}"] and _partials(target) == []

                (target / FILLER).unlink()
                wait_for(
                    lambda: bad in json.loads((target / STATE_FILE).read_text())["quarantined"],
                    15,
                    what="the quarantine written at a resync once there is room",
                )
                assert app.count("POST") == 2 and car.readyz() == 200


def test_a_run_of_bad_versions_never_wedges_a_target_sized_by_the_formula(tmp_path: Path) -> None:
    """(root: tmpfs) A target sized (RELOAD_HISTORY + 2) x RELOAD_MAX_TOTAL_BYTES + 1 MiB, as docs/validation.md says:
    six full-size bad versions in a row are each rolled back and deleted, then a full-size good one still fits."""
    volume, max_total, history = tmp_path / "volume", 256 * 1024, 1
    size = (history + 2) * max_total + (1 << 20)

    def version(i: int, mode: str) -> dict[str, bytes]:
        head = f"version: {i}\nmode: {mode}\n".encode()
        return {"app.yaml": head + b"#" * (max_total - len(head) - 1) + b"\n"}

    project(volume, version(0, "fine"))
    with tmpfs(tmp_path / "target", f"{size // 1024}k") as target, serving(_app_script(target)) as app:  # type: ignore[arg-type]
        env = {
            "RELOAD_RELOAD_URL": app.url + "/-/reload",
            "RELOAD_RELOAD_RETRIES": "0",
            "RELOAD_RESYNC_S": "0.3",
            "RELOAD_MAX_FILE_BYTES": str(max_total),
            "RELOAD_MAX_TOTAL_BYTES": str(max_total),
            "RELOAD_HISTORY": str(history),
        }
        with running(volume, target, tmp_path, **env) as car:
            good = car.wait_current()["current"]
            for i in range(1, 7):
                project(volume, version(i, "bad"))
                wait_for(
                    lambda n=i: len((s := car.status())["quarantined"]) == n and s["state"] == "idle",
                    20,
                    what=f"bad version {i} rolled back; log: {car.log_tail()}",
                )
                assert car.status()["current"] == good and _partials(target) == []
            assert _versions(target) == [f"..v-{good}"]
            project(volume, version(7, "fine"))
            st = wait_for(
                lambda: (s := car.status())["current"] not in (good, None) and s["state"] == "idle" and s,
                20,
                what=f"the good version promoted; log: {car.log_tail()}",
            )
            assert st["current"] == st["last_good"] and st["ready"], st["last_error"]
            assert live_files(target) == version(7, "fine")
            assert car.metrics()["reload_sidecar_rollbacks_total"] == 6
            assert free_bytes(target) > 0


def test_deleted_data_and_wiped_target_are_repaired_by_a_resync(tmp_path: Path) -> None:
    """`..data` deleted, then everything in the target: each time a resync restores the app's files, logs
    `target_repaired` and counts it; /readyz stays truthful (200 once repaired)."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with running(volume, target, tmp_path, RELOAD_RESYNC_S="0.3") as car:
        good = car.wait_current()["current"]
        repairs = "reload_sidecar_target_repairs_total"

        (target / "..data").unlink()
        wait_for(lambda: live_files(target) == GOOD, 15, what=f"first repair; log: {car.log_tail()}")
        assert (target / "app.yaml").read_bytes() == GOOD["app.yaml"]
        assert car.metrics()[repairs] == 1

        for entry in target.iterdir():  # the sidecar may rename its state file's temp file meanwhile
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        wait_for(lambda: live_files(target) == GOOD, 15, what=f"second repair; log: {car.log_tail()}")
        assert (target / "app.yaml").read_bytes() == GOOD["app.yaml"]
        assert car.metrics()[repairs] == 2
        wait_for(lambda: (target / STATE_FILE).exists(), 10, what="the state file rewritten")
        assert json.loads((target / STATE_FILE).read_text())["last_good"] == good
        assert [e["problem"] for e in car.events("target_repaired")] == [
            "..data is missing",
            "..data is missing",
        ]
        st = car.status()
        assert st["current"] == good and st["ready"] and car.readyz() == 200
        assert not car.events("promoted")[1:], "a repair is not a new promotion"


def _reload_nginx(ngx: NginxProc) -> str:
    """SIGHUP nginx as anyone may (its container restarting reads the config the same way), wait for the
    new generation of workers alone, and return what it serves: what it read through the target."""
    before = set(ngx.workers())
    ngx.reload()
    wait_for(lambda: set(ngx.workers()).isdisjoint(before) and ngx.settled(), 20, what="nginx's new workers")
    return ngx.get("/")[1]


def test_a_redirected_link_and_a_data_dir_are_repaired_and_nginx_reads_the_good_version(tmp_path: Path) -> None:
    """The target tampered with while nginx runs on it: `nginx.conf -> <a conf of ours>` (a link
    redirected), then `..data` replaced by a directory holding such a conf. Each time a resync puts the
    sidecar's layout back (`target_repaired`, no `target_repair_failed`), without signalling nginx (its
    version did not change), and nginx, reloaded afterwards, serves the good version, never the planted one."""
    prefix, volume, target = tmp_path / "nginx", tmp_path / "volume", tmp_path / "target"
    prefix.mkdir()
    port = free_port()
    good_conf = nginx_conf(port, "good", prefix)
    project(volume, {"nginx.conf": good_conf})
    evil = tmp_path / "evil.conf"
    evil.write_text(nginx_conf(port, "evil", prefix))
    env = {"RELOAD_SIGNAL": "SIGHUP", "RELOAD_PIDFILE": str(prefix / "nginx.pid"), "RELOAD_RESYNC_S": "0.3"}
    with running(volume, target, tmp_path, **env) as car:
        good = car.wait_current()["current"]
        with start_nginx(prefix, target / "nginx.conf", port) as ngx:
            assert ngx.get("/")[1] == "good"

            (target / "nginx.conf").unlink()
            (target / "nginx.conf").symlink_to(evil)
            wait_for(lambda: car.events("target_repaired"), 15, what=f"the link repaired; log: {car.log_tail()}")
            assert os.readlink(target / "nginx.conf") == "..data/nginx.conf"
            assert _reload_nginx(ngx) == "good"

            (target / "..data").unlink()
            (target / "..data").mkdir()
            (target / "..data" / "nginx.conf").write_text(evil.read_text())
            wait_for(
                lambda: len(car.events("target_repaired")) == 2, 15, what=f"..data repaired; log: {car.log_tail()}"
            )
            assert os.readlink(target / "..data") == f"..v-{good}"
            assert _reload_nginx(ngx) == "good"

            assert [e["problem"] for e in car.events("target_repaired")] == [
                "link nginx.conf does not point at ..data/nginx.conf",
                "..data is not a symlink (Invalid argument)",
            ]
            assert not car.events("target_repair_failed")
            assert not car.events("reload_triggered"), "a repair does not signal the app"
            assert car.metrics()["reload_sidecar_target_repairs_total"] == 2
            assert not [p.name for p in target.iterdir() if p.name.startswith("..del-")]
            st = car.status()
            assert st["current"] == st["last_good"] == good and st["ready"] and car.readyz() == 200


def test_once_on_a_full_target_exits_1_without_traceback_or_leftovers(tmp_path: Path) -> None:
    """(root: tmpfs) `reload-sidecar once` with no room in the target: exit 1, one clear line saying how
    many bytes are free and needed, no traceback, no `..tmp-*` left behind."""
    volume = tmp_path / "volume"
    project(volume, {"app.yaml": b"a: 1\n" + b"#" * 100_000 + b"\n"})
    with tmpfs(tmp_path / "target", "1m") as target:
        fill(target)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
        env.update(RELOAD_SOURCE_DIR=str(volume), RELOAD_TARGET_DIR=str(target))
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "once"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
        [line] = [json.loads(x) for x in done.stderr.splitlines() if '"promote_failed"' in x]
        assert f"target {target} has " in line["error"] and " bytes free, version " in line["error"]
        assert sorted(p.name for p in target.iterdir()) == [FILLER]
